"""Static memory planning: every activation gets an offset in one arena, chosen from tensor lifetimes.

Algorithm: greedy by size (as TFLite Micro's GreedyMemoryPlanner): buffers sorted by decreasing size, each
placed at the lowest offset where it overlaps no already-placed buffer that is live at the same time.
The plan reports three figures: the arena size, the sum of all buffers (no reuse) and the lower bound
(the largest total of simultaneously live buffers; no plan can be smaller).

Lifetimes count node steps: a tensor produced by node i and last read by node j is live on [i, j].
Reshapes alias their input (same bytes, new shape) so they cost nothing; graph inputs and outputs live in
the caller's buffers and constants in the weights, so neither is planned here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.graph import Graph

DEFAULT_ALIGNMENT = 16


@dataclass
class Buffer:
    """One planned region: `size` bytes live from node step `first` to `last` (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class ArenaPlan:
    """Offsets per buffer plus the figures that judge the plan."""

    offsets: dict[str, int]
    size: int
    total_bytes: int
    lower_bound: int
    buffers: list[Buffer]
    #: tensor -> the buffer it lives in (itself, or the tensor a Reshape aliases)
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        """Arena size above the lower bound, as a fraction of the lower bound."""
        return self.size / self.lower_bound - 1.0 if self.lower_bound else 0.0

    def summary(self) -> str:
        return (f"arena {self.size} B, sum of activations {self.total_bytes} B, live-set lower bound "
                f"{self.lower_bound} B (+{100 * self.overhead:.1f}%)")


def align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def plan_buffers(buffers: list[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> ArenaPlan:
    """Greedy-by-size placement of `buffers`; returns offsets and the three figures."""
    order = sorted(buffers, key=lambda b: (-b.size, b.first, b.name))
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[str, int] = {}
    for buf in order:
        offset = _lowest_gap([(o, b) for o, b in placed if b.overlaps(buf)], align(buf.size, alignment), alignment)
        offsets[buf.name] = offset
        placed.append((offset, buf))
    size = max((o + align(b.size, alignment) for o, b in placed), default=0)
    total = sum(align(b.size, alignment) for b in buffers)
    return ArenaPlan(offsets, size, total, live_lower_bound(buffers, alignment), list(buffers))


def _lowest_gap(conflicts: list[tuple[int, Buffer]], size: int, alignment: int) -> int:
    """The lowest offset where `size` bytes fit between the conflicting (time-overlapping) buffers."""
    candidate = 0
    for offset, buf in sorted(conflicts, key=lambda item: item[0]):
        if offset - candidate >= size:
            break
        candidate = max(candidate, offset + align(buf.size, alignment))
    return candidate


def live_lower_bound(buffers: list[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """max over node steps of the bytes live at that step."""
    events: dict[int, int] = {}
    for buf in buffers:
        size = align(buf.size, alignment)
        events[buf.first] = events.get(buf.first, 0) + size
        events[buf.last + 1] = events.get(buf.last + 1, 0) - size
    live = best = 0
    for step in sorted(events):
        live += events[step]
        best = max(best, live)
    return best


def activation_buffers(graph: Graph, scratch: dict[int, int] | None = None,
                       aliases: dict[str, str] | None = None) -> tuple[list[Buffer], dict[str, str]]:
    """Buffers for the graph's activations (+ per-node scratch) and the Reshape alias map."""
    external = set(graph.inputs) | set(graph.outputs)
    aliases = reshape_aliases(graph) if aliases is None else aliases
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for name in node.outputs:
            root = aliases.get(name, name)
            first.setdefault(root, step)
            last[root] = max(last.get(root, step), step)
        for name in node.inputs:
            root = aliases.get(name, name)
            if name and root in first:
                last[root] = max(last[root], step)
    buffers = [Buffer(name, graph.tensors[name].nbytes, first[name], last[name])
               for name in first if name not in external and not graph.tensors[name].is_const]
    for step, nbytes in sorted((scratch or {}).items()):
        if nbytes:
            buffers.append(Buffer(scratch_name(step), nbytes, step, step))
    return buffers, aliases


def scratch_name(step: int) -> str:
    return f"__scratch_{step}"


def reshape_aliases(graph: Graph) -> dict[str, str]:
    """Reshape outputs that can share their input's bytes (neither side a graph input/output nor constant)."""
    external = set(graph.inputs) | set(graph.outputs)
    aliases: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "Reshape":
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if src in external or dst in external or graph.tensors[src].is_const:
            continue
        aliases[dst] = aliases.get(src, src)
    return aliases


def plan_arena(graph: Graph, scratch: dict[int, int] | None = None, alignment: int = DEFAULT_ALIGNMENT,
               aliases: dict[str, str] | None = None) -> ArenaPlan:
    """Plan the activation arena of `graph` (node step -> scratch bytes for kernels that need a work area;
    `aliases` when the caller already computed reshape_aliases)."""
    buffers, aliases = activation_buffers(graph, scratch, aliases)
    plan = plan_buffers(buffers, alignment)
    plan.aliases = aliases
    return plan
