"""Activations that stay in L1 between accelerator steps instead of travelling through L2.

An activation written by an accelerator step and read only by accelerator steps (through Reshapes, which alias
its bytes) can live in a region of L1 reserved for such tensors: its producer writes its tiles in place and its
consumers read their tiles in place, with no DMA at all (passes/tile.py, level "l1"). The region is planned like
the L2 arena (greedy placement by lifetime, passes/memory.py); tensors are admitted in order of L2 traffic saved
per byte and step they occupy, while the plan fits the reserve. In MobileBERT these are the feed-forward and
bottleneck intermediates and each layer's output.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...ir.graph import Graph
from ...passes.memory import Buffer, activation_buffers, plan_buffers

#: the share of the L1 tile budget set aside for resident activations (the rest stays for weights and tiles)
RESERVE_FRACTION = 0.4
#: only the accelerator reads and writes tiles in place (its operands are whole rows of an L1 tensor)
IN_PLACE_OPS = ("ITAGemm",)


@dataclass
class Residency:
    """Resident root buffers and their L1 offsets (inside a region of `size` bytes), and the alias map."""

    offsets: dict[str, int]
    size: int
    aliases: dict[str, str]

    def level(self, name: str) -> str | None:
        """"l1" when tensor `name` (or the buffer it aliases) is resident."""
        return "l1" if self.aliases.get(name, name) in self.offsets else None


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


def plan_residency(graph: Graph, reserve: int, exclude: set[str] | frozenset[str] = frozenset()) -> Residency:
    """The resident activations of `graph` within `reserve` bytes of L1 (none listed in `exclude`)."""
    buffers, aliases = activation_buffers(graph)
    readers = _readers(graph, aliases)
    candidates = sorted((b for b in _eligible(graph, buffers, aliases) if b.name not in exclude),
                        key=lambda b: (-_score(b, readers), b.name))
    chosen: list[Buffer] = []
    plan = plan_buffers([])
    for buffer in candidates:
        trial = plan_buffers([*chosen, buffer])
        if trial.size <= reserve:
            chosen.append(buffer)
            plan = trial
    return Residency(dict(plan.offsets), plan.size, aliases)
