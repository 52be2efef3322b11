"""L1 tiling: every op of the integer graph runs on tiles that DMA brings into L1 and takes back to L2.

For each node the pass splits the output along one axis into equal tiles and maps that axis onto every operand
(an elementwise input along the same axis, a matmul's A along M, a transposed input along the permuted axis, ...).
Operands the axis does not touch (weights of a row-tiled matmul, broadcast parameters) are loaded once and stay
resident. With more than one tile, tiled operands get two L1 buffers, so the DMA of tile t+1 overlaps the
compute of tile t (double buffering). Among all axes and tile sizes whose working set fits the L1 budget, the
pass keeps the one with the fewest modelled cycles (compute on the cores vs DMA at the target's bandwidths).

The pass only decides; `backends/riscv` turns a StepTiling into DMA descriptors and a tile loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import TinyDeployError
from ..ir.graph import Graph, Node
from ..ir.ops import node_macs, op_def
from ..target import AccelSpec, DmaSpec, Target, job_cycles, loader_segments, port_beats, transfer_cycles
from .kernel_choice import blocked_matmul_operands, conv_by_patches, layernorm_fits_int32

ALIGNMENT = 16
#: modelled core cycles per output element (per MAC for matmuls), before dividing by the cores. Calibrated on the
#: ISS, with the CV32E40P timing of targets/cluster8.toml [core], against Deeploy's whole suite and MobileBERT
#: (benchmarks/bench_deeploy_suite.py prints predicted vs measured per step); the ops with their own formula below
#: (ConvInt, MaxPool, reductions, GEMMs) are not here. A target with another [core] needs them refitted.
CYCLES_PER_ELEMENT = {"Copy": 9, "Requant": 27, "RequantShift": 43, "RequantCMSIS": 23, "Add": 18, "Mul": 11,
                      "AddRequant": 25, "MulRequant": 26, "INoNorm": 44, "LUT": 10, "Relu": 9, "IGELU": 55,
                      "IHardswish": 23, "TrueIntegerDiv": 229, "ISoftmax": 457, "ITAPartialMax": 113, "ITAMax": 60,
                      "ILayerNorm": 189, "ILayerNormRequant": 200, "IRMSNorm": 243, "Gather": 3}
#: LayerNorms on the 32-bit kernel (passes/kernel_choice.py layernorm_fits_int32; the figures above are the 64-bit
#: kernel's, ILayerNormRequant's not fitted: ILayerNorm's plus its copy), fitted on MiniLM's LayerNorms
NARROW_NORM_CYCLES = {"ILayerNorm": 33, "ILayerNormRequant": 40}
CYCLES_PER_MAC = 3.2
#: matmul blocks that are not 4x4: rows of four columns (a GEMV) and plain dot products, per MAC; and the
#: portable kernel (operands the blocked kernel does not take)
CYCLES_PER_MAC_FOUR_COLUMNS, CYCLES_PER_MAC_DOT, CYCLES_PER_MAC_PORTABLE = 4.8, 10, 12
#: per matmul call (each tile): the harts' share of the blocks (divisions), pointers, the requant table walk
#: (fitted on the single-tile GEMMs of microLlama and the MLPerf classifiers: ~450 cycles above the MAC terms)
MATMUL_CALL_CYCLES = 450
#: the patch convolution: per patch value gathered, per MAC (four filters at a time), per output pixel
CONV_GATHER_CYCLES, CONV_PATCH_MAC_CYCLES, CONV_PIXEL_CYCLES = 11, 5.9, 48
#: the direct convolution (grouped, depthwise): per MAC, per kernel row visited, per output element
CONV_DIRECT_MAC_CYCLES, CONV_DIRECT_ROW_CYCLES, CONV_DIRECT_PIXEL_CYCLES = 8.4, 14, 36
#: MaxPool per output element: fixed and per tap; reductions per reduced input element and per output element
MAXPOOL_CYCLES, MAXPOOL_TAP_CYCLES, REDUCE_OUTPUT_CYCLES = 33, 22, 26
REDUCE_CYCLES = {"IntegerMean": 13, "ReduceSum": 6}
#: per tile of the cores: DMA programming on hart 0, the kernel's entry on every hart, the closing barrier
#: (measured: a 17-tile TrueIntegerDiv step costs ~380 cycles per extra tile)
TILE_OVERHEAD_CYCLES = 400
#: per tile of an accelerator step: hart 0 programs the DMA and queues the jobs; once per accelerator step: hart 0
#: programs the epilogue registers and the other harts wait at the closing barrier (fitted over the 1,898 ITAGemm
#: steps of Deeploy's suite and MobileBERT: single-tile steps of microLlama measure ~400 cycles above the
#: per-tile terms; a per-step constant leaves every tiling decision as it was)
ACCEL_TILE_OVERHEAD_CYCLES = 120
ACCEL_STEP_OVERHEAD_CYCLES = 400
COPY_OPS = ("Transpose", "Slice", "Concat", "Pad")
ROW_OPS = ("ISoftmax", "ITAPartialMax", "ITAMax", "ILayerNorm", "ILayerNormRequant", "IRMSNorm")


@dataclass(frozen=True)
class Operand:
    """One array a step reads or writes: an IR tensor, or a kernel constant array (by its C name)."""

    key: str
    role: str                      # "in" | "out" | "indirect" (read by the kernel itself, e.g. a gather table)
    shape: tuple[int, ...]
    dtype: str
    level: str = "l2"              # memory the full operand lives in: l2 | l3 | l1 (resident: tiles used in place)
    kind: str = "tensor"           # tensor | param (broadcast over the output) | table (looked up)
    packed: bool = False           # a constant only this step reads: stored in tile order, one DMA row per tile
    #: (shape, perm) when the tensor is a view: np.transpose(its bytes read as shape, perm) (backends/riscv/views.py)
    storage: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize


@dataclass(frozen=True)
class OperandTile:
    """Where one operand's tile lives in L1 and the 2-D DMA that moves it."""

    operand: Operand
    axis: int | None               # operand axis split by the tiling; None: the whole operand (resident)
    tile_shape: tuple[int, ...]
    rows: int                      # one tile = rows x row_bytes, `stride` bytes apart in L2/L3
    row_bytes: int
    stride: int
    step: int                      # bytes between consecutive tiles' first rows in L2/L3 (0: resident)
    buffers: int                   # 2 = double-buffered
    l1_offset: int = 0

    @property
    def in_place(self) -> bool:
        """The operand already lives in L1 (backends/riscv/residency.py): the kernel reads/writes it there."""
        return self.operand.level == "l1"

    @property
    def buffer_bytes(self) -> int:
        return _align(self.rows * self.row_bytes)

    @property
    def l1_bytes(self) -> int:
        return self.buffer_bytes * self.buffers


