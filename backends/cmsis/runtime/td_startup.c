/* Cortex-M start-up: vector table (initial stack pointer, reset handler), copy .data from flash, clear .bss,
 * run main(), report its return value as the exit code to the simulation device. */
#include <stdint.h>

#include "td_parallel.h"

int main(void);
void td_reset(void);
void td_fault(void);

extern uint32_t __data_start, __data_end, __data_load, __bss_start, __bss_end, __stack_top;

/* Initial stack pointer, reset, then NMI, HardFault and the other system exceptions: all go to td_fault. */
__attribute__((section(".vectors"), used)) static const void *const td_vectors[16] = {
    &__stack_top, (const void *)td_reset, (const void *)td_fault, (const void *)td_fault, (const void *)td_fault,
    (const void *)td_fault, (const void *)td_fault, 0, 0, 0, 0, (const void *)td_fault, (const void *)td_fault, 0,
    (const void *)td_fault, (const void *)td_fault,
};

/* Any fault: report exit code 3, which the Cortex-M ISS turns into a fault report with the faulting pc. */
void td_fault(void)
{
    TD_MMIO(TD_REG_EXIT) = 3u;
    for (;;) {
    }
}

/* The CMSIS-NN context the generated code passes: no scratch buffer (DSP kernels need none). */
const cmsis_nn_context td_nn_context = {0, 0};

void td_reset(void)
{
    const uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;) {
        *dst++ = 0u;
    }
    TD_MMIO(TD_REG_EXIT) = (uint32_t)main();
    for (;;) {
    }
}
