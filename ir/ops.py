"""Every IR op in one place: its meaning (golden evaluation), output shapes, value ranges and MAC count.

Integer ops evaluate on int64 numpy arrays using the contracts in `ir.arith`. Quantized ops (names
starting with "Q") exist only between the QDQ frontend and `passes.integerize`; they evaluate as
dequantize -> float op -> quantize, like onnxruntime, which is useful to separate import errors from
integerization loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arith
from .graph import DTYPE_RANGES, Graph, Node

Shape = tuple[int, ...]
Range = tuple[int, int]


@dataclass(frozen=True)
class OpDef:
    """How the IR understands one op."""

    name: str
    run: Callable[[Node, list[np.ndarray]], list[np.ndarray]]
    shape: Callable[[Node, list[Shape]], list[Shape]]
    #: value range of each output from input ranges; None means "the output dtype's full range".
    ranges: Callable[[Node, list[Range], list[Shape]], list[Range]] | None = None
    integer: bool = True
    macs: Callable[[Node, list[Shape]], int] | None = None
    #: every output element depends only on the inputs' elements at its (broadcast) position: the op can be split
    #: along any output axis (passes/tile.py), and the cluster runs it on the strided elementwise kernel
    elementwise: bool = False


OPS: dict[str, OpDef] = {}


def op(name: str, *, shape: Callable | None = None, ranges: Callable | None = None, integer: bool = True,
       macs: Callable | None = None, elementwise: bool = False) -> Callable:
    def register(run: Callable) -> Callable:
        OPS[name] = OpDef(name, run, shape or same_shape, ranges, integer, macs, elementwise)
        return run
    return register


def same_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    return [shapes[0]]


def broadcast_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    return [tuple(np.broadcast_shapes(*shapes))]


def attr_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    return [(int(node.attrs["lo"]), int(node.attrs["hi"]))]


def passthrough_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    return [ranges[0]]


def _mul_range(a: Range, b: Range) -> Range:
    prods = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    return (min(prods), max(prods))


def _const_range(arr: np.ndarray | int) -> Range:
    arr = np.asarray(arr)
    return (int(arr.min()), int(arr.max()))


# --- linear ---------------------------------------------------------------------------------------
def _matmul_operands(node: Node, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = a - node.attrs.get("a_zero", 0)
    b = b - node.attrs.get("b_zero", 0)
    if node.attrs.get("trans_a"):
        a = np.swapaxes(a, -1, -2)
    if node.attrs.get("trans_b"):
        b = np.swapaxes(b, -1, -2)
    return a, b


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul: float64 BLAS when every partial sum is provably < 2^53, else int64 einsum."""
    k = a.shape[-1]
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * k
    if bound < 2.0**53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def _matmul_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    a, b = list(shapes[0]), list(shapes[1])
    if node.attrs.get("trans_a"):
        a[-2], a[-1] = a[-1], a[-2]
    if node.attrs.get("trans_b"):
        b[-2], b[-1] = b[-1], b[-2]
    if len(b) == 1 or len(a) == 1:
        raise ValueError("1-D matmul operands are not supported")
    if a[-1] != b[-2]:
        raise ValueError(f"matmul inner dimensions differ: {a} x {b}")
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    out = (*batch, a[-2], b[-1])
    if len(shapes) > 2:
        out = tuple(np.broadcast_shapes(out, shapes[2]))
    return [out]


def _matmul_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    za, zb = node.attrs.get("a_zero", 0), node.attrs.get("b_zero", 0)
    ra = (ranges[0][0] - za, ranges[0][1] - za)
    rb = (ranges[1][0] - zb, ranges[1][1] - zb)
    k = shapes[0][-2] if node.attrs.get("trans_a") else shapes[0][-1]
    lo, hi = _mul_range(ra, rb)
    lo, hi = lo * k, hi * k
    if len(ranges) > 2:
        lo, hi = lo + ranges[2][0], hi + ranges[2][1]
    return [(lo, hi)]


