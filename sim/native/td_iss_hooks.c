/*
 * Native block hook for the ISSs (sim/cluster.py, sim/cortexm.py): counts the instructions and cycles each hart
 * retires and ends its slice after `limit` instructions. Unicorn's own `count` argument hooks every instruction
 * and runs at ~35 M instr/s; a Python block hook is slower still; this C hook runs once per translated block and
 * makes per-hart counts exact (2- and 4-byte instructions are told apart from the guest's code bytes: RV32IMC or
 * Thumb-2, by `isa`). Built on first use by sim/native.py with the host C compiler.
 *
 * Core timing (when the target's [core] section gives it; all zero = one instruction per cycle), decoded from the
 * code bytes once per block and cached. RV32IMC (`isa` 0), an in-order pipeline in the manner of CV32E40P:
 *   - a load whose result the next instruction reads (as an operand, store address or store data): +load_use
 *   - mulh/mulhu/mulhsu: +mulh; div/divu/rem/remu: +div (the RTL takes 3..35 cycles by the divisor's leading
 *     zeros; the hook sees no register values, so one figure stands for all)
 *   - jalr whose address register the previous instruction writes: +jalr_dependency; whose link register is its
 *     address register (`auipc ra; jalr ra, x(ra)`, a far call): +jalr_link
 * and, at the next block's entry (the previous block's last instruction tells why the block ended):
 *   - a taken conditional branch (the next block is not the fall-through): +taken_branch
 *   - jal/jalr and their compressed forms: +jump
 *   - either, to a 32-bit instruction at an address = 2 (mod 4): +misaligned_target
 * Not modelled here: L1 bank conflicts, latency of loads from L2/L3/MMIO, instruction fetch misses.
 *
 * Thumb-2 (Cortex-M4, `isa` 1), from the Cortex-M4 TRM's instruction timings: a single load or store takes 2
 * cycles, but neighbouring ones pipeline (N in a row take N + 1): +memory_first for the first of a run; LDM/STM/
 * PUSH/POP take 1 + N: +per_register per register (LDRD/STRD: 2); MLA/MLS +multiply_accumulate; SDIV/UDIV +div
 * (2..12 by early termination: one figure); the pipeline refill (1..3 in the TRM) after a taken B<c> or CBZ/CBNZ
 * +taken_branch, after B, BL, BX and a POP/LDM of pc +jump. No flash wait states or flash accelerator.
 */
#include <stdint.h>
#include <string.h>

#define TD_MAX_CODE_REGIONS 4
#define TD_BLOCK_CACHE 8192u      /* direct-mapped cache of decoded blocks (power of two) */

typedef int (*td_stop_fn)(void *uc);

typedef struct {
    uint64_t base;
    uint64_t size;
    const uint8_t *host;
} td_code_region;

/* Extra cycles over one per instruction (the target's [core] section, sim/native.py CoreTiming). */
typedef struct {
    uint32_t load_use;
    uint32_t taken_branch;
    uint32_t jump;
    uint32_t jalr_dependency;
    uint32_t jalr_link;
    uint32_t misaligned_target;
    uint32_t mulh;
    uint32_t div;
    uint32_t memory_first;            /* Thumb: a load/store not pipelined behind another one */
    uint32_t per_register;            /* Thumb: LDM/STM/PUSH/POP, per register moved */
    uint32_t multiply_accumulate;     /* Thumb: MLA, MLS */
    uint32_t enabled;
} td_core_timing;

enum { TD_END_OTHER = 0, TD_END_BRANCH = 1, TD_END_JUMP = 2 };

typedef struct {
    uint64_t address;         /* block start + 1 (0: empty slot) */
    uint32_t size;
    uint32_t instructions;
    uint32_t extra;           /* pipeline cycles inside the block */
    uint32_t end;             /* TD_END_* of its last instruction */
} td_block_cost;

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
    uint64_t cycles;         /* instructions plus pipeline cycles */
    uint64_t last_end;       /* TD_END_* of the last block entered */
    td_core_timing timing;
    td_block_cost *cache;    /* TD_BLOCK_CACHE entries owned by the caller, or NULL */
} td_hart_counter;

static const uint8_t *host_pointer(const td_hart_counter *c, uint64_t address, uint64_t size)
{
    for (int r = 0; r < TD_MAX_CODE_REGIONS; ++r) {
        const td_code_region *region = &c->regions[r];
        if (region->host && address >= region->base && address + size <= region->base + region->size) {
            return region->host + (address - region->base);
        }
    }
    return NULL;
}

