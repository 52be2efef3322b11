/*
 * tinydeploy portable runtime: types and integer helpers shared by every generated kernel.
 *
 * Each helper mirrors one function of tinydeploy/ir/arith.py (the golden contracts); the comment names it.
 * Plain C99, no allocation, no libc beyond <stdint.h>/<string.h>.
 */
#ifndef TD_RUNTIME_H
#define TD_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#if __STDC_HOSTED__
#include <string.h>
#else
void *memcpy(void *dst, const void *src, size_t n); /* provided by the target runtime */
#endif

#include "td_parallel.h"

/* The kernels rely on arithmetic right shifts of negative values (gcc/clang on every target we build for). */
typedef char td_assert_arithmetic_shift[((-1) >> 1) == -1 ? 1 : -1];

/* a condition that is rarely true (the compiler lays its branch out as not taken) */
#if defined(__GNUC__) || defined(__clang__)
#define TD_UNLIKELY(condition) __builtin_expect(!!(condition), 0)
#else
#define TD_UNLIKELY(condition) (condition)
#endif

#define TD_MAX_DIMS 4
#define TD_MAX_OPERANDS 6

/* A strided loop nest over up to TD_MAX_DIMS dimensions; strides (in elements) per operand, output last. */
typedef struct {
    int32_t dims[TD_MAX_DIMS];
    int32_t strides[TD_MAX_OPERANDS][TD_MAX_DIMS];
} td_loop;

/* Batched matrix multiply: y[b][m][n] = sum_k (a[b][m][k]-a_zero)*(b[b][k][n]-b_zero) (+ bias[b][m][n]). */
typedef struct {
    int32_t m, n, k;
    int32_t batch[2];
    int32_t a_batch_stride[2], a_row_stride, a_col_stride, a_zero;
    int32_t b_batch_stride[2], b_row_stride, b_col_stride, b_zero;
    int32_t bias_batch_stride[2], bias_row_stride, bias_col_stride;
} td_matmul_params;

static inline int32_t td_offset(const td_loop *loop, int operand, int32_t i0, int32_t i1, int32_t i2, int32_t i3)
{
    const int32_t *s = loop->strides[operand];
    return i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3];
}

/* This core's share [*begin, *end) of `count` work items (SPMD: every core runs every kernel). */
static inline void td_share(int32_t count, int32_t *begin, int32_t *end)
{
    *begin = (int32_t)(((int64_t)count * TD_HART_ID) / TD_NUM_CORES);
    *end = (int32_t)(((int64_t)count * (TD_HART_ID + 1)) / TD_NUM_CORES);
}

/* Loop bounds of this core: the largest dimension of the nest is shared among the cores. */
static inline void td_loop_share(const td_loop *loop, int32_t begin[TD_MAX_DIMS], int32_t end[TD_MAX_DIMS])
{
    int split = 0;
    for (int d = 0; d < TD_MAX_DIMS; ++d) {
        begin[d] = 0;
        end[d] = loop->dims[d];
        split = loop->dims[d] > loop->dims[split] ? d : split;
    }
    td_share(loop->dims[split], &begin[split], &end[split]);
}

