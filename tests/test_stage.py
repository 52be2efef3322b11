"""Weights staged from L3 into an L2 ring by the I/O DMA (passes/stage.py): the plan's rules, the ISS's I/O DMA
engine, and a build whose weights do not fit L2 staying bit-exact while they stream through the ring."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_accel import one_gemm
from test_cluster import small_cluster_project, with_main  # noqa: F401  (fixture)
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.passes.stage import STAGE_ALIGNMENT, plan_staging
from tinydeploy.sim.cluster import ClusterISS, ClusterSpec, GuestFault
from tinydeploy.sim.firmware import build_firmware, simulate_build
from tinydeploy.target import DmaSpec

STEPS = list(range(10))


def test_the_ring_is_reused_once_the_readers_of_the_bytes_it_overwrites_have_run():
    reads = [(1, [("a", 400)]), (2, [("b", 400)]), (3, [("c", 400)])]
    plan = plan_staging(reads, STEPS, {1: 0, 2: 1, 3: 2}, capacity=1000)
    assert [(b.key, b.offset, b.issue) for b in plan.buffers] == [("a", 0, 0), ("b", 448, 0), ("c", 0, 2)]
    assert all(b.offset % STAGE_ALIGNMENT == 0 for b in plan.buffers)
    assert plan.size == 848 and plan.nbytes == 1200


def test_a_constant_stays_in_l3_when_the_ring_frees_too_late_or_it_is_too_large():
    # c would overwrite a, which step 3 itself still reads: the copy could only start after step 3
    plan = plan_staging([(3, [("a", 400), ("b", 400), ("c", 400)])], STEPS, {3: 2}, capacity=1000)
    assert [b.key for b in plan.buffers] == ["a", "b"]
    assert plan_staging([(1, [("big", 1100)])], STEPS, {1: 1}, capacity=1000).buffers == []


def test_copies_start_in_order_of_need_and_after_the_steps_that_read_l3_directly():
    reads = [(2, [("a", 100)]), (5, [("b", 100)]), (6, [("c", 100)])]
    plan = plan_staging(reads, [0, 2, 4, 5, 6], {2: 2, 5: 4, 6: 5}, capacity=1000, direct=frozenset({0, 3}))
    issues = [b.issue for b in plan.buffers]
    assert issues == [2, 4, 4]                  # after the direct reader 0 (for a) and 3 (for b, c); 3 runs no code
    assert issues == sorted(issues)


# --- the ISS's I/O DMA --------------------------------------------------------------------------------------
IO_COPY = """
#include "td_dma.h"
static int8_t staged[4096] __attribute__((aligned(8)));
int main(void)
{
    if (td_hart_id() == 0) {
        volatile int8_t *l3 = (volatile int8_t *)(TD_L3_BASE + 0x1000u);
        for (int i = 0; i < 4096; ++i) {
            l3[i] = (int8_t)(i * 7);
        }
        const uint32_t id = td_io_dma(staged, (const void *)(TD_L3_BASE + 0x1000u), 4096);
        /* the cluster DMA's L3 read queues behind the copy on the one L3 link */
        const uint32_t start = TD_MMIO(TD_REG_CYCLES);
        td_dma_wait(td_dma_2d(td_l1_probe, (const void *)(TD_L3_BASE + 0x1000u), 64, 1, 64, 64));
        if (TD_MMIO(TD_REG_CYCLES) - start < IO_CYCLES) {
            return 3;
        }
        td_io_dma_wait(id);
        for (int i = 0; i < 4096; ++i) {
            if (staged[i] != (int8_t)(i * 7)) {
                return 1;
            }
        }
    }
    td_barrier();
    return 0;
}
"""


def test_the_io_dma_copies_l3_to_l2_and_shares_the_l3_link(small_cluster_project, tmp_path):  # noqa: F811
    io_cycles = DmaSpec.from_target("cluster8").cycles("l3", "l2", 4096)
    source = (f"#define IO_CYCLES {io_cycles}u\nstatic int8_t td_l1_probe[64] __attribute__((section(\".l1.bss\")));"
              + IO_COPY)
    iss = ClusterISS(ClusterSpec.from_target("cluster8"), build_firmware(with_main(small_cluster_project, tmp_path,
                                                                                   source)))
    result = iss.run(max_cycles=2_000_000)
    assert result.exit_code == 0
    assert result.io_dma_busy_cycles == io_cycles


def test_the_io_dma_moves_l3_and_l2_only(small_cluster_project, tmp_path):  # noqa: F811
    source = ('#include "td_dma.h"\nstatic int8_t l1[64] __attribute__((section(".l1.bss")));\n'
              "static int8_t l2[64];\nint main(void) { if (td_hart_id() == 0) { "
              "td_io_dma_wait(td_io_dma(l1, l2, 64)); }\ntd_barrier(); return 0; }")
    iss = ClusterISS(ClusterSpec.from_target("cluster8"), build_firmware(with_main(small_cluster_project, tmp_path,
                                                                                   source)))
    with pytest.raises(GuestFault, match=r"hart 0 .*the I/O DMA moves L3 <-> L2 only"):
        iss.run(max_cycles=200_000)


# --- a model whose weights live in L3 -----------------------------------------------------------------------
def gemm_chain(rng: np.random.Generator, m: int, width: int, count: int) -> Graph:
    """`count` GEMMs [width, width] in a row, each requantized to int8: count * width^2 bytes of weights."""
    g = Graph(name="chain")
    g.add_tensor(Tensor("x0", "int8", (1, m, width)))
    for i in range(count):
        sub = one_gemm(rng, m, width, width, shift=14)
        g.add_const(f"w{i}", sub.tensors["w"].data, "int8")
        g.add_tensor(Tensor(f"acc{i}", "int32", (1, m, width)))
        g.add_tensor(Tensor(f"x{i + 1}", "int8", (1, m, width)))
        g.nodes += [Node(f"mm{i}", "MatMulInt", [f"x{i}", f"w{i}"], [f"acc{i}"], {}),
                    Node(f"rq{i}", "Requant", [f"acc{i}"], [f"x{i + 1}"],
                         {"mul": 1, "shift": 14, "add": 0, "lo": -128, "hi": 127})]
    g.inputs, g.outputs = ["x0"], [f"x{count}"]
    return g


def test_weights_beyond_l2_stream_through_the_ring_bit_exact(tmp_path):
    """4 MiB of weights (L2 holds 3 MiB beside the code): every GEMM's weights are staged, the ring is reused,
    and the firmware waits for each copy before its tiles read it."""
    from tinydeploy.backends import compile_graph

    rng = np.random.default_rng(12)
    g = gemm_chain(rng, 16, 1024, 4)
    x = rng.integers(-128, 128, (1, 16, 1024)).astype(np.int8)
    compile_graph(g, "cluster8-ita", tmp_path, {"x0": x})
    manifest = json.loads((tmp_path / "tinydeploy.json").read_text())
    staging = manifest["staging"]
    weights = [b for b in staging["buffers"] if b["key"].startswith("w")]
    assert len(weights) == 4 and staging["bytes"] < 4 * 1024 * 1024 <= staging["staged_bytes"]
    buffers = staging["buffers"]
    overlaps = [(a, b) for i, a in enumerate(buffers) for b in buffers[i + 1:]
                if a["offset"] < b["offset"] + b["bytes"] and b["offset"] < a["offset"] + a["bytes"]]
    assert overlaps                              # the ring is reused ...
    assert all(b["issue"] > a["last"] for a, b in overlaps)   # ... only once the readers of what it overwrites ran
    network = (tmp_path / "network.c").read_text()
    assert network.count("td_io_dma(td_stage + ") == staging["transfers"] > staging["constants"]   # in chunks
    # each GEMM waits tile by tile for the chunks that tile reads, not for its whole weight before tile 0
    tables = [[int(v) for v in m.group(1).split(",")] for m in re.finditer(r"_staged\[\d+\] = \{([^}]*)\}", network)]
    assert len(tables) == 4 and all(t == sorted(t) and t[0] < t[-1] for t in tables)
    report = simulate_build(tmp_path).report
    assert report["bit_exact"] is True
    assert report["io_dma_busy_cycles"] > 0
    from tinydeploy.report import write_report

    page = write_report(tmp_path, tmp_path / "report.html")[0].read_text()
    assert f"{staging['staged_bytes']:,} B of weights staged L3 -&gt; L2" in page


def test_the_ring_size_is_a_compile_option(tmp_path):
    """compile --stage-bytes N bounds the ring (0: no staging, the tiles read L3)."""
    from tinydeploy.backends import compile_graph

    rng = np.random.default_rng(13)
    g = gemm_chain(rng, 16, 1024, 4)
    x = rng.integers(-128, 128, (1, 16, 1024)).astype(np.int8)
    compile_graph(g, "cluster8-ita", tmp_path / "none", {"x0": x}, stage_bytes=0)
    assert "td_io_dma(" not in (tmp_path / "none" / "network.c").read_text()
    compile_graph(g, "cluster8-ita", tmp_path / "small", {"x0": x}, stage_bytes=1_200_000)
    staging = json.loads((tmp_path / "small" / "tinydeploy.json").read_text())["staging"]
    assert 0 < staging["bytes"] <= 1_200_000 and staging["capacity"] == 1_200_000


def test_the_cost_model_predicts_the_waits_for_the_l3_stream():
    """predict_waits: a step's tiles wait for the chunks they read as the I/O DMA brings them one after the other;
    a long enough step before hides the stream."""
    from tinydeploy.passes.stage import CHUNK_BYTES, predict_waits

    plan = plan_staging([(1, [("w", 3 * CHUNK_BYTES)])], [0, 1], {1: 0}, capacity=4 * CHUNK_BYTES)
    chunk = lambda nbytes: 1000                                              # noqa: E731
    # chunks land at 1000, 2000, 3000; step 1 starts at 100 and reaches tile t at 100 t (+ the waits so far)
    assert predict_waits(plan, [0, 1], {0: 100, 1: 300}, {1: [0, 1, 2]}, {}, chunk) == {0: 0, 1: 2700}
    assert predict_waits(plan, [0, 1], {0: 5000, 1: 300}, {1: [0, 1, 2]}, {}, chunk) == {0: 0, 1: 0}
    # step 0 (one tile) prefetches step 1's first tile: it waits for chunk 0 before its last (only) tile, as
    # td_tile_ready issues the prefetch before that tile's compute
    assert predict_waits(plan, [0, 1], {0: 100, 1: 300}, {1: [0, 1, 2]}, {0: 1}, chunk)[0] == 1000