@dataclass
class StepTiling:
    """The tiling of one step: `tiles` tiles of `tile` along output `axis` (None: one tile)."""

    index: int
    node: str
    op: str
    axis: int | None
    tile: int
    tiles: int
    operands: list[OperandTile]
    scratch_offset: int = 0
    scratch_bytes: int = 0
    l1_bytes: int = 0
    model: dict[str, int] = field(default_factory=dict)
    prefetched: tuple[str, ...] = ()   # operands whose first tile the previous step loads (prefetch_across_steps)

    def intervals(self) -> list[tuple[int, int]]:
        """The [start, end) byte ranges of the tile area this step uses."""
        spans = [(t.l1_offset, t.l1_offset + t.l1_bytes) for t in self.operands
                 if t.operand.role != "indirect" and t.l1_bytes]
        if self.scratch_bytes:
            spans.append((self.scratch_offset, self.scratch_offset + _align(self.scratch_bytes)))
        return spans

    def tile_shape(self, key: str) -> tuple[int, ...]:
        return next(o.tile_shape for o in self.operands if o.operand.key == key)

    def describe(self) -> str:
        where = "one tile" if self.tiles == 1 else f"{self.tiles} tiles of {self.tile} along axis {self.axis}"
        return (f"{where}, L1 {self.l1_bytes} B, modelled {self.model.get('cycles', 0)} cycles "
                f"(compute {self.model.get('compute', 0)}, DMA {self.model.get('dma', 0)})")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "node": self.node, "op": self.op, "axis": self.axis, "tile": self.tile,
                "tiles": self.tiles, "l1_bytes": self.l1_bytes, "model": self.model,
                "prefetched": list(self.prefetched),
                "operands": [{"key": o.operand.key, "kind": o.operand.kind, "role": o.operand.role,
                              "level": o.operand.level, "packed": o.operand.packed,
                              "axis": o.axis, "tile_shape": list(o.tile_shape), "buffers": o.buffers,
                              "l1_offset": o.l1_offset, "bytes": o.rows * o.row_bytes} for o in self.operands]}


@dataclass
class TilePlan:
    steps: dict[int, StepTiling]
    l1_budget: int
    l1_peak: int

    def summary(self) -> str:
        tiled = sum(1 for s in self.steps.values() if s.tiles > 1)
        return (f"{len(self.steps)} steps in L1 tiles ({tiled} split), peak L1 {self.l1_peak} of "
                f"{self.l1_budget} B budget")


@dataclass(frozen=True)
class Bandwidth:
    """The target's DMA model as the tiles see it: bytes per cycle from a level into L1 (or from L1 to L2), the
    setup cost per transfer, per row, and per row that is a burst of the L3 part (target.DmaSpec, which the ISS
    runs too)."""

    per_cycle: dict[str, float]
    setup: int
    row: int = 2
    l3_burst: int = 0

    @classmethod
    def from_target(cls, target: Target) -> Bandwidth:
        dma = DmaSpec.from_target(target)
        return cls({level: dma.bandwidth[(level, "l1")] for level in ("l1", "l2", "l3")}, dma.setup, dma.row,
                   dma.l3_burst)

    def cycles(self, level: str, nbytes: int, rows: int = 1) -> int:
        """DmaSpec.cycles of a transfer between `level` and L1."""
        burst = self.l3_burst if level == "l3" else 0
        return transfer_cycles(self.per_cycle[level], self.setup, self.row + burst, nbytes, rows)


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


