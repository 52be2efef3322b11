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


# --- chains of elementwise ops on an 8-bit tensor -> one lookup table -------------------------------------
#: ops that are elementwise in their first input when every other input is a one-element constant
ELEMENTWISE_OPS = ("Add", "Mul", "Requant", "RequantCMSIS", "RequantShift", "LUT", "Relu", "AddRequant",
                   "MulRequant", "MulS8", "AddS8")


def _unary(graph: Graph, node: Node) -> bool:
    """Elementwise in inputs[0] alone: the other inputs are scalar constants and the parameters per tensor."""
    if node.op not in ELEMENTWISE_OPS or len(node.outputs) != 1 or not _per_tensor(node):
        return False
    rest = [graph.tensors[name] for name in node.inputs[1:]]
    return all(t.is_const and t.size == 1 for t in rest)


def _eight_bit(graph: Graph, name: str) -> bool:
    return graph.tensors[name].dtype in ("int8", "uint8")


def _chain(graph: Graph, first: Node, consumers: dict[str, list[Node]]) -> list[Node]:
    """`first` and the unary ops after it while each intermediate tensor has exactly that one reader."""
    chain = [first]
    while True:
        out = chain[-1].outputs[0]
        users = consumers.get(out, [])
        if out in graph.outputs or len(users) != 1 or not _unary(graph, users[0]) or users[0].inputs[0] != out:
            return chain
        chain.append(users[0])


def _table(graph: Graph, chain: list[Node], lo: int, hi: int) -> np.ndarray:
    """The chain evaluated on every value of its 8-bit input (the golden ops themselves)."""
    values = np.arange(lo, hi + 1, dtype=np.int64)
    for node in chain:
        constants = [np.asarray(graph.tensors[name].data, dtype=np.int64) for name in node.inputs[1:]]
        values = OPS[node.op].run(node, [values, *constants])[0]
    return values.reshape(-1)


def fold_chains_into_luts(graph: Graph) -> tuple[Graph, int]:
    """A new graph where every chain of elementwise ops from an 8-bit tensor to an 8-bit tensor (scalar constants
    only, e.g. a centring Add + requant, a Mul by a scalar + requant) is one 256-entry LUT; and the count.

    Exact by construction: the table is the chain itself evaluated on all 256 inputs. A chain that already is a
    single LUT is left alone."""
    graph = graph.copy()
    consumers = graph.consumers()
    replaced: dict[str, tuple[Node, list[Node]]] = {}
    done: set[str] = set()
    for node in graph.nodes:
        if node.name in done or not _unary(graph, node) or not _eight_bit(graph, node.inputs[0]):
            continue
        chain = _chain(graph, node, consumers)
        while chain and not _eight_bit(graph, chain[-1].outputs[0]):
            chain.pop()                                  # end on an 8-bit tensor
        if not chain or (len(chain) == 1 and chain[0].op == "LUT"):
            continue
        lo, hi = DTYPE_RANGES[graph.tensors[node.inputs[0]].dtype]
        out = graph.tensors[chain[-1].outputs[0]]
        table = _table(graph, chain, lo, hi)
        out_lo, out_hi = DTYPE_RANGES[out.dtype]
        if table.min() < out_lo or table.max() > out_hi:
            continue
        lut = Node(f"{node.name}/lut", "LUT", [node.inputs[0]], [out.name], {"table": table, "in_min": lo},
                   origin=chain[-1].origin)
        replaced[node.name] = (lut, chain)
        done.update(n.name for n in chain)
    if not replaced:
        return graph, 0
    dropped = {n.name for _, chain in replaced.values() for n in chain}
    graph.nodes = [replaced[n.name][0] if n.name in replaced else n for n in graph.nodes
                   if n.name in replaced or n.name not in dropped]
    graph.remove_unused()
    verify(graph, integer_only=True)
    return graph, len(replaced)


def untranspose_constant_weights(graph: Graph) -> tuple[Graph, int]:
    """MatMulInt with trans_b on a constant B (a Gemm with transB, Deeploy's and PyTorch's Linear layout): B is
    stored transposed once, at compile time, so the GEMM reads it row-major (the cluster's register-blocked
    kernel needs that). Same products; returns the new graph and how many were rewritten."""
    graph = graph.copy()
    count = 0
    for node in graph.nodes:
        b = graph.tensors[node.inputs[1]] if node.op == "MatMulInt" and len(node.inputs) > 1 else None
        if b is None or not node.attrs.get("trans_b") or not b.is_const or len(b.shape) < 2:
            continue
        values = np.swapaxes(np.asarray(b.data), -1, -2).copy()
        node.inputs[1] = graph.add_const(graph.unique_name(f"{b.name}_t"), values, b.dtype).name
        node.attrs = {k: v for k, v in node.attrs.items() if k != "trans_b"}
        count += 1
    graph.remove_unused()
    return graph, count
