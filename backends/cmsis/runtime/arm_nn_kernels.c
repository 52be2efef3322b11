/*
 * tinydeploy's implementations of the CMSIS-NN entry points in arm_nnfunctions.h, for Cortex-M4/M7 with the
 * DSP extension (<arm_acle.h>: SXTB16, SADD16, SMLAD).
 *
 * GEMMs (fully connected, batch matmul) widen 4 input rows at a time to 16-bit pairs in a static buffer (the
 * input offset is added there, once per row element), then stream each output channel's int8 weights past the
 * 4 rows: per 4 depth steps one weight load, two SXTB16 and eight SMLAD for 16 MACs (the inner loop is assembly
 * so LDM can fetch 4 widened words at once). Requantization is 32-bit and mirrors ir/arith.py:requant_cmsis
 * (arm_nn_requantize); softmax and the elementwise kernels mirror softmax_cmsis / add_cmsis (TFLite's int8
 * reference kernels) bit for bit.
 */
#include <arm_acle.h>
#include <stdint.h>

#include "td_platform.h"
#include "td_runtime.h"   /* td_parallel.h: the CMSIS-NN API (Arm's header with -DTD_CMSIS_NN, else ours) */

typedef int32_t __attribute__((aligned(1), may_alias)) td_unaligned_i32;

static inline int32_t td_load4(const int8_t *p)
{
    return *(const td_unaligned_i32 *)p;
}

/* ---- fixed-point helpers (32-bit; ir/arith.py contract 2) ------------------------------------------------ */

/* The doubling high multiply of a requantization (positive multiplier, so it cannot saturate). */
static inline int32_t td_high_mul(int32_t x, int32_t multiplier)
{
    return (int32_t)(((int64_t)x * multiplier + ((int64_t)1 << 30)) >> 31);
}

/* requant_cmsis without zero point and clip (arm_nn_requantize): shift > 0 shifts left, < 0 right. The
 * multiplier is positive (a quantized scale), so the doubling high multiply cannot saturate. */
static inline int32_t td_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    if (shift > 0) {
        const int64_t wide = (int64_t)x * ((int64_t)1 << shift);
        x = wide > INT32_MAX ? INT32_MAX : (wide < INT32_MIN ? INT32_MIN : (int32_t)wide);
    }
    return td_rdbpot32(td_high_mul(x, multiplier), shift < 0 ? -shift : 0);
}

static inline int8_t td_out_s8(int32_t y, int32_t lo, int32_t hi)
{
    return (int8_t)(y < lo ? lo : (y > hi ? hi : y));
}

/* ---- GEMM core: 4 widened input rows x one int8 weight row ---------------------------------------------- */

/* Widened rows: per group of 4 depth steps, for rows 0..3, the 16-bit pairs (k0, k2) and (k1, k3) with the
 * input offset added; the order SXTB16 produces from a weight word, so SMLAD multiplies matching depths. */
#define TD_NN_ROWS 4
static int32_t td_nn_rows[2 * TD_NN_ROWS * ((TD_NN_MAX_DEPTH + 3) / 4) + 1];

/* Widen rows x[0..3] (depth / 4 groups) into td_nn_rows; sums[r] = sum_k (x[r][k] + offset) over those groups. */
static void td_widen_rows(const int8_t *const x[TD_NN_ROWS], int32_t groups, int32_t offset, int32_t sums[TD_NN_ROWS])
{
    const uint32_t packed = ((uint32_t)offset << 16) | ((uint32_t)offset & 0xFFFFu);
    for (int32_t r = 0; r < TD_NN_ROWS; ++r) {
        const int8_t *src = x[r];
        int32_t *dst = td_nn_rows + 2 * r;
        int32_t sum = 0;
        for (int32_t g = 0; g < groups; ++g) {
            const uint32_t word = (uint32_t)td_load4(src + 4 * g);
            const int32_t even = (int32_t)__sadd16(__sxtb16(word), packed);
            const int32_t odd = (int32_t)__sadd16(__sxtb16(__ror(word, 8)), packed);
            dst[8 * g] = even;
            dst[8 * g + 1] = odd;
            sum = __smlad((uint32_t)even, 0x00010001u, __smlad((uint32_t)odd, 0x00010001u, sum));
        }
        sums[r] = sum;
    }
}

