"""The IR verifier, run after every pass: structure, shapes, dtypes, and value ranges.

Range analysis propagates [lo, hi] intervals from the declared input dtypes and constant values
through every op; a tensor whose interval leaves its dtype (e.g. an int32 accumulator for a large K)
is a proof failure and raises OverflowRiskError naming the node.
"""

from __future__ import annotations

import numpy as np

from ..errors import OverflowRiskError, TinyDeployError, node_context
from .graph import DTYPE_RANGES, FLOAT_DTYPES, Graph
from .ops import OPS, op_def


def verify(graph: Graph, *, integer_only: bool = False, check_ranges: bool = True) -> dict[str, tuple[int, int]]:
    """Check `graph`; return the proven value range of every integer tensor."""
    _check_structure(graph)
    _check_shapes(graph)
    if integer_only:
        _check_integer_only(graph)
    return value_ranges(graph, check=check_ranges)


def _check_structure(graph: Graph) -> None:
    defined = set(graph.inputs) | {t.name for t in graph.constants()}
    for node in graph.nodes:
        if node.op not in OPS:
            raise TinyDeployError(f"unknown IR op '{node.op}'", node=node.origin or node.name)
        for name in node.inputs:
            if name and name not in defined:
                raise TinyDeployError("input used before it is defined (graph not topologically sorted)",
                                      node=node.name, tensor=name)
        for name in node.outputs:
            if name in defined:
                raise TinyDeployError("tensor defined twice", node=node.name, tensor=name)
            if name not in graph.tensors:
                raise TinyDeployError("output tensor has no declaration", node=node.name, tensor=name)
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            raise TinyDeployError("graph output is never produced", tensor=name)


def _check_shapes(graph: Graph) -> None:
    for node in graph.nodes:
        in_shapes = [graph.tensors[i].shape for i in node.inputs if i]
        with node_context(node.origin or node.name, node.op, "shape inference"):
            expected = op_def(node).shape(node, in_shapes)
        for name, shape in zip(node.outputs, expected, strict=True):
            if tuple(graph.tensors[name].shape) != tuple(shape):
                raise TinyDeployError(f"{node.op} declares shape {list(graph.tensors[name].shape)}, "
                                      f"inferred {list(shape)}", node=node.name, tensor=name)


def _check_integer_only(graph: Graph) -> None:
    for node in graph.nodes:
        if not op_def(node).integer:
            raise TinyDeployError(f"op {node.op} is not integer-only after integerize", node=node.name)
    for t in graph.tensors.values():
        if t.dtype in FLOAT_DTYPES:
            raise TinyDeployError(f"float tensor ({t.dtype}) remains after integerize", tensor=t.name)
        if t.quant is not None and t.name not in graph.inputs + graph.outputs:
            continue  # scales are documentation only after integerize; values are integers


def value_ranges(graph: Graph, *, check: bool = True) -> dict[str, tuple[int, int]]:
    """Interval analysis over the graph; raises OverflowRiskError when a proven range exceeds a dtype."""
    ranges: dict[str, tuple[int, int]] = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        if t.dtype in DTYPE_RANGES:
            ranges[name] = graph.meta.get("input_ranges", {}).get(name, DTYPE_RANGES[t.dtype])
    for t in graph.constants():
        if t.dtype in DTYPE_RANGES and t.data.size:
            ranges[t.name] = (int(t.data.min()), int(t.data.max()))
    for node in graph.nodes:
        definition = op_def(node)
        in_ranges = [ranges.get(i) for i in node.inputs if i]
        outs = [graph.tensors[o] for o in node.outputs]
        if definition.ranges is None or not definition.integer or any(r is None for r in in_ranges):
            for t in outs:
                if t.dtype in DTYPE_RANGES:
                    ranges[t.name] = DTYPE_RANGES[t.dtype]
            continue
        shapes = [graph.tensors[i].shape for i in node.inputs if i]
        with node_context(node.origin or node.name, node.op, "range analysis"):
            out_ranges = definition.ranges(node, in_ranges, shapes)
        for t, (lo, hi) in zip(outs, out_ranges, strict=True):
            lo, hi = int(lo), int(hi)
            if check and t.dtype in DTYPE_RANGES:
                tlo, thi = DTYPE_RANGES[t.dtype]
                if lo < tlo or hi > thi:
                    raise OverflowRiskError(
                        f"{node.op} result may reach [{lo}, {hi}], outside {t.dtype} [{tlo}, {thi}]",
                        node=node.origin or node.name, tensor=t.name)
            ranges[t.name] = (lo, hi)
    return ranges


def bits_needed(lo: int, hi: int) -> int:
    """Signed bits to hold [lo, hi]."""
    return int(max(np.ceil(np.log2(max(abs(lo), abs(hi) + 1))), 0)) + 1
