"""Transposes folded into the DMA of their neighbours: the transposed tensor is a *view* of stored bytes.

A Transpose between tiled steps costs a round trip through L2 (in MobileBERT: the head split of Q, K and V and
the head merge after A.V, 4 per layer). Instead, one side of it is never stored: its tensor is a view of the
other side's bytes, and every tile of it is moved by a 2-D DMA with the view's strides (passes/tile.py
operand_tile). A head of Q, stored as [S, H, D], is S rows of D bytes, H*D bytes apart.

Which side becomes the view:
- the output, when every reader of it is a tiled step (not a Reshape, a DMA copy or a graph output): the
  readers gather their tiles from the input's bytes (the head split before QK^T and A.V);
- else the input, when its producer is a tiled step and the Transpose is its only reader: the producer scatters
  its tiles straight into the output's layout (the head merge after A.V, read through a Reshape).

The Transpose itself then emits no code. A tiling whose tiles a 2-D DMA cannot move is not a candidate, so the
tiler only keeps the tilings that respect the view (one head per tile, for the examples above).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...ir.graph import Graph


@dataclass(frozen=True)
class View:
    """Tensor = np.transpose(the bytes of `root`, read as `shape`, `perm`)."""

    root: str
    shape: tuple[int, ...]
    perm: tuple[int, ...]

    def storage(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.shape, self.perm


def transpose_views(graph: Graph, aliases: dict[str, str], copied: set[int],
                    feasible: Callable[[list[int], dict[str, View]], bool] = lambda steps, views: True,
                    ) -> dict[str, View]:
    """The tensors stored as a transpose of another tensor's bytes (see the module docstring); `aliases` (the
    Reshape alias map) gains view -> storage root, so the arena plans one buffer for both. `copied`: the steps
    moved by DMA copies (dma_copy.py), which read and write whole tensors. A Transpose is only folded when
    `feasible(steps, views)`: the steps that move the new views can still be tiled with them."""
    external = set(graph.inputs) | set(graph.outputs)
    readers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(index)
        for name in node.outputs:
            producer[name] = index
    views: dict[str, View] = {}
    for index, node in enumerate(graph.nodes):
        if node.op != "Transpose":
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if src in external or dst in external or graph.tensors[src].is_const or src in views:
            continue
        perm = tuple(int(p) for p in node.attrs["perm"])
        if all(_tiled(graph, reader, copied) for reader in readers.get(dst, [])):
            new = {dst: View(aliases.get(src, src), tuple(graph.tensors[src].shape), perm)}
            steps = readers.get(dst, [])
        elif (family := _scatter_family(graph, src, index, aliases, readers, producer, copied)) is not None:
            inverse = tuple(int(i) for i in np.argsort(perm))
            new = {name: View(dst, tuple(graph.tensors[dst].shape), inverse) for name in family}
            steps = [producer[aliases.get(src, src)]]
        else:
            continue
        if feasible(steps, {**views, **new}):
            views.update(new)
            aliases.update({name: view.root for name, view in new.items()})
    return views


def _scatter_family(graph: Graph, src: str, transpose: int, aliases: dict[str, str],
                    readers: dict[str, list[int]], producer: dict[str, int], copied: set[int]) -> list[str] | None:
    """The Transpose input `src` and the tensors sharing its bytes through same-shape Reshapes, when a tiled
    step produces them and the Transpose is their only other reader (they can all be views of its output)."""
    root = aliases.get(src, src)
    family = [root, *[name for name, target in aliases.items() if target == root]]
    if any(tuple(graph.tensors[name].shape) != tuple(graph.tensors[src].shape) for name in family):
        return None
    outside = [r for name in family for r in readers.get(name, []) if r != transpose
               and not (graph.nodes[r].op == "Reshape" and graph.nodes[r].outputs[0] in family)]
    return family if not outside and root in producer and _tiled(graph, producer[root], copied) else None


def _tiled(graph: Graph, index: int, copied: set[int]) -> bool:
    """A step whose operands move through the tile loop's DMA (not free or DMA-copied steps; not Gather tables)."""
    return graph.nodes[index].op not in ("Reshape", "Transpose", "Gather") and index not in copied