/* One depth group (4 steps) of 4 rows x 1 weight row: 1 load + LDM x2 + 2 SXTB16 + 8 SMLAD. */
#define TD_GROUP_ASM                                                                                          \
    "ldr    %[w], [%[pw]], #4\n\t"                                                                            \
    "ldmia  %[px]!, {r8, r9, r10, r11}\n\t"                                                                   \
    "sxtb16 %[wo], %[w], ror #8\n\t"                                                                          \
    "sxtb16 %[w], %[w]\n\t"                                                                                   \
    "smlad  %[a0], r8, %[w], %[a0]\n\t"                                                                       \
    "smlad  %[a0], r9, %[wo], %[a0]\n\t"                                                                      \
    "smlad  %[a1], r10, %[w], %[a1]\n\t"                                                                      \
    "smlad  %[a1], r11, %[wo], %[a1]\n\t"                                                                     \
    "ldmia  %[px]!, {r8, r9, r10, r11}\n\t"                                                                   \
    "smlad  %[a2], r8, %[w], %[a2]\n\t"                                                                       \
    "smlad  %[a2], r9, %[wo], %[a2]\n\t"                                                                      \
    "smlad  %[a3], r10, %[w], %[a3]\n\t"                                                                      \
    "smlad  %[a3], r11, %[wo], %[a3]\n\t"

