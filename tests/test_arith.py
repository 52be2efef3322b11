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