def _matmul_macs(node: Node, shapes: list[Shape]) -> int:
    out = _matmul_shape(node, shapes[:2])[0]
    k = shapes[0][-2] if node.attrs.get("trans_a") else shapes[0][-1]
    return int(np.prod(out)) * k


@op("MatMulInt", shape=_matmul_shape, ranges=_matmul_range, macs=_matmul_macs)
def run_matmul_int(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """acc = (A - a_zero) @ (B - b_zero) [+ bias], int32 accumulator (optionally transposed operands)."""
    a, b = _matmul_operands(node, xs[0], xs[1])
    y = exact_matmul(a, b)
    if len(xs) > 2:
        y = y + xs[2]
    return [y]


def _add_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    terms = []
    for r, m, z in ((ranges[0], node.attrs.get("mul_a", 1), node.attrs.get("a_zero", 0)),
                    (ranges[1], node.attrs.get("mul_b", 1), node.attrs.get("b_zero", 0))):
        terms.append(_mul_range((r[0] - z, r[1] - z), _const_range(m)))
    return [(terms[0][0] + terms[1][0], terms[0][1] + terms[1][1])]


@op("Add", shape=broadcast_shape, ranges=_add_range, elementwise=True)
def run_add(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """y = (a - a_zero)*mul_a + (b - b_zero)*mul_b (integer scales align two quantized operands)."""
    at = node.attrs
    a = (xs[0] - at.get("a_zero", 0)) * np.asarray(at.get("mul_a", 1), dtype=np.int64)
    b = (xs[1] - at.get("b_zero", 0)) * np.asarray(at.get("mul_b", 1), dtype=np.int64)
    return [a + b]


def _mul_op_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    za, zb = node.attrs.get("a_zero", 0), node.attrs.get("b_zero", 0)
    return [_mul_range((ranges[0][0] - za, ranges[0][1] - za), (ranges[1][0] - zb, ranges[1][1] - zb))]


@op("Mul", shape=broadcast_shape, ranges=_mul_op_range, elementwise=True)
def run_mul(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """y = (a - a_zero) * (b - b_zero)."""
    return [(xs[0] - node.attrs.get("a_zero", 0)) * (xs[1] - node.attrs.get("b_zero", 0))]


# --- requantization ---------------------------------------------------------------------------------
@op("Requant", ranges=attr_range, elementwise=True)
def run_requant(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 1 (accelerator style): clip(floor(mul*x/2^shift + add + 1/2)), per tensor/channel/head."""
    at = node.attrs
    return [arith.requant_ita(xs[0], at["mul"], at["shift"], at["add"], at["lo"], at["hi"])]


@op("RequantCMSIS", ranges=attr_range, elementwise=True)
def run_requant_cmsis(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 2 (CMSIS-NN/TFLite): doubling-high-mul + rounding shift + output zero point."""
    at = node.attrs
    return [arith.requant_cmsis(xs[0], at["multiplier"], at["shift"], at["zero_point"], at["lo"], at["hi"])]


@op("RequantShift", ranges=attr_range, elementwise=True)
def run_requant_shift(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 3 (Deeploy/QuantLib RequantShift) with mul/add broadcast against the input."""
    at = node.attrs
    return [arith.requant_shift_deeploy(xs[0], at["mul"], at["add"], at["log2d"], at["lo"], at["hi"])]


# --- accelerator ----------------------------------------------------------------------------------
#: epilogue stages the ITA-like accelerator can run after its GEMM and requant (passes/fuse_attention.py);
#: AddRequant/MulRequant combine the running value with another input (a residual tile or a per-column vector)
ITA_STAGES = ("Requant", "LUT", "ITAPartialMax", "AddRequant", "MulRequant")


def _ita_gemm_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    stages = node.attrs.get("stages", [])
    last = stages[-1] if stages else node.attrs
    if last.get("op") == "LUT":
        table = np.asarray(last["table"])
        return [(int(table.min()), int(table.max()))]
    return [(int(last["lo"]), int(last["hi"]))]


def _ita_gemm_macs(node: Node, shapes: list[Shape]) -> int:
    return _matmul_macs(node, shapes[:2])


@op("ITAGemm", shape=lambda node, shapes: _matmul_shape(node, shapes[:2]), ranges=_ita_gemm_range,
    macs=_ita_gemm_macs)
def run_ita_gemm(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The accelerator's fused op: int8 GEMM + int32 bias, requant per output column (contract 1; `rq` rows are
    mul, shift, add), then the epilogue `stages` (a second Requant, a LUT activation, the streaming softmax,
    AddRequant/MulRequant with input `operand` — a residual or a per-column vector — on side `chain` 0 or 1).

    Defined by composing the unfused ops, so fusion cannot change a single bit."""
    a, b, bias, rq = xs[:4]
    y = exact_matmul(*_matmul_operands(node, a, b)) + bias
    y = arith.requant_ita(y, rq[0], rq[1], rq[2], node.attrs["lo"], node.attrs["hi"])
    for stage in node.attrs.get("stages", []):
        attrs = {k: v for k, v in stage.items() if k not in ("op", "operand", "chain")}
        inner = Node(node.name, stage["op"], [], [], attrs)
        if "operand" in stage:
            other = xs[stage["operand"]]
            operands = [y, other] if stage.get("chain", 0) == 0 else [other, y]
            y = OPS[stage["op"]].run(inner, operands)[0]
        else:
            y = OPS[stage["op"]].run(inner, [y])[0]
    return [y]


# --- CMSIS-NN fully connected (passes/fuse_cmsis.py) ------------------------------------------------------
@op("FullyConnectedS8", shape=lambda node, shapes: [(*shapes[0][:-1], shapes[1][0])], ranges=attr_range,
    macs=lambda node, shapes: int(np.prod(shapes[0][:-1])) * shapes[0][-1] * shapes[1][0])
def run_fully_connected_s8(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """arm_fully_connected_per_channel_s8: y = requant_cmsis((x - a_zero) @ W^T + bias) per output channel, with
    W [out, in] (CMSIS-NN's filter layout). Defined by composing MatMulInt and RequantCMSIS."""
    at = node.attrs
    mm = Node(node.name, "MatMulInt", [], [], {"trans_b": 1, "a_zero": at.get("a_zero", 0)})
    acc = run_matmul_int(mm, xs)[0]
    return [arith.requant_cmsis(acc, at["multiplier"], at["shift"], at["zero_point"], at["lo"], at["hi"])]


@op("BatchMatMulS8", shape=lambda node, shapes: [(*shapes[0][:-1], shapes[1][-2])], ranges=attr_range,
    macs=lambda node, shapes: int(np.prod(shapes[0][:-1])) * shapes[0][-1] * shapes[1][-2]
    * int(np.prod(shapes[1][:-2])) // max(int(np.prod(shapes[0][:-2])), 1))
def run_batch_matmul_s8(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """arm_batch_matmul_s8: y = requant_cmsis((lhs - a_zero) @ (rhs - b_zero)^T) per tensor, rhs in [.., N, K]
    (CMSIS-NN's transposed layout). Defined by composing MatMulInt and RequantCMSIS."""
    at = node.attrs
    mm = Node(node.name, "MatMulInt", [], [], {"trans_b": 1, "a_zero": at["a_zero"], "b_zero": at["b_zero"]})
    acc = run_matmul_int(mm, xs)[0]
    return [arith.requant_cmsis(acc, at["multiplier"], at["shift"], at["zero_point"], at["lo"], at["hi"])]


@op("SoftmaxS8", ranges=lambda node, r, s: [(-128, 127)])
def run_softmax_s8(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """arm_softmax_s8 (TFLite int8 softmax, contract 5 on Cortex-M): probabilities in 1/256 steps, zero point -128;
    optional key mask input (contract 6)."""
    at = node.attrs
    return [arith.softmax_cmsis(xs[0], at["multiplier"], at["shift"], at["diff_min"], _key_mask(xs))]


def _key_mask(xs: list[np.ndarray]) -> np.ndarray | None:
    """The key mask of a softmax (its second input, a vector over the last axis), or None."""
    return xs[1] if len(xs) > 1 else None


@op("AddS8", shape=broadcast_shape, ranges=attr_range, elementwise=True)
def run_add_s8(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """arm_elementwise_add_s8 (TFLite int8 Add): both operands rescaled to a common scale, summed, requantized."""
    at = node.attrs
    return [arith.add_cmsis(xs[0], xs[1], at["a_offset"], at["a_mult"], at["a_shift"], at["b_offset"],
                            at["b_mult"], at["b_shift"], at["multiplier"], at["shift"], at["zero_point"], at["lo"],
                            at["hi"], at.get("left_shift", arith.ADD_LEFT_SHIFT))]


@op("MulS8", shape=broadcast_shape, ranges=attr_range, elementwise=True)
def run_mul_s8(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """arm_elementwise_mul_s8 (TFLite int8 Mul): requant_cmsis((a - a_zero) * (b - b_zero)) per tensor. Defined by
    composing Mul and RequantCMSIS (passes/fuse_cmsis.py)."""
    at = node.attrs
    product = run_mul(node, xs)[0]
    return [arith.requant_cmsis(product, at["multiplier"], at["shift"], at["zero_point"], at["lo"], at["hi"])]


# --- fused elementwise (passes/fuse_elementwise.py) -------------------------------------------------
def _then_requant(first: str) -> Callable:
    def run(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
        y = OPS[first].run(node, xs)[0]
        return OPS["Requant"].run(node, [y])
    run.__doc__ = f"{first} followed by Requant (contract 1): one pass over the data on the cores."
    return run


for _first in ("Add", "Mul"):
    OPS[f"{_first}Requant"] = OpDef(f"{_first}Requant", _then_requant(_first), broadcast_shape, attr_range,
                                    elementwise=True)


# --- nonlinear ----------------------------------------------------------------------------------------
@op("ITAMax", ranges=attr_range)
def run_itamax(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 4, one-pass variant (Deeploy ITAMax)."""
    return [arith.ita_max(xs[0], node.attrs["n_levels"]) + node.attrs.get("out_offset", 0)]


@op("ITAPartialMax", ranges=attr_range)
def run_ita_partial_max(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 4, streaming (block-wise running max) ITA softmax; an optional second input is the key mask
    (contract 6)."""
    at = node.attrs
    y = arith.ita_partial_max(xs[0], at["group_width"], at["n_levels"], _key_mask(xs),
                              at.get("octave_bits", arith.ITA_OCTAVE_BITS)) + at.get("out_offset", 0)
    return [arith.clip(y, at["lo"], at["hi"])]


@op("ISoftmax", ranges=attr_range)
def run_isoftmax(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 5: I-BERT integer softmax (Deeploy iSoftmax coefficients); optional key mask input (contract 6)."""
    at = node.attrs
    y = arith.i_softmax(xs[0], at["coeff_a"], at["coeff_b"], at["coeff_c"], at["log2"], at["n_levels"],
                        bool(at.get("round_nearest", 0)), _key_mask(xs))
    return [arith.clip(y + at.get("out_offset", 0), at["lo"], at["hi"])]


def _igelu_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    one = int(node.attrs["one"])
    bound = max(abs(ranges[0][0]), abs(ranges[0][1])) * one
    return [(-bound, bound)]


@op("IGELU", ranges=_igelu_range, elementwise=True)
def run_igelu(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 5: I-BERT i-GELU, int32 output (requantized by the following op)."""
    return [arith.i_gelu(xs[0], node.attrs["b"], node.attrs["one"])]


def _ihardswish_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    gate = int(node.attrs["six"]) * int(node.attrs["one_over_six"])
    bound = max(abs(ranges[0][0]), abs(ranges[0][1])) * gate
    return [(-bound, bound)]


@op("IHardswish", ranges=_ihardswish_range, elementwise=True)
def run_ihardswish(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Deeploy's integer hardswish (arith.i_hardswish), int32 output (requantized by the following op)."""
    at = node.attrs
    return [arith.i_hardswish(xs[0], at["one_over_six"], at["three"], at["six"], at.get("input_offset", 0))]


@op("ILayerNorm", ranges=attr_range)
def run_ilayernorm(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Contract 5: I-BERT integer LayerNorm over the last axis."""
    at = node.attrs
    return [arith.i_layernorm(xs[0], xs[1], xs[2], at["log2d"], at["lo"], at["hi"])]


def _layernorm_copy_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    at = node.attrs
    return [(int(at["lo"]), int(at["hi"])), (int(at["rq_lo"]), int(at["rq_hi"]))]


@op("ILayerNormRequant", shape=lambda node, shapes: [shapes[0], shapes[0]], ranges=_layernorm_copy_range)
def run_ilayernorm_requant(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """ILayerNorm y and its requantized copy Requant(y) (attrs mul, shift, add, rq_lo, rq_hi; contract 1) from
    one pass (passes/fuse_elementwise.fuse_norm_copies): a post-LN BERT's int16 residual stream and the int8
    operand of the next GEMMs. Defined by composition."""
    at = node.attrs
    y = run_ilayernorm(node, xs)[0]
    return [y, arith.requant_ita(y, at["mul"], at["shift"], at["add"], at["rq_lo"], at["rq_hi"])]


@op("IRMSNorm", ranges=attr_range)
def run_irmsnorm(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Integer RMSNorm over the last axis."""
    at = node.attrs
    return [arith.i_rmsnorm(xs[0], xs[1], at["log2d"], at["lo"], at["hi"])]


@op("INoNorm", ranges=attr_range, elementwise=True)
def run_inonorm(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """MobileBERT NoNorm as integers: clip(((x*w + b) * mul) >> log2d)."""
    at = node.attrs
    acc = (xs[0] * xs[1] + xs[2]) * at["mul"]
    return [arith.clip(np.right_shift(acc, at["log2d"]), at["lo"], at["hi"])]


def _true_div_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    at = node.attrs
    ends = arith.true_integer_div(np.array(ranges[0]), at["y"], at["delta"], at["eps"], at["eta"])
    return [(int(ends.min()), int(ends.max()))]


@op("TrueIntegerDiv", ranges=_true_div_range, elementwise=True)
def run_true_integer_div(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Deeploy integer division by a constant y with Delta/eps/eta fixed-point parameters."""
    at = node.attrs
    return [arith.true_integer_div(xs[0], at["y"], at["delta"], at["eps"], at["eta"])]


def _reduce_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    axes = [a % len(shapes[0]) for a in node.attrs["axes"]]
    if node.attrs.get("keepdims", 1):
        return [tuple(1 if i in axes else d for i, d in enumerate(shapes[0]))]
    return [tuple(d for i, d in enumerate(shapes[0]) if i not in axes)]


def _sum_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    n = int(np.prod([shapes[0][a % len(shapes[0])] for a in node.attrs["axes"]], dtype=np.int64))
    return [(ranges[0][0] * n, ranges[0][1] * n)]


@op("ReduceSum", shape=_reduce_shape, ranges=_sum_range)
def run_reduce_sum(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Exact integer sum over `axes`."""
    axes = tuple(a % xs[0].ndim for a in node.attrs["axes"])
    return [xs[0].sum(axis=axes, keepdims=bool(node.attrs.get("keepdims", 1)))]


@op("IntegerMean", shape=_reduce_shape, ranges=passthrough_range)
def run_integer_mean(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Mean over `axes`, rounded half up: floor((sum + n/2) / n)."""
    axes = tuple(a % xs[0].ndim for a in node.attrs["axes"])
    n = int(np.prod([xs[0].shape[a] for a in axes]))
    total = xs[0].sum(axis=axes, keepdims=bool(node.attrs.get("keepdims", 1)))
    return [arith.mean_round_half_up(total, n)]


@op("LUT", ranges=lambda node, r, s: [_const_range(node.attrs["table"])], elementwise=True)
def run_lut(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Elementwise int8 -> int8 table (tanh, GELU, sigmoid... computed exactly at compile time)."""
    return [arith.lut_apply(xs[0], node.attrs["table"], node.attrs.get("in_min", -128))]


@op("Relu", ranges=lambda node, r, s: [(max(r[0][0], node.attrs.get("zero", 0)),
                                        max(r[0][1], node.attrs.get("zero", 0)))], elementwise=True)
def run_relu(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """max(x, zero point)."""
    return [np.maximum(xs[0], node.attrs.get("zero", 0))]


# --- convolution and pooling (NCHW, or NCW as H = 1) -------------------------------------------------
def _spatial(node: Node, shape: Shape) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Per spatial axis: input size, kernel, stride, pad begin, pad end, dilation (ONNX attribute layout)."""
    dims = list(shape[2:])
    kernel = list(node.attrs["kernel_shape"])
    rank = len(dims)
    strides = list(node.attrs.get("strides", [1] * rank))
    pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    return dims, kernel, strides, pads, dilations


def _window_output(node: Node, shape: Shape) -> list[int]:
    dims, kernel, strides, pads, dilations = _spatial(node, shape)
    rank = len(dims)
    out = [(dims[i] + pads[i] + pads[i + rank] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
           for i in range(rank)]
    if min(out) < 1:
        raise ValueError(f"window {kernel} does not fit the padded input {dims}")
    return out


def _conv_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    x, w = shapes[0], shapes[1]
    group = int(node.attrs.get("group", 1))
    if len(x) != len(w) or x[1] != w[1] * group or w[0] % group:
        raise ValueError(f"Conv input {list(x)}, weights {list(w)} and group {group} do not agree")
    return [(x[0], w[0], *_window_output(node, x))]


def _conv_range(node: Node, ranges: list[Range], shapes: list[Shape]) -> list[Range]:
    taps = int(np.prod(shapes[1][1:], dtype=np.int64))
    zero = int(node.attrs.get("a_zero", 0))
    x_bound = max(abs(ranges[0][0] - zero), abs(ranges[0][1] - zero))
    bound = taps * x_bound * max(abs(ranges[1][0]), abs(ranges[1][1]))
    lo, hi = -bound, bound
    if len(ranges) > 2:
        lo, hi = lo + ranges[2][0], hi + ranges[2][1]
    return [(lo, hi)]


@op("ConvInt", shape=_conv_shape, ranges=_conv_range,
    macs=lambda node, shapes: int(np.prod(_conv_shape(node, shapes)[0], dtype=np.int64))
    * int(np.prod(shapes[1][1:], dtype=np.int64)))
def run_conv_int(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Integer convolution (ONNX Conv semantics on int64 values, zero padding), + bias [M]; exact."""
    return [arith.conv_int(xs[0], xs[1], xs[2] if len(xs) > 2 else None, *_spatial(node, xs[0].shape)[1:],
                           int(node.attrs.get("group", 1)), int(node.attrs.get("a_zero", 0)))]


@op("MaxPool", shape=lambda node, shapes: [(*shapes[0][:2], *_window_output(node, shapes[0]))],
    ranges=passthrough_range)
def run_max_pool(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Window maximum (ONNX MaxPool; padded positions never win)."""
    return [arith.max_pool(xs[0], *_spatial(node, xs[0].shape)[1:])]


# --- data movement --------------------------------------------------------------------------------
@op("Reshape", shape=lambda node, s: [tuple(node.attrs["shape"])], ranges=passthrough_range)
def run_reshape(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [xs[0].reshape(node.attrs["shape"])]


@op("Transpose", shape=lambda node, s: [tuple(s[0][p] for p in node.attrs["perm"])], ranges=passthrough_range)
def run_transpose(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.transpose(xs[0], node.attrs["perm"]))]


def _gather_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    axis = node.attrs.get("axis", 0) % len(shapes[0])
    return [shapes[0][:axis] + shapes[1] + shapes[0][axis + 1:]]


@op("Gather", shape=_gather_shape, ranges=passthrough_range)
def run_gather(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Embedding lookup / indexing along `axis` (negative indices wrap, as in ONNX)."""
    axis = node.attrs.get("axis", 0)
    idx = np.where(xs[1] < 0, xs[1] + xs[0].shape[axis], xs[1])
    return [np.take(xs[0], idx, axis=axis)]


def _slice_index(node: Node, ndim: int) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    at = node.attrs
    for start, end, axis, step in zip(at["starts"], at["ends"], at["axes"], at["steps"], strict=True):
        index[axis % ndim] = slice(start, end, step)
    return tuple(index)


@op("Slice", shape=lambda node, s: [np.empty(s[0], dtype=np.int8)[_slice_index(node, len(s[0]))].shape],
    ranges=passthrough_range)
def run_slice(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(xs[0][_slice_index(node, xs[0].ndim)])]


def _concat_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    axis = node.attrs["axis"] % len(shapes[0])
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


@op("Concat", shape=_concat_shape, ranges=lambda node, r, s: [(min(x[0] for x in r), max(x[1] for x in r))])
def run_concat(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [np.concatenate(xs, axis=node.attrs["axis"])]


def _pad_shape(node: Node, shapes: list[Shape]) -> list[Shape]:
    pads = node.attrs["pads"]
    n = len(shapes[0])
    return [tuple(d + pads[i] + pads[i + n] for i, d in enumerate(shapes[0]))]


@op("Pad", shape=_pad_shape, ranges=lambda node, r, s: [(min(r[0][0], node.attrs["value"]),
                                                         max(r[0][1], node.attrs["value"]))])
def run_pad(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Constant padding with an integer fill value (the zero point of the tensor)."""
    n = xs[0].ndim
    pads = node.attrs["pads"]
    return [np.pad(xs[0], [(pads[i], pads[i + n]) for i in range(n)], constant_values=node.attrs["value"])]


# --- quantized (pre-integerize) ops: float semantics on quantized tensors ------------------------------
def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None) -> np.ndarray:
    scale, zero = np.asarray(scale, np.float32), np.asarray(zero, np.float32)
    if scale.size > 1 and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q.astype(np.float32) - zero) * scale


def quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """onnxruntime QuantizeLinear: saturate(round_half_even(x / scale) + zero_point)."""
    y = np.rint(x.astype(np.float32) / np.float32(scale)) + np.float32(zero)
    return np.clip(y, lo, hi).astype(np.int64)


def _qparams(node: Node, key: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    q = node.attrs[key]
    return q["scale"], q["zero_point"], q.get("axis")


def _q_inputs(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [dequantize(x, *_qparams(node, f"in{i}")) if f"in{i}" in node.attrs else x.astype(np.float32)
            for i, x in enumerate(xs)]


def _q_output(node: Node, y: np.ndarray) -> np.ndarray:
    scale, zero, _ = _qparams(node, "out")
    lo, hi = DTYPE_RANGES[node.attrs["out_dtype"]]
    return quantize(y, scale, zero, lo, hi)


FLOAT_FUNCS: dict[str, Callable[..., np.ndarray]] = {
    "QMatMul": lambda node, a, b, *bias: (np.matmul(a, np.swapaxes(b, -1, -2) if node.attrs.get("trans_b") else b)
                                          + (bias[0] if bias else 0)),
    "QAdd": lambda node, a, b: a + b,
    "QSub": lambda node, a, b: a - b,
    "QMul": lambda node, a, b: a * b,
    "QDiv": lambda node, a, b: a / b,
    "QRelu": lambda node, a: np.maximum(a, 0),
    "QTanh": lambda node, a: np.tanh(a),
    "QSigmoid": lambda node, a: 1.0 / (1.0 + np.exp(-a)),
    "QSoftmax": lambda node, a, *mask: _softmax(a * node.attrs.get("input_factor", 1.0), -1, *mask),
    "QLayerNorm": lambda node, a: _layer_norm(a, node.attrs["gamma"], node.attrs["beta"], node.attrs["epsilon"]),
    "QTable": lambda node, a: _table(node, a),
    "QGelu": lambda node, a: 0.5 * a * (1.0 + _erf(a / np.sqrt(2.0))),
    "QRequant": lambda node, a: a,
    "QConv": lambda node, x, w, *bias: _conv_float(node, x, w, bias[0] if bias else None),
}


def _conv_float(node: Node, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """ONNX Conv on real values (the quantized op's meaning before integerize)."""
    as_float = [None if v is None else np.asarray(v, np.float64) for v in (x, w, bias)]
    return arith.convolve(*as_float, *_spatial(node, x.shape)[1:], int(node.attrs.get("group", 1)))


def _softmax(x: np.ndarray, axis: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax; masked positions (contract 6) get probability 0 and take no part in the row."""
    keep = arith.key_mask(x, mask)
    x = np.where(keep, x, -np.inf)
    top = np.where(keep.any(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True), 0.0)
    e = np.where(keep, np.exp(x - top), 0.0)
    total = e.sum(axis=axis, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * np.asarray(gamma) + np.asarray(beta)


def _table(node: Node, real: np.ndarray) -> np.ndarray:
    """QTable: the float subgraph's value for each input code (node.attrs['values'], from in_min up)."""
    q = node.attrs["in0"]
    codes = np.rint(np.asarray(real, np.float64) / np.float64(q["scale"])).astype(np.int64) + int(q["zero_point"])
    return np.asarray(node.attrs["values"])[codes - int(node.attrs["in_min"])]


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf
    return np.vectorize(erf, otypes=[np.float64])(x)


def _q_run_factory(name: str) -> Callable:
    def run(node: Node, xs: list[np.ndarray]) -> list[np.ndarray]:
        y = FLOAT_FUNCS[name](node, *_q_inputs(node, xs))
        return [_q_output(node, np.asarray(y, dtype=np.float32))]
    run.__doc__ = f"{name[1:]} on dequantized operands, quantized to the output's parameters."
    return run


for _name in FLOAT_FUNCS:
    _shape = _matmul_shape if _name == "QMatMul" else _conv_shape if _name == "QConv" else (
        same_shape if _name in ("QRelu", "QTanh", "QSigmoid", "QSoftmax", "QGelu", "QRequant", "QLayerNorm", "QTable")
        else broadcast_shape)
    OPS[_name] = OpDef(_name, _q_run_factory(_name), _shape, None, integer=False,
                       macs=_matmul_macs if _name == "QMatMul" else None)


def op_def(node: Node) -> OpDef:
    """The definition of a node's op; KeyError names the op."""
    try:
        return OPS[node.op]
    except KeyError:
        raise KeyError(f"op '{node.op}' of node '{node.name}' is not an IR op") from None


def node_macs(graph: Graph, node: Node) -> int:
    definition = op_def(node)
    if definition.macs is None:
        return 0
    return definition.macs(node, [graph.tensors[i].shape for i in node.inputs if i])


def attrs_for_doc(node: Node) -> dict[str, Any]:
    return dict(node.attrs)