static inline int64_t td_clip(int64_t x, int64_t lo, int64_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* floor(num / den) for den > 0 (C division truncates toward zero). */
static inline int64_t td_floor_div(int64_t num, int64_t den)
{
    int64_t q = num / den;
    return (num % den != 0 && ((num < 0) != (den < 0))) ? q - 1 : q;
}

/* arith.requant_ita: clip(floor(mul*x/2^shift + add + 1/2)), round half up. */
static inline int64_t td_requant_ita(int64_t x, int64_t mul, int64_t shift, int64_t add)
{
    int64_t acc = mul * x + add * ((int64_t)1 << shift) + (shift > 0 ? ((int64_t)1 << (shift - 1)) : 0);
    return acc >> shift;
}

/* td_requant_ita in 32 bits, for kernels whose operand ranges prove mul*x + add*2^shift + 2^(shift-1) fits. */
static inline int32_t td_requant_ita32(int32_t x, int32_t mul, int32_t shift, int32_t add)
{
    int32_t acc = mul * x + add * ((int32_t)1 << shift) + (shift > 0 ? ((int32_t)1 << (shift - 1)) : 0);
    return acc >> shift;
}

static inline int32_t td_clip32(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* td_clip32 for values that rarely leave [lo, hi] (a LayerNorm's output): one unsigned compare decides "in range", a
 * branch not taken on a single-issue core such as CV32E40P; only values outside pay for the second compare. Where
 * clipping is common (a requant to a ReLU's range) td_clip32's selects are cheaper. */
static inline int32_t td_clip32_rare(int32_t x, int32_t lo, int32_t hi)
{
    if (TD_UNLIKELY((uint32_t)x - (uint32_t)lo > (uint32_t)hi - (uint32_t)lo)) {
        return x < lo ? lo : hi;
    }
    return x;
}

/* arith.saturating_rounding_doubling_high_mul (gemmlowp). */
static inline int64_t td_srdhm(int64_t a, int64_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    int64_t ab = a * b;
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (ab + nudge) / ((int64_t)1 << 31);
}

/* arith.rounding_divide_by_pot: x / 2^exponent rounded half away from zero. */
static inline int64_t td_rdbpot(int64_t x, int64_t exponent)
{
    int64_t mask = ((int64_t)1 << exponent) - 1;
    int64_t remainder = x & mask;
    int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* arith.requant_cmsis without the clip: arm_nn_requantize + output zero point. shift > 0 shifts left. */
static inline int64_t td_requant_cmsis(int64_t x, int64_t multiplier, int64_t shift, int64_t zero_point)
{
    int64_t left = shift > 0 ? shift : 0;
    int64_t right = shift < 0 ? -shift : 0;
    int64_t shifted = td_clip(x * ((int64_t)1 << left), INT32_MIN, INT32_MAX);
    return td_rdbpot(td_srdhm(shifted, multiplier), right) + zero_point;
}

/* arith.saturating_rounding_doubling_high_mul in 32 bits: floor((a b + 2^30) / 2^31) equals gemmlowp's
 * sign-dependent nudge with truncation for every product; only INT32_MIN * INT32_MIN saturates. */
static inline int32_t td_srdhm32(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 30)) >> 31);
}

/* arith.rounding_divide_by_pot in 32 bits, exponents 0..31. */
static inline int32_t td_rdbpot32(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)((1u << exponent) - 1u);
    return (x >> exponent) + ((x & mask) > (mask >> 1) + (x < 0));
}

/* a + b with the wrap-around of arith.wrap_i32 (defined behaviour in C: unsigned arithmetic). */
static inline int32_t td_wrap_add32(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}

/* arith.mult_by_power_of_two: x * 2^exponent saturated to int32 (exponent >= 0). */
static inline int32_t td_mul_pow2(int32_t x, int32_t exponent)
{
    const int32_t threshold = (int32_t)((1u << (31 - exponent)) - 1u);
    return x > threshold ? INT32_MAX : (x < -threshold ? INT32_MIN : (int32_t)((uint32_t)x << exponent));
}

/* arith.exp_on_negative_values: exp(a) for a <= 0 in Q5.26 -> Q0.31 (gemmlowp). */
static inline int32_t td_exp_on_negative_values(int32_t a)
{
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t quarter = 1 << 24;
    const int32_t mod_minus_quarter = (a & (quarter - 1)) - quarter;
    const int32_t remainder = mod_minus_quarter - a;
    const int32_t x = mod_minus_quarter * 32 + (1 << 28);
    const int32_t x2 = td_srdhm32(x, x);
    const int32_t x3 = td_srdhm32(x2, x);
    const int32_t x4_over_4 = td_rdbpot32(td_srdhm32(x2, x2), 2);
    const int32_t poly = td_rdbpot32(td_srdhm32(x4_over_4 + x3, 715827883) + x2, 1);
    int32_t result = td_wrap_add32(1895147668, td_srdhm32(1895147668, td_wrap_add32(x, poly)));
    for (int32_t k = 0; k < 7; ++k) {
        if (remainder & (1 << (24 + k))) {
            result = td_srdhm32(result, barrel[k]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* arith.one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) in Q0.31, three Newton-Raphson steps. */
static inline int32_t td_one_over_one_plus_x(int32_t a)
{
    const int64_t total = (int64_t)a + INT32_MAX;
    const int32_t half_denominator = (int32_t)((total + (total >= 0 ? 1 : -1)) / 2);
    int32_t x = td_wrap_add32(1515870810, td_srdhm32(half_denominator, -1010580540));
    for (int32_t i = 0; i < 3; ++i) {
        const int32_t error = (int32_t)((uint32_t)(1 << 29) - (uint32_t)td_srdhm32(half_denominator, x));
        x = td_wrap_add32(x, td_mul_pow2(td_srdhm32(x, error), 2));
    }
    return td_mul_pow2(x, 1);
}

/* arith.softmax_cmsis on rows [row_begin, row_end): arm_softmax_s8 / TFLite's int8 softmax, output 1/256 steps
 * with zero point -128. `exps` (cols entries) keeps a row's exponentials between the sum and the outputs; NULL
 * computes them twice. `mask` (cols entries, or NULL for none) is the key mask of contract 6: a position with
 * mask[c] == 0 is left out of the max and the sum and gets -128. */
static inline void td_softmax_s8_rows(const int8_t *x, int8_t *y, int32_t row_begin, int32_t row_end, int32_t cols,
                                      int32_t multiplier, int32_t shift, int32_t diff_min, int32_t *exps,
                                      const int32_t *mask)
{
    for (int32_t r = row_begin; r < row_end; ++r) {
        const int8_t *x_row = x + (int64_t)r * cols;
        int8_t *y_row = y + (int64_t)r * cols;
        int32_t max = -128;
        for (int32_t c = 0; c < cols; ++c) {
            max = (!mask || mask[c] != 0) && x_row[c] > max ? x_row[c] : max;
        }
        int32_t sum = 0;
        for (int32_t c = 0; c < cols; ++c) {
            const int32_t diff = x_row[c] - max;
            if (diff >= diff_min && (!mask || mask[c] != 0)) {
                const int32_t e = td_exp_on_negative_values(td_srdhm32(diff * (1 << shift), multiplier));
                if (exps) {
                    exps[c] = e;
                }
                sum += td_rdbpot32(e, 12);
            }
        }
#if defined(__GNUC__)
        const int32_t headroom = sum > 0 ? __builtin_clz((uint32_t)sum) : 32;
#else
        int32_t headroom = 32;
        while (headroom > 0 && (int64_t)sum >= ((int64_t)1 << (32 - headroom))) {
            --headroom;
        }
#endif
        const int32_t normalised = sum > 0 ? (int32_t)(((uint32_t)sum << headroom) - 0x80000000u) : INT32_MIN;
        const int32_t scale = td_one_over_one_plus_x(normalised);
        for (int32_t c = 0; c < cols; ++c) {
            const int32_t diff = x_row[c] - max;
            int64_t p = -128;
            if (diff >= diff_min && (!mask || mask[c] != 0)) {
                const int32_t e = exps ? exps[c]
                                       : td_exp_on_negative_values(td_srdhm32(diff * (1 << shift), multiplier));
                p = td_clip(td_rdbpot(td_srdhm32(scale, e), 12 - headroom + 23) - 128, -128, 127);
            }
            y_row[c] = (int8_t)p;
        }
    }
}

/* arith.ita_shift: power-of-two exponent of a logit difference, 2^octave_bits steps per octave, at most 63. */
static inline int64_t td_ita_shift(int64_t diff, int32_t octave_bits)
{
    int64_t shift = (diff + ((int64_t)1 << (octave_bits - 1))) >> octave_bits;
    return shift < 63 ? shift : 63;
}

/* A divisor 1 <= d < 2^16 as its exact reciprocal for signed 32-bit numerators (Granlund & Montgomery, "Division by
 * invariant integers using multiplication", 1994, section 5, N = 32): with l = max(ceil(log2 d), 1) and
 * m = 1 + floor(2^(31+l) / d) (2^31 < m <= 2^32 + 1, kept as m - 2^32), n / d with C's truncation is
 * ((n + mulh(m - 2^32, n)) >> (l - 1)) - (n >> 31) for every int32 n. One long division per divisor, then a
 * high multiply, an add, two shifts and a subtract per quotient: no branches, no sign juggling. */
typedef struct {
    int32_t m;
    uint32_t shift;
} td_divisor_t;

static inline td_divisor_t td_divisor_s32(uint32_t d)
{
    uint32_t l = 1;
    while (l < 16 && ((uint32_t)1 << l) < d) {
        ++l;
    }
    /* floor(2^(31+l) / d) as 16-bit digits of long division (a core without 64-bit divide): 2^(31+l) is
     * 2^(15+l) * 2^16, and 2^(15+l) <= 2^31 */
    const uint32_t top = (uint32_t)1 << (15 + l);
    const uint32_t q_high = top / d, r_high = top % d;
    const uint32_t q_low = (r_high << 16) / d;
    td_divisor_t out;
    out.m = (int32_t)((q_high << 16) + q_low + 1u);      /* m - 2^32, modulo 2^32 */
    out.shift = l - 1;
    return out;
}

/* n / d with C's truncation (td_divisor_s32). */
static inline int32_t td_divide_s32(int32_t n, td_divisor_t d)
{
    const int32_t q = n + (int32_t)(((int64_t)d.m * n) >> 32);
    return (q >> d.shift) - (n >> 31);
}

/* num / den with C's truncation. A 32-bit core has no 64-bit divide (a libcall of ~100+ instructions): for a
 * divisor below 2^16 and |num| below 2^48 (LayerNorm's (x - mean) * w / std) three 32-bit divisions of 16-bit
 * digits give the same quotient exactly. */
static inline int64_t td_div_trunc(int64_t num, int64_t den)
{
    uint64_t a = num < 0 ? (uint64_t)0 - (uint64_t)num : (uint64_t)num;
    if (den > 0 && den < 65536 && a < ((uint64_t)1 << 48)) {
        uint32_t d = (uint32_t)den;
        uint32_t hi = (uint32_t)(a >> 32);
        uint32_t q2 = hi / d, r = hi % d;
        uint32_t mid = (r << 16) | (uint32_t)((a >> 16) & 0xFFFFu);
        uint32_t q1 = mid / d;
        uint32_t low = ((mid % d) << 16) | (uint32_t)(a & 0xFFFFu);
        uint32_t q0 = low / d;
        int64_t q = (int64_t)(((uint64_t)q2 << 32) | ((uint64_t)q1 << 16) | q0);
        return num < 0 ? -q : q;
    }
    return num / den;
}

/* arith.isqrt_floor: floor(sqrt(x)) for x > 0, else 0 (bitwise, exact for 63-bit values). */
static inline int64_t td_isqrt(int64_t x)
{
    if (x <= 0) {
        return 0;
    }
    uint64_t v = (uint64_t)x, root = 0, bit = (uint64_t)1 << 62;
    while (bit > v) {
        bit >>= 2;
    }
    while (bit != 0) {
        if (v >= root + bit) {
            v -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return (int64_t)root;
}

/* td_isqrt for 32-bit values: floor(sqrt(x)). */
static inline uint32_t td_isqrt_u32(uint32_t x)
{
    uint32_t root = 0, bit = (uint32_t)1 << 30;
    while (bit > x) {
        bit >>= 2;
    }
    while (bit != 0) {
        if (x >= root + bit) {
            x -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return root;
}

/* arith.i_gelu: x * (one + sign(x) * (one - (min(|x|, -b) + b)^2)) / 2. */
static inline int64_t td_i_gelu(int64_t x, int64_t b, int64_t one)
{
    int64_t magnitude = x < 0 ? -x : x;
    int64_t q = magnitude < -b ? magnitude : -b;
    int64_t sign = x > 0 ? 1 : (x < 0 ? -1 : 0);
    return x * ((one + sign * (one - (q + b) * (q + b))) >> 1);
}

/* Per-node trace hook (tinydeploy verify --layers): defined by the harness when TD_TRACE is set. */
#ifdef TD_TRACE
void td_trace(int32_t tensor_id, const void *data, int32_t nbytes);
#define TD_TRACE_TENSOR(id, ptr, nbytes) \
    do { if (TD_HART_ID == 0) td_trace((id), (ptr), (nbytes)); } while (0)
#else
#define TD_TRACE_TENSOR(id, ptr, nbytes) ((void)0)
#endif

#endif /* TD_RUNTIME_H */
