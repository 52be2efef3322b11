"""Tiled steps for the RISC-V cluster: every kernel runs on L1 tiles that DMA moves (passes/tile.py decides).

A step becomes a table of DMA descriptors (`td_xfer`, one per operand) and a tile loop around the kernel call;
the kernel call itself comes from the shared lowering, applied to tile-shaped stand-ins of the node's tensors
whose pointers are the L1 buffers. Loads from L2/L3 therefore happen through DMA only, as on the hardware.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...ir.graph import Graph, Node, Tensor
from ...passes.stage import StagedConstant, StagingPlan, plan_staging, predict_waits
from ...passes.tile import (
    Bandwidth,
    Operand,
    OperandTile,
    StepTiling,
    TilePlan,
    Tiler,
    prefetch_across_steps,
    tile_graph,
)
from ...target import DmaSpec, Target
from ..lowering import CTYPES, Call, Lowering, Refs, kernel_constants
from .dma_copy import copy_plan, dma_copy_call
from .residency import Residency, plan_residency
from .views import View, transpose_views

L1_SYMBOL = "td_l1"
#: the L2 ring staged weights are copied into (passes/stage.py), and the I/O DMA ids of those copies
STAGE_SYMBOL = "td_stage"
STAGE_IDS = "td_stage_ids"


def step_operands(graph: Graph, index: int, node: Node, weights_level: str,
                  residency: Residency | None = None, packable: set[str] | None = None,
                  views: dict[str, View] | None = None, staged: frozenset[str] = frozenset()) -> list[Operand]:
    """What the step reads and writes, in kernel order: tensor inputs, constant arrays, outputs. A constant in
    `packable` (default: packable_constants) is stored in its tile order; a view (views.py) is moved with its
    storage's strides; a constant in `staged` is read from its copy in L2 (passes/stage.py)."""
    packable = packable if packable is not None else packable_constants(graph)
    views = views or {}

    def constant_level(name: str) -> str:
        return "l2" if name in staged else weights_level

    def storage(name: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        return views[name].storage() if name in views else None

    def level(name: str) -> str:
        return (residency.level(name) if residency else None) or "l2"

    operands, seen = [], set()
    for position, name in enumerate(node.inputs):
        if not name or name in seen:
            continue
        seen.add(name)
        tensor = graph.tensors[name]
        role = "indirect" if node.op == "Gather" and position == 0 else "in"
        operands.append(Operand(name, role, tensor.shape, tensor.dtype,
                                constant_level(name) if tensor.is_const else level(name),
                                packed=role == "in" and name in packable, storage=storage(name)))
    for cname, kind, values in kernel_constants(graph, node, index):
        operands.append(Operand(cname, "in", values.shape, str(values.dtype), constant_level(cname), kind,
                                packed=True))
    for name in node.outputs:
        tensor = graph.tensors[name]
        operands.append(Operand(name, "out", tensor.shape, tensor.dtype, level(name), storage=storage(name)))
    return operands


def packable_constants(graph: Graph) -> set[str]:
    """Constants that can be stored in one step's tile order: read by one step, or by steps that are alike (the
    row blocks of one GEMM, passes/split_rows.py: same op, same operand shapes, the constant in the same place),
    which tile it alike unless L1 differs between them (_packed_differently checks the plan)."""
    readers: dict[str, list[tuple]] = {}
    for node in graph.nodes:
        signature = (node.op, tuple(graph.tensors[n].shape if n else None for n in (*node.inputs, *node.outputs)))
        for position, name in enumerate(node.inputs):
            if name:
                readers.setdefault(name, []).append((position, signature))
    return {name for name, seen in readers.items() if graph.tensors[name].is_const and name not in graph.outputs
            and len(set(seen)) == 1}


def _packed_differently(plan: TilePlan) -> set[str]:
    """Packed constants whose steps tile them differently (they cannot share one stored order)."""
    layouts: dict[str, set[tuple]] = {}
    for step in plan.steps.values():
        for t in step.operands:
            if t.operand.packed and t.operand.kind == "tensor":
                layouts.setdefault(t.operand.key, set()).add((t.axis, t.tile_shape, t.rows, t.row_bytes, t.step))
    return {key for key, seen in layouts.items() if len(seen) > 1}


def pack_constants(constants: dict[str, np.ndarray], plan: TilePlan, cnames: dict[str, str]) -> dict[str, np.ndarray]:
    """The constant arrays with every packed operand stored tile after tile along its tiled axis (passes/tile.py
    operand_tile): each tile is then one contiguous DMA row instead of `outer` short ones."""
    packed = dict(constants)
    for step in plan.steps.values():
        for tile in step.operands:
            o = tile.operand
            if o.packed and tile.axis is not None and tile.rows == 1 and tile.step:
                cname = cnames.get(o.key, o.key)
                values = constants[cname]
                count = o.shape[tile.axis] // tile.tile_shape[tile.axis]
                packed[cname] = np.stack(np.split(values, count, axis=tile.axis))
    return packed


def _l1_pointer(tile: OperandTile) -> str:
    ctype = CTYPES[tile.operand.dtype]
    base = f"{L1_SYMBOL} + {tile.l1_offset}" if tile.l1_offset else L1_SYMBOL
    if tile.buffers == 2:
        base += f" + (t & 1) * {tile.buffer_bytes}"
    return f"(({ctype} *)({base}))"


def _xfer_row(tile: OperandTile, l2: str, prefetched: bool = False) -> str:
    o = tile.operand
    l1 = f"{L1_SYMBOL} + {tile.l1_offset}" if tile.l1_offset else L1_SYMBOL
    l1_step = tile.buffer_bytes if tile.buffers == 2 else 0
    what = "out" if o.role == "out" else ("resident" if tile.step == 0 else "in")
    flag = "TD_XFER_OUT" if o.role == "out" else ("TD_XFER_PREFETCHED" if prefetched else "TD_XFER_IN")
    label = o.key.replace("*/", "* /") + (", first tile loaded by the previous step" if prefetched else "")
    return (f"{{(int8_t *){l2}, {l1}, {tile.step}, {l1_step}, {tile.rows}, {tile.row_bytes}, {tile.stride}, "
            f"{flag}}}, /* {what} {label} {o.dtype}{list(tile.tile_shape)} */")


def _l2_pointer(tile: OperandTile, refs: Refs, staged: dict[str, StagedConstant] | None = None) -> str:
    """Where the DMA finds the full operand: its L2 copy when staged, else its symbol."""
    if staged and tile.operand.key in staged:
        return f"({STAGE_SYMBOL} + {staged[tile.operand.key].offset})"
    return _symbol(tile.operand, refs)


def staged_waits(step: StepTiling, staged: dict[str, StagedConstant]) -> list[int | None]:
    """Per tile, the id-table slot of the last staged chunk its loads read (None: none): tile t of an operand is
    rows x row_bytes at t * step (stride apart) in the constant's stored order, which its L2 copy keeps."""
    waits: list[int | None] = [None] * step.tiles
    for tile in step.operands:
        copy = staged.get(tile.operand.key)
        if copy is None or tile.in_place or tile.operand.role != "in":
            continue
        for t in range(step.tiles if tile.step else 1):      # a resident operand loads with tile 0
            last = min(t * tile.step + (tile.rows - 1) * tile.stride + tile.row_bytes, copy.nbytes) - 1
            slot = copy.slot_of(last)
            waits[t] = slot if waits[t] is None else max(waits[t], slot)
    return waits


def _staged_table(index: int, waits: list[int | None]) -> list[str]:
    """The step's per-tile staged-chunk table and its registration (td_tiles_staged), or nothing."""
    if all(w is None for w in waits):
        return []
    slots = ", ".join("TD_STAGED_NONE" if w is None else str(w) for w in waits)
    return [f"    static const uint16_t x{index}_staged[{len(waits)}] = {{{slots}}};",
            f"    td_tiles_staged({STAGE_IDS}, x{index}_staged);"]


def _symbol(operand: Operand, refs: Refs) -> str:
    return refs.pointer(operand.key) if operand.kind == "tensor" else operand.key


def _xfer_table(name: str, tiles: list[OperandTile], rows: list[str], graph: Graph) -> list[str]:
    """A step's td_xfer table: static (in .rodata, no copy per call) unless it points into the caller's in/out
    buffers, which are only known at run time."""
    io = set(graph.inputs) | set(graph.outputs)
    storage = "const" if any(t.operand.key in io for t in tiles) else "static const"
    return [f"    {storage} td_xfer {name}[{len(rows)}] = {{", *[f"        {row}" for row in rows], "    };"]


def _prefetch_statements(index: int, following: StepTiling, refs: Refs, graph: Graph,
                         staged: dict[str, StagedConstant] | None = None) -> list[str]:
    """The table of the next step's first-tile loads this step issues during its last tile (td_tiles_next)."""
    tiles = [t for t in following.operands if t.operand.key in following.prefetched]
    name = f"x{index}_next"
    return [*_xfer_table(name, tiles, [_xfer_row(t, _l2_pointer(t, refs, staged)) for t in tiles], graph),
            f"    td_tiles_next({name}, {len(tiles)});"]


def _accel_loop(name: str, count: int, step: StepTiling, job: str, staged_table: list[str]) -> list[str]:
    """The accelerator's tile loop (td_dma.h): hart 0 programs tile t's job while tile t's inputs arrive; a step
    the model finds DMA bound refills before it waits (the DMA never idles), otherwise after it queues the job
    (the accelerator never idles). (Refilling after queueing where later tiles wait for staged chunks measured
    slower: MiniLM 7.73 M vs 7.59 M cycles.)"""
    refill_first = int(step.model.get("dma", 0) > step.model.get("compute", 0))
    return ["    if (TD_HART_ID == 0) {", *[f"    {s}" for s in staged_table],
            f"        td_accel_tiles_begin({name}, {count}, {step.tiles}, {refill_first});",
            f"        for (int32_t t = 0; t < {step.tiles}; ++t) {{",
            f"            td_accel_tile_queued(t, {job}, t));", "        }",
            "        td_accel_tiles_end();", "    }"]


def tiled_call(lowering: Lowering, index: int, node: Node, step: StepTiling, refs: Refs, full: Call,
               following: StepTiling | None = None, staged: dict[str, StagedConstant] | None = None,
               waits: list[int | None] | None = None) -> Call:
    """The step's C: DMA descriptor table, tile loop, and the kernel call on L1 pointers.

    `full` is the untiled lowering of the node: its constant arrays are what the weights hold. `following` is
    the next step when this one loads part of its first tile (prefetch_across_steps). `staged`: the constants read
    from their L2 copies (passes/stage.py); `waits`: per tile, the staged chunk it waits for (staged_waits)."""
    moved = [t for t in step.operands if t.operand.role != "indirect" and not t.in_place]
    pointers = {t.operand.key: _l1_pointer(t) for t in moved if t.operand.kind == "tensor"}
    pitches = {t.operand.key: t.stride for t in step.operands if t.in_place and t.rows > 1}
    for t in step.operands:                    # resident in L1: the tile is read or written where it lives
        if t.in_place:
            pointers[t.operand.key] = (f"(({CTYPES[t.operand.dtype]} *)((int8_t *){refs.pointer(t.operand.key)}"
                                       + (f" + t * {t.step}))" if t.step else "))"))
    constants = {t.operand.key: _l1_pointer(t) for t in moved if t.operand.kind != "tensor"}
    tensors = {t.operand.key: Tensor(t.operand.key, t.operand.dtype, t.tile_shape) for t in step.operands
               if t.operand.kind == "tensor"}
    tile_refs = Refs(pointer=lambda name: pointers.get(name) or refs.pointer(name),
                     scratch=lambda _: f"({L1_SYMBOL} + {step.scratch_offset})", aliases=refs.aliases,
                     param=lambda cname: constants.get(cname, cname), pitch=lambda name: pitches.get(name, 0))
    view = lowering.lower_view(index, node, tile_refs, tensors)
    rows = [_xfer_row(tile, _l2_pointer(tile, refs, staged), tile.operand.key in step.prefetched)
            for tile in moved]
    name, count = f"x{index}", len(rows)
    prefetch = (_prefetch_statements(index, following, refs, lowering.graph, staged)
                if following and following.prefetched else [])
    table = [*_xfer_table(name, moved, rows, lowering.graph), *prefetch]
    staged_table = _staged_table(index, waits or [])
    if node.op == "ITAGemm":
        loop = _accel_loop(name, count, step, view.accel_job, staged_table)
    else:
        loop = [*staged_table, f"    td_tiles_begin({name}, {count});",
                f"    for (int32_t t = 0; t < {step.tiles}; ++t) {{",
                f"        td_tile_ready({name}, {count}, t, {step.tiles});",
                *[f"        {s}" for s in view.statements], "    }",
                f"    td_tiles_end({name}, {count}, {step.tiles});"]
    statements = [f"/* L1 tiles: {step.describe()} */", "{", *table, *loop, "}"]
    call = Call(node, kernels=view.kernels, statements=statements, descriptors=view.descriptors, params=full.params)
    return call


def reshape_call(lowering: Lowering, index: int, node: Node, refs: Refs) -> Call:
    """A Reshape is free when aliased; otherwise (graph input/output involved) one L2 -> L2 DMA."""
    if node.outputs[0] in refs.aliases:
        return lowering.lower(index, node)
    nbytes = lowering.graph.tensors[node.outputs[0]].nbytes
    src, dst = refs.pointer(node.inputs[0]), refs.pointer(node.outputs[0])
    return Call(node, statements=[f"if (TD_HART_ID == 0) {{ td_dma_wait(td_dma_2d({dst}, {src}, {nbytes}, 1, "
                                  f"{nbytes}, {nbytes})); }}"])


def choose_views(graph: Graph, target: Target, lowering: Lowering, aliases: dict[str, str]) -> dict[str, View]:
    """The Transposes folded into DMA (views.py), each only when every step moving its view still has a tiling
    that fits L1 (cores-only MatMuls, for one, tile rows of all heads, which no 2-D DMA gathers from a view)."""
    whole = Lowering(graph, lowering.refs, cores=lowering.cores, blocked_matmul=lowering.blocked_matmul)
    copied = {i for i, node in enumerate(graph.nodes) if copy_plan(graph, node) is not None}
    tiler = Tiler(graph, target)

    def feasible(steps: list[int], views: dict[str, View]) -> bool:
        for i in steps:                        # kernel scratch, only for the steps asked about
            tiler.scratch.setdefault(i, whole.lower(i, graph.nodes[i]).scratch_bytes)
        return all(tiler.best(i, step_operands(graph, i, graph.nodes[i], "l2", views=views)) is not None
                   for i in steps)

    return transpose_views(graph, aliases, copied, feasible)


def lower_tiled(graph: Graph, target: Target, lowering: Lowering, refs: Refs, weights_level: str,
                stage_capacity: int = 0) -> tuple[list[Call], TilePlan, Residency, StagingPlan | None]:
    """Tile every step (passes/tile.py) and lower it to a DMA tile loop; with an accelerator, activations
    between accelerator steps stay in L1 (residency.py). With weights in L3 and `stage_capacity` bytes of L2 for
    an I/O DMA to stage them in (passes/stage.py), the steps read their constants from those copies."""
    # untiled lowering (its own instance, so whole-tensor kernel instances do not end up in kernels.c):
    # the constant arrays the weights hold and the kernel scratch sizes
    whole = Lowering(graph, refs, cores=lowering.cores, blocked_matmul=lowering.blocked_matmul)
    free = {i for i, node in enumerate(graph.nodes) if _folded(node, refs)}
    by_dma = {i: p for i, node in enumerate(graph.nodes)
              if i not in free and (p := copy_plan(graph, node)) is not None}
    full = {i: whole.lower(i, node) for i, node in enumerate(graph.nodes)
            if node.op != "Reshape" and i not in by_dma and i not in free}
    scratch = {i: c.scratch_bytes for i, c in full.items() if c.scratch_bytes}
    staging, symbols = (_plan_staging(graph, sorted(full), refs, stage_capacity)
                        if stage_capacity and weights_level == "l3" else (None, {}))
    residency, plan = _tile_with_residency(graph, target, full, weights_level, scratch, refs.views,
                                           staging.keys if staging else frozenset())
    following = _prefetch(graph, target, plan, residency, refs)
    staged = staging.by_key() if staging else {}
    tile_waits = {i: staged_waits(plan.steps[i], staged) for i in plan.steps} if staging else {}
    stage_code = _staging_statements(staging, following, symbols, tile_waits) if staging else {}
    if staging:
        _model_staging_waits(plan, staging, following, target, tile_waits)
    calls = []
    for index, node in enumerate(graph.nodes):
        if index in full:
            nxt = following.get(index)
            call = tiled_call(lowering, index, node, plan.steps[index], refs, full[index],
                              plan.steps[nxt] if nxt is not None else None, staged, tile_waits.get(index))
            call.statements[:0] = stage_code.get(index, [])
            calls.append(call)
        elif index in by_dma:
            calls.append(dma_copy_call(node, refs, by_dma[index]))
        elif index in free:
            calls.append(Call(node, statements=["/* folded into its neighbours' DMA (a view of stored bytes) */"]))
        else:
            calls.append(reshape_call(lowering, index, node, refs))
    return calls, plan, residency, staging


def _plan_staging(graph: Graph, steps: list[int], refs: Refs,
                  capacity: int) -> tuple[StagingPlan, dict[str, str]]:
    """The staging plan over the tiled `steps`, and each staged constant's symbol (the copy's source in L3)."""
    reads, symbols, direct = [], {}, set()
    for i in steps:
        operands = [o for o in step_operands(graph, i, graph.nodes[i], "l3", views=refs.views) if o.level == "l3"]
        constants = [o for o in operands if o.role == "in"]
        symbols.update({o.key: _symbol(o, refs) for o in constants})
        if constants:
            reads.append((i, [(o.key, o.nbytes) for o in constants]))
        if any(o.role == "indirect" for o in operands):
            direct.add(i)
    before = {j: i for i, j in _adjacent_steps(graph, set(steps), refs)}
    plan = plan_staging(reads, steps, {j: before.get(j, j) for j, _ in reads}, capacity, frozenset(direct))
    return plan, symbols


def _staging_statements(staging: StagingPlan, following: dict[int, int], symbols: dict[str, str],
                        tile_waits: dict[int, list[int | None]]) -> dict[int, list[str]]:
    """Per step, hart 0's I/O DMA code: start the copies planned there, chunk by chunk; and when the step
    prefetches the next step's first tile, the chunks that tile reads, waited for just before the prefetch
    (td_tiles_next_staged; transfers complete in order, so the last one's id covers the rest). Each step waits
    for the chunks of its own tiles in its tile loop (`tile_waits`, staged_waits per step)."""
    code: dict[int, list[str]] = {}
    for b in staging.buffers:
        label = f"/* {b.key.replace('*/', '* /')}, read by steps {b.first}..{b.last} */"
        code.setdefault(b.issue, []).extend(
            f"    {STAGE_IDS}[{b.slot + c}] = td_io_dma({STAGE_SYMBOL} + {b.offset + at}, "
            f"(const int8_t *){symbols[b.key]} + {at}, {size});" + (f" {label}" if c == 0 else "")
            for c, (at, size) in enumerate(b.chunks))
    for i, j in following.items():
        first = tile_waits[j][0]
        if first is not None:
            code.setdefault(i, []).append(f"    td_tiles_next_staged({STAGE_IDS}[{first}]);")
    return {step: ["if (TD_HART_ID == 0) {   /* weights staged L3 -> L2 by the I/O DMA (passes/stage.py) */",
                   *lines, "}"] for step, lines in sorted(code.items())}


def _model_staging_waits(plan: TilePlan, staging: StagingPlan, following: dict[int, int], target: Target,
                         tile_waits: dict[int, list[int | None]]) -> None:
    """Add each step's expected wait for staged weights to its modelled cycles (passes/stage.py predict_waits),
    so the modelled cycles an architect reads (network.c, tinydeploy.json) include the L3 stream."""
    dma = DmaSpec.from_target(target)
    order = sorted(plan.steps)
    cycles = {i: int(plan.steps[i].model.get("cycles", 0)) for i in order}
    waits = predict_waits(staging, order, cycles, tile_waits, following,
                          lambda nbytes: dma.cycles("l3", "l2", nbytes, 1))
    for i, wait in waits.items():
        if wait:
            step = plan.steps[i]
            plan.steps[i] = replace(step, model={**step.model, "cycles": step.model["cycles"] + wait,
                                                 "stage_wait": wait})


def _adjacent_steps(graph: Graph, steps: set[int], refs: Refs) -> list[tuple[int, int]]:
    """(i, j) for consecutive tiled steps with nothing but aliasing Reshapes and folded Transposes between."""
    pairs, previous = [], None
    for index, node in enumerate(graph.nodes):
        if index not in steps:
            if not (node.op == "Reshape" and node.outputs[0] in refs.aliases) and not _folded(node, refs):
                previous = None
            continue
        if previous is not None:
            pairs.append((previous, index))
        previous = index
    return pairs


def _folded(node: Node, refs: Refs) -> bool:
    """A Transpose one side of which is a view of the other's bytes (views.py): no code."""
    return node.op == "Transpose" and any(name in refs.views for name in (*node.inputs, *node.outputs))


def _tile_with_residency(graph: Graph, target: Target, full: dict[int, Call], weights_level: str,
                         scratch: dict[int, int], views: dict[str, View],
                         staged: frozenset[str] = frozenset()) -> tuple[Residency, TilePlan]:
    """Residency and tiling together: the residents are chosen on the tiler's modelled cycles of the whole
    inference, each step tiled within what the residents live at that step leave of L1."""
    tiler = Tiler(graph, target, scratch)
    packable = packable_constants(graph)
    touched = {i: [n for n in [*graph.nodes[i].inputs, *graph.nodes[i].outputs] if n] for i in full}
    memo: dict[tuple[int, tuple[str, ...]], list[Operand]] = {}

    def operands_of(i: int, residency: Residency) -> list[Operand]:
        key = (i, tuple(n for n in touched[i] if residency.level(n)))
        if key not in memo:
            memo[key] = step_operands(graph, i, graph.nodes[i], weights_level, residency, packable, views, staged)
        return memo[key]

    def operands(residency: Residency) -> dict[int, list[Operand]]:
        return {i: operands_of(i, residency) for i in full}

    def budgets(residency: Residency) -> dict[int, int]:
        extents = residency.extents(len(graph.nodes))
        return {i: tiler.budget - extents[i] for i in full}

    def cycles(residency: Residency) -> int | None:
        room = budgets(residency)
        total = 0
        for i in full:
            step = tiler.best(i, operands_of(i, residency), room[i])
            if step is None:
                return None
            total += step.model["cycles"]
        return total

    if target.section("accelerator"):
        residency = plan_residency(graph, cycles)
    else:
        residency = Residency({}, 0, {})
    plan = tile_graph(graph, target, operands(residency), budgets=budgets(residency), tiler=tiler)
    while differently := _packed_differently(plan):      # steps that share a constant but tile it differently:
        packable -= differently                          # it keeps its own order and they move it row by row
        memo.clear()
        plan = tile_graph(graph, target, operands(residency), budgets=budgets(residency), tiler=tiler)
    return residency, plan


def _prefetch(graph: Graph, target: Target, plan: TilePlan, residency: Residency, refs: Refs) -> dict[int, int]:
    """Pair every tiled step with the next one when nothing but aliasing Reshapes runs between them, and let it
    prefetch the next step's first-tile inputs it does not itself write (prefetch_across_steps). Returns step ->
    next step, for the pairs that prefetch."""
    extents = residency.extents(len(graph.nodes))
    limits = {i: plan.l1_budget - extents[i] for i in plan.steps}
    pairs = []
    for previous, index in _adjacent_steps(graph, set(plan.steps), refs):
        written = {refs.aliases.get(n, n) for n in graph.nodes[previous].outputs}
        keys = [t.operand.key for t in plan.steps[index].operands
                if t.operand.role == "in" and not t.in_place
                and refs.aliases.get(t.operand.key, t.operand.key) not in written]
        pairs.append((previous, index, keys))
    prefetch_across_steps(plan, pairs, limits, Bandwidth.from_target(target))
    # one L1 area: tiles from its bottom, residents in its top `residency.size` bytes
    top = max((end for s in plan.steps.values() for _, end in s.intervals()), default=0)
    plan.l1_peak = plan.l1_budget if residency.size else top
    return {i: j for i, j, _ in pairs if plan.steps[j].prefetched}
