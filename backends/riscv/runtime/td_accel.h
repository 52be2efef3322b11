/*
 * Driver of the ITA-like accelerator (registers in td_platform.h, generated from the target's [mmio]).
 * Hart 0 programs a job per matrix: operand addresses in L1, shapes, the requant table, the epilogue
 * (second requant, LUT activation, streaming softmax) and starts it; jobs queue in order, so a whole
 * batch is issued before waiting once for the last job.
 */
#ifndef TD_ACCEL_H
#define TD_ACCEL_H

#include <stdint.h>

#include "td_parallel.h"

/* Epilogue registers of one fused op (backends/lowering.py: ita_job_fields). */
typedef struct {
    uint32_t mode;
    uint32_t rq_clip;
    int32_t rq2_mul, rq2_shift, rq2_add;
    uint32_t rq2_clip;
    int32_t lut_min;
    int32_t sm_group, sm_levels, sm_offset;
    uint32_t sm_clip;
    int32_t stage_count;   /* AddRequant/MulRequant stages in the L1 stage table */
    int32_t rq3_mul, rq3_shift, rq3_add;
    uint32_t rq3_clip;     /* requant after the softmax (mode bit 4) */
    int32_t y_pitch, r_pitch; /* bytes between rows of Y / R when they are column tiles of wider tensors (0: n) */
    int32_t sm_bits;       /* softmax input steps per octave: 2^sm_bits (ITA: 5) */
} td_ita_job;

/* Mode bit 10: B, bias and rq are the previous job's, still in the accelerator's buffers (not loaded again). */
#define TD_ACCEL_MODE_KEEP_B 1024u

#ifdef TD_REG_ACCEL_START
#define TD_ACCEL_ADDR(p) ((uint32_t)(uintptr_t)(p))

/* Program the epilogue registers (they keep their values for the following jobs). */
static inline void td_accel_epilogue(const td_ita_job *job, const void *lut, const int32_t *stages,
                                     const int8_t *v0, const int8_t *v1, const int8_t *v2, const int8_t *v3)
{
    TD_MMIO(TD_REG_ACCEL_STAGES) = TD_ACCEL_ADDR(stages);
    TD_MMIO(TD_REG_ACCEL_STAGE_COUNT) = (uint32_t)job->stage_count;
    TD_MMIO(TD_REG_ACCEL_V0) = TD_ACCEL_ADDR(v0);
    TD_MMIO(TD_REG_ACCEL_V1) = TD_ACCEL_ADDR(v1);
    TD_MMIO(TD_REG_ACCEL_V2) = TD_ACCEL_ADDR(v2);
    TD_MMIO(TD_REG_ACCEL_V3) = TD_ACCEL_ADDR(v3);
    TD_MMIO(TD_REG_ACCEL_MODE) = job->mode;
    TD_MMIO(TD_REG_ACCEL_RQ_CLIP) = job->rq_clip;
    TD_MMIO(TD_REG_ACCEL_RQ2_MUL) = (uint32_t)job->rq2_mul;
    TD_MMIO(TD_REG_ACCEL_RQ2_SHIFT) = (uint32_t)job->rq2_shift;
    TD_MMIO(TD_REG_ACCEL_RQ2_ADD) = (uint32_t)job->rq2_add;
    TD_MMIO(TD_REG_ACCEL_RQ2_CLIP) = job->rq2_clip;
    TD_MMIO(TD_REG_ACCEL_LUT) = TD_ACCEL_ADDR(lut);
    TD_MMIO(TD_REG_ACCEL_LUT_MIN) = (uint32_t)job->lut_min;
    TD_MMIO(TD_REG_ACCEL_SM_GROUP) = (uint32_t)job->sm_group;
    TD_MMIO(TD_REG_ACCEL_SM_LEVELS) = (uint32_t)job->sm_levels;
    TD_MMIO(TD_REG_ACCEL_SM_OFFSET) = (uint32_t)job->sm_offset;
    TD_MMIO(TD_REG_ACCEL_SM_CLIP) = job->sm_clip;
    TD_MMIO(TD_REG_ACCEL_RQ3_MUL) = (uint32_t)job->rq3_mul;
    TD_MMIO(TD_REG_ACCEL_RQ3_SHIFT) = (uint32_t)job->rq3_shift;
    TD_MMIO(TD_REG_ACCEL_RQ3_ADD) = (uint32_t)job->rq3_add;
    TD_MMIO(TD_REG_ACCEL_Y_PITCH) = (uint32_t)job->y_pitch;
    TD_MMIO(TD_REG_ACCEL_R_PITCH) = (uint32_t)job->r_pitch;
    TD_MMIO(TD_REG_ACCEL_RQ3_CLIP) = job->rq3_clip;
    TD_MMIO(TD_REG_ACCEL_SM_BITS) = (uint32_t)job->sm_bits;
}

/* Program one GEMM job's operand registers (the job is queued by td_accel_start; registers are snapshotted then,
 * so the next job can be programmed while this one runs). */
static inline void td_accel_operands(const int8_t *a, const int8_t *b, const int32_t *bias, const int32_t *rq,
                                     const int8_t *r, int8_t *y, int32_t m, int32_t k, int32_t n)
{
    TD_MMIO(TD_REG_ACCEL_R) = TD_ACCEL_ADDR(r);
    TD_MMIO(TD_REG_ACCEL_A) = TD_ACCEL_ADDR(a);
    TD_MMIO(TD_REG_ACCEL_B) = TD_ACCEL_ADDR(b);
    TD_MMIO(TD_REG_ACCEL_BIAS) = TD_ACCEL_ADDR(bias);
    TD_MMIO(TD_REG_ACCEL_RQ) = TD_ACCEL_ADDR(rq);
    TD_MMIO(TD_REG_ACCEL_Y) = TD_ACCEL_ADDR(y);
    TD_MMIO(TD_REG_ACCEL_M) = (uint32_t)m;
    TD_MMIO(TD_REG_ACCEL_K) = (uint32_t)k;
    TD_MMIO(TD_REG_ACCEL_N) = (uint32_t)n;
}

/* Queue the programmed job; returns its id. */
static inline uint32_t td_accel_start(void)
{
    TD_MMIO(TD_REG_ACCEL_START) = 1u;
    return TD_MMIO(TD_REG_ACCEL_START);
}

/* Stall until job `id` (and every earlier job) is done; 0 (no job) returns at once. */
static inline void td_accel_wait(uint32_t id)
{
    if (id != 0) {
        TD_MMIO(TD_REG_ACCEL_WAIT) = id;
    }
}
#endif /* TD_REG_ACCEL_START */

#endif /* TD_ACCEL_H */
