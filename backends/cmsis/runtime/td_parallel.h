/*
 * Execution model of a Cortex-M target: one core, so every kernel takes all the work and barriers are no-ops;
 * layer stamps and the tensor trace go to tinydeploy's simulation device (td_platform.h).
 */
#ifndef TD_PARALLEL_H
#define TD_PARALLEL_H

#include <stdint.h>

#include "td_platform.h"

#define TD_MMIO(offset) (*(volatile uint32_t *)(TD_MMIO_BASE + (offset)))

static inline int32_t td_hart_id(void)
{
    return 0;
}

static inline void td_barrier(void)
{
}

#define TD_HART_ID 0
#define TD_NUM_CORES 1
#define TD_BARRIER() ((void)0)
#define TD_LAYER_BEGIN(index) (TD_MMIO(TD_REG_LAYER_BEGIN) = (uint32_t)(index))
#define TD_LAYER_END(index) (TD_MMIO(TD_REG_LAYER_END) = (uint32_t)(index))

/* The CMSIS-NN API the generated code calls (every C file sees it): a real checkout's header when built with
 * CMSIS_NN=path (-DTD_CMSIS_NN), else tinydeploy's declarations of the same entry points. */
#ifdef TD_CMSIS_NN
#include <arm_nnfunctions.h>
#else
#include "arm_nnfunctions.h"
#endif

extern const cmsis_nn_context td_nn_context; /* the (empty) context tinydeploy passes */

/* tinydeploy's own (not a CMSIS-NN entry point): arm_fully_connected_per_channel_s8's arithmetic with int16
 * outputs clamped to [lo, hi]; weights [channels][depth], per-channel mult/shift. */
void td_fully_connected_s8_s16(const int8_t *input, const int8_t *filter, const int32_t *bias, int16_t *output,
                               int32_t batches, int32_t depth, int32_t channels, int32_t input_offset,
                               int32_t output_offset, const int32_t *mult, const int32_t *shift, int32_t lo,
                               int32_t hi);

#endif /* TD_PARALLEL_H */