/* acc[r] += sum over `groups` groups of widened row r x weights w (int8, contiguous). */
static void td_rows4_dot(const int8_t *w, int32_t groups, int32_t acc[TD_NN_ROWS])
{
    const int32_t *px = td_nn_rows;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    uint32_t word, odd;
    if (groups & 1) {
        __asm__ volatile(TD_GROUP_ASM
                         : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [px] "+r"(px), [pw] "+r"(w),
                           [w] "=&r"(word), [wo] "=&r"(odd)
                         :
                         : "r8", "r9", "r10", "r11", "memory");
    }
    if (groups > 1) {
        const int8_t *const end = w + 4 * (groups & ~1);
        __asm__ volatile("1:\n\t" TD_GROUP_ASM TD_GROUP_ASM
                         "cmp    %[pw], %[end]\n\t"
                         "bne    1b\n\t"
                         : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [px] "+r"(px), [pw] "+r"(w),
                           [w] "=&r"(word), [wo] "=&r"(odd)
                         : [end] "r"(end)
                         : "r8", "r9", "r10", "r11", "cc", "memory");
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* The depth steps after the last full group (depth % 4), in C (kept out of the column loop's registers). */
__attribute__((noinline, cold)) static void td_rows4_tail(const int8_t *const x[TD_NN_ROWS], const int8_t *w, int32_t from, int32_t depth,
                          int32_t offset, int32_t acc[TD_NN_ROWS])
{
    for (int32_t k = from; k < depth; ++k) {
        for (int32_t r = 0; r < TD_NN_ROWS; ++r) {
            acc[r] += ((int32_t)x[r][k] + offset) * w[k];
        }
    }
}

/* One block of 4 rows: input rows (for the depth tail), output rows and the per-call constants. */
typedef struct {
    const int8_t *x[TD_NN_ROWS];
    int8_t *y[TD_NN_ROWS];
    int32_t init[TD_NN_ROWS];     /* added to every accumulator of the row (the rhs-offset term of a matmul) */
    int32_t depth, in_offset, out_offset, lo, hi;
    int16_t *y16[TD_NN_ROWS];     /* 16-bit output rows instead of y (td_fully_connected_s8_s16), else NULL */
} td_rows4;

/* rounding_divide_by_pot(x, exponent) for exponent >= 1 and x > INT32_MIN: ASRS leaves the half bit in the carry,
 * ADC adds it (round half up); negative values are first moved down by one so ties go away from zero. */
static inline int32_t td_round_shift(int32_t x, int32_t exponent)
{
    int32_t y;
    x += x >> 31;
    __asm__("asrs %0, %1, %2\n\tadc %0, %0, #0" : "=r"(y) : "r"(x), "r"(exponent) : "cc");
    return y;
}

/* Every output column of one 4-row block: weights [cols][depth]; per-channel or per-tensor requantization
 * y[r][c] = clamp(requantize(acc[r]) + offset). The block's fields are copied to locals first: the int8 output
 * stores may alias anything, which would otherwise reload them for every byte. */
static void td_rows4_columns(const td_rows4 *b, const int8_t *w, int32_t cols, const int32_t *bias,
                             const int32_t *mult, const int32_t *shift, int32_t per_channel)
{
    const int32_t depth = b->depth, groups = depth / 4, offset = b->out_offset, lo = b->lo, hi = b->hi;
    const int32_t full_range = lo == -128 && hi == 127;
    int8_t *const y0 = b->y[0], *const y1 = b->y[1], *const y2 = b->y[2], *const y3 = b->y[3];
    const int32_t init0 = b->init[0], init1 = b->init[1], init2 = b->init[2], init3 = b->init[3];
    for (int32_t c = 0; c < cols; ++c, w += depth) {
        const int32_t base = bias ? bias[c] : 0;
        int32_t acc[TD_NN_ROWS] = {base + init0, base + init1, base + init2, base + init3};
        td_rows4_dot(w, groups, acc);
        if (depth & 3) {
            td_rows4_tail(b->x, w, 4 * groups, depth, b->in_offset, acc);
        }
        const int32_t multiplier = mult[per_channel ? c : 0], sh = shift[per_channel ? c : 0];
        if (b->y16[0]) {                 /* 16-bit outputs (td_fully_connected_s8_s16) */
            for (int32_t r = 0; r < TD_NN_ROWS; ++r) {
                const int32_t v = td_requantize(acc[r], multiplier, sh) + offset;
                b->y16[r][c] = (int16_t)(v < lo ? lo : (v > hi ? hi : v));
            }
        } else if (sh < 0 && full_range) {      /* the common case: a right shift, the whole int8 range (~12 instr/output) */
            const int32_t right = -sh;
            y0[c] = (int8_t)__ssat(td_round_shift(td_high_mul(acc[0], multiplier), right) + offset, 8);
            y1[c] = (int8_t)__ssat(td_round_shift(td_high_mul(acc[1], multiplier), right) + offset, 8);
            y2[c] = (int8_t)__ssat(td_round_shift(td_high_mul(acc[2], multiplier), right) + offset, 8);
            y3[c] = (int8_t)__ssat(td_round_shift(td_high_mul(acc[3], multiplier), right) + offset, 8);
        } else {
            y0[c] = td_out_s8(td_requantize(acc[0], multiplier, sh) + offset, lo, hi);
            y1[c] = td_out_s8(td_requantize(acc[1], multiplier, sh) + offset, lo, hi);
            y2[c] = td_out_s8(td_requantize(acc[2], multiplier, sh) + offset, lo, hi);
            y3[c] = td_out_s8(td_requantize(acc[3], multiplier, sh) + offset, lo, hi);
        }
    }
}

/* ---- the reference path for depths beyond TD_NN_MAX_DEPTH (not produced by tinydeploy's own networks) ---- */
static int32_t td_dot_offsets(const int8_t *x, const int8_t *w, int32_t depth, int32_t x_offset, int32_t w_offset)
{
    int32_t acc = 0;
    for (int32_t k = 0; k < depth; ++k) {
        acc += ((int32_t)x[k] + x_offset) * ((int32_t)w[k] + w_offset);
    }
    return acc;
}

/* Rows row0.. of the input and output (rows past the end repeat the last row: results land on the same bytes);
 * the output rows are int8 (out) or int16 (out16), the other pointer NULL. */
static void td_block_rows(td_rows4 *b, const int8_t *in, int8_t *out, int16_t *out16, int32_t row0, int32_t rows,
                          int32_t cols)
{
    for (int32_t r = 0; r < TD_NN_ROWS; ++r) {
        const int32_t row = (row0 + r < rows) ? row0 + r : rows - 1;
        b->x[r] = in + row * b->depth;
        b->y[r] = out ? out + row * cols : NULL;
        b->y16[r] = out16 ? out16 + row * cols : NULL;
    }
}

/* The fully-connected layer behind arm_fully_connected_[per_channel_]s8 (int8 outputs, out8) and
 * td_fully_connected_s8_s16 (int16 outputs, out16): weights [channels][depth], per-channel or per-tensor
 * requantization, outputs clamped to [lo, hi]. */
static void td_fc_layer(const int8_t *input, const int8_t *filter, const int32_t *bias, int8_t *out8, int16_t *out16,
                        int32_t batches, int32_t depth, int32_t channels, int32_t in_offset, int32_t out_offset,
                        const int32_t *mult, const int32_t *shift, int32_t per_channel, int32_t lo, int32_t hi)
{
    if (depth > TD_NN_MAX_DEPTH) {
        for (int32_t b = 0; b < batches; ++b) {
            for (int32_t c = 0; c < channels; ++c) {
                const int32_t q = per_channel ? c : 0;
                const int32_t acc = (bias ? bias[c] : 0)
                                  + td_dot_offsets(input + b * depth, filter + c * depth, depth, in_offset, 0);
                const int32_t v = td_requantize(acc, mult[q], shift[q]) + out_offset;
                const int32_t clamped = v < lo ? lo : (v > hi ? hi : v);
                if (out16) {
                    out16[b * channels + c] = (int16_t)clamped;
                } else {
                    out8[b * channels + c] = (int8_t)clamped;
                }
            }
        }
        return;
    }
    td_rows4 block = {.depth = depth, .in_offset = in_offset, .out_offset = out_offset, .lo = lo, .hi = hi};
    for (int32_t b = 0; b < batches; b += TD_NN_ROWS) {
        int32_t sums[TD_NN_ROWS];
        td_block_rows(&block, input, out8, out16, b, batches, channels);
        td_widen_rows(block.x, depth / 4, in_offset, sums);
        td_rows4_columns(&block, filter, channels, bias, mult, shift, per_channel);
    }
}

/* tinydeploy's int8 x int8 -> int16 fully-connected layer (CMSIS-NN has none: its s8 kernels write int8): the
 * same 4-row GEMM core and requantization as arm_fully_connected_per_channel_s8, outputs clamped to [lo, hi]
 * in int16 (a projection into a 16-bit residual stream). Built in every configuration, --cmsis-nn too. */
void td_fully_connected_s8_s16(const int8_t *input, const int8_t *filter, const int32_t *bias, int16_t *output,
                               int32_t batches, int32_t depth, int32_t channels, int32_t input_offset,
                               int32_t output_offset, const int32_t *mult, const int32_t *shift, int32_t lo,
                               int32_t hi)
{
    td_fc_layer(input, filter, bias, NULL, output, batches, depth, channels, input_offset, output_offset, mult, shift,
                1, lo, hi);
}

#ifndef TD_CMSIS_NN   /* with --cmsis-nn, Arm's library provides the arm_* entry points below */

/* ---- CMSIS-NN entry points ------------------------------------------------------------------------------- */

/* The fully-connected layer of both entry points: per-channel (mult/shift per output channel) or per-tensor. */
static arm_cmsis_nn_status td_fully_connected(const cmsis_nn_fc_params *fc_params, const int32_t *mult,
                                              const int32_t *shift, int32_t per_channel,
                                              const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                              const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                              const int32_t *bias_data, int8_t *output_data)
{
    if (fc_params->filter_offset != 0) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    td_fc_layer(input_data, filter_data, bias_data, output_data, NULL, input_dims->n, filter_dims->n, filter_dims->c,
                fc_params->input_offset, fc_params->output_offset, mult, shift, per_channel, fc_params->activation.min,
                fc_params->activation.max);
    return ARM_CMSIS_NN_SUCCESS;
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
    return td_fully_connected(fc_params, quant_params->multiplier, quant_params->shift, 1, input_dims, input_data,
                              filter_dims, filter_data, bias_data, output_data);
}

arm_cmsis_nn_status arm_fully_connected_s8(const cmsis_nn_context *ctx, const cmsis_nn_fc_params *fc_params,
                                           const cmsis_nn_per_tensor_quant_params *quant_params,
                                           const cmsis_nn_dims *input_dims, const int8_t *input_data,
                                           const cmsis_nn_dims *filter_dims, const int8_t *filter_data,
                                           const cmsis_nn_dims *bias_dims, const int32_t *bias_data,
                                           const cmsis_nn_dims *output_dims, int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    (void)output_dims;
    return td_fully_connected(fc_params, &quant_params->multiplier, &quant_params->shift, 0, input_dims, input_data,
                              filter_dims, filter_data, bias_data, output_data);
}

/* One matrix of a batch matmul: out[r][c] = requant(sum_k (lhs[r][k] + lhs_offset) * (rhs[c][k] + rhs_offset)). */
static void td_matmul_rows(const int8_t *lhs, const int8_t *rhs, int8_t *out, int32_t rows, int32_t cols,
                           int32_t depth, const cmsis_nn_fc_params *p, const cmsis_nn_per_tensor_quant_params *q)
{
    const int32_t lo = p->activation.min, hi = p->activation.max;
    if (depth > TD_NN_MAX_DEPTH) {
        for (int32_t r = 0; r < rows; ++r) {
            for (int32_t c = 0; c < cols; ++c) {
                const int32_t acc = td_dot_offsets(lhs + r * depth, rhs + c * depth, depth, p->input_offset,
                                                   p->filter_offset);
                out[r * cols + c] = td_out_s8(td_requantize(acc, q->multiplier, q->shift) + p->output_offset, lo, hi);
            }
        }
        return;
    }
    td_rows4 block = {.depth = depth, .in_offset = p->input_offset, .out_offset = p->output_offset, .lo = lo, .hi = hi};
    const int32_t groups = depth / 4;
    for (int32_t r0 = 0; r0 < rows; r0 += TD_NN_ROWS) {
        int32_t sums[TD_NN_ROWS];
        td_block_rows(&block, lhs, out, NULL, r0, rows, cols);
        td_widen_rows(block.x, groups, p->input_offset, sums);
        for (int32_t r = 0; r < TD_NN_ROWS; ++r) {
            for (int32_t k = 4 * groups; k < depth; ++k) {      /* the depth tail's share of the row sum */
                sums[r] += (int32_t)block.x[r][k] + p->input_offset;
            }
            /* sum_k (x + ox)(w + ow) = sum_k (x + ox) w + ow * sum_k (x + ox) */
            block.init[r] = p->filter_offset * sums[r];
        }
        td_rows4_columns(&block, rhs, cols, 0, &q->multiplier, &q->shift, 0);
    }
}

arm_cmsis_nn_status arm_batch_matmul_s8(const cmsis_nn_context *ctx, const cmsis_nn_bmm_params *bmm_params,
                                        const cmsis_nn_per_tensor_quant_params *quant_params,
                                        const cmsis_nn_dims *input_lhs_dims, const int8_t *input_lhs,
                                        const cmsis_nn_dims *input_rhs_dims, const int8_t *input_rhs,
                                        const cmsis_nn_dims *output_dims, int8_t *output)
{
    (void)ctx;
    const int32_t rows = input_lhs_dims->w, depth = input_lhs_dims->c, cols = input_rhs_dims->w;
    for (int32_t n = 0; n < output_dims->n; ++n) {
        for (int32_t h = 0; h < output_dims->h; ++h) {
            const int8_t *lhs = input_lhs + ((input_lhs_dims->n > 1 ? n : 0) * input_lhs_dims->h
                                             + (input_lhs_dims->h > 1 ? h : 0)) * rows * depth;
            const int8_t *rhs = input_rhs + ((input_rhs_dims->n > 1 ? n : 0) * input_rhs_dims->h
                                             + (input_rhs_dims->h > 1 ? h : 0)) * cols * depth;
            td_matmul_rows(lhs, rhs, output + (n * output_dims->h + h) * rows * cols, rows, cols, depth,
                           &bmm_params->fc_params, quant_params);
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

/* ---- softmax: td_runtime.h td_softmax_s8_rows (ir/arith.py softmax_cmsis) -------------------------------- */

/* the exponentials of one row, computed once for the row sum and reused for the outputs */
static int32_t td_softmax_exps[TD_SOFTMAX_MAX_COLS + 1];

void arm_softmax_s8(const int8_t *input, const int32_t num_rows, const int32_t row_size, const int32_t mult,
                    const int32_t shift, const int32_t diff_min, int8_t *output)
{
    td_softmax_s8_rows(input, output, 0, num_rows, row_size, mult, shift, diff_min,
                       row_size <= TD_SOFTMAX_MAX_COLS ? td_softmax_exps : (int32_t *)0, (const int32_t *)0);
}

/* ---- elementwise (ir/arith.py add_cmsis; MulS8) -------------------------------------------------------- */

arm_cmsis_nn_status arm_elementwise_add_s8(const int8_t *input_1_vect, const int8_t *input_2_vect,
                                           const int32_t input_1_offset, const int32_t input_1_mult,
                                           const int32_t input_1_shift, const int32_t input_2_offset,
                                           const int32_t input_2_mult, const int32_t input_2_shift,
                                           const int32_t left_shift, int8_t *output, const int32_t out_offset,
                                           const int32_t out_mult, const int32_t out_shift,
                                           const int32_t out_activation_min, const int32_t out_activation_max,
                                           const int32_t block_size)
{
    if (input_1_shift <= 0 && input_2_shift <= 0 && out_shift <= 0 && out_activation_min == -128
        && out_activation_max == 127) {      /* TFLite's case (input multipliers <= 1/2): right shifts only */
        const int32_t right_1 = -input_1_shift, right_2 = -input_2_shift, right = -out_shift;
        for (int32_t i = 0; i < block_size; ++i) {
            const int32_t a = td_rdbpot32(td_high_mul((input_1_vect[i] + input_1_offset) * (1 << left_shift),
                                                            input_1_mult), right_1);
            const int32_t b = td_rdbpot32(td_high_mul((input_2_vect[i] + input_2_offset) * (1 << left_shift),
                                                            input_2_mult), right_2);
            output[i] = (int8_t)__ssat(td_rdbpot32(td_high_mul(a + b, out_mult), right) + out_offset, 8);
        }
        return ARM_CMSIS_NN_SUCCESS;
    }
    for (int32_t i = 0; i < block_size; ++i) {
        const int32_t a = td_requantize((input_1_vect[i] + input_1_offset) * (1 << left_shift), input_1_mult,
                                        input_1_shift);
        const int32_t b = td_requantize((input_2_vect[i] + input_2_offset) * (1 << left_shift), input_2_mult,
                                        input_2_shift);
        output[i] = td_out_s8(td_requantize(a + b, out_mult, out_shift) + out_offset, out_activation_min,
                              out_activation_max);
    }
    return ARM_CMSIS_NN_SUCCESS;
}

arm_cmsis_nn_status arm_elementwise_mul_s8(const int8_t *input_1_vect, const int8_t *input_2_vect,
                                           const int32_t input_1_offset, const int32_t input_2_offset,
                                           int8_t *output, const int32_t out_offset, const int32_t out_mult,
                                           const int32_t out_shift, const int32_t out_activation_min,
                                           const int32_t out_activation_max, const int32_t block_size)
{
    if (out_shift <= 0 && out_activation_min == -128 && out_activation_max == 127) {
        const int32_t right = -out_shift;
        for (int32_t i = 0; i < block_size; ++i) {
            const int32_t product = (input_1_vect[i] + input_1_offset) * (input_2_vect[i] + input_2_offset);
            output[i] = (int8_t)__ssat(td_rdbpot32(td_high_mul(product, out_mult), right) + out_offset, 8);
        }
        return ARM_CMSIS_NN_SUCCESS;
    }
    for (int32_t i = 0; i < block_size; ++i) {
        const int32_t product = (input_1_vect[i] + input_1_offset) * (input_2_vect[i] + input_2_offset);
        output[i] = td_out_s8(td_requantize(product, out_mult, out_shift) + out_offset, out_activation_min,
                              out_activation_max);
    }
    return ARM_CMSIS_NN_SUCCESS;
}
#endif /* TD_CMSIS_NN */
