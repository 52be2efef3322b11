"""integerize(graph, target): replace every quantized float op by integer-only ops.

Linear ops become an int32 accumulation (MatMulInt / Add / Mul) followed by a requant in the target's
style (contract 1 "ita" or contract 2 "cmsis"). Softmax becomes the ITA streaming softmax (contract 4)
or the I-BERT integer softmax (contract 5). Elementwise nonlinearities (ReLU, tanh, sigmoid, GELU)
become exact 256-entry tables computed here from the quantization parameters. Afterwards the graph
has no float tensor and no Q op; the verifier proves every accumulator fits its dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import UnsupportedModelError, node_context
from ..ir import arith
from ..ir.graph import DTYPE_RANGES, Graph, Node, QuantParams, Tensor
from ..ir.ops import FLOAT_FUNCS, dequantize, quantize
from ..ir.verify import verify
from ..target import Target, load_target

#: most fixed-point bits used to align two operand scales of an Add to the output scale
ADD_ALIGN_BITS = 16
#: I-BERT second-order exp polynomial on (-ln2, 0]: exp(p) ~ A (p + B)^2 + C
IBERT_A, IBERT_B, IBERT_C = 0.3585, 1.353, 0.344
#: finest I-BERT softmax input scale: 64 steps per octave keeps row sums of 512 columns in int32
IBERT_MIN_SCALE = float(np.log(2.0) / 64.0)
#: softmax outputs are probabilities * L in int8 (zero point 0, saturating at 127): the next matmul's operand
SOFTMAX_OUT_LEVELS = 128
#: largest L: keeps the ITA numerator L*256 and the I-BERT products y*L far inside int32
SOFTMAX_MAX_LEVELS = 4096
#: ITA's own softmax (DESIGN.md contract 4, PyITA): numerator (2^8 - 1) * 2^8, unsigned 8-bit probabilities
#: (scale 1/255) that A.V reads as unsigned; n_levels is the IR's 2 * (L + 1) spelling of L
ITA_SOFTMAX_LEVELS = 255


def without_common_twos(mul: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contract 1 parameters with the powers of two common to mul and 2^shift removed: the same function
    ((2^p m x + a 2^s + 2^(s-1)) >> s == (m x + a 2^(s-p) + 2^(s-p-1)) >> (s-p), exactly), with a smaller
    product, so an Add's power-of-two requant (mul 128, shift k + 7) runs in 32 bits on a 32-bit core."""
    mul, shift = np.asarray(mul, dtype=np.int64).copy(), np.asarray(shift, dtype=np.int64).copy()
    for _ in range(8):                            # an 8-bit multiplier has at most 7 factors of two
        even = (mul != 0) & (mul % 2 == 0) & (shift > 0)
        if not even.any():
            break
        mul = np.where(even, mul // 2, mul)
        shift = np.where(even, shift - 1, shift)
    return mul, shift


class _Lowering:
    def __init__(self, graph: Graph, target: Target) -> None:
        self.src = graph
        self.target = target
        self.graph = graph.copy()
        self.graph.nodes = []

    # -- helpers -----------------------------------------------------------------------------------------
    def q(self, name: str, node: Node) -> QuantParams:
        quant = self.graph.tensors[name].quant
        if quant is None:
            raise UnsupportedModelError("operand has no quantization parameters", node=node.origin, tensor=name)
        return quant

    def emit(self, op: str, inputs: list[str], outputs: list[str], attrs: dict, origin: Node) -> None:
        self.graph.nodes.append(Node(f"{origin.name}/{op}" if op != origin.op else origin.name, op, inputs,
                                     outputs, attrs, origin=origin.origin))

    def temp(self, base: str, dtype: str, shape: tuple[int, ...]) -> str:
        name = self.graph.unique_name(base)
        self.graph.add_tensor(Tensor(name, dtype, shape))
        return name

    def requant(self, acc: str, real_scale: np.ndarray | float, out: str, node: Node, in_zero: int = 0) -> None:
        """acc (int32) * real_scale -> out (int8) in the target's requant style."""
        out_q = self.q(out, node)
        if out_q.per_channel:
            raise UnsupportedModelError("per-channel quantized activation output", node=node.origin, tensor=out)
        lo, hi = DTYPE_RANGES[self.graph.tensors[out].dtype]
        zp = int(out_q.zero_point)
        real = np.asarray(real_scale, dtype=np.float64)
        try:
            if self.target.requant == "cmsis":
                mult, shift = arith.cmsis_requant_params(real)
                attrs = {"multiplier": _squeeze(mult), "shift": _squeeze(shift), "zero_point": zp}
                op = "RequantCMSIS"
            else:
                mul, shift = without_common_twos(*arith.ita_requant_params(real))
                attrs = {"mul": _squeeze(mul), "shift": _squeeze(shift), "add": zp}
                op = "Requant"
        except ValueError as exc:
            raise UnsupportedModelError(f"cannot requantize: {exc}", node=node.origin) from None
        if in_zero:
            centered = self.temp(f"{acc}_centered", "int16", self.graph.tensors[acc].shape)
            self.emit("Add", [acc, self.zero_scalar()], [centered], {"a_zero": in_zero}, node)
            acc = centered
        self.emit(op, [acc], [out], {**attrs, "lo": lo, "hi": hi}, node)

    def zero_scalar(self) -> str:
        if "zero_i8" not in self.graph.tensors:
            self.graph.add_tensor(Tensor("zero_i8", "int8", (), np.zeros((), np.int8)))
        return "zero_i8"

    # -- lowering of each quantized op ---------------------------------------------------------------------
    def lower(self) -> Graph:
        for node in self.src.nodes:
            handler = LOWERINGS.get(node.op)
            if handler is None:
                self.graph.nodes.append(node)  # already integer (layout ops, Deeploy dialect)
            else:
                with node_context(node.origin or node.name, node.op, "integerize"):
                    handler(self, node)
        self.graph.remove_unused()
        self.graph.meta["target"] = self.target.name
        self.graph.meta["integerized"] = True
        return self.graph


def _squeeze(values: np.ndarray) -> np.ndarray | int:
    values = np.asarray(values)
    if values.size == 1:
        return int(values.reshape(-1)[0])
    return values.astype(np.int64)


def _single_zero(quant: QuantParams, what: str, node: Node) -> int:
    zero = np.asarray(quant.zero_point)
    if zero.size > 1 and np.any(zero != zero.reshape(-1)[0]):
        raise UnsupportedModelError(f"{what} has per-channel zero points (use symmetric weights)", node=node.origin)
    return int(zero.reshape(-1)[0])


def _check_weight_axis(low: _Lowering, quant: QuantParams, name: str, node: Node, channel_axis: int) -> None:
    if quant.per_channel and quant.axis % len(low.graph.tensors[name].shape) != channel_axis:
        raise UnsupportedModelError(f"per-channel weight quantized along axis {quant.axis}, expected the "
                                    f"output-channel axis {channel_axis}", node=node.origin, tensor=name)


def lower_matmul(low: _Lowering, node: Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    qa, qb = low.q(a, node), low.q(b, node)
    if qa.per_channel:
        raise UnsupportedModelError("per-channel quantized left matmul operand", node=node.origin, tensor=a)
    b_shape = low.graph.tensors[b].shape
    trans_b = bool(node.attrs.get("trans_b"))
    _check_weight_axis(low, qb, b, node, len(b_shape) - 2 if trans_b else len(b_shape) - 1)
    attrs = {"a_zero": _single_zero(qa, "left operand", node), "b_zero": _single_zero(qb, "right operand", node)}
    if trans_b:
        attrs["trans_b"] = 1
    inputs = [a, b]
    if len(node.inputs) > 2:
        bias = node.inputs[2]
        qbias = low.q(bias, node)
        expected = (qa.scale * qb.scale).astype(np.float32)
        if low.graph.tensors[bias].dtype != "int32" or not np.allclose(qbias.scale, expected, rtol=1e-5):
            raise UnsupportedModelError("matmul bias must be int32 at scale s_a*s_b", node=node.origin, tensor=bias)
        inputs.append(bias)
    out = node.outputs[0]
    acc = low.temp(f"{out}_acc", "int32", low.graph.tensors[out].shape)
    low.emit("MatMulInt", inputs, [acc], attrs, node)
    low.requant(acc, np.float64(qa.scale) * qb.scale.astype(np.float64) / float(low.q(out, node).scale), out, node)


def lower_conv(low: _Lowering, node: Node) -> None:
    """QConv -> ConvInt (input zero point inside the kernel, symmetric per-channel weights) + per-channel requant
    along the output's channel axis 1."""
    x, w = node.inputs[0], node.inputs[1]
    qx, qw = low.q(x, node), low.q(w, node)
    if qx.per_channel:
        raise UnsupportedModelError("per-channel quantized convolution input", node=node.origin, tensor=x)
    _check_weight_axis(low, qw, w, node, 0)
    if np.any(np.asarray(qw.zero_point) != 0):
        raise UnsupportedModelError("convolution weights with a zero point (quantize them symmetric)",
                                    node=node.origin, tensor=w)
    keys = ("kernel_shape", "strides", "pads", "dilations", "group")
    attrs = {k: node.attrs[k] for k in keys if k in node.attrs}
    attrs["a_zero"] = _single_zero(qx, "convolution input", node)
    inputs = [x, w]
    scale = (qx.scale * qw.scale).astype(np.float32)
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = node.inputs[2]
        if low.graph.tensors[bias].dtype != "int32" or not np.allclose(low.q(bias, node).scale, scale, rtol=1e-5):
            raise UnsupportedModelError("convolution bias must be int32 at scale s_x*s_w", node=node.origin,
                                        tensor=bias)
        inputs.append(bias)
    out = node.outputs[0]
    shape = low.graph.tensors[out].shape
    acc = low.temp(f"{out}_acc", "int32", shape)
    low.emit("ConvInt", inputs, [acc], attrs, node)
    real = np.float64(qx.scale) * np.asarray(qw.scale, np.float64) / float(low.q(out, node).scale)
    if real.size > 1:                         # one scale per output channel: along axis 1 of [N, M, ...]
        real = real.reshape(real.size, *[1] * (len(shape) - 2))
    low.requant(acc, real, out, node)


def _broadcast_channel(low: _Lowering, values: np.ndarray, quant: QuantParams, operand: str) -> np.ndarray:
    """Per-channel values of an operand, shaped [C, 1, ...] so they broadcast along its channel axis."""
    values = np.asarray(values)
    if values.size == 1:
        return values.reshape(())
    trailing = len(low.graph.tensors[operand].shape) - quant.axis - 1
    return values.reshape((values.size,) + (1,) * trailing)


def _magnitude(low: _Lowering, name: str, quant: QuantParams) -> float:
    """Largest |real value| an operand can take: from its data for constants, its dtype otherwise."""
    t = low.graph.tensors[name]
    zero = int(np.asarray(quant.zero_point).reshape(-1)[0])
    if t.is_const:
        codes = np.abs(t.data.astype(np.int64) - zero)
    else:
        lo, hi = DTYPE_RANGES[t.dtype]
        codes = np.array([abs(lo - zero), abs(hi - zero)])
    return float(codes.max(initial=0)) * float(np.max(quant.scale))


def lower_add(low: _Lowering, node: Node, sign: int = 1) -> None:
    """acc = (a-za)*mul_a + (b-zb)*mul_b with mul_x = round(s_x/s_y * 2^k); y = requant(acc * 2^-k).

    k is the largest exponent (<= ADD_ALIGN_BITS) that keeps |acc| < 2^30 for every admissible input, so
    an operand with a huge scale but tiny values (an all-zero bias) cannot starve the other one.
    With CMSIS-NN arithmetic, int8 Adds of per-tensor operands follow TFLite's Add instead (AddS8).
    """
    a, b = node.inputs
    qa, qb = low.q(a, node), low.q(b, node)
    out = node.outputs[0]
    if sign == 1 and low.target.requant == "cmsis" and _tflite_add_operands(low, node):
        lower_add_tflite(low, node)
        return
    s_out = float(low.q(out, node).scale)
    bound = (_magnitude(low, a, qa) + _magnitude(low, b, qb)) / s_out
    k = int(min(ADD_ALIGN_BITS, np.floor(np.log2(2.0**30 / max(bound, 1e-30)))))
    mul_a = np.round(qa.scale.astype(np.float64) / s_out * 2.0**k).astype(np.int64)
    mul_b = sign * np.round(qb.scale.astype(np.float64) / s_out * 2.0**k).astype(np.int64)
    attrs = {"mul_a": _squeeze(_broadcast_channel(low, mul_a, qa, a)),
             "mul_b": _squeeze(_broadcast_channel(low, mul_b, qb, b)),
             "a_zero": _single_zero(qa, "operand", node), "b_zero": _single_zero(qb, "operand", node)}
    acc = low.temp(f"{out}_acc", "int32", low.graph.tensors[out].shape)
    low.emit("Add", [a, b], [acc], attrs, node)
    low.requant(acc, 2.0**-k, out, node)


def _tflite_add_operands(low: _Lowering, node: Node) -> bool:
    """Both operands and the output int8 with per-tensor quantization (what arm_elementwise_add_s8 takes)."""
    names = [*node.inputs, node.outputs[0]]
    return all(low.graph.tensors[n].dtype == "int8" and not low.q(n, node).per_channel
               and np.asarray(low.q(n, node).zero_point).size == 1 for n in names)


def lower_add_tflite(low: _Lowering, node: Node) -> None:
    """AddS8: TFLite's int8 Add (arithmetic contract 2 for Add; arm_elementwise_add_s8 on Cortex-M)."""
    a, b = node.inputs
    qa, qb, qo = (low.q(n, node) for n in (a, b, node.outputs[0]))
    params = arith.add_cmsis_params(float(qa.scale), float(qb.scale), float(qo.scale))
    lo, hi = DTYPE_RANGES["int8"]
    low.emit("AddS8", [a, b], [node.outputs[0]], {
        "a_offset": -_single_zero(qa, "operand", node), "b_offset": -_single_zero(qb, "operand", node),
        **params, "left_shift": arith.ADD_LEFT_SHIFT, "zero_point": int(np.asarray(qo.zero_point).reshape(-1)[0]),
        "lo": lo, "hi": hi}, node)


def lower_sub(low: _Lowering, node: Node) -> None:
    lower_add(low, node, sign=-1)


def lower_mul(low: _Lowering, node: Node) -> None:
    a, b = node.inputs
    qa, qb = low.q(a, node), low.q(b, node)
    if qa.per_channel:
        a, b, qa, qb = b, a, qb, qa
    if qa.per_channel:
        raise UnsupportedModelError("Mul of two per-channel quantized operands", node=node.origin)
    out = node.outputs[0]
    out_shape = low.graph.tensors[out].shape
    if qb.per_channel and (len(low.graph.tensors[b].shape) != 1 or qb.axis != 0):
        raise UnsupportedModelError("per-channel Mul operand must be a vector over the last axis", node=node.origin)
    acc = low.temp(f"{out}_acc", "int32", out_shape)
    low.emit("Mul", [a, b], [acc], {"a_zero": _single_zero(qa, "operand", node),
                                     "b_zero": _single_zero(qb, "operand", node)}, node)
    low.requant(acc, float(qa.scale) * qb.scale.astype(np.float64) / float(low.q(out, node).scale), out, node)


def lower_div(low: _Lowering, node: Node) -> None:
    a, b = node.inputs
    tb = low.graph.tensors[b]
    if not tb.is_const or tb.size != 1:
        raise UnsupportedModelError("Div by a non-constant or non-scalar divisor", node=node.origin, tensor=b)
    qa, qb = low.q(a, node), low.q(b, node)
    divisor = float(dequantize(tb.data.astype(np.int64), qb.scale, qb.zero_point, None).reshape(-1)[0])
    if divisor <= 0:
        raise UnsupportedModelError("Div by a non-positive constant", node=node.origin, tensor=b)
    out = node.outputs[0]
    low.requant(a, float(qa.scale) / divisor / float(low.q(out, node).scale), out, node,
                in_zero=_single_zero(qa, "operand", node))


def lower_requant(low: _Lowering, node: Node) -> None:
    a, out = node.inputs[0], node.outputs[0]
    qa = low.q(a, node)
    low.requant(a, float(qa.scale) / float(low.q(out, node).scale), out, node,
                in_zero=_single_zero(qa, "operand", node))


def lower_unary_lut(low: _Lowering, node: Node) -> None:
    """Exact table: out[i] = quantize(f(dequantize(i))) for every representable input i."""
    a, out = node.inputs[0], node.outputs[0]
    qa, qo = low.q(a, node), low.q(out, node)
    in_lo, in_hi = DTYPE_RANGES[low.graph.tensors[a].dtype]
    if in_hi - in_lo > 255:
        raise UnsupportedModelError(f"{node.op[1:]} on a wider than 8-bit input", node=node.origin, tensor=a)
    codes = np.arange(in_lo, in_hi + 1, dtype=np.int64)
    real = dequantize(codes, qa.scale, qa.zero_point, None).astype(np.float64)
    fn: Callable = FLOAT_FUNCS[node.op]
    lo, hi = DTYPE_RANGES[low.graph.tensors[out].dtype]
    table = quantize(np.asarray(fn(node, real), dtype=np.float32), qo.scale, qo.zero_point, lo, hi)
    low.emit("LUT", [a], [out], {"table": table.astype(np.int64), "in_min": in_lo}, node)


def softmax_levels(calibrated_scale: float) -> int:
    """Probability steps L of the softmax output (scale 1/L, saturating at 127).

    Following the calibrated output scale keeps small probabilities (1/seq for near-uniform attention)
    representable; L = 127 (probabilities up to 1) is the published ITA/Deeploy configuration.
    """
    return int(np.clip(np.round(1.0 / calibrated_scale), SOFTMAX_OUT_LEVELS - 1, SOFTMAX_MAX_LEVELS))


#: I-BERT input scale used when the calibrated one is too coarse for its exp (coarser than ln 2 / 4): the logits
#: are requantized to int16 at this scale first
IBERT_COARSE_SCALE = float(np.log(2.0) / 32.0)


def ita_octave_bits(in_scale: float) -> int:
    """Input resolution of the ITA softmax, 2^b steps per octave (scale ln 2 / 2^b): ITA's b = 5 unless the
    calibrated input is coarser, then the largest b whose int8 range still covers it. ITA's exp is a power of two,
    so finer steps only refine its rounding, while clipping the logits (BERT's scores span +-10 and more; +-2.8
    at b = 5) flattens the attention: MiniLM's embedding cosine to float rises from 0.88 (b = 5) to 0.98."""
    bits = int(np.floor(np.log2(np.log(2.0) / in_scale))) if in_scale > 0 else arith.ITA_MAX_OCTAVE_BITS
    return int(np.clip(bits, 1, arith.ITA_MAX_OCTAVE_BITS))


def lower_softmax(low: _Lowering, node: Node) -> None:
    """QSoftmax -> the target's integer softmax; the input factor (a constant scaling folded in by the frontend)
    scales the input scale; a second input is the key mask (contract 6) and goes to the integer softmax."""
    a, out = node.inputs[0], node.outputs[0]
    mask = node.inputs[1:]
    qa = low.q(a, node)
    in_scale = float(qa.scale) * float(node.attrs.get("input_factor", 1.0))
    t_out = low.graph.tensors[out]
    levels = softmax_levels(float(low.q(out, node).scale))
    t_out.quant = QuantParams(np.array(1.0 / levels, np.float32), np.array(0, np.int64))
    hi = SOFTMAX_OUT_LEVELS - 1
    if low.target.softmax == "cmsis":
        lower_softmax_tflite(low, node, in_scale)
        return
    if low.target.softmax == "ita":
        group = int(low.target.section("accelerator").get("softmax_group", 16))
        if low.graph.tensors[a].shape[-1] % group:
            raise UnsupportedModelError(f"ITA softmax needs a row length that is a multiple of {group}",
                                        node=node.origin, tensor=a)
        bits = ita_octave_bits(in_scale)
        logit_scale = float(np.log(2.0) / (1 << bits))
        logits = low.temp(f"{a}_ita", "int8", low.graph.tensors[a].shape)
        low.graph.tensors[logits].quant = QuantParams(np.array(logit_scale, np.float32), np.array(0))
        low.requant(a, in_scale / logit_scale, logits, node, in_zero=_single_zero(qa, "input", node))
        t_out.dtype = "uint8"
        t_out.quant = QuantParams(np.array(1.0 / ITA_SOFTMAX_LEVELS, np.float32), np.array(0, np.int64))
        low.emit("ITAPartialMax", [logits, *mask], [out], {"group_width": group,
                                                          "n_levels": 2 * (ITA_SOFTMAX_LEVELS + 1),
                                                          "lo": 0, "hi": ITA_SOFTMAX_LEVELS,
                                                          "octave_bits": bits}, node)
        return
    scale, rescale = in_scale, None
    if scale < IBERT_MIN_SCALE:               # finer than the output can resolve: coarsen so 32-bit sums suffice
        rescale = IBERT_MIN_SCALE, "int8"
    elif scale > 4 * IBERT_COARSE_SCALE:      # too coarse for the exp polynomial: refine into int16
        rescale = IBERT_COARSE_SCALE, "int16"
    if rescale is not None:                   # (a zero point alone needs nothing: the row max cancels it)
        target, dtype = rescale
        rescaled = low.temp(f"{a}_softmax_in", dtype, low.graph.tensors[a].shape)
        low.graph.tensors[rescaled].quant = QuantParams(np.array(target, np.float32), np.array(0))
        low.requant(a, scale / target, rescaled, node, in_zero=_single_zero(qa, "input", node))
        a, scale = rescaled, target
    log2 = int(np.floor(np.log(2.0) / scale))
    if log2 < 1:
        raise UnsupportedModelError(f"softmax input scale {scale:g} is coarser than ln 2", node=node.origin)
    coeff_b = int(np.floor(IBERT_B / scale))
    coeff_c = int(np.floor(IBERT_C / (IBERT_A * scale * scale)))
    row = low.graph.tensors[a].shape[-1]
    if (coeff_b**2 + coeff_c) * max(row, levels) >= 2**31:
        raise UnsupportedModelError(f"softmax input scale {scale:g} too fine for 32-bit I-BERT sums",
                                    node=node.origin)
    low.emit("ISoftmax", [a, *mask], [out], {"coeff_a": 1, "coeff_b": coeff_b, "coeff_c": coeff_c, "log2": log2,
                                             "n_levels": levels + 1, "round_nearest": 1, "lo": 0, "hi": hi}, node)


def lower_softmax_tflite(low: _Lowering, node: Node, in_scale: float) -> None:
    """SoftmaxS8: arm_softmax_s8 / TFLite int8 softmax; the output is fixed at scale 1/256, zero point -128."""
    a, out = node.inputs[0], node.outputs[0]
    qa = low.q(a, node)
    if low.graph.tensors[a].dtype != "int8" or qa.per_channel:
        raise UnsupportedModelError("arm_softmax_s8 needs a per-tensor int8 input", node=node.origin, tensor=a)
    try:
        multiplier, shift, diff_min = arith.softmax_cmsis_params(in_scale)
    except ValueError as exc:
        raise UnsupportedModelError(str(exc), node=node.origin, tensor=a) from None
    low.graph.tensors[out].quant = QuantParams(np.array(1.0 / 256.0, np.float32), np.array(-128, np.int64))
    low.emit("SoftmaxS8", [a, *node.inputs[1:]], [out], {"multiplier": multiplier, "shift": shift,
                                                          "diff_min": diff_min}, node)


#: an 8-bit LayerNorm input is widened by this factor first, so the integer mean and floor sqrt (contract 5) keep
#: their rounding far below one input step
LAYERNORM_WIDEN = 128
#: largest |weight| and |bias| of the integer LayerNorm (int32 vectors in C, products in int64)
LAYERNORM_PARAM_LIMIT = 2**30
#: preferred |weight| limit: below 2^15 the kernels compute (x - mean) * w of a 16-bit input in 32 bits (several
#: times faster on RV32 and Cortex-M), at the price of coarser fixed point (log2d fraction bits of an output step)
LAYERNORM_NARROW_LIMIT = 2**15 - 1
#: the narrow limit is used when it keeps at least this many fraction bits: the truncated quotient then errs by
#: less than 1/4 output step before the final rounding (MiniLM: Spearman and cosine unchanged, see the note)
LAYERNORM_MIN_FRACTION_BITS = 2


def lower_layer_norm(low: _Lowering, node: Node) -> None:
    """QLayerNorm -> ILayerNorm (I-BERT integer LayerNorm, Deeploy's iLayerNorm contract):
    y = clip((c_div((x - mean) * w, std) + b) >> log2d) with w = round(gamma/s_out * 2^log2d),
    b = round((beta/s_out + z_out + 1/2) * 2^log2d). The input scale cancels in (x - mean)/std; an 8-bit input is
    widened by LAYERNORM_WIDEN into int16 first so the integer mean and sqrt are fine-grained."""
    x, out = node.inputs[0], node.outputs[0]
    qx, qo = low.q(x, node), low.q(out, node)
    if qo.per_channel:
        raise UnsupportedModelError("per-channel quantized LayerNorm output", node=node.origin, tensor=out)
    gamma = np.asarray(node.attrs["gamma"], np.float64) / float(qo.scale)
    beta = np.asarray(node.attrs["beta"], np.float64) / float(qo.scale) + float(np.asarray(qo.zero_point))
    top = max(float(np.abs(gamma).max(initial=0)), float(np.abs(beta).max(initial=0)) + 1.0, 1e-30)
    log2d = int(np.clip(np.floor(np.log2(LAYERNORM_NARROW_LIMIT / top)), 0, 30))
    if log2d < LAYERNORM_MIN_FRACTION_BITS:
        log2d = int(np.clip(np.floor(np.log2(LAYERNORM_PARAM_LIMIT / top)), 0, 30))
    if top * 2.0**log2d >= LAYERNORM_PARAM_LIMIT:
        raise UnsupportedModelError(f"LayerNorm scale/bias of {top:g} output steps do not fit its integer "
                                    "parameters", node=node.origin)
    weight = low.graph.add_const(f"{out}_ln_weight", np.round(gamma * 2.0**log2d).astype(np.int32), "int32")
    bias = low.graph.add_const(f"{out}_ln_bias", np.round((beta + 0.5) * 2.0**log2d).astype(np.int32), "int32")
    src = low.graph.tensors[x]
    lo, hi = DTYPE_RANGES[src.dtype]
    if hi - lo <= 255:
        wide = low.temp(f"{x}_wide", "int16", src.shape)
        factor = low.graph.add_const(f"{x}_widen", np.array(LAYERNORM_WIDEN, np.int16), "int16")
        low.emit("Mul", [x, factor.name], [wide], {"a_zero": _single_zero(qx, "input", node), "b_zero": 0}, node)
        x = wide
    o_lo, o_hi = DTYPE_RANGES[low.graph.tensors[out].dtype]
    low.emit("ILayerNorm", [x, weight.name, bias.name], [out], {"log2d": log2d, "lo": o_lo, "hi": o_hi}, node)


LOWERINGS: dict[str, Callable[[_Lowering, Node], None]] = {
    "QMatMul": lower_matmul, "QConv": lower_conv, "QAdd": lower_add, "QSub": lower_sub, "QMul": lower_mul,
    "QDiv": lower_div,
    "QRequant": lower_requant, "QRelu": lower_unary_lut, "QTanh": lower_unary_lut, "QSigmoid": lower_unary_lut,
    "QGelu": lower_unary_lut, "QTable": lower_unary_lut, "QSoftmax": lower_softmax, "QLayerNorm": lower_layer_norm,
}


def integerize(graph: Graph, target: str | Target) -> Graph:
    """The integer-only graph for `target`'s arithmetic style; verified (no float, no overflow)."""
    tgt = load_target(target)
    if graph.meta.get("integerized") or graph.meta.get("dialect") == "deeploy":
        result = graph.copy()
    else:
        result = _Lowering(graph, tgt).lower()
    result.meta["target"] = tgt.name
    result.meta["integerized"] = True
    verify(result, integer_only=True)
    return result
