"""Fold a unary elementwise op into the constant table a Gather reads.

`f(layout(Gather(T, ids)))` = `layout'(Gather(f(T), ids))` when f is elementwise with per-tensor parameters and
the layout ops (Slice, Pad, Concat, Reshape, Transpose) only move data: Pad's fill value becomes f(value). T is a
constant, so f(T) is computed once at compile time and the op disappears from the network. MobileBERT: the
requantization of the embeddings' trigram Concat (a full [seq, 3 x 128] pass on the cores) goes into the
word-embedding table. Exact by construction (the same op on the same values); a verifier runs after.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import DTYPE_RANGES, Graph, Node
from ..ir.ops import OPS
from ..ir.verify import verify

#: ops that move int8 data without computing on it (Pad's fill value is the exception handled below)
MOVE_OPS = ("Slice", "Pad", "Concat", "Reshape", "Transpose")
#: elementwise ops whose parameters are scalars (checked per node) and that only read their one input
UNARY_OPS = ("Requant", "RequantCMSIS", "LUT")


def _per_tensor(node: Node) -> bool:
    return all(np.asarray(v).size == 1 for k, v in node.attrs.items() if k != "table")


def _closure(graph: Graph, start: str, producers: dict[str, Node], consumers: dict[str, list[Node]],
             final: Node) -> tuple[list[Node], Node] | None:
    """The data-movement nodes between a single Gather of a constant table and `start`, and that Gather, when
    nothing outside reads any tensor in between (so changing their values is invisible elsewhere)."""
    moves: list[Node] = []
    gather: Node | None = None
    inside = {final.name}
    stack, seen = [start], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None or name in graph.outputs:
            return None
        if node.op == "Gather":
            table = graph.tensors[node.inputs[0]]
            if not table.is_const or (gather is not None and gather is not node):
                return None
            gather = node
        elif node.op in MOVE_OPS:
            moves.append(node)
            stack.extend(node.inputs[:1] if node.op != "Concat" else node.inputs)
        else:
            return None
        inside.add(node.name)
    if gather is None or len(consumers.get(gather.inputs[0], [])) != 1:
        return None
    for name in seen:                                 # every reader of an intermediate tensor is in the closure
        if any(user.name not in inside for user in consumers.get(name, [])):
            return None
    return moves, gather


def fold_into_gather_tables(graph: Graph) -> tuple[Graph, int]:
    """A new graph where every foldable unary op (see the module docstring) is computed into its Gather's table;
    and the count."""
    graph = graph.copy()
    folded = 0
    for node in [n for n in graph.nodes if n.op in UNARY_OPS and _per_tensor(n)]:
        producers, consumers = graph.producers(), graph.consumers()
        found = _closure(graph, node.inputs[0], producers, consumers, node)
        if found is None:
            continue
        moves, gather = found
        out = graph.tensors[node.outputs[0]]
        lo, hi = DTYPE_RANGES[out.dtype]
        table = graph.tensors[gather.inputs[0]]
        values = OPS[node.op].run(node, [np.asarray(table.data, dtype=np.int64)])[0]
        if values.min(initial=0) < lo or values.max(initial=0) > hi:
            continue
        new_table = graph.add_const(graph.unique_name(f"{table.name}/{node.op.lower()}"),
                                    values.astype(out.dtype), out.dtype)
        gather.inputs[0] = new_table.name
        for move in moves:
            if move.op == "Pad":
                fill = OPS[node.op].run(node, [np.asarray([move.attrs["value"]], dtype=np.int64)])[0]
                move.attrs = {**move.attrs, "value": int(fill[0])}
        for moved in [*moves, gather]:
            tensor = graph.tensors[moved.outputs[0]]
            tensor.dtype, tensor.quant = out.dtype, out.quant
        # the op's input now holds its output: its producer writes the op's output tensor directly
        last = producers[node.inputs[0]]
        graph.tensors.pop(last.outputs[0])
        last.outputs = [node.outputs[0]]
        graph.nodes.remove(node)
        folded += 1
    if folded:
        graph.remove_unused()
        verify(graph, integer_only=True)
    return graph, folded
