/* Cluster start-up: every hart enters here. tp = hart id, sp = its stack at the top of L1; hart 0 clears .bss
 * while the others wait at the barrier; then td_main(); its return value is the exit code. */
#include "td_platform.h"

    .section .text.init, "ax"
    .global _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    li t0, TD_MMIO_BASE
    lw tp, TD_REG_HART_ID(t0)
    la sp, __stack_top
    li t1, TD_STACK_BYTES
    mul t1, t1, tp
    sub sp, sp, t1
    bnez tp, 2f
    la t2, __bss_start
    la t3, __bss_end
1:  bgeu t2, t3, 2f
    sw zero, 0(t2)
    addi t2, t2, 4
    j 1b
2:  call td_start
    li t0, TD_MMIO_BASE
    sw a0, TD_REG_EXIT(t0)
3:  j 3b
