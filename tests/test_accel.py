"""The ITA-like accelerator: fusion keeps every bit, RTL == model on random tiles (outputs and cycles), MobileBERT
on cluster8-ita bit-exact in the ISS with the model and with the Verilated RTL."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import CONFORMANCE
from test_cluster import compile_for, with_main
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.ir.interpreter import run_graph
from tinydeploy.passes.fuse_attention import fuse_attention
from tinydeploy.passes.integerize import integerize
from tinydeploy.sim.accel.model import (
    MODE_A_UNSIGNED,
    MODE_KEEP_B,
    MODE_LUT,
    MODE_LUT_LAST,
    MODE_R16,
    MODE_REQUANT2,
    MODE_REQUANT3,
    MODE_SM_MASK,
    MODE_SOFTMAX,
    MODE_TRANS_B,
    MODE_Y16,
    Job,
    cycles_of,
    run_job,
)
from tinydeploy.sim.cluster import ClusterISS, ClusterSpec, GuestFault
from tinydeploy.sim.firmware import build_firmware, simulate_build
from tinydeploy.target import AccelSpec
from tinydeploy.verify import verify_build

needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None or shutil.which("g++") is None,
                                     reason="verilator or g++ not installed")
def clip_word(lo: int, hi: int) -> int:
    return ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)


STAGES = 1 << 12  # test-only flag: add AddRequant/MulRequant epilogue stages (not a mode bit)
PITCHED = 1 << 13  # test-only flag: the residual tile's rows lie r_pitch > n bytes apart (a column tile in place)
ITA255 = 1 << 14  # test-only flag: ITA's softmax numerator (L = 255, sm_levels 512) and an unsigned 0..255 output
OCTAVES = 1 << 15  # test-only flag: a random softmax input resolution (sm_bits 1..5) instead of ITA's 5


MODES = {"gemm": 0, "gemm_transposed_b": MODE_TRANS_B, "gemm_requant2": MODE_REQUANT2, "gemm_lut": MODE_LUT,
         "qk_softmax": MODE_SOFTMAX, "qk_softmax_requant2_transposed": MODE_SOFTMAX | MODE_REQUANT2 | MODE_TRANS_B,
         "qk_softmax_requant3": MODE_SOFTMAX | MODE_REQUANT2 | MODE_REQUANT3,
         "gemm_residual_nonorm": STAGES, "gemm_lut_two_stages": MODE_LUT | STAGES,
         "gemm_residual_pitched": STAGES | PITCHED, "av_a_unsigned": MODE_A_UNSIGNED,
         "qk_softmax_ita255": MODE_SOFTMAX | ITA255,
         "qk_softmax_ita255_requant3": MODE_SOFTMAX | ITA255 | MODE_REQUANT3,
         "gemm_y16": MODE_Y16, "gemm_y16_transposed_b": MODE_Y16 | MODE_TRANS_B,
         "qk_softmax_masked": MODE_SOFTMAX | MODE_SM_MASK | OCTAVES,
         "qk_softmax_masked_ita255_requant3": MODE_SOFTMAX | MODE_SM_MASK | ITA255 | MODE_REQUANT3 | OCTAVES,
         "qk_softmax_octaves": MODE_SOFTMAX | OCTAVES,
         "gemm_bias_stage_then_lut": MODE_LUT | MODE_LUT_LAST | STAGES,
         "gemm_y16_residual16": MODE_Y16 | MODE_R16 | STAGES,
         "gemm_y16_residual16_pitched": MODE_Y16 | MODE_R16 | STAGES | PITCHED}


def random_stages(rng: np.random.Generator, count: int, wide: bool = False) -> np.ndarray:
    """Stage table rows (STAGE_FIELDS): stage 0 reads the residual tile, the others per-column vectors; `wide`:
    16-bit clip bounds."""
    lo, hi = (-32768, 32767) if wide else (-128, 127)
    rows = []
    for s in range(count):
        kind = int(rng.integers(1, 3))
        rows.append([kind, 0 if s == 0 else s, int(rng.integers(0, 2)), int(rng.integers(-300, 300)),
                     int(rng.integers(-300, 300)), int(rng.integers(-3, 3)), int(rng.integers(-3, 3)),
                     int(rng.integers(0, 256)), int(rng.integers(4, 16)), int(rng.integers(-8, 8)), lo, hi])
    return np.asarray(rows, dtype="<i4")


def random_job(rng: np.random.Generator, mode: int) -> tuple[Job, callable]:
    """A random tile (shapes, operands, requant and epilogue parameters) and a reader over its memory."""
    m, k = int(rng.integers(1, 6)), int(rng.integers(1, 200))
    n = 16 * int(rng.integers(1, 5)) if mode & MODE_SOFTMAX else int(rng.integers(1, 70))
    base = {"a": 0x1000, "b": 0x10000, "bias": 0x30000, "rq": 0x31000, "lut": 0x33000, "y": 0x34000}
    for name in ("a", "b", "lut", "y"):     # byte operands need not be word-aligned: the port's beats then straddle
        base[name] += int(rng.integers(0, 4))
    memory = {
        base["a"]: rng.integers(-128, 128, m * k).astype(np.int8).tobytes(),
        base["b"]: rng.integers(-128, 128, k * n).astype(np.int8).tobytes(),
        base["bias"]: rng.integers(-20000, 20000, n).astype("<i4").tobytes(),
        base["rq"]: np.stack([rng.integers(0, 256, n), rng.integers(0, 24, n),
                              rng.integers(-64, 64, n)]).astype("<i4").tobytes(),
        base["lut"]: rng.integers(-128, 128, 256).astype(np.int8).tobytes(),
    }
    stage_count = int(rng.integers(1, 6)) if mode & STAGES else 0
    extra = {"stages": 0, "stage_count": stage_count, "r": 0, "v0": 0, "v1": 0, "v2": 0, "v3": 0, "y_pitch": 0,
             "r_pitch": 0}
    if stage_count:
        extra.update(stages=0x36000, r=0x37000)
        memory[0x36000] = random_stages(rng, stage_count, bool(mode & MODE_Y16)).tobytes()
        r_bytes = 2 if mode & MODE_R16 else 1
        r_pitch = r_bytes * n + int(rng.integers(1, 40)) if mode & PITCHED else 0
        extra["r_pitch"] = r_pitch
        if mode & MODE_R16:               # an int16 residual tile (its pitch may be odd: bytes, as the DMA's)
            memory[0x37000] = rng.integers(-3000, 3000, (m * (r_pitch or r_bytes * n) + 1) // 2).astype("<i2").tobytes()
        else:
            memory[0x37000] = rng.integers(-128, 128, m * (r_pitch or n)).astype(np.int8).tobytes()
        for j in range(1, stage_count):
            extra[f"v{j - 1}"] = 0x38000 + 0x1000 * j
            memory[extra[f"v{j - 1}"]] = rng.integers(-128, 128, n).astype(np.int8).tobytes()
    regs = {"mode": mode, **base, "m": m, "k": k, "n": n, "rq_clip": clip_word(-128, 127),
            "rq2_mul": int(rng.integers(0, 256)), "rq2_shift": int(rng.integers(0, 12)),
            "rq2_add": int(rng.integers(-20, 20)) & 0xFFFFFFFF, "rq2_clip": clip_word(-128, 127),
            "lut_min": -128 & 0xFFFFFFFF, "sm_group": 16, "sm_levels": 256, "sm_offset": 0,
            "sm_clip": clip_word(-128, 127), "rq3_mul": int(rng.integers(0, 256)),
            "rq3_shift": int(rng.integers(0, 10)), "rq3_add": int(rng.integers(-20, 20)) & 0xFFFFFFFF,
            "rq3_clip": clip_word(-128, 127), **extra}
    regs["mode"] = mode & 0xFFF
    if mode & ITA255:
        regs.update(sm_levels=512, sm_clip=clip_word(0, 255))
    if mode & MODE_Y16:                      # int16 results: the requant's whole 16-bit range
        regs.update(rq_clip=clip_word(-32768, 32767))
    regs["sm_bits"] = int(rng.integers(1, 6)) if mode & OCTAVES else 5
    if mode & MODE_SM_MASK:                  # a key mask in v0; some blocks wholly masked, sometimes every column
        keep = rng.random(n) < rng.choice([0.0, 0.3, 0.8])
        keep[:16] &= rng.random() < 0.7
        regs["v0"] = 0x3A000
        memory[0x3A000] = (keep * rng.integers(1, 128, n)).astype(np.int8).tobytes()

    def read(address: int, nbytes: int) -> bytes:
        for start, data in memory.items():
            if start <= address < start + len(data):
                return data[address - start:address - start + nbytes]
        raise KeyError(hex(address))

    return Job(1, regs), read


def check_rtl_against_model(mode: int, tiles: int, seed: int) -> None:
    from tinydeploy.sim.accel.rtl import RtlAccelerator

    rtl, rng = RtlAccelerator(), np.random.default_rng(seed)
    for tile in range(tiles):
        job, read = random_job(rng, mode)
        r = job.regs
        got, cycles = rtl.run(job, read)
        assert got == run_job(job, read), f"tile {tile}: {r['m']}x{r['k']}x{r['n']} outputs differ"
        assert cycles == cycles_of(r, AccelSpec()), f"tile {tile}"


@needs_verilator
@pytest.mark.parametrize("mode", sorted(MODES))
def test_rtl_equals_model_on_random_tiles(mode):
    check_rtl_against_model(MODES[mode], tiles=100, seed=len(mode))


@needs_verilator
@pytest.mark.parametrize("mode", [0, MODE_TRANS_B, MODE_SOFTMAX | MODE_TRANS_B])
def test_rtl_row_jobs_keep_b_in_the_accelerator(mode):
    """A matrix's later row job (mode bit 10) computes with the B, bias and rq the previous job loaded: the RTL's
    port serves it no B (it would read the 0xA5 filler), yet its outputs and cycles equal the model's."""
    from tinydeploy.sim.accel.rtl import RtlAccelerator

    rtl, rng = RtlAccelerator(), np.random.default_rng(7 + mode)
    for _ in range(10):
        first, read = random_job(rng, mode)
        assert rtl.run(first, read)[0] == run_job(first, read)
        rows = rng.integers(-128, 128, first.regs["m"] * first.regs["k"]).astype(np.int8).tobytes()
        regs = {**first.regs, "a": 0x3F000, "mode": first.regs["mode"] | MODE_KEEP_B}
        second = Job(2, regs)

        def read_second(address: int, nbytes: int, rows: bytes = rows, read=read) -> bytes:
            return rows[address - 0x3F000:address - 0x3F000 + nbytes] if address >= 0x3F000 else read(address, nbytes)

        got, cycles = rtl.run(second, read_second)
        assert got == run_job(second, read_second)
        assert cycles == cycles_of(regs, AccelSpec()) < cycles_of(first.regs, AccelSpec())