# --- which operand axis each output axis maps onto ------------------------------------------------------
AxisMap = dict[int, list[int | None]]   # output axis -> per operand: operand axis, or None (whole operand)


def _broadcast_axis(shape: tuple[int, ...], out_shape: tuple[int, ...], axis: int) -> int | None:
    src = axis - (len(out_shape) - len(shape))
    if src < 0 or shape[src] != out_shape[axis]:
        return None
    return src


def _elementwise_axes(node: Node, operands: list[Operand], out_shape: tuple[int, ...]) -> AxisMap:
    result: AxisMap = {}
    for axis in range(len(out_shape)):
        mapped = [_broadcast_axis(o.shape, out_shape, axis) if o.kind != "table" else None for o in operands]
        params = [m for o, m in zip(operands, mapped, strict=True) if o.kind == "param"]
        if any(m is not None for m in params):
            continue  # per-channel parameters stay whole: never split their axis
        result[axis] = mapped
    return result


def _copy_axes(graph: Graph, node: Node, operands: list[Operand], out_shape: tuple[int, ...]) -> AxisMap:
    rank = len(out_shape)
    at = node.attrs
    if node.op == "Transpose":
        allowed = {axis: at["perm"][axis] for axis in range(rank)}
    elif node.op == "Slice":
        sliced = {a % rank for a in at["axes"]}
        allowed = {axis: axis for axis in range(rank) if axis not in sliced}
    elif node.op == "Concat":
        allowed = {axis: axis for axis in range(rank) if axis != at["axis"] % rank}
    else:  # Pad
        pads = at["pads"]
        allowed = {axis: axis for axis in range(rank) if pads[axis] == 0 and pads[axis + rank] == 0}
    result: AxisMap = {}
    for axis, src_axis in allowed.items():
        result[axis] = [src_axis if o.role == "in" else axis for o in operands]
    return result


def _matmul_axes(node: Node, operands: list[Operand], out_shape: tuple[int, ...]) -> AxisMap:
    rank = len(out_shape)
    a, b = operands[0], operands[1]
    at = node.attrs
    result: AxisMap = {}
    for axis in range(rank):
        mapped: list[int | None] = []
        for i, o in enumerate(operands):
            if o.role == "out":
                mapped.append(axis)
            elif axis < rank - 2 and i < 2:
                batch_out, batch_in = out_shape[:-2], o.shape[:-2]
                mapped.append(_broadcast_axis(batch_in, batch_out, axis))
            elif axis == rank - 2 and i == 0:
                mapped.append(len(a.shape) - (1 if at.get("trans_a") else 2))
            elif axis == rank - 1 and i == 1:
                mapped.append(len(b.shape) - (2 if at.get("trans_b") else 1))
            elif i >= 2:  # bias: broadcast over the output
                mapped.append(_broadcast_axis(o.shape, out_shape, axis))
            else:
                mapped.append(None)
        result[axis] = mapped
    return result


def _row_axes(node: Node, operands: list[Operand], out_shape: tuple[int, ...]) -> AxisMap:
    first = operands[0]
    return {axis: [axis if o is first or o.role == "out" else None for o in operands]
            for axis in range(len(out_shape) - 1)}


def _mean_axes(node: Node, operands: list[Operand], out_shape: tuple[int, ...]) -> AxisMap:
    rank_in = len(operands[0].shape)
    first_reduced = min(a % rank_in for a in node.attrs["axes"])
    return {axis: [axis for _ in operands] for axis in range(first_reduced)}


def axis_maps(graph: Graph, node: Node, operands: list[Operand]) -> AxisMap:
    """Output axes this node can be split along, each with the operand axes it maps onto."""
    out_shape = graph.tensors[node.outputs[0]].shape
    if op_def(node).elementwise:
        return _elementwise_axes(node, operands, out_shape)
    if node.op in COPY_OPS:
        return _copy_axes(graph, node, operands, out_shape)
    if node.op == "MatMulInt":
        return _matmul_axes(node, operands, out_shape)
    if node.op == "ITAGemm":   # rows of the softmax stay whole; rq [3, n] follows the columns
        maps = _matmul_axes(node, operands, out_shape)
        rank = len(out_shape)
        for axis, mapped in maps.items():
            rq = operands.index(next(o for o in operands if o.key == node.inputs[3]))
            mapped[rq] = 1 if axis == rank - 1 else None
        if any(st["op"] == "ITAPartialMax" for st in node.attrs.get("stages", [])):
            maps.pop(rank - 1, None)
        return maps
    if node.op in ROW_OPS:
        return _row_axes(node, operands, out_shape)
    if node.op in ("IntegerMean", "ReduceSum"):
        return _mean_axes(node, operands, out_shape)
    return {}


