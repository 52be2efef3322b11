"""Static QDQ quantization recipes for transformers (onnxruntime `quantize_static` with a recipe).

`int8`: every MatMul/Add/Mul/Gather/LayerNormalization quantized to int8 (symmetric, per-channel weights), as
the MobileBERT zoo does — except the float islands an integer softmax, LUT or LayerNorm takes whole:
  * the attention-mask arithmetic and the Add that puts the mask on the scores (quantizing it at the mask's
    scale, ~1e36, wipes out the scores), the scores' scaling and the Softmax itself: the frontend turns
    `softmax(scores * c + mask)` into one integer softmax with a key mask (DESIGN.md contract 6);
  * the nodes of GELU's Erf/tanh subgraph: the frontend makes one exact 256-entry table of them.

`mixed`: as int8, but the residual stream (LayerNorm inputs and outputs, the Adds that build it, the projections
that feed them, the graph outputs) is int16: per-tensor int8 scales there are set by outliers (MiniLM's layer-0
FFN output reaches 180 while 99.9% of its values lie within 1.3), so most values would round to 0. GEMM operands
stay int8: a LayerNorm output the GEMMs read gets an Identity copy that is quantized to int8 for them, and GELU's
output (a GEMM operand that is almost never negative) is asymmetric int8, which doubles its resolution; its
zero point folds into the next GEMM's bias. Measured on MiniLM, 44 STS pairs, seq 64, onnxruntime on the QDQ
model (mean cosine of the int8 embedding to float's): residual stream only 0.966; + LayerNorm outputs int16 with
int8 GEMM copies 0.975; + asymmetric GELU output 0.985 (all LayerNorm outputs int16, GEMMs too: 0.982; projection
outputs left int8: 0.867).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import TinyDeployError

if TYPE_CHECKING:       # onnx and onnxruntime load when a model is quantized, not when the CLI starts
    import onnx

#: ops onnxruntime wraps in Q/DQ
TRANSFORMER_OP_TYPES = ["MatMul", "Gemm", "Add", "Identity", "Mul", "Gather", "LayerNormalization", "Reshape",
                        "Transpose", "Softmax", "Squeeze", "Unsqueeze", "Concat", "Slice", "Relu", "Tanh", "Div", "Sub"]
#: ops of an activation function's float island (GELU via Erf or tanh)
ACTIVATION_OPS = {"Erf", "Tanh", "Gelu", "Sigmoid"}
ISLAND_OPS = {"Add", "Mul", "Div", "Sub", "Pow", "Erf", "Tanh", "Sigmoid", "Gelu"}
RECIPES = ("int8", "mixed")


@dataclass(frozen=True)
class _Wiring:
    """Who reads and who writes each value of a model, and which values are constants."""

    readers: dict[str, list[onnx.NodeProto]]
    producers: dict[str, onnx.NodeProto]
    constants: set[str]
    scalars: set[str]          # constants of one element
    initializers: dict[str, onnx.TensorProto]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Wiring:
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        producers = {o: n for n in model.graph.node for o in n.output}
        initializers = {i.name: i for i in model.graph.initializer}
        constants = set(initializers)
        constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        scalars = {name for name, i in initializers.items() if int(np.prod(i.dims, dtype=np.int64)) == 1}
        scalars |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"
                    and all(int(np.prod(a.t.dims, dtype=np.int64)) == 1 for a in n.attribute if a.name == "value")}
        for node in model.graph.node:      # torch's export shares equal weights through Identity nodes
            if node.op_type == "Identity" and node.input[0] in constants:
                constants.add(node.output[0])
                if node.input[0] in scalars:
                    scalars.add(node.output[0])
        return cls(readers, producers, constants, scalars, initializers)


def _score_scaling(wiring: _Wiring, scores: list[str]) -> set[str]:
    """The Mul/Div by a constant that scales attention scores before the mask is added (BERT's 1/sqrt(d)): left
    in float, the frontend folds it into the softmax's input scale, so QK^T's requant feeds the softmax directly
    (one accelerator job) instead of a requantized multiply on the cores."""
    found = set()
    for name in scores:
        node = wiring.producers.get(name)
        if node is not None and node.op_type in ("Mul", "Div") and node.input[1] in wiring.constants:
            found.add(node.name)
    return found


def _mask_nodes(wiring: _Wiring, mask_inputs: Iterable[str]) -> set[str]:
    """Names of the nodes computed from the mask inputs, the Adds that put that onto activations, the scaling of
    the scores they are added to and the Softmax after them."""
    tainted, frontier, found = set(mask_inputs), list(mask_inputs), set()
    while frontier:
        for node in wiring.readers.get(frontier.pop(), []):
            if node.name in found:
                continue
            found.add(node.name)
            if node.op_type == "Add" and not all(i in tainted or i in wiring.constants for i in node.input):
                found |= {n.name for n in wiring.readers.get(node.output[0], []) if n.op_type == "Softmax"}
                found |= _score_scaling(wiring, [i for i in node.input if i not in tainted])
                continue
            tainted.update(node.output)
            frontier.extend(node.output)
    return found


def mask_float_nodes(float_path: str | Path, mask_inputs: Iterable[str] = ("attention_mask",)) -> list[str]:
    """Names of the nodes a quantizer must leave in float for the frontend's masked softmax (see _mask_nodes)."""
    import onnx

    model = onnx.load(str(float_path))
    masks = [m for m in mask_inputs if any(i.name == m for i in model.graph.input)]
    return sorted(_mask_nodes(_Wiring.of(model), masks))


def _activation_islands(wiring: _Wiring, model: onnx.ModelProto) -> dict[str, set[str]]:
    """Each elementwise float island around an Erf/Tanh/... (GELU's Erf or tanh subgraph), by its output tensor:
    the names of its nodes. Backwards from the activation, the island takes every ISLAND_OPS producer whose
    constants are scalars, down to one root value (the activation's input x); forwards, the chain of ISLAND_OPS
    whose other operands are scalars, x or the island's own values (x * (1 + erf(..)) * 0.5). An island with more
    than one root is left alone."""
    readers, producers = wiring.readers, wiring.producers
    found: dict[str, set[str]] = {}
    for seed in (n for n in model.graph.node if n.op_type in ACTIVATION_OPS):
        island, values, roots, frontier = {seed.name}, set(seed.output), set(), list(seed.input[:1])
        while frontier:
            name = frontier.pop()
            node = producers.get(name)
            if name in values or name in wiring.constants or name in roots:
                continue
            if node is None or not _scalar_op(wiring, node):
                roots.add(name)                  # e.g. the bias Add before GELU: its constant is a vector
                continue
            island.add(node.name)
            values.add(name)
            frontier.extend(i for i in node.input if i not in wiring.constants)
        if len(roots) != 1:
            continue
        known = values | roots
        out = seed.output[0]
        while len(readers.get(out, [])) == 1 and _scalar_op(wiring, readers[out][0]):
            node, branch = readers[out][0], set()
            if not all(_of_root(wiring, i, known, branch) for i in node.input):
                break
            island |= branch | {node.name}
            out = node.output[0]
            known.add(out)
        found[out] = island
    return found


def _scalar_op(wiring: _Wiring, node: onnx.NodeProto) -> bool:
    """An island op whose constant operands are scalars."""
    return node.op_type in ISLAND_OPS and all(i in wiring.scalars for i in node.input if i in wiring.constants)


def _of_root(wiring: _Wiring, name: str, known: set[str], taken: set[str]) -> bool:
    """`name` is known (the root or an island value), a constant, or computed from known values by scalar ops only
    (a side branch such as 0.5 * x); the nodes of such a branch are added to `taken`."""
    if name in known or name in wiring.constants:
        return True
    node = wiring.producers.get(name)
    if node is None or not _scalar_op(wiring, node):
        return False
    taken.add(node.name)
    return all(_of_root(wiring, i, known, taken) for i in node.input)


def residual_stream(wiring: _Wiring, model: onnx.ModelProto) -> set[str]:
    """Tensors of the residual stream: every LayerNormalization input, the Adds that build it (embedding sums,
    residual Adds, the bias Adds of the projections that feed them) and the MatMul/Gather results they add, plus
    the graph outputs. LayerNorm outputs (GEMM operands) are not part of it."""
    marked: set[str] = set()
    frontier = [n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"]
    while frontier:
        name = frontier.pop()
        node = wiring.producers.get(name)
        if name in marked or name in wiring.constants or node is None or node.op_type == "LayerNormalization":
            continue
        marked.add(name)
        if node.op_type == "Add":
            frontier.extend(node.input)
    return marked | {o.name for o in model.graph.output}


def _constant_value(wiring: _Wiring, name: str) -> np.ndarray | None:
    """The value of a constant (an initializer, a Constant node's or an Identity of one), else None."""
    from onnx import numpy_helper

    if name in wiring.initializers:
        return numpy_helper.to_array(wiring.initializers[name])
    node = wiring.producers.get(name)
    if node is not None and node.op_type == "Identity":
        return _constant_value(wiring, node.input[0])
    if node is not None and node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
    return None


def _last_axis_mean(wiring: _Wiring, node: onnx.NodeProto | None, rank: int) -> bool:
    """`node` is a ReduceMean over the last axis that keeps it (axes from the attribute, or the input from
    opset 18)."""
    from onnx import helper

    if node is None or node.op_type != "ReduceMean":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1:
        axes = _constant_value(wiring, node.input[1])
    return (axes is not None and [int(a) % rank for a in np.ravel(axes)] == [rank - 1]
            and attrs.get("keepdims", 1) == 1)


def _other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _match_layernorm(wiring: _Wiring, sub: onnx.NodeProto, rank: int) -> dict | None:
    """The decomposed LayerNorm around `sub` = Sub(x, ReduceMean(x)): ReduceMean(Pow(sub, 2)) + eps -> Sqrt ->
    Div(sub, .) [-> Mul(gamma)] [-> Add(beta)], each value read only inside the pattern; else None."""
    x, mean = sub.input
    if not _last_axis_mean(wiring, wiring.producers.get(mean), rank) or wiring.producers[mean].input[0] != x:
        return None
    users = wiring.readers.get(sub.output[0], [])
    pow_ = next((n for n in users if n.op_type == "Pow"), None)
    div = next((n for n in users if n.op_type == "Div" and n.input[0] == sub.output[0]), None)
    if len(users) != 2 or pow_ is None or div is None:
        return None
    exponent = _constant_value(wiring, pow_.input[1])
    chain, value = [wiring.producers[mean], sub, pow_], pow_.output[0]
    if exponent is None or float(np.ravel(exponent)[0]) != 2.0:
        return None

    def single(name: str, op: str) -> onnx.NodeProto | None:
        readers = wiring.readers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op else None

    var = single(value, "ReduceMean")
    add = single(var.output[0], "Add") if var is not None and _last_axis_mean(wiring, var, rank) else None
    eps = _constant_value(wiring, _other(add, var.output[0])) if add is not None else None
    sqrt = single(add.output[0], "Sqrt") if eps is not None else None
    if sqrt is None or single(sqrt.output[0], "Div") is not div or div.input[1] != sqrt.output[0]:
        return None
    chain += [var, add, sqrt, div]
    out, gamma, beta = div.output[0], None, None
    mul = single(out, "Mul")
    if mul is not None and (gamma := _constant_value(wiring, _other(mul, out))) is not None:
        chain.append(mul)
        out = mul.output[0]
    bias = single(out, "Add")
    if bias is not None and (beta := _constant_value(wiring, _other(bias, out))) is not None:
        chain.append(bias)
        out = bias.output[0]
    return {"x": x, "out": out, "nodes": chain, "eps": float(np.ravel(eps)[0]), "gamma": gamma, "beta": beta}


def fuse_decomposed_layernorms(model: onnx.ModelProto) -> int:
    """Replace LayerNorms exported as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add] (opsets before 17) by
    LayerNormalization nodes (the default-domain opset raised to 17), so the recipe and the frontend treat them
    as the one op they are. Edits `model`; returns how many were fused."""
    import onnx
    from onnx import numpy_helper

    wiring = _Wiring.of(model)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.value_info, *inferred.input, *inferred.output)}
    matches = []
    for node in model.graph.node:
        rank = len(dims.get(node.output[0], [])) if node.op_type == "Sub" else 0
        found = _match_layernorm(wiring, node, rank) if rank else None
        if found is not None and dims.get(found["x"], [0])[-1] > 0:
            matches.append(found)
    if not matches:
        return 0
    replaced: dict[str, onnx.NodeProto] = {}
    dropped: set[str] = set()
    for i, found in enumerate(matches):
        hidden = dims[found["x"]][-1]
        names = (f"layernorm{i}/gamma", f"layernorm{i}/beta")
        for name, value, default in zip(names, (found["gamma"], found["beta"]), (1.0, 0.0), strict=True):
            array = np.broadcast_to(np.asarray(default if value is None else value, np.float32).ravel(), (hidden,))
            model.graph.initializer.append(numpy_helper.from_array(array.copy(), name))
        fused = onnx.helper.make_node("LayerNormalization", [found["x"], *names], [found["out"]],
                                      name=found["nodes"][-1].name + "/fused", axis=-1, epsilon=found["eps"])
        replaced[found["nodes"][-1].output[0]] = fused           # keyed by output: node names may be empty
        dropped |= {n.output[0] for n in found["nodes"]}
    nodes = [replaced.get(n.output[0], n) for n in model.graph.node
             if n.output[0] in replaced or n.output[0] not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:                       # initializers nothing reads any more (the patterns' eps, exponents)
        model.graph.initializer.remove(init)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 17:
            opset.version = 17
    return len(matches)


#: suffix of the int8 copy of a LayerNorm output that the GEMMs read (the `mixed` recipe)
GEMM_OPERAND_SUFFIX = "/gemm_operand"


def split_gemm_operands(model: onnx.ModelProto) -> list[str]:
    """Give every LayerNormalization output that MatMuls read an Identity copy for them, so the output itself (the
    residual stream in a post-LN BERT) can be int16 while the GEMMs read an int8 requantized copy. Edits `model`;
    returns the LayerNorm outputs split."""
    import onnx

    outputs = {o.name for o in model.graph.output}
    nodes, split = [], []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "LayerNormalization" or node.output[0] in outputs:
            continue
        name = node.output[0]
        gemms = [n for n in model.graph.node if n.op_type == "MatMul" and name in n.input]
        if not gemms:
            continue
        copy = name + GEMM_OPERAND_SUFFIX
        nodes.append(onnx.helper.make_node("Identity", [name], [copy], name=node.name + GEMM_OPERAND_SUFFIX))
        for gemm in gemms:
            gemm.input[:] = [copy if i == name else i for i in gemm.input]
        split.append(name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split


#: onnxruntime calibration methods by name
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def quantize_transformer(float_path: str | Path, qdq_path: str | Path, calibration: list[dict[str, np.ndarray]],
                         *, recipe: str = "int8", method: str = "minmax",
                         mask_inputs: Iterable[str] = ("attention_mask",)) -> dict:
    """Quantize an exported transformer with `recipe` and calibration `method`; returns what was left in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in CALIBRATION_METHODS:
        raise TinyDeployError(f"unknown calibration method '{method}' (choose from {', '.join(CALIBRATION_METHODS)})")
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]

    if recipe not in RECIPES:
        raise TinyDeployError(f"unknown quantization recipe '{recipe}' (choose from {', '.join(RECIPES)})")
    if not calibration:
        raise TinyDeployError("quantization needs at least one calibration sample")
    import onnx

    model = onnx.load(str(float_path))
    masks = [m for m in mask_inputs if any(i.name == m for i in model.graph.input)]
    layernorms = fuse_decomposed_layernorms(model)
    split = split_gemm_operands(model) if recipe == "mixed" else []
    wiring = _Wiring.of(model)
    islands = _activation_islands(wiring, model)
    excluded = sorted(_mask_nodes(wiring, masks).union(*islands.values()))

    overrides = {}
    if recipe == "mixed":
        overrides = {name: [{"quant_type": QuantType.QInt16}]
                     for name in sorted(residual_stream(wiring, model) | set(split))}
        overrides.update({name: [{"quant_type": QuantType.QInt8, "symmetric": False}] for name in sorted(islands)})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.samples, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs pre-processing advice through the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # onnxruntime's calibrators print progress to stdout
            quantize_static(model, str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=TRANSFORMER_OP_TYPES, nodes_to_exclude=excluded,
                            calibrate_method=calibrate,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "TensorQuantOverrides": overrides})
    finally:
        root.setLevel(level)
    return {"recipe": recipe, "method": method, "float_nodes": len(excluded), "int16_tensors": len(overrides),
            "layernorms_fused": layernorms}
