"""Data-movement steps (Transpose, Slice, Concat, Pad) as 2-D DMA transfers, L2 to L2, without the cores.

The IR op itself is run on arrays of source offsets, which gives, for every output element, the input and the
element it copies (or the fill value, for Pad): the op's meaning stays in `ir/ops.py`. Consecutive elements that
copy consecutive source elements form runs; runs of one length at constant source and destination strides form
one 2-D transfer. A step becomes DMA transfers when there are few of them (long rows): a transpose that keeps
the innermost axis (head split/merge), a slice or pad along an outer axis, a concat of rows, a Gather whose
indices are constants (the pooler's first-token row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import node_context
from ...ir.graph import Graph, Node
from ...ir.ops import OPS
from ..lowering import Call, Refs

#: a DMA-moved step issues at most this many 2-D transfers and fill runs (otherwise the cores tile it)
MAX_DMA_TRANSFERS = 256
MOVE_OPS = ("Transpose", "Slice", "Concat", "Pad", "Gather")
_SOURCE_BITS = 40                # source input index above the element offset in the probe values


@dataclass(frozen=True)
class Transfer:
    """One 2-D DMA: `rows` rows of `row_bytes` from input `source` (byte offsets and strides)."""

    source: int
    src: int
    dst: int
    row_bytes: int
    rows: int
    src_stride: int
    dst_stride: int


@dataclass(frozen=True)
class CopyPlan:
    transfers: list[Transfer]
    fills: list[tuple[int, int]]          # (byte offset, bytes) of the output set to `value`
    value: int


def copied_inputs(node: Node) -> list[str]:
    """The inputs whose bytes a data-movement node copies (a Gather's constant indices only select them)."""
    return node.inputs[:1] if node.op == "Gather" else list(node.inputs)


def _movable(graph: Graph, node: Node) -> bool:
    """A data-movement op whose copy pattern is known at compile time (a Gather needs constant indices)."""
    if node.op == "Gather":
        return graph.tensors[node.inputs[1]].is_const and not graph.tensors[node.inputs[0]].is_const
    return node.op in MOVE_OPS


def element_sources(graph: Graph, node: Node) -> np.ndarray:
    """Per output element: source input index << 40 | element offset in it, or -1 for a fill (Pad)."""
    probes = [np.arange(graph.tensors[name].size, dtype=np.int64).reshape(graph.tensors[name].shape)
              + (i << _SOURCE_BITS) for i, name in enumerate(copied_inputs(node))]
    if node.op == "Gather":
        probes.append(np.asarray(graph.tensors[node.inputs[1]].data, dtype=np.int64))
    probe = node if node.op != "Pad" else Node(node.name, node.op, node.inputs, node.outputs,
                                                {**node.attrs, "value": -1})
    return np.asarray(OPS[node.op].run(probe, probes)[0], dtype=np.int64).reshape(-1)


def _runs(sources: np.ndarray) -> list[tuple[int, int, int]]:
    """(first output element, its source value, length) of maximal runs copying consecutive elements or filling."""
    fill = sources < 0
    breaks = np.nonzero((fill[1:] != fill[:-1]) | (~fill[1:] & (sources[1:] != sources[:-1] + 1)))[0] + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [sources.size]])
    return [(int(s), int(sources[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def copy_plan(graph: Graph, node: Node) -> CopyPlan | None:
    """The DMA transfers (and fills) of a data-movement step, or None when it needs too many of them."""
    with node_context(node.origin or node.name, node.op, "DMA copy planning"):
        return _copy_plan(graph, node)


def _copy_plan(graph: Graph, node: Node) -> CopyPlan | None:
    if not _movable(graph, node):
        return None
    out = graph.tensors[node.outputs[0]]
    size = np.dtype(out.dtype).itemsize
    if any(np.dtype(graph.tensors[name].dtype).itemsize != size for name in copied_inputs(node)):
        return None
    transfers: list[Transfer] = []
    open_transfer: dict[int, int] = {}     # source -> index of its latest transfer (a concat interleaves sources)
    fills: list[tuple[int, int]] = []
    mask = (1 << _SOURCE_BITS) - 1
    for first, value, length in _runs(element_sources(graph, node)):
        if value < 0:
            fills.append((first * size, length * size))
        else:
            run = Transfer(value >> _SOURCE_BITS, (value & mask) * size, first * size, length * size, 1,
                           length * size, length * size)
            at = open_transfer.get(run.source)
            merged = _merged(transfers[at], run) if at is not None else None
            if merged is not None:
                transfers[at] = merged
            else:
                open_transfer[run.source] = len(transfers)
                transfers.append(run)
        if len(transfers) + len(fills) > MAX_DMA_TRANSFERS:
            return None
    return CopyPlan(transfers, fills, int(node.attrs.get("value", 0)))


def _merged(last: Transfer, run: Transfer) -> Transfer | None:
    """`last` with `run` as one more row, when the run continues it at constant strides; else None."""
    src_step = run.src - (last.src + (last.rows - 1) * last.src_stride)
    dst_step = run.dst - (last.dst + (last.rows - 1) * last.dst_stride)
    if last.row_bytes != run.row_bytes or src_step <= 0 or dst_step <= 0:
        return None
    if last.rows > 1 and (src_step != last.src_stride or dst_step != last.dst_stride):
        return None
    return Transfer(last.source, last.src, last.dst, last.row_bytes, last.rows + 1, src_step, dst_step)


def dma_copy_call(node: Node, refs: Refs, plan: CopyPlan) -> Call:
    """Hart 0 issues the transfers (and fills the padding) and waits; the step's barrier releases the others."""
    inputs = copied_inputs(node)
    sources = ", ".join(f"(const int8_t *){refs.pointer(name)}" for name in inputs)
    dst = f"(int8_t *){refs.pointer(node.outputs[0])}"
    table = ", ".join(f"{{{t.source}, {t.src}, {t.dst}, {t.row_bytes}, {t.rows}, {t.src_stride}, {t.dst_stride}}}"
                      for t in plan.transfers)
    lines = [f"/* {node.op} by DMA, L2 -> L2: {len(plan.transfers)} transfers"
             + (f", {len(plan.fills)} fill runs" if plan.fills else "") + " */",
             "if (TD_HART_ID == 0) {"]
    if plan.transfers:
        lines += [f"    const int8_t *const sources[{len(inputs)}] = {{{sources}}};",
                  "    uint32_t last = 0;",
                  f"    static const int32_t copies[{len(plan.transfers)}][7] = {{{table}}};",
                  f"    for (int32_t i = 0; i < {len(plan.transfers)}; ++i) {{",
                  f"        last = td_dma_2d({dst} + copies[i][2], sources[copies[i][0]] + copies[i][1], "
                  "copies[i][3], copies[i][4], copies[i][5], copies[i][6]);",
                  "    }"]
    for offset, nbytes in plan.fills:
        lines.append(f"    for (int32_t i = 0; i < {nbytes}; ++i) {{ ({dst})[{offset} + i] = (int8_t){plan.value}; }}")
    if plan.transfers:
        lines.append("    td_dma_wait(last);")
    lines.append("}")
    return Call(node, statements=lines)