# --- geometry and cost ---------------------------------------------------------------------------------
def operand_tile(operand: Operand, axis: int | None, tile: int, tiles: int) -> OperandTile | None:
    """The 2-D DMA of one tile: an axis slab is `outer` rows of `tile * inner` contiguous bytes."""
    shape = operand.shape
    resident = operand.level == "l1"           # no L1 buffer: tiles are read and written where the tensor is
    if operand.storage is not None and operand.role != "indirect":
        return _view_tile(operand, axis, tile, tiles)
    if axis is None or operand.role == "indirect":
        return OperandTile(operand, None, shape, 1, operand.nbytes, operand.nbytes, 0,
                           0 if resident else (1 if operand.role != "out" or tiles == 1 else 2))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64)) * operand.itemsize
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    tile_shape = shape[:axis] + (tile,) + shape[axis + 1:]
    if operand.packed and outer > 1:           # the backend stores tile after tile (backends/riscv pack_constants)
        nbytes = outer * tile * inner
        return OperandTile(operand, axis, tile_shape, 1, nbytes, nbytes, nbytes, 2 if tiles > 1 else 1)
    return OperandTile(operand, axis, tile_shape, outer, tile * inner, shape[axis] * inner, tile * inner,
                       0 if resident else (2 if tiles > 1 else 1))


def _view_tile(operand: Operand, axis: int | None, tile: int, tiles: int) -> OperandTile | None:
    """The 2-D DMA of one tile of a view (a transpose of stored bytes; axis None: the whole view), or None when
    a tile is not `rows` runs of contiguous bytes at one stride (no 2-D DMA moves it)."""
    shape, perm = operand.storage
    stored = np.cumprod((1, *shape[::-1]))[-2::-1]            # element strides of the stored array
    strides = [int(stored[p]) for p in perm]                   # ... of each axis of the view
    dims = operand.shape if axis is None else operand.shape[:axis] + (tile,) + operand.shape[axis + 1:]
    geometry = two_d_geometry(dims, strides)
    if geometry is None:
        return None
    rows, run, stride = geometry
    size = operand.itemsize
    step = 0 if axis is None else tile * strides[axis] * size
    buffers = 2 if tiles > 1 and (axis is not None or operand.role == "out") else 1
    return OperandTile(operand, axis, dims, rows, run * size, stride * size, step, buffers)


def two_d_geometry(dims: tuple[int, ...], strides: list[int]) -> tuple[int, int, int] | None:
    """(rows, run, stride) in elements when a box of `dims` at element `strides` is `rows` contiguous runs of
    `run` elements, `stride` apart; None otherwise."""
    axes = [(d, s) for d, s in zip(dims, strides, strict=True) if d > 1]
    run = 1
    while axes and axes[-1][1] == run:
        run *= axes.pop()[0]
    if not axes:
        return 1, run, run
    for (_, outer), (d, s) in zip(axes, axes[1:], strict=False):
        if outer != s * d:
            return None
    return int(np.prod([d for d, _ in axes])), run, axes[-1][1]


