"""Backends: integer graph -> C project. `compile_graph` picks the backend named by the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TinyDeployError
from ..ir.graph import Graph
from ..target import Target, load_target


def backend_passes(graph: Graph, target: str | Target, dump=None) -> tuple[Graph, list[str]]:
    """The graph rewrites the target's backend runs before lowering (bit-exact by construction), with notes.

    `verify --layers` runs the same passes to name the golden tensors the firmware traces."""
    from ..passes.fold_constants import fold_into_gather_tables

    target = load_target(target)
    dump = dump or (lambda stage, g: None)
    graph, folded = fold_into_gather_tables(graph)
    dump("fold_into_gather_tables", graph)
    notes = [f"folded {folded} elementwise ops into embedding tables"] if folded else []
    if target.backend == "cmsis":
        from ..passes.fold_constants import fold_chains_into_luts
        from ..passes.fuse_cmsis import fuse_fully_connected

        graph, count = fuse_fully_connected(graph)
        dump("fuse_fully_connected", graph)
        graph, luts = fold_chains_into_luts(graph)     # after: GEMM requants belong to the CMSIS-NN calls
        dump("fold_chains_into_luts", graph)
        if luts:
            notes.append(f"{luts} chains of scalar elementwise ops became 256-entry LUTs")
        fc = sum(n.op == "FullyConnectedS8" for n in graph.nodes)
        wide = sum(n.op == "FullyConnectedS8" and graph.tensors[n.outputs[0]].dtype == "int16" for n in graph.nodes)
        return graph, [*notes, f"{count} GEMMs on CMSIS-NN kernels: {fc} fully connected "
                               f"(arm_fully_connected_[per_channel_]s8"
                               + (f"; {wide} with int16 outputs on tinydeploy's td_fully_connected_s8_s16" if wide
                                  else "") + f"), {count - fc} arm_batch_matmul_s8"]
    if target.backend != "riscv":
        return graph, notes
    from ..passes.fold_constants import untranspose_constant_weights
    from ..passes.fuse_attention import fuse_attention
    from ..passes.fuse_elementwise import fuse_elementwise, fuse_norm_copies, hoist_scalar_ops
    from ..passes.split_rows import split_rows
    from ..passes.tile import l1_budget

    graph, untransposed = untranspose_constant_weights(graph)
    dump("untranspose_constant_weights", graph)
    if untransposed:
        notes.append(f"{untransposed} constant weight matrices stored untransposed (row-major GEMM operands)")
    graph, pairs = fuse_elementwise(graph)         # first: its AddRequant/MulRequant can join an ITAGemm
    dump("fuse_elementwise", graph)
    graph, hoisted = hoist_scalar_ops(graph)
    dump("hoist_scalar_ops", graph)
    graph, fusion = fuse_attention(graph, target)
    dump("fuse_attention", graph)
    graph, split = split_rows(graph, l1_budget(target))
    dump("split_rows", graph)
    graph, copies = fuse_norm_copies(graph)
    dump("fuse_norm_copies", graph)
    notes.append(f"fused {pairs} Add/Mul -> Requant pairs on the cores; moved {hoisted} scalar ops above layout ops")
    if copies:
        notes.append(f"{copies} LayerNorms also write their requantized copy (one pass over the rows)")
    if fusion.fused or fusion.skipped:     # on a target with an accelerator: also why nothing went there
        notes.append(fusion.summary())
    if split:
        notes.append(f"{split} accelerator GEMMs run as row blocks (their A does not fit L1 whole)")
    return graph, notes


def compile_graph(graph: Graph, target: str | Target, out_dir: str | Path, inputs: dict[str, np.ndarray], *,
                  weights: str = "auto", model_path: str = "", dump=None, stage_bytes: int | None = None):
    """Write the C project for `graph` on `target` into out_dir; returns the backends.project.Project."""
    from ..files import model_file
    from .project import BACKENDS_DIR, ProjectOptions, build_project

    model_path = str(model_file(model_path)) if model_path else ""   # a zoo folder: the manifest names its file
    target = load_target(target)
    graph, notes = backend_passes(graph, target, dump)
    if target.backend == "generic":
        options = ProjectOptions(weights=weights, model_path=model_path)
    elif target.backend == "riscv":
        riscv, firmware, generic = (BACKENDS_DIR / n for n in ("riscv", "firmware", "generic"))
        options = ProjectOptions(weights="incbin", model_path=model_path,
                                 template_dirs=[riscv / "templates", firmware / "templates", generic / "templates"],
                                 runtime_dirs=[generic / "runtime", firmware / "runtime", riscv / "runtime"],
                                 extra_files=["td_platform.h", "link.ld"], tiled=True, stage_bytes=stage_bytes)
    elif target.backend == "cmsis":
        cmsis, firmware, generic = (BACKENDS_DIR / n for n in ("cmsis", "firmware", "generic"))
        options = ProjectOptions(weights="incbin", model_path=model_path,
                                 template_dirs=[cmsis / "templates", firmware / "templates", generic / "templates"],
                                 runtime_dirs=[generic / "runtime", firmware / "runtime", cmsis / "runtime"],
                                 extra_files=["td_platform.h", "link.ld"])
    else:
        raise TinyDeployError(f"target '{target.name}' needs the '{target.backend}' backend, which is not "
                              f"implemented; use --target generic, a cluster or a Cortex-M target")
    project = build_project(graph, target, out_dir, inputs, options)
    project.notes = notes
    return project
