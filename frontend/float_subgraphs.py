"""Float subgraphs of a QDQ model that the importer turns into one integer op each.

onnxruntime leaves some ops of a real transformer unquantized: the attention-mask arithmetic (Cast, Sub from 1,
Mul by a large negative, Where, Expand, ...), GELU's Erf subgraph, the 1/sqrt(d) scaling before the softmax.
Such a subgraph is kept as ONNX nodes and evaluated with ONNX's reference implementation, never guessed:

* a *mask value* is computed only from one integer graph input (the attention mask) and constants; it is probed
  with 0/1 mask vectors and accepted only when it is exactly a key-padding mask (0 where the mask is 1, a value so
  negative that the position vanishes from the softmax where it is 0) -> the softmax's key-mask operand;
* an *elementwise expression* of one 8-bit activation and scalar constants (GELU as Erf or tanh, x*sigmoid(x),
  ...) is evaluated on every input code -> a 256-entry table (exact: the table is the float subgraph);
* a softmax input `(x * c) + mask` (or `x / c`) -> a softmax of x with input scale s_x * c and a key mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..errors import UnsupportedModelError

#: a masked position's additive value must be at most this (float32 exp() of it is 0) ...
MASK_LIMIT = -1.0e4
#: ... and below every score by this factor of the scores' range, so the position cannot win a softmax row
MASK_MARGIN = 4.0
#: random 0/1 patterns probed besides all-ones, all-zeros and left-aligned padding
MASK_PROBES = 6
#: ops an elementwise table may contain (each applied per element; constants are scalars)
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Erf", "Tanh", "Sigmoid", "Relu", "Exp", "Pow", "Sqrt", "Neg",
                   "Abs", "Clip", "Max", "Min", "HardSigmoid", "HardSwish", "Gelu", "Softplus", "Identity", "Cast"}


@dataclass(frozen=True)
class Derived:
    """A value computed only from integer graph input `source` and constants: the ONNX nodes that compute it."""

    source: str
    nodes: tuple[onnx.NodeProto, ...]
    output: str

    @staticmethod
    def combine(values: list[Derived], node: onnx.NodeProto) -> Derived:
        """`node` applied to `values` (all computed from the same input)."""
        sources = sorted({v.source for v in values})
        if len(sources) > 1:
            raise UnsupportedModelError(f"{node.op_type} combines values computed from the inputs "
                                        f"{', '.join(sources)}", node=node.name)
        nodes: list[onnx.NodeProto] = []
        for value in values:
            nodes += [n for n in value.nodes if all(n is not m for m in nodes)]
        return Derived(sources[0], (*nodes, node), node.output[0])

    def evaluate(self, source_value: np.ndarray, consts: dict[str, np.ndarray]) -> np.ndarray:
        """This value for `source_value` fed to its input."""
        if not self.nodes:
            return source_value
        return run_subgraph(list(self.nodes), {self.source: source_value}, consts, self.output)


def run_subgraph(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray],
         output: str) -> np.ndarray:
    """Evaluate `nodes` (topologically ordered) with ONNX's reference implementation."""
    produced = {o for n in nodes for o in n.output}
    needed = {i for n in nodes for i in n.input if i and i not in produced and i not in inputs}
    missing = sorted(needed - set(consts))
    if missing:
        raise UnsupportedModelError(f"float subgraph reads '{missing[0]}', which is neither a constant nor its input",
                                    node=nodes[-1].name)
    inits = [numpy_helper.from_array(np.asarray(consts[n]), n) for n in sorted(needed)]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in inputs.items()]
    outs = [helper.make_tensor_value_info(output, onnx.TensorProto.UNDEFINED, None)]
    graph = helper.make_graph(list(nodes), "subgraph", ins, outs, initializer=inits)
    opsets = {n.domain for n in nodes}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, 21 if d == "" else 1) for d in opsets])
    return np.asarray(ReferenceEvaluator(model).run(None, inputs)[0])


def _mask_probes(length: int, seed: int = 0) -> list[np.ndarray]:
    """0/1 key masks: all ones, all zeros, left-aligned padding of several lengths, random patterns."""
    rng = np.random.default_rng(seed)
    probes = [np.ones(length, np.int64), np.zeros(length, np.int64)]
    probes += [(np.arange(length) < k).astype(np.int64) for k in sorted({1, length // 2, length - 1}) if 0 < k]
    probes += [rng.integers(0, 2, length).astype(np.int64) for _ in range(MASK_PROBES)]
    return probes


def key_mask_source(value: Derived, consts: dict[str, np.ndarray], source_shape: tuple[int, ...],
                    source_dtype: np.dtype, scores_shape: tuple[int, ...], score_bound: float,
                    where: str) -> None:
    """Accept `value` as the additive key-padding mask of a softmax over `scores_shape`, or refuse.

    For every probe m (0/1 over the last axis of `source`): value(m) broadcast to the scores must be 0 where
    m[j] = 1 and at most min(MASK_LIMIT, -MASK_MARGIN * score_bound) where m[j] = 0, for every row."""
    if len(source_shape) != 2 or source_shape[0] != 1:
        raise UnsupportedModelError(f"attention mask input of shape {list(source_shape)}: tinydeploy takes a "
                                    "key mask [1, seq] (batch 1)", tensor=value.source, node=where)
    length = source_shape[1]
    if scores_shape[-1] != length:
        raise UnsupportedModelError(f"attention mask of length {length} for softmax rows of {scores_shape[-1]}",
                                    tensor=value.source, node=where)
    limit = min(MASK_LIMIT, -MASK_MARGIN * score_bound)
    for probe in _mask_probes(length):
        added = value.evaluate(probe.reshape(source_shape).astype(source_dtype), consts).astype(np.float64)
        try:
            added = np.broadcast_to(added, scores_shape)
        except ValueError:
            raise UnsupportedModelError(f"attention mask value of shape {list(added.shape)} does not broadcast to "
                                        f"the scores {list(scores_shape)}", node=where) from None
        keep = np.broadcast_to(probe.astype(bool), scores_shape)
        if np.any(added[keep] != 0.0) or np.any(added[~keep] > limit):
            raise UnsupportedModelError(
                "the value added to the softmax input is not a key-padding mask of input "
                f"'{value.source}' (0 for kept positions, <= {limit:g} for masked ones; a causal or additive "
                "bias mask is not supported)", node=where)


def elementwise_table(nodes: list[onnx.NodeProto], leaves: list[str], consts: dict[str, np.ndarray],
                      real_inputs: np.ndarray, output: str) -> np.ndarray:
    """The float subgraph `nodes` (elementwise in one activation, read through the ONNX names `leaves`; scalar
    constants) evaluated on `real_inputs`."""
    for node in nodes:
        if node.op_type not in ELEMENTWISE_OPS:
            raise UnsupportedModelError(f"{node.op_type} in a float subgraph between DequantizeLinear and "
                                        "QuantizeLinear (tinydeploy integerizes elementwise subgraphs of "
                                        f"{', '.join(sorted(ELEMENTWISE_OPS))})", node=node.name)
        for name in node.input:
            if name in consts and np.asarray(consts[name]).size != 1:
                raise UnsupportedModelError(f"{node.op_type} with a non-scalar constant '{name}' in a float "
                                            "subgraph (only scalar constants make it a per-element function)",
                                            node=node.name)
    real = real_inputs.astype(np.float32)
    values = run_subgraph(nodes, {leaf: real for leaf in leaves}, consts, output)
    if values.shape != real_inputs.shape:
        raise UnsupportedModelError("float subgraph is not elementwise", node=nodes[-1].name)
    return values.astype(np.float64)