/* --- RV32IMC decoding: what the timing needs of one instruction ------------------------------------------- */
typedef struct {
    uint32_t length;
    uint32_t rd;              /* register written (0: none) */
    uint32_t reads;           /* bit mask of registers read */
    uint32_t is_load;
    uint32_t extra;           /* mulh / div cycles */
    uint32_t end;             /* TD_END_* when it ends a block */
    uint32_t jalr_source;     /* the address register of a jalr (0: not a jalr) */
} td_insn;

static uint32_t bit(uint32_t reg) { return reg ? (1u << reg) : 0u; }

static void decode32(uint32_t w, const td_core_timing *t, td_insn *d)
{
    uint32_t opcode = w & 0x7f, rd = (w >> 7) & 31, rs1 = (w >> 15) & 31, rs2 = (w >> 20) & 31;
    uint32_t funct3 = (w >> 12) & 7, funct7 = w >> 25;
    d->length = 4;
    switch (opcode) {
    case 0x03: d->rd = rd; d->reads = bit(rs1); d->is_load = 1; break;                       /* loads */
    case 0x23: d->reads = bit(rs1) | bit(rs2); break;                                         /* stores */
    case 0x63: d->reads = bit(rs1) | bit(rs2); d->end = TD_END_BRANCH; break;                 /* branches */
    case 0x6f: d->rd = rd; d->end = TD_END_JUMP; break;                                       /* jal */
    case 0x67:                                                                                  /* jalr */
        d->rd = rd; d->reads = bit(rs1); d->end = TD_END_JUMP; d->jalr_source = rs1;
        d->extra = rd && rd == rs1 ? t->jalr_link : 0;
        break;
    case 0x13: d->rd = rd; d->reads = bit(rs1); break;                                        /* op-imm */
    case 0x33:                                                                                  /* op, M */
        d->rd = rd; d->reads = bit(rs1) | bit(rs2);
        if (funct7 == 1) {
            d->extra = funct3 == 0 ? 0 : (funct3 < 4 ? t->mulh : t->div);
        }
        break;
    case 0x37: case 0x17: d->rd = rd; break;                                                  /* lui, auipc */
    case 0x73: d->rd = rd; d->reads = bit(rs1); break;                                        /* system, csr */
    default: break;
    }
}

static void decode16(uint32_t h, td_insn *d)
{
    uint32_t quadrant = h & 3, funct3 = h >> 13, full_rd = (h >> 7) & 31, full_rs2 = (h >> 2) & 31;
    uint32_t rd_c = 8 + ((h >> 2) & 7), rs1_c = 8 + ((h >> 7) & 7);
    d->length = 2;
    if (quadrant == 0) {
        if (funct3 == 0) { d->rd = rd_c; d->reads = bit(2); }                                   /* c.addi4spn */
        else if (funct3 == 2) { d->rd = rd_c; d->reads = bit(rs1_c); d->is_load = 1; }           /* c.lw */
        else if (funct3 == 6) { d->reads = bit(rs1_c) | bit(rd_c); }                            /* c.sw */
    } else if (quadrant == 1) {
        switch (funct3) {
        case 0: d->rd = full_rd; d->reads = bit(full_rd); break;                                /* c.addi */
        case 1: d->rd = 1; d->end = TD_END_JUMP; break;                                         /* c.jal */
        case 2: d->rd = full_rd; break;                                                         /* c.li */
        case 3: d->rd = full_rd; d->reads = full_rd == 2 ? bit(2) : 0; break;                  /* c.lui, addi16sp */
        case 4: d->rd = rs1_c; d->reads = bit(rs1_c) | (((h >> 10) & 3) == 3 ? bit(rd_c) : 0); break;
        case 5: d->end = TD_END_JUMP; break;                                                    /* c.j */
        default: d->reads = bit(rs1_c); d->end = TD_END_BRANCH; break;                          /* c.beqz/bnez */
        }
    } else if (quadrant == 2) {
        if (funct3 == 0) { d->rd = full_rd; d->reads = bit(full_rd); }                          /* c.slli */
        else if (funct3 == 2) { d->rd = full_rd; d->reads = bit(2); d->is_load = 1; }           /* c.lwsp */
        else if (funct3 == 6) { d->reads = bit(2) | bit(full_rs2); }                            /* c.swsp */
        else if (funct3 == 4) {
            uint32_t link = (h >> 12) & 1;
            if (full_rs2 == 0 && full_rd != 0) {                                                /* c.jr, c.jalr */
                d->rd = link ? 1 : 0; d->reads = bit(full_rd); d->end = TD_END_JUMP; d->jalr_source = full_rd;
            } else if (full_rs2 != 0) {                                                         /* c.mv, c.add */
                d->rd = full_rd; d->reads = bit(full_rs2) | (link ? bit(full_rd) : 0);
            }
        }
    }
}

