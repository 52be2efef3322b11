"""Split accelerator GEMMs whose A operand cannot sit in L1 into row blocks.

The tiler splits one output axis: for an ITAGemm that is the columns (B streamed in slices), and A stays whole
in L1 for every column tile. When A alone is larger than half the L1 tile budget (BERT-base's FFN output
projection: A = 128 x 3072 bytes), no single-axis tiling fits; and when it is only just below that (MiniLM's,
128 x 1536), the B slices left beside it are so narrow (8 columns) that each accelerator job computes for half
its PEs while reloading its rows of A: two row blocks that stream B twice from L2 took MiniLM's FFN output
projection from 358 k to 269 k cycles with the weights on chip (7.99 M -> 7.46 M per inference). Rows of a GEMM
are independent (the softmax works per row too), so this pass rewrites

    Y = ITAGemm(A, B, ...)   into   Y = Concat_rows(ITAGemm(Slice_rows_i(A), B, ...) for each row block i)

with as few equal row blocks as make each block's A fit, the residual operand (if any) sliced alike. Slices and
the Concat are DMA copies on the cluster; the row blocks are then tiled by columns as usual. Same bits: every
output element is computed by the same ITAGemm arithmetic.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node, Tensor
from ..ir.verify import verify

#: an A larger than this share of the L1 tile budget leaves too little room for B's column slices: split
SPLIT_ABOVE = 0.5
#: share of the L1 tile budget one row block's A may take (the rest: B slices double-buffered, Y, parameters)
A_SHARE = 0.5


def row_blocks(rows: int, row_bytes: int, budget: int) -> int:
    """1 when A (rows x row_bytes) fits SPLIT_ABOVE of `budget`, else the fewest equal row blocks (a divisor of
    `rows`) whose A part fits A_SHARE of it."""
    if rows * row_bytes <= budget * SPLIT_ABOVE:
        return 1
    limit = max(int(budget * A_SHARE), 1)
    for blocks in range(1, rows + 1):
        if rows % blocks == 0 and rows // blocks * row_bytes <= limit:
            return blocks
    return rows


def _splittable(graph: Graph, node: Node) -> bool:
    """An ITAGemm of one matrix (leading axes of size 1) whose operands beyond B, bias and rq are per-column
    vectors or an output-shaped residual."""
    out = graph.tensors[node.outputs[0]]
    a = graph.tensors[node.inputs[0]]
    return (node.op == "ITAGemm" and len(out.shape) >= 2 and int(np.prod(out.shape[:-2], dtype=np.int64)) == 1
            and int(np.prod(a.shape[:-2], dtype=np.int64)) == 1)


def _slice_rows(graph: Graph, name: str, start: int, stop: int, origin: str | None, nodes: list[Node]) -> str:
    t = graph.tensors[name]
    axis = len(t.shape) - 2
    out = graph.unique_name(f"{name}/rows{start}_{stop}")
    graph.add_tensor(Tensor(out, t.dtype, (*t.shape[:axis], stop - start, t.shape[-1]), quant=t.quant))
    nodes.append(Node(f"{out}/slice", "Slice", [name], [out],
                      {"starts": [start], "ends": [stop], "axes": [axis], "steps": [1]}, origin=origin))
    return out


def _split(graph: Graph, node: Node, blocks: int) -> list[Node]:
    """The Slice / ITAGemm / Concat nodes replacing `node`."""
    out = graph.tensors[node.outputs[0]]
    rows, axis = out.shape[-2], len(out.shape) - 2
    step = rows // blocks
    matrices = {i for i, name in enumerate(node.inputs)
                if i != 0 and tuple(graph.tensors[name].shape) == tuple(out.shape)}      # a residual tile R
    nodes: list[Node] = []
    parts = []
    for start in range(0, rows, step):
        stop = start + step
        inputs = list(node.inputs)
        for i in (0, *sorted(matrices)):
            inputs[i] = _slice_rows(graph, node.inputs[i], start, stop, node.origin, nodes)
        part = graph.unique_name(f"{node.outputs[0]}/rows{start}_{stop}")
        graph.add_tensor(Tensor(part, out.dtype, (*out.shape[:axis], step, out.shape[-1]), quant=out.quant))
        nodes.append(Node(f"{node.name}/rows{start}_{stop}", "ITAGemm", inputs, [part], dict(node.attrs),
                          origin=node.origin))
        parts.append(part)
    nodes.append(Node(f"{node.name}/rows", "Concat", parts, [node.outputs[0]], {"axis": axis}, origin=node.origin))
    return nodes


def split_rows(graph: Graph, budget: int) -> tuple[Graph, int]:
    """A new graph in which every ITAGemm whose A exceeds A_SHARE of the L1 tile `budget` runs as row blocks;
    returns it and how many GEMMs were split."""
    graph = graph.copy()
    nodes, split = [], 0
    for node in graph.nodes:
        a = graph.tensors[node.inputs[0]] if node.inputs else None
        blocks = (row_blocks(a.shape[-2], a.shape[-1] * np.dtype(a.dtype).itemsize, budget)
                  if node.op == "ITAGemm" and len(a.shape) >= 2 else 1)
        if blocks > 1 and _splittable(graph, node):
            nodes += _split(graph, node, blocks)
            split += 1
        else:
            nodes.append(node)
    graph.nodes = nodes
    verify(graph, integer_only=True)
    return graph, split
