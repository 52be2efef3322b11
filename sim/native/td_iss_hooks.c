/*
 * Native block hook for the cluster ISS (sim/cluster.py): counts the instructions each hart retires and ends
 * its slice after `limit` instructions. Unicorn's own `count` argument hooks every instruction and runs at
 * ~35 M instr/s; a Python block hook is slower still; this C hook runs once per translated block at ~200 M
 * instr/s and makes per-hart instruction counts exact (2- and 4-byte instructions are told apart from the
 * guest's code bytes: RV32IMC or Thumb-2, by `isa`). Built on first use by sim/native.py with the host C
 * compiler.
 */
#include <stdint.h>

#define TD_MAX_CODE_REGIONS 4

typedef int (*td_stop_fn)(void *uc);

typedef struct {
    uint64_t base;
    uint64_t size;
    const uint8_t *host;
} td_code_region;

typedef struct {
    uint64_t instructions;   /* instructions of every block entered (see stop_block) */
    uint64_t limit;          /* the hook requests a stop when a block would start at or past this count */
    uint64_t stop_block;     /* block the hook stopped before (not executed, not counted); ~0 if none */
    uint64_t blocks;         /* blocks entered */
    uint64_t last_block;     /* address and size in bytes of the last block entered */
    uint64_t last_size;
    uint64_t isa;            /* 0: RISC-V (RVC), 1: Thumb-2 */
    td_stop_fn stop;         /* uc_emu_stop */
    td_code_region regions[TD_MAX_CODE_REGIONS];
} td_hart_counter;

static uint64_t block_instructions(const td_hart_counter *c, uint64_t address, uint32_t size)
{
    for (int r = 0; r < TD_MAX_CODE_REGIONS; ++r) {
        const td_code_region *region = &c->regions[r];
        if (region->host && address >= region->base && address + size <= region->base + region->size) {
            const uint8_t *p = region->host + (address - region->base);
            const uint8_t *end = p + size;
            uint64_t n = 0;
            while (p < end) {
                if (c->isa == 1) {   /* Thumb-2: first halfword 0b11101..., 0b11110..., 0b11111... is 32-bit */
                    p += ((p[1] >> 3) >= 0x1Du) ? 4 : 2;
                } else {             /* RVC: low bits 11 mark a 32-bit instruction */
                    p += ((p[0] & 3u) == 3u) ? 4 : 2;
                }
                ++n;
            }
            return n;
        }
    }
    return (size + 3u) / 4u;
}

void td_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    td_hart_counter *c = (td_hart_counter *)user_data;
    if (c->instructions >= c->limit) {
        c->stop_block = address;
        c->stop(uc);
        return;
    }
    c->instructions += block_instructions(c, address, size);
    c->blocks += 1;
    c->last_block = address;
    c->last_size = size;
}
