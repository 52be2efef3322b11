"""Arithmetic contracts pinned by hand-computed vectors (ir/arith.py)."""

import numpy as np
import pytest
from tinydeploy.ir import arith


def test_requant_ita_rounds_half_up_and_clips():
    # mul=3, shift=2: 3*x/4 + add + 1/2, floored
    x = np.array([1, 2, -2, -1, 100, -100, 0])
    # 0.75+.5=1.25->1 ; 1.5+.5=2 ->2 ; -1.5+.5=-1 -> -1 ; -0.75+.5=-.25 -> -1 ; 75 ; -75 ; 0
    assert arith.requant_ita(x, 3, 2, 0).tolist() == [1, 2, -1, -1, 75, -75, 0]
    assert arith.requant_ita(np.array([1000, -1000]), 255, 0, 5).tolist() == [127, -128]
    assert arith.requant_ita(np.array([7]), 1, 0, -3).tolist() == [4]  # shift 0: no rounding term


def test_ita_requant_params_precision():
    for real in (0.001234, 0.5, 1.0, 3.7, 200.0):
        mul, shift = arith.ita_requant_params(real)
        assert 1 <= int(mul[0]) <= 255
        assert abs(int(mul[0]) / 2.0 ** int(shift[0]) - real) / real < 1 / 128
    with pytest.raises(ValueError):
        arith.ita_requant_params(300.0)


def test_srdhm_matches_gemmlowp_edge_cases():
    imin, imax = arith.INT32_MIN, arith.INT32_MAX
    assert arith.saturating_rounding_doubling_high_mul(np.array(imin), np.array(imin)) == imax
    # 2^30 * 2^30 * 2 / 2^32 = 2^29
    assert arith.saturating_rounding_doubling_high_mul(np.array(1 << 30), np.array(1 << 30)) == 1 << 29
    # a*b = -3 (tiny negative): nudge 1-2^30, (-3 + 1 - 2^30) / 2^31 truncates to 0
    assert arith.saturating_rounding_doubling_high_mul(np.array(-3), np.array(1)) == 0
    # +0.5 rounds up: (2^30 + 2^30) / 2^31 = 1
    assert arith.saturating_rounding_doubling_high_mul(np.array(1 << 30), np.array(1)) == 1
    # -0.5: (-2^30 + 1 - 2^30) / 2^31 = -0.99.. truncates to 0 (gemmlowp's asymmetric nudge)
    assert arith.saturating_rounding_doubling_high_mul(np.array(-(1 << 30)), np.array(1)) == 0
    # just past -0.5 rounds to -1
    assert arith.saturating_rounding_doubling_high_mul(np.array(-(1 << 30) - 1), np.array(1)) == -1


def test_rounding_divide_by_pot_ties_away_from_zero():
    x = np.array([5, -5, 6, -6, 7, -7, 4, -4])
    # /4: 1.25->1, -1.25->-1, 1.5->2, -1.5->-2, 1.75->2, -1.75->-2, 1, -1
    assert arith.rounding_divide_by_pot(x, 2).tolist() == [1, -1, 2, -2, 2, -2, 1, -1]


def test_requant_cmsis_negative_and_positive_shift_and_saturation():
    m_half = 1 << 30  # 0.5 in Q31
    # shift -1: x * 0.5 / 2 = x/4, rounded half away: 6/4=1.5 -> 2, -6/4 -> -2
    assert arith.requant_cmsis(np.array([6, -6]), m_half, -1).tolist() == [2, -2]
    # shift +2: x * 4 * 0.5 = 2x, saturates at the int8 bounds
    assert arith.requant_cmsis(np.array([10, 100, -100]), m_half, 2).tolist() == [20, 127, -128]
    assert arith.requant_cmsis(np.array([10]), m_half, 0, out_zero_point=-3).tolist() == [2]


def test_cmsis_requant_params_roundtrip():
    for real in (0.0003, 0.25, 0.75, 1.5):
        m, e = arith.cmsis_requant_params(real)
        assert (1 << 30) <= int(m[0]) < (1 << 31)
        assert abs(int(m[0]) * 2.0 ** (int(e[0]) - 31) - real) / real < 1e-8