def _compute_cycles(graph: Graph, node: Node, out_tile: tuple[int, ...], cores: int,
                    accel: AccelSpec | None = None) -> int:
    """Core cycles for one tile: the work per element times the share of the most loaded core."""
    if node.op == "ITAGemm":   # accelerator jobs of at most rows_per_job rows per matrix (job_cycles)
        spec = accel or AccelSpec()
        batch = int(np.prod(out_tile[:-2], dtype=np.int64))
        m, k, n = out_tile[-2], _ita_depth(graph, node), out_tile[-1]
        softmax = any(st["op"] == "ITAPartialMax" for st in node.attrs.get("stages", []))
        rows = max(min(spec.rows_per_job(k, n, _out_bytes(graph, node)), m), 1)
        jobs = [rows] * (m // rows) + ([m % rows] if m % rows else [])
        return batch * sum(job_cycles(spec, r, k, n, softmax, _job_beats(graph, node, r, k, n, spec, keep=j > 0))
                           + 40 for j, r in enumerate(jobs))
    if node.op == "MatMulInt":
        return _matmul_cycles(graph, node, out_tile, cores)
    if node.op == "ConvInt":
        return _conv_cycles(graph, node, out_tile, cores)
    elements = int(np.prod(out_tile, dtype=np.int64))
    if node.op == "MaxPool":
        taps = int(np.prod(node.attrs["kernel_shape"], dtype=np.int64))
        return int(_core_share(out_tile, cores) * elements * (MAXPOOL_CYCLES + MAXPOOL_TAP_CYCLES * taps))
    if node.op in ("IntegerMean", "ReduceSum"):
        reduced = graph.tensors[node.inputs[0]].size // max(graph.tensors[node.outputs[0]].size, 1)
        return int(_core_share(out_tile, cores) * elements * (REDUCE_CYCLES[node.op] * reduced + REDUCE_OUTPUT_CYCLES))
    per = CYCLES_PER_ELEMENT.get(node.op if node.op not in COPY_OPS else "Copy", 16)
    if node.op in NARROW_NORM_CYCLES and layernorm_fits_int32(graph, node):
        per = NARROW_NORM_CYCLES[node.op]
    if node.op in ROW_OPS:
        cols = out_tile[-1]
        rows = elements // max(cols, 1)
        return int(-(-rows // cores) * cols * per)
    return int(elements * _core_share(out_tile, cores) * per)


def _core_share(out_tile: tuple[int, ...], cores: int) -> float:
    """The most loaded core's share of an elementwise tile (the kernels split its largest dimension)."""
    largest = max(out_tile) if out_tile else 1
    return -(-largest // cores) / largest if largest else 1.0


def _blocked(graph: Graph, node: Node) -> bool:
    """Whether the cluster runs this MatMulInt on its register-blocked kernel (backends/lowering lower_matmul):
    the operands it takes, neither of them transposed."""
    return blocked_matmul_operands(graph, node) and not node.attrs.get("trans_a") and not node.attrs.get("trans_b")


def _matmul_cycles(graph: Graph, node: Node, out_tile: tuple[int, ...], cores: int) -> int:
    """The cores share 4x4 output blocks (backends/riscv matmul_blocked): full blocks at CYCLES_PER_MAC, blocks of
    fewer rows four columns at a time, the rest as plain dot products. Other GEMMs (8-bit unsigned operands, zero
    points, a transposed operand) run the portable kernel, rows (or columns) shared."""
    k = node_macs(graph, node) / max(graph.tensors[node.outputs[0]].size, 1)
    batch = int(np.prod(out_tile[:-2], dtype=np.int64))
    m, n = out_tile[-2], out_tile[-1]
    if not _blocked(graph, node):
        shared = m if m >= cores else n
        return int(batch * m * n / shared * -(-shared // cores) * k * CYCLES_PER_MAC_PORTABLE) + MATMUL_CALL_CYCLES
    full_rows, edge_rows, full_cols, edge_cols = m // 4, m % 4, n // 4, n % 4
    cost = (full_rows * full_cols * 16 * CYCLES_PER_MAC + edge_rows * full_cols * 4 * CYCLES_PER_MAC_FOUR_COLUMNS
            + (full_rows * 4 + edge_rows) * edge_cols * CYCLES_PER_MAC_DOT) * k
    blocks = -(-m // 4) * -(-n // 4)
    per_core = int(cost / blocks * -(-batch * blocks // cores)) if blocks else 0   # per block, most loaded core
    return per_core + MATMUL_CALL_CYCLES


def _conv_cycles(graph: Graph, node: Node, out_tile: tuple[int, ...], cores: int) -> int:
    """ConvInt on the cores (backends/generic window.c.j2): gathered patches shared by output pixel, or the
    direct loop nest shared by output row."""
    x, w, out = (graph.tensors[name] for name in (node.inputs[0], node.inputs[1], node.outputs[0]))
    c_group, k_h = int(w.shape[1]), int(w.shape[2]) if len(w.shape) > 2 else 1
    taps = int(np.prod(w.shape[2:], dtype=np.int64))
    m, spatial = int(out_tile[1]), out_tile[2:]
    pixels = int(out_tile[0] * np.prod(spatial, dtype=np.int64))
    if conv_by_patches(node, x, w, out):
        depth = c_group * taps
        per_pixel = depth * (CONV_GATHER_CYCLES + 4 * -(-m // 4) * CONV_PATCH_MAC_CYCLES) + CONV_PIXEL_CYCLES
        return int(-(-pixels // cores) * per_pixel)
    rows = int(out_tile[0]) * m * (int(spatial[0]) if len(spatial) > 1 else 1)
    per_output = (c_group * k_h * CONV_DIRECT_ROW_CYCLES + c_group * taps * CONV_DIRECT_MAC_CYCLES
                  + CONV_DIRECT_PIXEL_CYCLES)
    return int(-(-rows // cores) * (pixels * m // max(rows, 1)) * per_output)


def _model(tiles: list[OperandTile], count: int, compute: int, bw: Bandwidth,
           accelerated: bool = False) -> dict[str, int]:
    """Modelled cycles of the tile loop: resident loads, then per tile max(compute, DMA) with overlap, plus a
    fixed cost per tile (smaller for an accelerator step: only hart 0 works; it has a fixed cost per step too)."""
    moved = [t for t in tiles if not t.in_place]
    resident = sum(_load_cycles(t, bw) for t in moved if t.step == 0 and t.operand.role == "in")
    per_in = sum(_load_cycles(t, bw) for t in moved if t.step != 0 and t.operand.role == "in")
    per_out = _store_cycles(tiles, bw)
    dma = resident + count * (per_in + per_out)
    if count == 1:
        cycles = resident + per_in + compute + per_out
    else:
        steady = max(compute, per_in + per_out)
        cycles = resident + per_in + (count - 1) * steady + compute + per_out
    if accelerated:
        cycles += count * ACCEL_TILE_OVERHEAD_CYCLES + ACCEL_STEP_OVERHEAD_CYCLES
    else:
        cycles += count * TILE_OVERHEAD_CYCLES
    return {"cycles": int(cycles), "compute": int(compute * count), "dma": int(dma)}


def _load_cycles(tile: OperandTile, bw: Bandwidth) -> int:
    """DMA cycles of one tile of an input operand from where it lives."""
    return bw.cycles(tile.operand.level, tile.rows * tile.row_bytes, tile.rows)


def _store_cycles(tiles: list[OperandTile], bw: Bandwidth) -> int:
    """DMA cycles of storing one tile of every output the step moves to L2."""
    return sum(bw.cycles("l2", t.rows * t.row_bytes, t.rows) for t in tiles
               if t.operand.role == "out" and not t.in_place)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _job_beats(graph: Graph, node: Node, m: int, k: int, n: int, spec: AccelSpec, keep: bool = False) -> int:
    """Port beats an m x k x n job of `node` needs to load its operands (target.loader_segments), with every
    operand word-aligned (the ISS counts the real addresses); `keep`: a later row job of the same matrix, whose B,
    bias and rq stay in the accelerator."""
    stages = node.attrs.get("stages", [])
    operands = [graph.tensors[node.inputs[i]] for i in sorted({st["operand"] for st in stages if "operand" in st})]
    residual = next((t for t in operands if t.size > n), None)       # the residual tile; the rest are vectors
    table_rows = sum("operand" in st and st["op"] != "ITAPartialMax" for st in stages)
    segments = loader_segments(m, k, n, trans_b=bool(node.attrs.get("trans_b")), keep_b=keep,
                               lut=any(st["op"] == "LUT" for st in stages), stages=table_rows,
                               r_row_bytes=n * np.dtype(residual.dtype).itemsize if residual is not None else 0,
                               vectors=tuple(range(len(operands) - (residual is not None))))
    return sum(count * port_beats(0, size, spec.port_bytes) for _, count, size in segments)


def _ita_depth(graph: Graph, node: Node) -> int:
    """k of an ITAGemm (its MACs per output element)."""
    return node_macs(graph, node) // max(graph.tensors[node.outputs[0]].size, 1)


def _out_bytes(graph: Graph, node: Node) -> int:
    return np.dtype(graph.tensors[node.outputs[0]].dtype).itemsize


def accel_job_problem(graph: Graph, node: Node, out_tile: tuple[int, ...], accel: AccelSpec) -> str | None:
    """Why the accelerator cannot run an output tile of an ITAGemm as jobs of whole rows, or None."""
    k, n, size = _ita_depth(graph, node), out_tile[-1], _out_bytes(graph, node)
    return accel.job_problem(1, k, n, size, bool(node.attrs.get("trans_b")))


def tile_candidates(graph: Graph, index: int, node: Node, operands: list[Operand], *, cores: int, bw: Bandwidth,
                    scratch_bytes: int = 0, accel: AccelSpec | None = None) -> list[StepTiling]:
    """Every tiling of one node the hardware can run, whatever L1 it needs (offsets not yet assigned)."""
    out_shape = graph.tensors[node.outputs[0]].shape
    maps = axis_maps(graph, node, operands) if len(node.outputs) == 1 or node.op in ROW_OPS else {}
    candidates: list[tuple[int | None, int]] = [(None, 1)]
    for axis in maps:
        candidates += [(axis, size) for size in _divisors(out_shape[axis]) if size < out_shape[axis]]
    result: list[StepTiling] = []
    for axis, size in candidates:
        count = 1 if axis is None else out_shape[axis] // size
        mapped = [None] * len(operands) if axis is None else maps[axis]
        moves = [operand_tile(o, a, size, count) for o, a in zip(operands, mapped, strict=True)]
        if any(t is None for t in moves):
            continue                           # a view's tile that no 2-D DMA moves
        tiles = [t for t in moves if t is not None]
        if any(t.in_place and t.rows != 1 and not _pitched(node, t, out_shape) for t in tiles):
            continue                           # an in-place tile must be contiguous, or rows the accelerator pitches
        l1 = sum(t.l1_bytes for t in tiles if t.operand.role != "indirect") + _align(scratch_bytes)
        out_tile = out_shape if axis is None else out_shape[:axis] + (size,) + out_shape[axis + 1:]
        if node.op == "ITAGemm" and accel_job_problem(graph, node, out_tile, accel or AccelSpec()):
            continue                           # B or one row of A/Y does not fit the accelerator's memories
        model = _model(tiles, count, _compute_cycles(graph, node, out_tile, cores, accel), bw,
                       accelerated=node.op == "ITAGemm")
        result.append(StepTiling(index, node.name, node.op, axis, size if axis is not None else 1, count, tiles,
                                 l1_bytes=l1, model=model, scratch_bytes=scratch_bytes))
    return result


def choose_tiling(candidates: list[StepTiling], budget: int) -> StepTiling | None:
    """The cheapest candidate within `budget` bytes of L1, with its L1 offsets assigned (None: nothing fits)."""
    best = _cheapest([c for c in candidates if c.l1_bytes <= budget])
    return _place(best) if best is not None else None


def no_fit_error(node: Node, candidates: list[StepTiling], budget: int) -> TinyDeployError:
    """The error for a node none of whose tilings fits `budget`."""
    smallest = min((c.l1_bytes for c in candidates), default=None)
    if smallest is None:
        return TinyDeployError(f"no tiling of this {node.op} moves its operands as 2-D DMA transfers",
                               node=node.name)
    return TinyDeployError(f"no tiling of this {node.op} fits L1: the smallest tile needs {smallest} B, the L1 "
                           f"budget is {budget} B", node=node.name)


def tile_node(graph: Graph, index: int, node: Node, operands: list[Operand], *, budget: int, cores: int,
              bw: Bandwidth, scratch_bytes: int = 0, accel: AccelSpec | None = None) -> StepTiling:
    """The cheapest feasible tiling of one node (error naming the node when none fits)."""
    candidates = tile_candidates(graph, index, node, operands, cores=cores, bw=bw, scratch_bytes=scratch_bytes,
                                 accel=accel)
    best = choose_tiling(candidates, budget)
    if best is None:
        raise no_fit_error(node, candidates, budget)
    return best


def _pitched(node: Node, tile: OperandTile, out_shape: tuple[int, ...]) -> bool:
    """A column tile of the output or residual of a single-matrix accelerator job: its rows are written/read
    in place with the accelerator's row pitch registers (y_pitch, r_pitch)."""
    return (node.op == "ITAGemm" and tuple(tile.operand.shape) == tuple(out_shape)
            and int(np.prod(out_shape[:-2], dtype=np.int64)) == 1 and tile.axis == len(out_shape) - 1)


def _cheapest(feasible: list[StepTiling]) -> StepTiling | None:
    """Fewest modelled cycles; within 1% of that, the least DMA traffic, then the fewest tiles."""
    if not feasible:
        return None
    fastest = min(s.model["cycles"] for s in feasible)
    close = [s for s in feasible if s.model["cycles"] <= fastest * 1.01]
    return min(close, key=lambda s: (s.model["dma"], s.tiles))


def _place(step: StepTiling) -> StepTiling:
    """A copy of `step` with L1 offsets assigned: operands in order, then the kernel scratch."""
    offset, placed = 0, []
    for t in step.operands:
        if t.operand.role == "indirect":
            placed.append(t)
            continue
        placed.append(OperandTile(t.operand, t.axis, t.tile_shape, t.rows, t.row_bytes, t.stride, t.step,
                                  t.buffers, offset))
        offset += t.l1_bytes
    return replace(step, operands=placed, scratch_offset=offset)


# --- prefetch across steps --------------------------------------------------------------------------------
def _first_fit(size: int, taken: list[tuple[int, int]], limit: int) -> int | None:
    """The lowest aligned offset where `size` bytes fit below `limit` without touching `taken`."""
    offset = 0
    for start, end in sorted(taken):
        if offset + size <= start:
            break
        offset = max(offset, _align(end))
    return offset if offset + size <= limit else None


def _place_around(step: StepTiling, early: list[str], avoid: list[tuple[int, int]], limit: int) -> StepTiling | None:
    """`step` laid out with the operands `early` outside `avoid` (what the previous step still uses), the rest
    anywhere else below `limit`; None when that does not fit."""
    taken: list[tuple[int, int]] = []
    offsets: dict[str, int] = {}
    for key in early:
        tile = next(t for t in step.operands if t.operand.key == key)
        at = _first_fit(tile.l1_bytes, avoid + taken, limit)
        if at is None:
            return None
        offsets[key] = at
        taken.append((at, at + tile.l1_bytes))
    placed = []
    for t in step.operands:
        if t.operand.role != "indirect" and t.operand.key not in offsets and t.l1_bytes:
            at = _first_fit(t.l1_bytes, taken, limit)
            if at is None:
                return None
            offsets[t.operand.key] = at
            taken.append((at, at + t.l1_bytes))
        placed.append(replace(t, l1_offset=offsets.get(t.operand.key, 0)))
    scratch = _first_fit(_align(step.scratch_bytes), taken, limit) if step.scratch_bytes else 0
    if scratch is None:
        return None
    return replace(step, operands=placed, scratch_offset=scratch, prefetched=tuple(early))


def _carry_prefetch(before: StepTiling, after: StepTiling, bw: Bandwidth) -> tuple[StepTiling, StepTiling]:
    """The models of a prefetching pair. The DMA engine is one queue: `before` issues `after`'s first-tile loads
    behind its own last refill, so whatever of them its last tile's compute does not hide is waited for by
    `before` when it closes with a store (queued behind them), else by `after` at its first tile."""
    loads = sum(_load_cycles(t, bw) for t in after.operands if t.operand.key in after.prefetched)
    last_tile = before.model.get("compute", 0) // max(before.tiles, 1)
    store = _store_cycles(before.operands, bw)
    queued = loads + (store if before.tiles > 1 else 0)
    exposed = max(0, queued - last_tile) - max(0, queued - loads - last_tile)
    if store:
        before = replace(before, model={**before.model, "cycles": before.model["cycles"] + exposed})
        exposed = 0
    after = replace(after, model={**after.model, "cycles": max(after.model["cycles"] - loads + exposed, 0)})
    return before, after


def prefetch_across_steps(plan: TilePlan, pairs: list[tuple[int, int, list[str]]], limits: dict[int, int],
                          bw: Bandwidth) -> None:
    """Let step i load the first tile of step j's operands `keys` (constants, or tensors i does not write) while
    it computes its own last tile: for each (i, j, keys), in program order, step j is laid out with those operands
    outside every L1 byte step i uses (its tiles, its scratch, and the residents above `limits[i]`, where its tile
    area ends), and the pair's modelled cycles move with the loads (_carry_prefetch); steps where that does not
    fit keep their own layout and load everything themselves."""
    for i, j, keys in pairs:
        before, after = plan.steps[i], plan.steps[j]
        avoid = [*before.intervals(), (limits[i], plan.l1_budget)]
        keys = [t.operand.key for t in after.operands if t.operand.key in keys and t.l1_bytes]
        laid = _place_around(after, keys, avoid, limits[j]) if keys else None
        if laid is not None:
            plan.steps[i], plan.steps[j] = _carry_prefetch(before, laid, bw)


def l1_budget(target: Target) -> int:
    """L1 bytes available to tiles: all of L1 but the per-hart stacks."""
    memory, cluster = target.section("memory"), target.section("cluster")
    stacks = int(cluster.get("cores", 1)) * int(memory.get("stack_bytes_per_core", 0))
    return int(memory["l1_bytes"]) - stacks


class Tiler:
    """Tilings of one graph's steps on one target, cached by the memory levels of their operands and the L1 budget:
    a search over which activations stay in L1 (backends/riscv/residency.py) re-tiles only what it changes."""

    def __init__(self, graph: Graph, target: Target, scratch: dict[int, int] | None = None) -> None:
        self.graph = graph
        self.budget = l1_budget(target)
        self.cores = int(target.section("cluster").get("cores", 1))
        self.bw = Bandwidth.from_target(target)
        section = target.section("accelerator")
        self.accel = AccelSpec.from_section(section) if section else None
        self.scratch = scratch or {}
        self._candidates: dict[tuple[int, tuple[Any, ...]], list[StepTiling]] = {}
        self._best: dict[tuple[int, tuple[Any, ...], int], StepTiling | None] = {}

    @staticmethod
    def _memory(operands: list[Operand]) -> tuple[Any, ...]:
        """What the cached tilings depend on beyond the step: where each operand lives and how it is stored."""
        return tuple((o.level, o.storage, o.packed) for o in operands)

    def candidates(self, index: int, operands: list[Operand]) -> list[StepTiling]:
        key = (index, self._memory(operands))
        if key not in self._candidates:
            self._candidates[key] = tile_candidates(self.graph, index, self.graph.nodes[index], operands,
                                                    cores=self.cores, bw=self.bw,
                                                    scratch_bytes=self.scratch.get(index, 0), accel=self.accel)
        return self._candidates[key]

    def best(self, index: int, operands: list[Operand], budget: int | None = None) -> StepTiling | None:
        """The cheapest tiling of step `index` within `budget` (default: all of the tile budget), or None."""
        budget = self.budget if budget is None else budget
        key = (index, self._memory(operands), budget)
        if key not in self._best:
            self._best[key] = choose_tiling(self.candidates(index, operands), budget)
        return self._best[key]

    def tile(self, index: int, operands: list[Operand], budget: int | None = None) -> StepTiling:
        """best(), or the error naming the node when nothing fits."""
        step = self.best(index, operands, budget)
        if step is None:
            raise no_fit_error(self.graph.nodes[index], self.candidates(index, operands),
                               self.budget if budget is None else budget)
        return step


def tile_graph(graph: Graph, target: Target, operands: dict[int, list[Operand]],
               scratch: dict[int, int] | None = None, budgets: dict[int, int] | None = None,
               tiler: Tiler | None = None) -> TilePlan:
    """Tile every step listed in `operands` (step index -> its operands, from the backend); `budgets` gives the
    steps whose tiles get less than the whole L1 budget (resident activations hold the rest)."""
    tiler = tiler or Tiler(graph, target, scratch)
    budgets = budgets or {}
    steps = {index: tiler.tile(index, ops, budgets.get(index)) for index, ops in operands.items()}
    peak = max((s.l1_bytes for s in steps.values()), default=0)
    return TilePlan(steps, tiler.budget, peak)
