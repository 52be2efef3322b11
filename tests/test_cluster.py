"""Ladder rung 4 on the cluster: firmware in the ISS vs golden, and every class of guest fault reported clearly."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import CONFORMANCE
from tinydeploy.backends import compile_graph
from tinydeploy.cli import load_inputs, observed_inputs
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.passes.integerize import integerize
from tinydeploy.sim.cluster import ClusterISS, ClusterSpec, GuestFault
from tinydeploy.sim.firmware import build_firmware, simulate_build
from tinydeploy.verify import verify_build


def compile_for(model, out, target="cluster8"):
    graph = integerize(import_model(model, **observed_inputs(str(model), None)), target)
    return compile_graph(graph, target, out, load_inputs(None, str(model), graph), model_path=str(model))


def with_main(build, tmp_path, source: str):
    """A copy of a compiled firmware project whose main.c is `source` (fault and driver tests)."""
    project = tmp_path / "p"
    shutil.copytree(build, project, ignore=shutil.ignore_patterns("fw*"))
    (project / "main.c").write_text('#include "td_parallel.h"\nunion { long long a; char b[8]; } td_output;\n'
                                    + source + "\n")
    return project


@pytest.fixture(scope="module")
def tiny_cluster_build(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_cluster8")
    compile_for(tiny_zoo / "model_qdq.onnx", out)
    return out


def test_tiny_mobilebert_bit_exact_on_8_harts(tiny_cluster_build):
    sim = simulate_build(tiny_cluster_build)
    report = json.loads((tiny_cluster_build / "report.json").read_text())
    assert sim.result.exit_code == 0 and "PASS" in sim.result.console
    assert report["bit_exact"] is True
    assert len(report["instructions"]) == 8 and min(report["instructions"]) > 0
    matmuls = [layer for layer in report["layers"] if layer["op"] == "MatMulInt"]
    assert matmuls and all(layer["cycles"] > 0 and layer["macs"] > 0 for layer in matmuls)
    assert report["cycles_total"] >= sum(layer["cycles"] for layer in report["layers"])


def test_tiny_mobilebert_every_layer_in_the_iss(tiny_cluster_build):
    result = verify_build(tiny_cluster_build, layers=True)
    assert result.bit_exact, result.first.describe()
    assert result.layers_checked > 120          # fused Add/Mul -> Requant pairs have one output


CASES = sorted(p.name for p in CONFORMANCE.iterdir() if p.is_dir()) if CONFORMANCE.exists() else []


@pytest.mark.skipif(not CASES, reason="shared/conformance/deeploy not found")
@pytest.mark.parametrize("case", CASES)
def test_deeploy_cases_on_the_cluster(case, tmp_path):
    compile_for(CONFORMANCE / case / "network.onnx", tmp_path)
    result = verify_build(tmp_path, layers=True)
    assert result.bit_exact, result.first.describe()


# --- faults: each class stops the run with hart, pc, symbol and cause ---------------------------------------
FAULTY_MAIN = {
    "bad_address": ("int main(void) { if (td_hart_id() == 3) { return *(volatile int *)0x40000000; } "
                    "td_barrier(); return 0; }", r"hart 3 .*main.*load from unmapped address 0x40000000"),
    "illegal_instruction": ("int main(void) { if (td_hart_id() == 0) { __asm__ volatile(\".word 0x00000000\"); } "
                            "return 0; }", r"hart 0 .*illegal instruction"),
    "barrier_deadlock": ("int main(void) { if (td_hart_id() == 5) { return 0; } td_barrier(); return 0; }",
                         r"deadlock at the barrier: harts \[0, 1, 2, 3, 4, 6, 7\] wait, hart 5 has exited"),
    "no_exit": ("int main(void) { for (;;) { } }", r"no exit within 200000 cycles"),
}


@pytest.fixture(scope="module")
def small_cluster_project(tmp_path_factory):
    if not CONFORMANCE.is_dir():
        pytest.skip("needs ../shared/conformance/deeploy")
    out = tmp_path_factory.mktemp("small_cluster")
    compile_for(CONFORMANCE / "MatMul_Regular" / "network.onnx", out)
    return out


@pytest.mark.parametrize("kind", sorted(FAULTY_MAIN))
def test_guest_faults_are_reported(small_cluster_project, tmp_path, kind):
    source, expected = FAULTY_MAIN[kind]
    elf = build_firmware(with_main(small_cluster_project, tmp_path, source))
    iss = ClusterISS(ClusterSpec.from_target("cluster8"), elf)
    with pytest.raises(GuestFault, match=expected) as info:
        iss.run(max_cycles=200_000)
    assert info.value.symbol != "?"


def test_waiting_for_a_dma_transfer_never_started_is_a_fault(small_cluster_project, tmp_path):
    project = with_main(small_cluster_project, tmp_path,
                        "int main(void) { if (td_hart_id() == 2) { td_dma_wait(5); }\ntd_barrier(); return 0; }")
    iss = ClusterISS(ClusterSpec.from_target("cluster8"), build_firmware(project))
    with pytest.raises(GuestFault, match=r"hart 2 .*waits for DMA transfer 5, but only 0 were started"):
        iss.run(max_cycles=200_000)


def test_tiny_mobilebert_runs_on_l1_tiles_moved_by_dma(tiny_cluster_build):
    """Every compute step streams its operands through L1: DMA bytes in every MatMul layer, L1 within budget."""
    manifest = json.loads((tiny_cluster_build / "tinydeploy.json").read_text())
    tiling = manifest["tiling"]
    assert 0 < tiling["l1_peak"] <= tiling["l1_budget"]
    assert manifest["placement"]["arena_region"] == "L2"
    assert any(step["tiles"] > 1 for step in tiling["steps"])
    report = simulate_build(tiny_cluster_build).report
    matmuls = [layer for layer in report["layers"] if layer["op"] == "MatMulInt"]
    assert all(layer["dma"].get("l2->l1", 0) > 0 and layer["dma"].get("l1->l2", 0) > 0 for layer in matmuls)
    assert 0.0 <= report["dma_overlap"] <= 1.0


def test_cycles_do_not_depend_on_the_iss_slice_length(tiny_cluster_build):
    """Clocks are per hart and synchronisation blocks, so the slice length only changes the interleaving."""
    elf = build_firmware(tiny_cluster_build)
    spec = ClusterSpec.from_target("cluster8")
    short, long = (ClusterISS(spec, elf, slice_instructions=q).run() for q in (2_000, 200_000))
    assert short.exit_code == long.exit_code == 0
    assert abs(short.cycles - long.cycles) <= short.cycles * 1e-4


def test_unbalanced_tiles_are_stored_only_after_every_hart_finished(tmp_path):
    """M = 1 with transposed weights: one hart computes each tile while hart 0 only moves data. Storing tile t-1
    before the barrier (a bug the full MobileBERT pooler exposed) corrupts the output; this pins the fix."""
    import numpy as np
    from tinydeploy.ir.graph import Graph, Node, Tensor

    rng = np.random.default_rng(1)
    graph = Graph(name="pooler_like")
    graph.add_tensor(Tensor("x", "int8", (1, 512)))
    graph.add_const("w", rng.integers(-128, 128, (512, 512)).astype(np.int8), "int8")   # [N, K], 256 KiB
    graph.add_const("bias", rng.integers(-1000, 1000, (512,)).astype(np.int32), "int32")
    graph.add_tensor(Tensor("y", "int32", (1, 512)))
    graph.nodes.append(Node("gemm", "MatMulInt", ["x", "w", "bias"], ["y"], {"trans_b": 1}))
    graph.inputs, graph.outputs = ["x"], ["y"]
    compile_graph(graph, "cluster8", tmp_path, {"x": rng.integers(-128, 128, (1, 512)).astype(np.int8)})
    assert json.loads((tmp_path / "tinydeploy.json").read_text())["tiling"]["steps"][0]["tiles"] > 1
    report = simulate_build(tmp_path).report
    assert report["bit_exact"] is True


def test_corruption_is_localised_to_layer_and_tile(tiny_cluster_build, tmp_path):
    """Flip one byte of the second tile of the first multi-tile step (in the runtime, before its store):
    verify --layers names that step, tile 2, and the element."""
    project = tmp_path / "p"
    shutil.copytree(tiny_cluster_build, project, ignore=shutil.ignore_patterns("fw*"))
    runtime = project / "td_cluster.c"
    text = runtime.read_text()
    anchor = "        if (x[i].is_output == TD_XFER_OUT) {\n"
    assert anchor in text
    flip = ("            static int corrupted;\n"
            "            if (t == 1 && !corrupted) { x[i].l1[x[i].l1_step] ^= 1; corrupted = 1; }\n")
    runtime.write_text(text.replace(anchor, anchor + flip, 1))
    manifest = json.loads((project / "tinydeploy.json").read_text())
    first = next(s for s in manifest["tiling"]["steps"] if s["tiles"] > 1)
    result = verify_build(project, layers=True)
    assert not result.bit_exact
    assert result.first.node == first["node"]
    assert result.first.tile.startswith(f"tile 2 of {first['tiles']}")
    assert result.first.index[first["axis"]] == first["tile"]     # the first element of tile 2
