/*
 * Parallel execution model of the RISC-V cluster: SPMD. Every hart runs network_run(); each kernel takes
 * its share of the work by hart id (kept in the tp register by crt0.S); a hardware barrier ends each step.
 */
#ifndef TD_PARALLEL_H
#define TD_PARALLEL_H

#include <stdint.h>

#include "td_platform.h"

#define TD_MMIO(offset) (*(volatile uint32_t *)(TD_MMIO_BASE + (offset)))
#define TD_EVENT(offset) (*(volatile uint32_t *)(TD_EVENT_BASE + (offset)))

static inline int32_t td_hart_id(void)
{
    int32_t id;
    __asm__ volatile("mv %0, tp" : "=r"(id));
    return id;
}

/* Arrive at the hardware barrier, then wait (spinning on plain memory) until every hart has arrived. */
static inline void td_barrier(void)
{
    uint32_t generation = TD_EVENT(TD_EVENT_BARRIER_GENERATION);
    TD_MMIO(TD_REG_BARRIER_ARRIVE) = 1u;
    while (TD_EVENT(TD_EVENT_BARRIER_GENERATION) == generation) {
    }
}

#define TD_HART_ID td_hart_id()
#define TD_NUM_CORES TD_NUM_CORES_CONST
#define TD_BARRIER() td_barrier()
#define TD_LAYER_BEGIN(index) do { if (td_hart_id() == 0) TD_MMIO(TD_REG_LAYER_BEGIN) = (uint32_t)(index); } while (0)
#define TD_LAYER_END(index) do { if (td_hart_id() == 0) TD_MMIO(TD_REG_LAYER_END) = (uint32_t)(index); } while (0)

#include "td_dma.h"   /* DMA and the tile loop (needs the definitions above) */
#include "td_accel.h" /* the accelerator driver, on targets that have one */

#endif /* TD_PARALLEL_H */
