"""Weights staged from L3 into L2 ahead of the steps that read them, by the SoC's I/O DMA.

With the weights in L3, a step that loads its constants straight from L3 waits on the L3 link while its tiles
run, and the link idles through every step without constants (the cores' LayerNorms, the embedding adds). On a
target whose I/O DMA moves L3 <-> L2 beside the cluster DMA (the `io_dma_*` registers), staging decouples the
two: an L2 ring of `capacity` bytes receives, in program order, every constant those steps read, each copied from
the earliest step the ring allows (once every reader of the bytes it overwrites has run). A copy moves in chunks
of CHUNK_BYTES, one I/O DMA transfer each, and a reader waits, tile by tile, only for the chunks its next tile
reads (the step before it waits for the first tile's, when it prefetches that tile): a step computes on the first
part of a large weight while the rest streams in. The tiler sees staged constants at L2's bandwidth, and the L3
link streams weights through the whole inference. A constant larger than the ring, or one the ring cannot free
in time, stays in L3 (its tiles read it there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: offsets in the ring are multiples of this (the cluster DMA's bursts start aligned)
STAGE_ALIGNMENT = 64
#: a copy moves in I/O DMA transfers of at most this many bytes (~20 k cycles of the HyperRAM; each transfer's setup
#: and first-word latency, ~60 cycles, are 0.3% of it)
CHUNK_BYTES = 32 * 1024


@dataclass(frozen=True)
class StagedConstant:
    """One constant copied L3 -> L2: its ring offset, the step that starts the copy, the first step that reads it
    and the last."""

    key: str
    nbytes: int
    offset: int
    issue: int
    first: int
    last: int
    slot: int = 0                  # the firmware's I/O transfer id table: this constant's first chunk

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """(byte offset in the constant, bytes) of each I/O DMA transfer that copies it, in order."""
        return [(at, min(CHUNK_BYTES, self.nbytes - at)) for at in range(0, self.nbytes, CHUNK_BYTES)]

    def slot_of(self, byte: int) -> int:
        """The id-table slot of the transfer that brings byte `byte` of the constant."""
        return self.slot + byte // CHUNK_BYTES


@dataclass
class StagingPlan:
    capacity: int
    buffers: list[StagedConstant] = field(default_factory=list)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(b.key for b in self.buffers)

    @property
    def size(self) -> int:
        """Bytes of the ring in use (its highest end)."""
        return max((b.offset + b.nbytes for b in self.buffers), default=0)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def transfers(self) -> int:
        """I/O DMA transfers in all (the size of the firmware's id table)."""
        return sum(len(b.chunks) for b in self.buffers)

    def by_key(self) -> dict[str, StagedConstant]:
        return {b.key: b for b in self.buffers}


def _align(n: int) -> int:
    return -(-n // STAGE_ALIGNMENT) * STAGE_ALIGNMENT


def plan_staging(reads: list[tuple[int, list[tuple[str, int]]]], steps: list[int], earliest_wait: dict[int, int],
                 capacity: int, direct: frozenset[int] = frozenset()) -> StagingPlan:
    """The staged constants. `reads`: the steps that read L3 constants, in program order, each with its constants'
    (key, bytes); `steps`: every step that runs code (a copy can only start at one of them); `earliest_wait`:
    per reading step, the step that may have to wait for its constants (itself, or the step before it that may
    prefetch its first tile); `direct`: steps that read L3 themselves (an embedding table's gathered rows). Copies
    start in program order, so the I/O DMA's queue is the order of need, and after every direct reader before
    their first reader: the L3 link serves one transfer at a time, and a copy queued ahead of a direct read
    would hold that step up for the copy's whole length."""
    last_read: dict[str, int] = {}
    for step, constants in reads:
        for key, _ in constants:
            last_read[key] = step
    plan = StagingPlan(capacity)
    placed: set[str] = set()
    cursor, last_issue, slot = 0, steps[0] if steps else 0, 0
    for step, constants in reads:
        for key, nbytes in sorted(constants, key=lambda c: c[1]):  # small tables first: every tile reads them
            if key in placed:
                continue
            size = _align(nbytes)
            if size > capacity:
                continue
            start = 0 if cursor + size > capacity else cursor
            freed = [b.last + 1 for b in plan.buffers
                     if b.offset < start + size and start < b.offset + _align(b.nbytes)]
            after_direct = [d + 1 for d in direct if d < step]
            issue = _first_step_at(steps, max([last_issue, *freed, *after_direct]))
            if issue is None or issue > earliest_wait[step]:
                continue                   # the ring frees too late: the step reads this constant from L3
            copy = StagedConstant(key, nbytes, start, issue, step, last_read[key], slot)
            plan.buffers.append(copy)
            placed.add(key)
            cursor, last_issue, slot = start + size, issue, slot + len(copy.chunks)
    return plan


def _first_step_at(steps: list[int], at: int) -> int | None:
    """The first step that runs code at or after step `at`."""
    return next((s for s in steps if s >= at), None)


def predict_waits(plan: StagingPlan, steps: list[int], cycles: dict[int, int], tile_slots: dict[int, list[int | None]],
                  prefetches: dict[int, int], transfer_cycles: Callable[[int], int]) -> dict[int, int]:
    """Cycles each step is expected to wait for staged weights, on the cost model's clock: steps run back to back
    for their modelled `cycles`; the I/O DMA starts a step's chunks when the step starts and moves them one after
    the other at `transfer_cycles(bytes)` each; tile t of a step (evenly spaced over its cycles) waits for chunk
    `tile_slots[step][t]`, and a step that prefetches step j's first tile (`prefetches`: i -> j) waits in its last
    tile for j's first chunk. A planning estimate: the L3 link's other users (an embedding's gathered rows) and
    the cluster DMA's own stalls are left out."""
    issued: dict[int, list[tuple[int, int]]] = {}
    for b in plan.buffers:
        issued.setdefault(b.issue, []).extend((b.slot + c, size) for c, (_, size) in enumerate(b.chunks))
    done: dict[int, int] = {}
    link_free, clock, waits = 0, 0, {}
    for step in steps:
        for slot, size in issued.get(step, []):
            link_free = max(clock, link_free) + transfer_cycles(size)
            done[slot] = link_free
        needs = list(enumerate(tile_slots.get(step, [])))
        tiles = max(len(needs), 1)
        if step in prefetches and tile_slots.get(prefetches[step], [None])[0] is not None:
            needs.append((tiles - 1, tile_slots[prefetches[step]][0]))
        wait = 0
        for tile, slot in needs:
            if slot is not None and slot in done:
                wait += max(0, done[slot] - (clock + wait + tile * cycles.get(step, 0) // tiles))
        waits[step] = wait
        clock += cycles.get(step, 0) + wait
    return waits