def test_a_job_that_keeps_b_moves_no_b_bias_or_rq_through_the_port():
    """The energy model's L1 traffic of a job is what its loader reads plus the Y it writes: a later row job
    (mode bit 10) reads neither B nor bias nor rq."""
    from tinydeploy.sim.accel.model import l1_bytes

    first, _ = random_job(np.random.default_rng(5), 0)
    m, k, n = (first.regs[x] for x in "mkn")
    kept = {**first.regs, "mode": first.regs["mode"] | MODE_KEEP_B}
    assert l1_bytes(first.regs) - l1_bytes(kept) == k * n + 4 * n + 12 * n
    assert l1_bytes(kept) >= m * k + m * n


@pytest.mark.slow
@needs_verilator
@pytest.mark.parametrize("mode", sorted(MODES))
def test_rtl_equals_model_on_1000_random_tiles(mode):
    check_rtl_against_model(MODES[mode], tiles=1000, seed=1000 + len(mode))


def test_fusion_keeps_every_bit(tiny_zoo):
    graph = integerize(import_model(tiny_zoo / "model_qdq.onnx"), "cluster8-ita")
    fused, report = fuse_attention(graph, "cluster8-ita")
    assert report.fused == sum(1 for n in graph.nodes if n.op == "MatMulInt") and report.with_softmax == 2
    assert not any(n.op == "MatMulInt" for n in fused.nodes)
    inputs = {k: v for k, v in np.load(tiny_zoo / "inputs.npz").items() if k in graph.inputs}
    before, after = run_graph(graph, inputs), run_graph(fused, inputs)
    assert all(np.array_equal(before[name], after[name]) for name in graph.outputs)