def test_c_div_truncates_toward_zero():
    assert arith.c_div(np.array([7, -7, 7, -7]), np.array([2, 2, -2, -2])).tolist() == [3, -3, -3, 3]


def test_isqrt_floor_exact():
    x = np.array([0, 1, 2, 3, 4, 15, 16, 17, 2**40 - 1, 2**40, -5])
    assert arith.isqrt_floor(x).tolist() == [0, 1, 1, 1, 2, 3, 4, 4, 2**20 - 1, 2**20, 0]


def test_ita_partial_max_uniform_row_and_dominant_element():
    uniform = np.zeros((1, 32), dtype=np.int64)
    # denominator 32*256 = 8192, inverse floor(127*256/8192) = 3 for every element
    assert arith.ita_partial_max(uniform).tolist() == [[3] * 32]
    peaked = np.full((1, 16), -128, dtype=np.int64)
    peaked[0, 3] = 127
    out = arith.ita_partial_max(peaked)
    # others: shift (255+16)>>5 = 8, 256>>8 = 1 each -> denominator 256 + 15 = 271,
    # inverse floor(127*256/271) = 119; the others get 119 >> 8 = 0
    assert out[0, 3] == 119 and out.sum() == 119


def test_ita_partial_max_renormalises_when_max_grows():
    row = np.concatenate([np.zeros(16), np.full(16, 64)]).astype(np.int64)[None]
    # block 1: sum 16*256=4096; block 2 raises max by 64 -> shift 2: 4096>>2=1024, plus 16*256 -> 5120
    # inverse = 127*256//5120 = 6; elements of block 1 shifted by 2 -> 1, block 2 -> 6
    assert arith.ita_partial_max(row).tolist() == [[1] * 16 + [6] * 16]


def test_i_softmax_sums_close_to_levels():
    x = np.array([[10, 0, -10, -40]])
    y = arith.i_softmax(x, 1, 345, 62395, 255, 256)
    assert y.shape == (1, 4) and 250 <= int(y.sum()) <= 255 and y[0, 0] >= y[0, 1] >= y[0, 2] >= y[0, 3]


# --- contract 2 on Cortex-M: TFLite / CMSIS-NN int8 softmax and Add ------------------------------------------
def test_softmax_cmsis_params_hand_computed():
    # scale 2: 2 * 2^26 = 2^27 = 0.5 * 2^28 -> multiplier 2^30, left shift 28;
    # radius 31 * 2^26 / 2^28 = 7.75 -> diff_min -7
    assert arith.softmax_cmsis_params(2.0) == (1 << 30, 28, -7)
    # scale 0.1: 0.1 * 2^26 = 6710886.4 = 0.8 * 2^23 -> round(0.8 * 2^31) = 1717986918, shift 23; 31 * 2^3 = 248
    assert arith.softmax_cmsis_params(0.1) == (1717986918, 23, -248)
    with pytest.raises(ValueError):
        arith.softmax_cmsis_params(2.0**-27)   # finer than the Q5.26 input can resolve


def test_softmax_cmsis_hand_computed_rows():
    mult, shift, diff_min = arith.softmax_cmsis_params(0.1)
    # uniform: exp(0) = INT32_MAX -> /2^12 rounds to 2^19 each, sum 2^21, headroom 10, 1/(1+0) ~ 1 in Q0.31,
    # bits over unit 12 - 10 + 23 = 25: 2^31 / 2^25 = 64 -> 64 - 128
    assert arith.softmax_cmsis(np.zeros((1, 4)), mult, shift, diff_min).tolist() == [[-64] * 4]
    # two equal maxima, the rest ~ exp(-10.5): probabilities 1/2 -> 128 - 128 = 0
    assert arith.softmax_cmsis(np.array([[5, 5, -100, -100]]), mult, shift, diff_min).tolist() == [[0, 0, -128, -128]]
    # one dominant: probability 1 -> 256 - 128 = 128 saturates at 127; exp(-11) * 256 = 0.004 -> -128
    assert arith.softmax_cmsis(np.array([[10, -100, -100, -100]]), mult, shift, diff_min).tolist() == \
        [[127, -128, -128, -128]]
    assert arith.softmax_cmsis(np.array([[-7]]), mult, shift, diff_min).tolist() == [[127]]     # one column


