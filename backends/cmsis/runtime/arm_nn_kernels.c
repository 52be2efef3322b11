/*
 * tinydeploy's implementations of the CMSIS-NN entry points in arm_nnfunctions.h, for Cortex-M4/M7 with the
 * DSP extension: int8 pairs are sign-extended into 16-bit lanes with SXTB16 and multiplied-accumulated two at a
 * time with SMLAD (<arm_acle.h>), on 2 input rows x 2 output channels at a time. Requantization is td_requant_cmsis (td_runtime.h), which mirrors
 * ir/arith.py:requant_cmsis (arm_nn_requantize) bit for bit.
 */
#include <arm_acle.h>
#include <stdint.h>

#include "arm_nnfunctions.h"
#include "td_runtime.h"

typedef int32_t __attribute__((aligned(1), may_alias)) td_unaligned_i32;


static inline int32_t td_load4(const int8_t *p)
{
    return *(const td_unaligned_i32 *)p;
}

/* Sign-extended int8 pairs of a 4-byte word: lanes (0, 2) and (1, 3). */
#define TD_PAIRS(word, even, odd)                                                                                 \
    do {                                                                                                      \
        (even) = __sxtb16((uint32_t)(word));                                                                  \
        (odd) = __sxtb16(__ror((uint32_t)(word), 8));                                                         \
    } while (0)

/* acc[r][c] += x_r . w_c for two input rows and two output channels (no input offset: the compiler folded it
 * into the bias). The input words stay packed and are sign-extended where used, so the 4 accumulators, 4
 * pointers, the end and 5 temporaries fit Thumb-2's 14 registers (no spills). Per 4 depth steps: 4 loads,
 * 12 SXTB16, 8 SMLAD for 16 MACs. */
__attribute__((noinline)) static void fc_block_2x2(const int8_t *x0, const int8_t *x1, const int8_t *w0,
                                                     const int8_t *w1, int32_t depth, int32_t acc[4])
{
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    const int8_t *const end = x0 + (depth & ~3);
#if defined(__clang__)
#pragma clang loop unroll(disable)
#endif
    while (x0 < end) {
        const uint32_t xv0 = (uint32_t)td_load4(x0), xv1 = (uint32_t)td_load4(x1);
        uint32_t we, wo;
        TD_PAIRS(td_load4(w0), we, wo);
        a00 = __smlad(we, __sxtb16(xv0), __smlad(wo, __sxtb16(__ror(xv0, 8)), a00));
        a10 = __smlad(we, __sxtb16(xv1), __smlad(wo, __sxtb16(__ror(xv1, 8)), a10));
        TD_PAIRS(td_load4(w1), we, wo);
        a01 = __smlad(we, __sxtb16(xv0), __smlad(wo, __sxtb16(__ror(xv0, 8)), a01));
        a11 = __smlad(we, __sxtb16(xv1), __smlad(wo, __sxtb16(__ror(xv1, 8)), a11));
        x0 += 4;
        x1 += 4;
        w0 += 4;
        w1 += 4;
    }
    for (int32_t k = 0; k < (depth & 3); ++k) {
        a00 += x0[k] * w0[k];
        a01 += x0[k] * w1[k];
        a10 += x1[k] * w0[k];
        a11 += x1[k] * w1[k];
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

/* The general case (an input offset at run time): plain C. */
static int32_t fc_dot_offset(const int8_t *x, const int8_t *w, int32_t depth, int32_t offset, int32_t acc)
{
    for (int32_t k = 0; k < depth; ++k) {
        acc += ((int32_t)x[k] + offset) * w[k];
    }
    return acc;
}

static int8_t fc_output(int32_t acc, const cmsis_nn_per_channel_quant_params *q, const cmsis_nn_fc_params *p,
                        int32_t channel)
{
    return (int8_t)td_clip(td_requant_cmsis(acc, q->multiplier[channel], q->shift[channel], p->output_offset),
                           p->activation.min, p->activation.max);
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
    const int32_t offset = fc_params->input_offset;
    for (int32_t b = 0; b < batches; b += 2) {
        const int32_t b1 = (b + 1 < batches) ? b + 1 : b;        /* odd count: the last row twice */
        const int8_t *x0 = input_data + b * depth, *x1 = input_data + b1 * depth;
        for (int32_t c = 0; c < channels; c += 2) {
            const int32_t c1 = (c + 1 < channels) ? c + 1 : c;   /* odd count: the last channel twice */
            const int32_t bias0 = bias_data ? bias_data[c] : 0, bias1 = bias_data ? bias_data[c1] : 0;
            int32_t acc[4] = {bias0, bias1, bias0, bias1};
            const int8_t *w0 = filter_data + c * depth, *w1 = filter_data + c1 * depth;
            if (offset == 0) {
                fc_block_2x2(x0, x1, w0, w1, depth, acc);
            } else {
                acc[0] = fc_dot_offset(x0, w0, depth, offset, acc[0]);
                acc[1] = fc_dot_offset(x0, w1, depth, offset, acc[1]);
                acc[2] = fc_dot_offset(x1, w0, depth, offset, acc[2]);
                acc[3] = fc_dot_offset(x1, w1, depth, offset, acc[3]);
            }
            output_data[b * channels + c] = fc_output(acc[0], quant_params, fc_params, c);
            output_data[b * channels + c1] = fc_output(acc[1], quant_params, fc_params, c1);
            output_data[b1 * channels + c] = fc_output(acc[2], quant_params, fc_params, c);
            output_data[b1 * channels + c1] = fc_output(acc[3], quant_params, fc_params, c1);
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

arm_cmsis_nn_status arm_batch_matmul_s8(const cmsis_nn_context *ctx, const cmsis_nn_bmm_params *bmm_params,
                                        const cmsis_nn_per_tensor_quant_params *quant_params,
                                        const cmsis_nn_dims *input_lhs_dims, const int8_t *input_lhs,
                                        const cmsis_nn_dims *input_rhs_dims, const int8_t *input_rhs,
                                        const cmsis_nn_dims *output_dims, int8_t *output)
{
    (void)ctx;
    const cmsis_nn_fc_params *p = &bmm_params->fc_params;
    const int32_t rows = input_lhs_dims->w, depth = input_lhs_dims->c, cols = input_rhs_dims->w;
    for (int32_t n = 0; n < output_dims->n; ++n) {
        for (int32_t h = 0; h < output_dims->h; ++h) {
            const int8_t *lhs = input_lhs + ((input_lhs_dims->n > 1 ? n : 0) * input_lhs_dims->h
                                             + (input_lhs_dims->h > 1 ? h : 0)) * rows * depth;
            const int8_t *rhs = input_rhs + ((input_rhs_dims->n > 1 ? n : 0) * input_rhs_dims->h
                                             + (input_rhs_dims->h > 1 ? h : 0)) * cols * depth;
            int8_t *y = output + (n * output_dims->h + h) * rows * cols;
            for (int32_t r = 0; r < rows; ++r) {
                for (int32_t c = 0; c < cols; ++c) {
                    int32_t acc = 0;
                    for (int32_t k = 0; k < depth; ++k) {
                        acc += ((int32_t)lhs[r * depth + k] + p->input_offset)
                             * ((int32_t)rhs[c * depth + k] + p->filter_offset);
                    }
                    y[r * cols + c] = (int8_t)td_clip(td_requant_cmsis(acc, quant_params->multiplier,
                                                                        quant_params->shift, p->output_offset),
                                                       p->activation.min, p->activation.max);
                }
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}