def test_all_backend_rewrites_keep_every_bit(tiny_zoo):
    """Elementwise fusion, scalar ops hoisted above the head split, accelerator fusion: outputs unchanged and
    no scalar MulRequant is left behind a Transpose."""
    from tinydeploy.backends import backend_passes

    graph = integerize(import_model(tiny_zoo / "model_qdq.onnx"), "cluster8-ita")
    rewritten, notes = backend_passes(graph, "cluster8-ita")
    assert any("moved 4 scalar ops" in note for note in notes)
    # the embedding block: dense + position embeddings (matrix) + token-type embeddings (a constant whose rows are
    # all equal: read as a vector) + NoNorm gamma, beta -> one accelerator job, nothing elementwise left on cores
    assert not any(n.op in ("AddRequant", "MulRequant") for n in rewritten.nodes)
    embedding = next(n for n in rewritten.nodes if n.op == "ITAGemm")
    assert [s["op"] for s in embedding.attrs["stages"]] == ["AddRequant", "AddRequant", "MulRequant", "AddRequant"]
    assert [rewritten.tensors[name].size for name in embedding.inputs[5:]] == [128, 128, 128]
    producers = rewritten.producers()
    assert not any(n.op == "MulRequant" and producers.get(n.inputs[0]) is not None
                   and producers[n.inputs[0]].op == "Transpose" for n in rewritten.nodes)
    inputs = {k: v for k, v in np.load(tiny_zoo / "inputs.npz").items() if k in graph.inputs}
    before, after = run_graph(graph, inputs), run_graph(rewritten, inputs)
    assert all(np.array_equal(before[name], after[name]) for name in graph.outputs)


