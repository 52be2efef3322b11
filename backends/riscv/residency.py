"""Activations that stay in L1 between accelerator steps instead of travelling through L2.

An activation written by an accelerator step and read only by accelerator steps (through Reshapes, which alias
its bytes) can live in L1: its producer writes its tiles in place and its consumers read their tiles in place,
with no DMA at all (passes/tile.py, level "l1"). Resident tensors are planned like the L2 arena (greedy placement
by lifetime, passes/memory.py) in a region that grows down from the top of the L1 tile area; a step's tiles get
what the residents live at that step leave free. Which tensors become resident is a search on the tiler's cost
model: candidates in order of L2 traffic saved per byte-step of L1, each kept when it lowers the modelled cycles
of the whole inference (a resident tensor speeds up its producer and readers, but shrinks the tiles of every
step it lives across). In MobileBERT these are the feed-forward and bottleneck intermediates and each layer's
input/output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ...ir.graph import Graph
from ...passes.memory import Buffer, activation_buffers, align, plan_buffers
from ...passes.tile import ALIGNMENT

#: only the accelerator reads and writes tiles in place (its operands are whole rows of an L1 tensor)
IN_PLACE_OPS = ("ITAGemm",)


@dataclass
class Residency:
    """Resident root buffers (with lifetimes) and their offsets in the region, counted down from its top."""

    offsets: dict[str, int]
    size: int
    aliases: dict[str, str]
    buffers: list[Buffer] = field(default_factory=list)

    def level(self, name: str) -> str | None:
        """"l1" when tensor `name` (or the buffer it aliases) is resident."""
        return "l1" if self.aliases.get(name, name) in self.offsets else None

    def extents(self, steps: int) -> list[int]:
        """Per step 0 .. steps-1: bytes at the top of the tile area that the residents live at that step occupy."""
        result = [0] * steps
        for b in self.buffers:
            top = self.offsets[b.name] + align(b.size, ALIGNMENT)
            for step in range(b.first, min(b.last, steps - 1) + 1):
                result[step] = max(result[step], top)
        return result

    def address(self, name: str) -> int:
        """Offset of root buffer `name` from the region's bottom (the region is `size` bytes below the top)."""
        buffer = next(b for b in self.buffers if b.name == name)
        return self.size - self.offsets[name] - align(buffer.size, ALIGNMENT)


def _eligible(graph: Graph, buffers: list[Buffer], aliases: dict[str, str]) -> list[Buffer]:
    """Buffers whose every writer and reader is an in-place accelerator step (Reshapes only relabel them)."""
    users: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op == "Reshape":
            continue
        for name in [*node.inputs, *node.outputs]:
            if name and not graph.tensors[name].is_const:
                users.setdefault(aliases.get(name, name), []).append(node.op)
    external = {aliases.get(n, n) for n in graph.inputs + graph.outputs}
    return [b for b in buffers if b.name in users and b.name not in external
            and all(op in IN_PLACE_OPS for op in users[b.name])]


def _readers(graph: Graph, aliases: dict[str, str]) -> dict[str, int]:
    """How many non-Reshape node inputs read each root buffer."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "Reshape":
            for name in node.inputs:
                if name:
                    root = aliases.get(name, name)
                    counts[root] = counts.get(root, 0) + 1
    return counts


def _score(buffer: Buffer, readers: dict[str, int]) -> float:
    """L2 traffic saved (one store, one load per reader) per byte-step of L1 it holds."""
    return (1 + readers.get(buffer.name, 0)) / (buffer.last - buffer.first + 1)


def plan_residency(graph: Graph, cycles: Callable[[Residency], int | None]) -> Residency:
    """The resident activations of `graph`: candidates by score, each kept when `cycles` (the modelled cycles of
    the inference with that residency, None when some step no longer fits L1) goes down."""
    buffers, aliases = activation_buffers(graph)
    readers = _readers(graph, aliases)
    candidates = sorted(_eligible(graph, buffers, aliases), key=lambda b: (-_score(b, readers), b.name))
    chosen: list[Buffer] = []
    best = _residency(chosen, aliases)
    best_cycles = cycles(best)
    for buffer in candidates:
        trial = _residency([*chosen, buffer], aliases)
        trial_cycles = cycles(trial)
        if trial_cycles is not None and (best_cycles is None or trial_cycles < best_cycles):
            chosen, best, best_cycles = [*chosen, buffer], trial, trial_cycles
    return best


def _residency(buffers: list[Buffer], aliases: dict[str, str]) -> Residency:
    plan = plan_buffers(buffers, ALIGNMENT)
    return Residency(dict(plan.offsets), plan.size, aliases, list(buffers))