static void decode(const uint8_t *p, const td_core_timing *t, td_insn *d)
{
    memset(d, 0, sizeof *d);
    if ((p[0] & 3u) == 3u) {
        decode32((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24), t, d);
    } else {
        decode16((uint32_t)p[0] | ((uint32_t)p[1] << 8), d);
    }
}


/* --- Thumb-2 decoding: what the Cortex-M4 timing needs of one instruction ---------------------------------- */
static uint32_t popcount16(uint32_t v)
{
    uint32_t n = 0;
    for (v &= 0xFFFFu; v; v &= v - 1u) {
        ++n;
    }
    return n;
}

/* length, extra cycles (beside the load/store pipelining), end kind; *single: a single load or store */
static void decode_thumb(const uint8_t *p, const td_core_timing *t, td_insn *d, uint32_t *single)
{
    const uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    memset(d, 0, sizeof *d);
    *single = 0;
    if ((h >> 11) >= 0x1Du) {                                   /* 32-bit */
        const uint32_t h2 = (uint32_t)p[2] | ((uint32_t)p[3] << 8);
        d->length = 4;
        if ((h & 0xFE00u) == 0xF800u) {                          /* load/store single, .W forms */
            *single = 1;
        } else if ((h & 0xFE40u) == 0xE840u) {                   /* LDRD/STRD, exclusives, TBB/TBH */
            if ((h & 0xFFF0u) == 0xE8D0u && (h2 & 0xFFE0u) == 0xF000u) {
                d->extra = 2;                                   /* table branch: a load and a jump */
                d->end = TD_END_JUMP;
            } else {
                d->extra = 2 * t->per_register;
            }
        } else if ((h & 0xFE40u) == 0xE800u) {                   /* LDM/STM/PUSH/POP .W */
            d->extra = popcount16(h2) * t->per_register;
            if ((h & 0x0010u) && (h2 & 0x8000u)) {
                d->end = TD_END_JUMP;                           /* loads pc */
            }
        } else if ((h & 0xF800u) == 0xF000u && (h2 & 0x8000u)) { /* branches and misc control */
            const uint32_t op = (h2 >> 12) & 5u;
            if (op == 0u && ((h >> 6) & 0xEu) != 0xEu) {
                d->end = TD_END_BRANCH;                         /* B<c>.W */
            } else if (op != 0u) {
                d->end = TD_END_JUMP;                           /* B.W, BL, BLX */
            }
        } else if ((h & 0xFF80u) == 0xFB00u) {                   /* multiply, multiply-accumulate, DSP */
            const uint32_t op1 = (h >> 4) & 7u, op2 = (h2 >> 4) & 3u, ra = h2 >> 12;
            d->extra = op1 == 0u && ra != 0xFu && op2 <= 1u ? t->multiply_accumulate : 0u;
        } else if ((h & 0xFF80u) == 0xFB80u) {                   /* long multiply, divide */
            const uint32_t op1 = (h >> 4) & 7u, op2 = (h2 >> 4) & 0xFu;
            d->extra = (op1 == 1u || op1 == 3u) && op2 == 0xFu ? t->div : 0u;
        }
        return;
    }
    d->length = 2;
    if ((h & 0xF000u) == 0x5000u || (h & 0xE000u) == 0x6000u || (h & 0xE000u) == 0x8000u
        || (h & 0xF800u) == 0x4800u) {
        *single = 1;                                            /* LDR/STR(B/H/SB/SH) reg, imm, SP, literal */
    } else if ((h & 0xF600u) == 0xB400u) {                       /* PUSH, POP */
        d->extra = (popcount16(h & 0xFFu) + ((h >> 8) & 1u)) * t->per_register;
        if ((h & 0x0900u) == 0x0900u) {
            d->end = TD_END_JUMP;                               /* POP {.., pc} */
        }
    } else if ((h & 0xF000u) == 0xC000u) {                       /* STM, LDM */
        d->extra = popcount16(h & 0xFFu) * t->per_register;
    } else if ((h & 0xF000u) == 0xD000u && ((h >> 9) & 7u) != 7u) {
        d->end = TD_END_BRANCH;                                 /* B<c> */
    } else if ((h & 0xF800u) == 0xE000u || (h & 0xFF00u) == 0x4700u) {
        d->end = TD_END_JUMP;                                   /* B, BX, BLX */
    } else if ((h & 0xF500u) == 0xB100u) {
        d->end = TD_END_BRANCH;                                 /* CBZ, CBNZ */
    } else if ((h & 0xFF87u) == 0x4687u) {
        d->end = TD_END_JUMP;                                   /* MOV pc, Rm */
    }
}

