"""The golden interpreter: executes the IR with numpy. Its outputs DEFINE correctness for every backend."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..errors import TinyDeployError, node_context
from .graph import DTYPE_RANGES, Graph
from .ops import op_def


def run_graph(graph: Graph, inputs: Mapping[str, np.ndarray], *, keep_all: bool = False,
              on_node: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Run `graph` on `inputs` (by graph-input name). Returns the outputs, or every tensor with keep_all.

    Every produced integer value is checked against its declared dtype: a value outside it means the
    graph is wrong (e.g. an accumulator overflow the verifier could not rule out), never silently wrapped.
    """
    values: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in inputs:
            raise TinyDeployError(f"missing input (have {sorted(inputs)})", tensor=name)
        t = graph.tensors[name]
        arr = np.asarray(inputs[name])
        if tuple(arr.shape) != t.shape:
            raise TinyDeployError(f"input shape {list(arr.shape)} != model's {list(t.shape)}", tensor=name)
        values[name] = arr.astype(np.int64) if t.dtype in DTYPE_RANGES else arr.astype(np.float32)
    for t in graph.constants():
        values[t.name] = t.data.astype(np.int64) if t.dtype in DTYPE_RANGES else t.data
    remaining_uses = _use_counts(graph) if not keep_all else {}
    for index, node in enumerate(graph.nodes):
        args = [values[i] for i in node.inputs if i]
        with node_context(node.origin or node.name, node.op, "the golden interpreter"):
            results = op_def(node).run(node, args)
        for name, value in zip(node.outputs, results, strict=True):
            values[name] = _checked(graph, node.name, name, np.asarray(value))
        if not keep_all:
            _free_dead(graph, node, values, remaining_uses)
        if on_node:
            on_node(index + 1, len(graph.nodes))
    if keep_all:
        return {k: v for k, v in values.items() if not graph.tensors[k].is_const}
    return {name: values[name] for name in graph.outputs}


def _checked(graph: Graph, node_name: str, name: str, value: np.ndarray) -> np.ndarray:
    t = graph.tensors[name]
    if tuple(value.shape) != t.shape:
        raise TinyDeployError(f"produced shape {list(value.shape)}, declared {list(t.shape)}",
                              node=node_name, tensor=name)
    if t.dtype in DTYPE_RANGES and value.size:
        lo, hi = DTYPE_RANGES[t.dtype]
        vmin, vmax = int(value.min()), int(value.max())
        if vmin < lo or vmax > hi:
            raise TinyDeployError(f"value range [{vmin}, {vmax}] overflows {t.dtype}", node=node_name, tensor=name)
        return value.astype(np.int64, copy=False)
    return value


def _use_counts(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _free_dead(graph: Graph, node, values: dict[str, np.ndarray], uses: dict[str, int]) -> None:
    """Drop activations no later node reads, so a full-model run stays small in memory."""
    for name in node.inputs:
        if not name:
            continue
        uses[name] -= 1
        if uses[name] == 0 and name not in graph.outputs and not graph.tensors[name].is_const:
            values.pop(name, None)


def cast_outputs(graph: Graph, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values in their declared dtypes (for writing .npz files)."""
    return {k: v.astype(graph.tensors[k].dtype) for k, v in values.items()}