def test_softmax_cmsis_skips_differences_below_diff_min():
    """scale 2 (diff_min -7): -255 * 2^28 would overflow int32; such elements are -128 without being computed."""
    mult, shift, diff_min = arith.softmax_cmsis_params(2.0)
    assert arith.softmax_cmsis(np.array([[127, -128, 0, 0]]), mult, shift, diff_min).tolist() == \
        [[127, -128, -128, -128]]
    # at diff_min the element counts (exp(-14) -> -128 after rounding), one below it is skipped: same bytes
    assert arith.softmax_cmsis(np.array([[0, -7, -8]]), mult, shift, diff_min).tolist() == [[127, -128, -128]]


def test_gemmlowp_exp_and_reciprocal_accuracy():
    q = 1 << 26                               # Q5.26 input
    a = np.array([0, -q // 4, -q // 2, -q, -3 * q, -10 * q])
    got = arith.exp_on_negative_values(a)
    assert got[0] == arith.INT32_MAX
    # the 4th-order polynomial is good to ~3e-7 of full scale (gemmlowp's accuracy, not ours to improve)
    assert np.all(np.abs(got[1:] - np.exp(a[1:] / q) * 2.0**31) <= 1e-6 * 2.0**31)
    x = np.array([0, 1 << 29, 1 << 30, (1 << 31) - 1])   # 0, 1/4, 1/2, ~1 in Q0.31
    recip = arith.one_over_one_plus_x_for_x_in_0_1(x)
    assert np.all(np.abs(recip - np.round(2.0**31 / (1 + x / 2.0**31))) <= 4)


def _round_half_away(value: float) -> int:
    return int(np.copysign(np.floor(abs(value) + 0.5), value))


def test_add_cmsis_hand_computed():
    # scales 1, 1 -> 2: each operand rescaled by 1/2 (multiplier 2^30, shift 0), the sum by 2 / (2^20 * 2) = 2^-20
    params = arith.add_cmsis_params(1.0, 1.0, 2.0)
    assert params == {"a_mult": 1 << 30, "a_shift": 0, "b_mult": 1 << 30, "b_shift": 0,
                      "multiplier": 1 << 30, "shift": -19}
    a = np.array([1, -1, 3, -3, 2, 100, -100, 0])
    b = np.array([2, -2, 0, 0, 2, 100, -100, 0])
    got = arith.add_cmsis(a, b, a_offset=0, b_offset=0, **params, zero_point=0).tolist()
    # (a + b) / 2 with ties away from zero, clipped to int8
    assert got == [2, -2, 2, -2, 2, 100, -100, 0]
    assert got == [max(-128, min(127, _round_half_away((x + y) / 2))) for x, y in zip(a, b, strict=True)]
    # offsets: (a - 10) + (b + 4) at scale 1 -> 1: (a - 10) + (b + 4) exactly, output zero point 3, saturation
    same = arith.add_cmsis_params(1.0, 1.0, 1.0)
    assert arith.add_cmsis(np.array([10, 127, -128]), np.array([-4, 127, -128]), -10, same["a_mult"],
                           same["a_shift"], 4, same["b_mult"], same["b_shift"], same["multiplier"], same["shift"],
                           3).tolist() == [3, 127, -128]


@pytest.mark.parametrize("scale", [1e20, 256.0, 0.0, -1.0, float("nan"), float("inf")])
def test_ita_requant_params_refuse_unrepresentable_scales(scale):
    """1e20 used to come back as multiplier -2^63 (float -> int64 overflow) instead of an error."""
    with pytest.raises(ValueError, match="requant scale"):
        arith.ita_requant_params(scale)


@pytest.mark.parametrize("scale", [1e20, 2.0**31, 0.0, -1.0, float("nan"), float("inf")])
def test_cmsis_requant_params_refuse_unrepresentable_scales(scale):
    with pytest.raises(ValueError, match="requant scale"):
        arith.cmsis_requant_params(scale)


def test_requant_params_keep_representable_extremes():
    mul, shift = arith.ita_requant_params([255.0, 1e-12])
    assert list(mul) == [255, 0] and list(shift) == [0, 31]
    m31, exp = arith.cmsis_requant_params([2.0**30, 1e-12])
    assert m31[0] == 1 << 30 and exp[0] == 31 and m31[1] == 0


def test_requant_without_common_twos_is_the_same_function():
    """Removing powers of two common to mul and 2^shift keeps contract 1 exact (and makes Add requants 32-bit)."""
    from tinydeploy.passes.integerize import without_common_twos

    rng = np.random.default_rng(0)
    for _ in range(100):
        mul, shift, add = rng.integers(0, 256, 16), rng.integers(0, 31, 16), rng.integers(-100, 100, 16)
        x = rng.integers(-2**30, 2**30, (64, 16))
        reduced_mul, reduced_shift = without_common_twos(mul, shift)
        assert np.array_equal(arith.requant_ita(x, mul, shift, add, -2**40, 2**40),
                              arith.requant_ita(x, reduced_mul, reduced_shift, add, -2**40, 2**40))
    assert [int(v) for v in without_common_twos(np.array(128), np.array(20))] == [1, 13]
    assert [int(v) for v in without_common_twos(np.array(96), np.array(2))] == [24, 0]


DIVIDE_CHECK = r"""
#include <stdio.h>
#include "td_runtime.h"
/* every divisor 1..65535 against C's division (truncation), on the numerators where a reciprocal goes wrong first:
 * around the multiples of d, both ends of the int32 range, and a pseudo-random sweep, each with both signs */
int main(void)
{
    uint32_t state = 12345u, failures = 0;
    for (int32_t d = 1; d < 65536; ++d) {
        const td_divisor_t r = td_divisor_s32((uint32_t)d);
        int32_t n[24] = {0, 1, d - 1, d, d + 1, INT32_MAX, INT32_MAX - d, (INT32_MAX / d) * d,
                         (INT32_MAX / d) * d - 1, 0, 0, 0};
        for (int i = 9; i < 12; ++i) {
            state = state * 1664525u + 1013904223u;
            n[i] = (int32_t)((state >> 1) / (uint32_t)d * (uint32_t)d) - (i - 10);   /* a multiple of d, neighbours */
        }
        for (int i = 0; i < 12; ++i) {
            n[12 + i] = -n[i];
        }
        for (int i = 0; i < 24; ++i) {
            if (td_divide_s32(n[i], r) != n[i] / d) {
                if (failures++ < 5) {
                    printf("d=%d n=%d: %d != %d\n", d, n[i], td_divide_s32(n[i], r), n[i] / d);
                }
            }
        }
    }
    printf("%u failures\n", failures);
    return failures != 0;
}
"""


def test_layernorm_reciprocal_divides_exactly_for_every_16_bit_divisor(tmp_path):
    """The cores' LayerNorm divides (x - mean) * w (|.| < 2^31) by the row's std <= 65535 with a reciprocal
    (td_divisor_s32 / td_divide_s32 in the generated C): equal to C's truncating division for every divisor, at
    the numerators where an off-by-one reciprocal fails first, of both signs."""
    import shutil
    import subprocess

    from tinydeploy.resources import package_path

    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no host C compiler")
    runtime = package_path("backends", "generic", "runtime")
    (tmp_path / "check.c").write_text(DIVIDE_CHECK)
    subprocess.run([cc, "-O2", "-std=c99", "-Wall", "-Werror", f"-I{runtime}", "check.c", "-o", "check"],
                   cwd=tmp_path, check=True)
    run = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True)
    assert run.stdout.strip().endswith("0 failures"), run.stdout
    assert run.returncode == 0