/* Instructions, pipeline cycles and end kind of the Thumb code in [p, end). */
static void thumb_cost_of(const td_core_timing *t, const uint8_t *p, const uint8_t *end, td_block_cost *out)
{
    td_insn current;
    uint32_t single, previous_single = 0;
    out->instructions = out->extra = 0;
    out->end = TD_END_OTHER;
    while (p < end) {
        decode_thumb(p, t, &current, &single);
        out->extra += current.extra + (single && !previous_single ? t->memory_first : 0u);
        out->end = current.end;
        out->instructions += 1;
        p += current.length;
        previous_single = single;
    }
}

/* Instructions, pipeline cycles and end kind of the code in [p, end). */
static void cost_of(const td_core_timing *t, const uint8_t *p, const uint8_t *end, td_block_cost *out)
{
    td_insn previous = {0}, current;
    out->instructions = out->extra = 0;
    out->end = TD_END_OTHER;
    while (p < end) {
        decode(p, t, &current);
        out->extra += current.extra;
        if (previous.rd && (current.reads & bit(previous.rd))) {
            if (previous.is_load) {
                out->extra += t->load_use;
            }
            if (current.jalr_source == previous.rd) {
                out->extra += t->jalr_dependency;
            }
        }
        out->end = current.end;
        out->instructions += 1;
        p += current.length;
        previous = current;
    }
}

static uint64_t block_instructions(const td_hart_counter *c, uint64_t address, uint32_t size)
{
    const uint8_t *p = host_pointer(c, address, size);
    if (p == NULL) {
        return (size + 3u) / 4u;
    }
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

/* Instructions, pipeline cycles and end kind of the code at [address, address + size): decoded with the core's
 * timing when the target gives one, else only the instructions counted. */
static void range_cost(const td_hart_counter *c, uint64_t address, uint32_t size, td_block_cost *cost)
{
    const uint8_t *p = size ? host_pointer(c, address, size) : NULL;
    if (c->timing.enabled && c->isa <= 1 && p != NULL) {
        (c->isa == 1 ? thumb_cost_of : cost_of)(&c->timing, p, p + size, cost);
    } else {
        cost->instructions = size ? (uint32_t)block_instructions(c, address, size) : 0u;
    }
}

static td_block_cost block_cost(td_hart_counter *c, uint64_t address, uint32_t size)
{
    td_block_cost cost = {address + 1, size, 0, 0, TD_END_OTHER};
    td_block_cost *slot = c->cache ? &c->cache[(address >> 1) & (TD_BLOCK_CACHE - 1u)] : NULL;
    if (slot && slot->address == address + 1 && slot->size == size) {
        return *slot;
    }
    range_cost(c, address, size, &cost);
    if (slot) {
        *slot = cost;
    }
    return cost;
}

/* Cycles the previous block's last instruction costs beyond one, now that the next block's address is known. */
static uint64_t transfer_cycles(const td_hart_counter *c, uint64_t address)
{
    const td_core_timing *t = &c->timing;
    uint64_t cycles = 0;
    if (c->last_end == TD_END_BRANCH) {
        if (address == c->last_block + c->last_size) {
            return 0;                     /* not taken: fell through */
        }
        cycles = t->taken_branch;
    } else if (c->last_end == TD_END_JUMP) {
        cycles = t->jump;
    } else {
        return 0;
    }
    const uint8_t *target = host_pointer(c, address, 4);
    if (c->isa == 0 && (address & 3u) == 2u && target && (target[0] & 3u) == 3u) {   /* a 32-bit RV target */
        cycles += t->misaligned_target;
    }
    return cycles;
}

void td_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    td_hart_counter *c = (td_hart_counter *)user_data;
    if (c->instructions >= c->limit) {
        c->stop_block = address;
        c->stop(uc);
        return;
    }
    td_block_cost cost = block_cost(c, address, size);
    if (c->timing.enabled) {
        c->cycles += transfer_cycles(c, address);
    }
    c->instructions += cost.instructions;
    c->cycles += cost.instructions + cost.extra;
    c->blocks += 1;
    c->last_block = address;
    c->last_size = size;
    c->last_end = cost.end;
}

/* Instructions and cycles of [begin, end) (a block's tail the ISS un-counts after stopping at an MMIO store). */
void td_range_cost(td_hart_counter *c, uint64_t begin, uint64_t end, uint64_t *instructions, uint64_t *cycles)
{
    td_block_cost cost = {0, 0, 0, 0, TD_END_OTHER};
    range_cost(c, begin, end > begin ? (uint32_t)(end - begin) : 0u, &cost);
    *instructions = cost.instructions;
    *cycles = (uint64_t)cost.instructions + cost.extra;
}
