/*
 * tinydeploy's implementations of the CMSIS-NN entry points in arm_nnfunctions.h, for Cortex-M4/M7 with the
 * DSP extension: int8 pairs are sign-extended into 16-bit lanes with SXTB16 and multiplied-accumulated two at a
 * time with SMLAD (<arm_acle.h>). Requantization is td_requant_cmsis (td_runtime.h), which mirrors
 * ir/arith.py:requant_cmsis (arm_nn_requantize) bit for bit.
 */
#include <arm_acle.h>
#include <stdint.h>

#include "arm_nnfunctions.h"
#include "td_runtime.h"

typedef int32_t __attribute__((aligned(1), may_alias)) td_unaligned_i32;

/* The context the generated code passes (these kernels need no scratch buffer). */
const cmsis_nn_context td_nn_context = {0, 0};

static inline int32_t td_load4(const int8_t *p)
{
    return *(const td_unaligned_i32 *)p;
}

/* Two output channels against one input row; the input pairs are loaded once for both. */
static void fc_two_channels(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t depth, int32_t offset,
                            int32_t *acc0, int32_t *acc1)
{
    const uint32_t offset2 = ((uint32_t)(uint16_t)offset) | ((uint32_t)(uint16_t)offset << 16);
    int32_t a0 = *acc0, a1 = *acc1, k = 0;
    for (; k + 4 <= depth; k += 4) {
        const int32_t xv = td_load4(x + k);
        const int32_t x02 = (int32_t)__sadd16((uint32_t)__sxtb16((uint32_t)xv), offset2);
        const int32_t x13 = (int32_t)__sadd16((uint32_t)__sxtb16(__ror((uint32_t)xv, 8)), offset2);
        const uint32_t v0 = (uint32_t)td_load4(w0 + k), v1 = (uint32_t)td_load4(w1 + k);
        a0 = __smlad(__sxtb16(v0), (uint32_t)x02, a0);
        a0 = __smlad(__sxtb16(__ror(v0, 8)), (uint32_t)x13, a0);
        a1 = __smlad(__sxtb16(v1), (uint32_t)x02, a1);
        a1 = __smlad(__sxtb16(__ror(v1, 8)), (uint32_t)x13, a1);
    }
    for (; k < depth; ++k) {
        a0 += ((int32_t)x[k] + offset) * w0[k];
        a1 += ((int32_t)x[k] + offset) * w1[k];
    }
    *acc0 = a0;
    *acc1 = a1;
}

arm_cmsis_nn_status arm_fully_connected_per_channel_s8(const cmsis_nn_context *ctx,
                                                       const cmsis_nn_fc_params *fc_params,
                                                       const cmsis_nn_per_channel_quant_params *quant_params,
                                                       const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                                       const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                                       const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                                       const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    (void)output_dims;
    if (fc_params->filter_offset != 0) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    const int32_t batches = input_dims->n, depth = filter_dims->n, channels = filter_dims->c;
    for (int32_t b = 0; b < batches; ++b) {
        const int8_t *x = input_data + b * depth;
        int8_t *y = output_data + b * channels;
        for (int32_t c = 0; c < channels; c += 2) {
            const int32_t c1 = (c + 1 < channels) ? c + 1 : c;   /* odd count: the last channel twice */
            int32_t acc0 = bias_data ? bias_data[c] : 0, acc1 = bias_data ? bias_data[c1] : 0;
            fc_two_channels(x, filter_data + c * depth, filter_data + c1 * depth, depth, fc_params->input_offset,
                            &acc0, &acc1);
            y[c] = (int8_t)td_clip(td_requant_cmsis(acc0, quant_params->multiplier[c], quant_params->shift[c],
                                                    fc_params->output_offset),
                                   fc_params->activation.min, fc_params->activation.max);
            y[c1] = (int8_t)td_clip(td_requant_cmsis(acc1, quant_params->multiplier[c1], quant_params->shift[c1],
                                                     fc_params->output_offset),
                                    fc_params->activation.min, fc_params->activation.max);
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}