def test_no_fusion_without_an_accelerator(tiny_zoo):
    graph = integerize(import_model(tiny_zoo / "model_qdq.onnx"), "cluster8")
    fused, report = fuse_attention(graph, "cluster8")
    assert fused is graph and report.fused == 0


@pytest.fixture(scope="module")
def tiny_ita_build(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_cluster8_ita")
    compile_for(tiny_zoo / "model_qdq.onnx", out, target="cluster8-ita")
    return out


def test_tiny_mobilebert_on_the_accelerator_every_layer(tiny_ita_build):
    report = simulate_build(tiny_ita_build).report
    assert report["bit_exact"] is True
    accel = [layer for layer in report["layers"] if layer["engine"] == "accel"]
    assert len(accel) == 29 and all(layer["op"] == "ITAGemm" and layer["accel_busy_cycles"] > 0 for layer in accel)
    assert report["accel_busy_cycles"] > 0
    result = verify_build(tiny_ita_build, layers=True)
    assert result.bit_exact, result.first.describe()


def test_head_split_and_merge_transposes_are_folded_into_the_dma(tiny_ita_build):
    """The attention's Transposes emit no code: their tensors are views moved by strided DMA, and the layer
    trace reads them back through the manifest's storage entry (verify --layers passes above)."""
    manifest = json.loads((tiny_ita_build / "tinydeploy.json").read_text())
    transposes = [s for s in manifest["steps"] if s["op"] == "Transpose"]
    assert transposes
    network = (tiny_ita_build / "network.c").read_text()
    assert network.count("folded into its neighbours' DMA") == len(transposes)
    views = [t for t in manifest["tensors"] if "storage" in t]
    assert len(views) >= len(transposes)
    assert all(sorted(t["storage"]["perm"]) == list(range(len(t["shape"]))) for t in views)


@needs_verilator
def test_tiny_mobilebert_on_the_accelerator_rtl(tiny_ita_build):
    """Every accelerator job of the inference runs on the RTL, is compared with the model, and the outputs are
    bit-exact against the golden interpreter."""
    report = simulate_build(tiny_ita_build, accel="rtl").report
    assert report["bit_exact"] is True
    assert report["accel_jobs_checked_against_rtl"] >= 29


def test_accelerator_operand_outside_l1_is_a_fault(tiny_ita_build, tmp_path):
    project = with_main(tiny_ita_build, tmp_path, "static int8_t l2_buffer[64];\n"
                        "int main(void) { if (td_hart_id() == 0) { td_accel_operands(l2_buffer, l2_buffer, "
                        "0, 0, 0, l2_buffer, 1, 1, 1); td_accel_wait(td_accel_start()); }\n"
                        "td_barrier(); return 0; }")
    iss = ClusterISS(ClusterSpec.from_target("cluster8-ita"), build_firmware(project))
    with pytest.raises(GuestFault, match=r"hart 0 .*accelerator operand a at 0x1c[0-9a-f]+ \(1 B\) is not in L1"):
        iss.run(max_cycles=1_000_000)


def test_manifest_and_report_name_the_engine(tiny_ita_build):
    manifest = json.loads((tiny_ita_build / "tinydeploy.json").read_text())
    assert any(step["op"] == "ITAGemm" for step in manifest["steps"])


def test_activations_between_accelerator_steps_stay_in_l1(tiny_ita_build, tiny_zoo):
    """Tensors only accelerator steps touch live in L1 (backends/riscv/residency.py): their tiles have no L1
    buffer and no DMA descriptor, the C buffer points into the top of the L1 area (td_l1_resident), and the
    inference stays bit-exact (test_tiny_mobilebert_on_the_accelerator_every_layer, also with the RTL). The choice
    follows the cost function: every eligible tensor when each one lowers it, none when any makes a step infeasible."""
    from tinydeploy.backends import backend_passes
    from tinydeploy.backends.riscv.residency import plan_residency

    manifest = json.loads((tiny_ita_build / "tinydeploy.json").read_text())
    in_place = [o for step in manifest["tiling"]["steps"] for o in step["operands"] if o["level"] == "l1"]
    assert len(in_place) >= 10 and all(o["buffers"] == 0 for o in in_place)
    network = (tiny_ita_build / "network.c").read_text()
    assert "#define td_l1_resident (td_l1_tiles.bytes + " in network
    assert network.count("(td_l1_resident + ") >= 5
    graph, _ = backend_passes(integerize(import_model(tiny_zoo / "model_qdq.onnx"), "cluster8-ita"), "cluster8-ita")
    residency = plan_residency(graph, lambda r: -len(r.offsets))
    users = {residency.aliases.get(n, n): set() for n in residency.offsets}
    for node in graph.nodes:
        for name in [*node.inputs, *node.outputs]:
            root = residency.aliases.get(name, name)
            if root in users and node.op != "Reshape":
                users[root].add(node.op)
    assert users and all(ops == {"ITAGemm"} for ops in users.values())
    assert max(residency.extents(len(graph.nodes))) == residency.size
    assert not plan_residency(graph, lambda r: None if r.offsets else 0).offsets


def test_column_tiles_of_l1_resident_tensors_are_written_in_place(tmp_path):
    """Two chained GEMMs whose intermediate stays in L1: the first is split along its columns (weights streamed
    in double-buffered slices) and the accelerator writes each column tile into the resident tensor with its row
    pitch register; bit-exact in the ISS."""
    import re

    from tinydeploy.backends import compile_graph

    rng = np.random.default_rng(0)
    m, k0, k1, k2 = 128, 256, 512, 256
    g = Graph(name="gemm_chain")
    g.add_tensor(Tensor("x", "int8", (1, m, k0)))
    g.add_const("w1", rng.integers(-128, 128, (k0, k1)).astype(np.int8), "int8")
    g.add_const("w2", rng.integers(-128, 128, (k1, k2)).astype(np.int8), "int8")
    for name, shape, dtype in (("acc1", (1, m, k1), "int32"), ("h", (1, m, k1), "int8"),
                               ("acc2", (1, m, k2), "int32"), ("y", (1, m, k2), "int8")):
        g.add_tensor(Tensor(name, dtype, shape))
    g.nodes += [Node("mm1", "MatMulInt", ["x", "w1"], ["acc1"], {}),
                Node("rq1", "Requant", ["acc1"], ["h"], {"mul": 1, "shift": 10, "add": 0, "lo": -128, "hi": 127}),
                Node("mm2", "MatMulInt", ["h", "w2"], ["acc2"], {}),
                Node("rq2", "Requant", ["acc2"], ["y"], {"mul": 1, "shift": 11, "add": 0, "lo": -128, "hi": 127})]
    g.inputs, g.outputs = ["x"], ["y"]
    compile_graph(g, "cluster8-ita", tmp_path, {"x": rng.integers(-128, 128, (1, m, k0)).astype(np.int8)})
    assert re.search(r"y_pitch = 512", (tmp_path / "network.c").read_text())
    assert simulate_build(tmp_path).report["bit_exact"] is True


def one_gemm(rng: np.random.Generator, m: int, k: int, n: int, *, shift: int) -> Graph:
    """x [1, m, k] int8 @ random int8 weights [k, n] -> Requant (>> shift) -> y int8."""
    g = Graph(name="gemm")
    g.add_tensor(Tensor("x", "int8", (1, m, k)))
    g.add_const("w", rng.integers(-128, 128, (k, n)).astype(np.int8), "int8")
    g.add_tensor(Tensor("acc", "int32", (1, m, n)))
    g.add_tensor(Tensor("y", "int8", (1, m, n)))
    g.nodes += [Node("mm", "MatMulInt", ["x", "w"], ["acc"], {}),
                Node("rq", "Requant", ["acc"], ["y"], {"mul": 1, "shift": shift, "add": 0, "lo": -128, "hi": 127})]
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def test_a_zero_point_folds_into_the_bias_and_int16_results_stay_on_the_accelerator(tmp_path):
    """An FFN's second GEMM as the `mixed` recipe makes it: A (a GELU table's output) has a zero point and the
    result is a 16-bit residual-stream value. The zero point folds into the bias (-z * column sums of B) and the
    accelerator writes int16 (mode Y16): one ITAGemm, bit-exact in the ISS."""
    from tinydeploy.backends import compile_graph

    rng = np.random.default_rng(3)
    m, k, n = 32, 128, 64
    g = Graph(name="ffn_out")
    g.add_tensor(Tensor("x", "int8", (1, m, k)))
    g.add_const("w", rng.integers(-128, 128, (k, n)).astype(np.int8), "int8")
    g.add_const("bias", rng.integers(-5000, 5000, n).astype(np.int32), "int32")
    g.add_tensor(Tensor("acc", "int32", (1, m, n)))
    g.add_tensor(Tensor("y", "int16", (1, m, n)))
    g.nodes += [Node("mm", "MatMulInt", ["x", "w", "bias"], ["acc"], {"a_zero": -37}),
                Node("rq", "Requant", ["acc"], ["y"], {"mul": 181, "shift": 9, "add": 3, "lo": -32768, "hi": 32767})]
    g.inputs, g.outputs = ["x"], ["y"]
    fused, report = fuse_attention(g, "cluster8-ita")
    assert [node.op for node in fused.nodes] == ["ITAGemm"] and report.fused == 1
    x = rng.integers(-128, 128, (1, m, k)).astype(np.int8)
    assert np.array_equal(run_graph(fused, {"x": x})["y"], run_graph(g, {"x": x})["y"])
    compile_graph(g, "cluster8-ita", tmp_path, {"x": x})
    result = simulate_build(tmp_path)
    assert result.report["bit_exact"] is True and result.report["accel_busy_cycles"] > 0


def test_jobs_are_sized_to_the_accelerators_memories(tmp_path):
    """A 64x384x1536 GEMM holds neither its B (576 KiB) nor its A (24 KiB) in the accelerator's job memories
    (targets/cluster8-ita.toml: 64 KiB B, 8 KiB A and Y): the tiler splits the columns, the driver the rows; every
    job fits (the ISS faults on one that does not) and the result is bit-exact. A GEMM whose single row cannot fit
    stays on the cores, and the fusion summary says why."""
    from tinydeploy.backends import compile_graph
    spec = AccelSpec()
    assert spec.job_problem(64, 384, 128) == "A needs 24576 B, the accelerator holds 8192 B"
    assert spec.rows_per_job(384, 128) == 21 and spec.rows_per_job(384, 128, 2) == 21
    assert spec.job_problem(1, 384, 1536).startswith("n = 1536")
    rng = np.random.default_rng(4)
    _, report = fuse_attention(one_gemm(rng, 4, 9000, 16, shift=12), "cluster8-ita")
    assert report.fused == 0 and "job memories: A needs 9000 B" in report.summary()
    x = rng.integers(-128, 128, (1, 64, 384)).astype(np.int8)
    compile_graph(one_gemm(rng, 64, 384, 1536, shift=12), "cluster8-ita", tmp_path, {"x": x})
    assert "#define TD_ACCEL_A_BYTES 8192" in (tmp_path / "td_platform.h").read_text()
    result = simulate_build(tmp_path)
    assert result.report["bit_exact"] is True and result.report["accel_busy_cycles"] > 0


def test_a_gemm_whose_a_exceeds_l1_runs_as_row_blocks(tmp_path):
    """BERT-base's FFN output projection shape: A = 128 x 3072 int8 (384 KiB) cannot stay whole in L1 while B is
    streamed by columns; split_rows makes row blocks (Slice -> ITAGemm -> Concat), each tiled by columns.
    Bit-exact in the ISS; the blocks share the weights' packed tile order."""
    from tinydeploy.backends import backend_passes, compile_graph
    from tinydeploy.passes.split_rows import row_blocks
    from tinydeploy.target import load_target

    assert row_blocks(128, 3072, 245760) == 4 and row_blocks(128, 384, 245760) == 1
    assert row_blocks(128, 1536, 245760) == 2       # MiniLM's FFN output projection: B slices of 8 columns otherwise
    rng = np.random.default_rng(6)
    m, k, n = 128, 3072, 64
    g = one_gemm(rng, m, k, n, shift=14)
    lowered, notes = backend_passes(g, load_target("cluster8-ita"))
    assert [node.op for node in lowered.nodes].count("ITAGemm") == 4 and any("row blocks" in s for s in notes)
    x = rng.integers(-128, 128, (1, m, k)).astype(np.int8)
    assert np.array_equal(run_graph(lowered, {"x": x})["y"], run_graph(g, {"x": x})["y"])
    compile_graph(g, "cluster8-ita", tmp_path, {"x": x})
    assert simulate_build(tmp_path).report["bit_exact"] is True
    # the blocks tile the weights alike, so they share one stored tile order: each weight tile is one DMA row
    # (a burst from L3), not 3072 short rows
    steps = json.loads((tmp_path / "tinydeploy.json").read_text())["tiling"]["steps"]
    weights = [o for s in steps if s["op"] == "ITAGemm" for o in s["operands"] if o["key"] == "w"]
    assert len(weights) == 4 and all(o["packed"] and o["axis"] is not None for o in weights)
    assert len({tuple(o["tile_shape"]) for o in weights}) == 1


# --- Deeploy-dialect graphs on the accelerator ----------------------------------------------------------------
def test_requant_shift_becomes_the_accelerators_requant_exactly():
    """Deeploy's RequantShift floor((mul x + add + 2^(s-1)) / 2^s) is the accelerator's requant with add / 2^s when
    2^s divides add (per tensor or per column), equal on every input; otherwise the pass names why not."""
    from tinydeploy.ir import arith
    from tinydeploy.passes.fuse_attention import requant_shift_as_requant

    rng = np.random.default_rng(8)
    x = rng.integers(-2**20, 2**20, (64, 8))
    for mul, add, shift in ((42, 0, 14), (32, -1095680, 10), (rng.integers(1, 255, 8), rng.integers(-99, 99, 8) * 64,
                                                              6), (7, 13, 0)):
        node = Node("rqs", "RequantShift", ["x"], ["y"], {"mul": mul, "add": add, "log2d": shift, "lo": -128,
                                                          "hi": 127})
        attrs = requant_shift_as_requant(node)
        assert isinstance(attrs, dict)
        assert np.array_equal(arith.requant_ita(x, attrs["mul"], attrs["shift"], attrs["add"], -128, 127),
                              arith.requant_shift_deeploy(x, mul, add, shift, -128, 127))
    odd = Node("rqs", "RequantShift", ["x"], ["y"], {"mul": 3, "add": 100, "log2d": 4, "lo": -128, "hi": 127})
    assert "not a multiple of its divisor 2^4" in requant_shift_as_requant(odd)


@pytest.mark.skipif(not (CONFORMANCE / "Models_ICCT_ITA").is_dir(), reason="needs ../shared/conformance")
def test_icct_ita_runs_its_gemms_and_attention_on_the_accelerator(tmp_path):
    """Deeploy's ICCT_ITA: every MatMul/Gemm with its RequantShift (and bias Add) becomes an accelerator job, the
    softmax (ITAPartialMax after QK^T) included, and nothing is left on the cores for a reason; bit-exact."""
    model = CONFORMANCE / "Models_ICCT_ITA" / "network.onnx"
    graph = integerize(import_model(model, input_ranges={"input": (-128, 127)}), "cluster8-ita")
    _, report = fuse_attention(graph, "cluster8-ita")
    assert report.fused == 9 and report.with_softmax == 1 and not report.skipped, report.summary()
    compile_for(model, tmp_path, "cluster8-ita")
    result = simulate_build(tmp_path)
    assert result.report["bit_exact"] is True
    accel = [layer for layer in result.report["layers"] if layer["engine"] == "accel"]
    assert len(accel) == 9 and all(layer["accel_busy_cycles"] > 0 for layer in accel)
