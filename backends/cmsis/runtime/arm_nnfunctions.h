/*
 * The CMSIS-NN entry points tinydeploy's Cortex-M code calls, with CMSIS-NN's names, argument structs and
 * semantics (CMSIS-NN 6.x, arm_nnfunctions.h / arm_nn_types.h). tinydeploy ships its own implementations
 * (arm_nn_kernels.c) because CMSIS-NN is not installable from the package registries here; the generated
 * code is written against this API only.
 */
#ifndef TD_ARM_NNFUNCTIONS_H
#define TD_ARM_NNFUNCTIONS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    ARM_CMSIS_NN_SUCCESS = 0,
    ARM_CMSIS_NN_ARG_ERROR = -1,
    ARM_CMSIS_NN_NO_IMPL_ERROR = -2,
} arm_cmsis_nn_status;

typedef struct {
    void *buf;
    int32_t size;
} cmsis_nn_context;

typedef struct {
    int32_t n, h, w, c;
} cmsis_nn_dims;

typedef struct {
    int32_t min, max;
} cmsis_nn_activation;

typedef struct {
    int32_t input_offset;
    int32_t filter_offset;
    int32_t output_offset;
    cmsis_nn_activation activation;
} cmsis_nn_fc_params;

typedef struct {
    int32_t *multiplier;
    int32_t *shift;
} cmsis_nn_per_channel_quant_params;

typedef struct {
    int32_t multiplier;
    int32_t shift;
} cmsis_nn_per_tensor_quant_params;

typedef struct {
    const bool adj_x;
    const bool adj_y;
    cmsis_nn_fc_params fc_params;
} cmsis_nn_bmm_params;

/* y[b][c] = clamp(requantize(sum_k (x[b][k] + input_offset) * w[c][k] + bias[c], multiplier[c], shift[c])
 *                 + output_offset). input_dims: [batches, 1, 1, depth]; filter_dims: [depth, 1, 1, out_ch]
 * (filter data in [out_ch][depth] layout); output_dims: [batches, 1, 1, out_ch]. filter_offset must be 0. */
arm_cmsis_nn_status arm_fully_connected_per_channel_s8(const cmsis_nn_context *ctx,
                                                       const cmsis_nn_fc_params *fc_params,
                                                       const cmsis_nn_per_channel_quant_params *quant_params,
                                                       const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                                       const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                                       const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                                       const cmsis_nn_dims *output_dims, int8_t *output_data);

/* arm_fully_connected_per_channel_s8 with one multiplier and shift for every output channel. */
arm_cmsis_nn_status arm_fully_connected_s8(const cmsis_nn_context *ctx, const cmsis_nn_fc_params *fc_params,
                                           const cmsis_nn_per_tensor_quant_params *quant_params,
                                           const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                           const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                           const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                           const cmsis_nn_dims *output_dims, int8_t *output_data);

/* out[n][h][r][c] = clamp(requantize(sum_k (lhs[n][h][r][k] + input_offset) * (rhs[n][h][c][k] + filter_offset),
 *                                     multiplier, shift) + output_offset): rows times rows, rhs transposed; dims
 * NHWC with W the rows and C the columns; n and h broadcast where one side has 1. */
arm_cmsis_nn_status arm_batch_matmul_s8(const cmsis_nn_context *ctx, const cmsis_nn_bmm_params *bmm_params,
                                        const cmsis_nn_per_tensor_quant_params *quant_params,
                                        const cmsis_nn_dims *input_lhs_dims, const int8_t *input_lhs,
                                        const cmsis_nn_dims *input_rhs_dims, const int8_t *input_rhs,
                                        const cmsis_nn_dims *output_dims, int8_t *output);

/* TFLite's int8 softmax over rows: output in 1/256 steps with zero point -128. mult/shift scale (x - max) to
 * Q5.26 (input scale * 2^26 as multiplier * 2^shift); elements with x - max < diff_min give -128. */
void arm_softmax_s8(const int8_t *input, const int32_t num_rows, const int32_t row_size, const int32_t mult,
                    const int32_t shift, const int32_t diff_min, int8_t *output);

/* TFLite's int8 Add: out = clamp(requantize(requantize((in1 + off1) << left_shift, mult1, shift1)
 *                                          + requantize((in2 + off2) << left_shift, mult2, shift2),
 *                                          out_mult, out_shift) + out_offset) over block_size elements. */
arm_cmsis_nn_status arm_elementwise_add_s8(const int8_t *input_1_vect, const int8_t *input_2_vect,
                                           const int32_t input_1_offset, const int32_t input_1_mult,
                                           const int32_t input_1_shift, const int32_t input_2_offset,
                                           const int32_t input_2_mult, const int32_t input_2_shift,
                                           const int32_t left_shift, int8_t *output, const int32_t out_offset,
                                           const int32_t out_mult, const int32_t out_shift,
                                           const int32_t out_activation_min, const int32_t out_activation_max,
                                           const int32_t block_size);

/* TFLite's int8 Mul: out = clamp(requantize((in1 + off1) * (in2 + off2), out_mult, out_shift) + out_offset). */
arm_cmsis_nn_status arm_elementwise_mul_s8(const int8_t *input_1_vect, const int8_t *input_2_vect,
                                           const int32_t input_1_offset, const int32_t input_2_offset,
                                           int8_t *output, const int32_t out_offset, const int32_t out_mult,
                                           const int32_t out_shift, const int32_t out_activation_min,
                                           const int32_t out_activation_max, const int32_t block_size);

#endif /* TD_ARM_NNFUNCTIONS_H */
