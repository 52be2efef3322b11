"""The Cortex-M target: firmware for Thumb-2 M-class in the Cortex-M ISS, bit-exact; faults reported clearly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from test_cluster import compile_for, with_main
from tinydeploy.backends import compile_graph
from tinydeploy.errors import TinyDeployError
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.sim.cluster import GuestFault
from tinydeploy.sim.cortexm import CortexMISS
from tinydeploy.sim.firmware import build_firmware, simulate_build
from tinydeploy.verify import verify_build

#: Arm's CMSIS-NN: $TD_CMSIS_NN, else the copy beside the checkout (../shared/third_party/CMSIS-NN)
CMSIS_NN = Path(os.environ.get("TD_CMSIS_NN") or SHARED / "third_party" / "CMSIS-NN")
needs_cmsis_nn = pytest.mark.skipif(not (CMSIS_NN / "Include" / "arm_nnfunctions.h").is_file(),
                                    reason="needs Arm's CMSIS-NN (../shared/third_party/CMSIS-NN or TD_CMSIS_NN)")


@pytest.fixture(scope="module")
def tiny_m4_build(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_cortex_m4")
    compile_for(tiny_zoo / "model_qdq.onnx", out, target="cortex-m4")
    return out


def test_tiny_mobilebert_bit_exact_in_the_cortex_m_iss(tiny_m4_build):
    report = simulate_build(tiny_m4_build).report
    assert report["bit_exact"] is True and report["exit_code"] == 0
    manifest = json.loads((tiny_m4_build / "tinydeploy.json").read_text())
    assert report["cycles_inference"] > 0 and len(report["layers"]) == len(manifest["steps"]) > 100
    assert manifest["placement"] == {"arena_section": "", "arena_region": "SRAM", "weights_region": "XIP"}
    result = verify_build(tiny_m4_build, layers=True)
    assert result.bit_exact, result.first.describe()


def test_gemms_call_the_cmsis_nn_api(tiny_m4_build):
    """Every GEMM is one CMSIS-NN call with its argument structs: weights -> arm_fully_connected_per_channel_s8,
    attention (two activations) -> arm_batch_matmul_s8."""
    network = (tiny_m4_build / "network.c").read_text()
    assert network.count("arm_fully_connected_per_channel_s8(") == 25
    assert "static const cmsis_nn_fc_params fc_" in network and "cmsis_nn_per_channel_quant_params" in network
    steps = json.loads((tiny_m4_build / "tinydeploy.json").read_text())["steps"]
    ops = [s["op"] for s in steps]
    assert ops.count("FullyConnectedS8") == 25 and ops.count("BatchMatMulS8") == 4
    assert network.count("arm_batch_matmul_s8(") == 4 and "MatMulInt" not in ops
    # the widened-row buffer of the GEMM kernels covers the deepest FC and batch matmul (else the slow C path)
    assert "#define TD_NN_MAX_DEPTH 128" in (tiny_m4_build / "td_platform.h").read_text()


def test_softmax_add_and_mul_call_the_cmsis_nn_api(tiny_m4_build):
    """TFLite arithmetic for softmax and Add (SoftmaxS8, AddS8 from integerize) and Mul -> Requant pairs (MulS8)
    become arm_softmax_s8 / arm_elementwise_add_s8 / arm_elementwise_mul_s8 calls; a broadcast vector operand
    (NoNorm's gamma and beta) is one call per row; chains of scalar ops on an int8 tensor (the Q/K scaling, the
    attention-score requant) become 256-entry LUTs."""
    network = (tiny_m4_build / "network.c").read_text()
    ops = [s["op"] for s in json.loads((tiny_m4_build / "tinydeploy.json").read_text())["steps"]]
    assert ops.count("SoftmaxS8") == network.count("arm_softmax_s8(") == 2
    assert ops.count("AddS8") == network.count("arm_elementwise_add_s8(") == 23
    assert ops.count("MulS8") == network.count("arm_elementwise_mul_s8(") == 13
    assert "for (int32_t r = 0; r < 32; ++r) {" in network                             # per-row broadcast
    assert "ISoftmax" not in ops and "RequantCMSIS" not in ops and ops.count("LUT") == 11


FAULTY_MAIN = {
    "bad_address": ("int main(void) { return *(volatile int *)0x60000000; }",
                    r"hart 0 .*(load from unmapped address 0x60000000|HardFault)"),
    "illegal_instruction": ('int main(void) { __asm__ volatile("udf #0"); return 0; }',
                            r"hart 0 .*(illegal instruction|HardFault)"),
    "no_exit": ("int main(void) { for (;;) { } }", r"no exit within 2000000 cycles"),
}


@pytest.mark.parametrize("kind", sorted(FAULTY_MAIN))
def test_cortex_m_faults_are_reported(tiny_m4_build, tmp_path, kind):
    source, expected = FAULTY_MAIN[kind]
    iss = CortexMISS("cortex-m4", build_firmware(with_main(tiny_m4_build, tmp_path, source), backend="cmsis"))
    with pytest.raises(GuestFault, match=expected) as info:
        iss.run(max_cycles=2_000_000)
    assert info.value.symbol != "?"


def test_activations_too_large_for_sram_is_a_clear_error(tmp_path):
    graph = Graph(name="too_big")
    graph.add_tensor(Tensor("x", "int8", (1, 512, 512)))
    graph.add_const("w", np.ones((512, 512), dtype=np.int8), "int8")
    graph.add_tensor(Tensor("acc", "int32", (1, 512, 512)))
    graph.add_tensor(Tensor("y", "int8", (1, 512, 512)))
    graph.nodes += [Node("mm", "MatMulInt", ["x", "w"], ["acc"], {}),
                    Node("rq", "Requant", ["acc"], ["y"], {"mul": 1, "shift": 8, "add": 0, "lo": -128, "hi": 127})]
    graph.inputs, graph.outputs = ["x"], ["y"]
    with pytest.raises(TinyDeployError, match=r"too large for cortex-m4: activation arena \d+ B does not fit"):
        compile_graph(graph, "cortex-m4", tmp_path, {"x": np.zeros((1, 512, 512), dtype=np.int8)})


@needs_cmsis_nn
def test_against_a_real_cmsis_nn_checkout(tiny_m4_build):
    """simulate --cmsis-nn PATH: the same generated code linked with Arm's CMSIS-NN is bit-exact too."""
    report = simulate_build(tiny_m4_build, cmsis_nn=str(CMSIS_NN)).report
    assert report["bit_exact"] is True
    # a fair build of Arm's code (builtins on): unaligned word reads are one LDR, not a byte-wise memcpy call,
    # which made Arm's kernels 5.8x tinydeploy's instructions; built as Arm builds them they are ~1.8x
    ours = simulate_build(tiny_m4_build).report
    assert report["cycles_inference"] < 2.5 * ours["cycles_inference"]


@needs_cmsis_nn
def test_edge_cases_against_a_real_cmsis_nn_checkout(tmp_path):
    """Arm's arm_softmax_s8, arm_elementwise_add_s8 and fully-connected kernels give the golden bytes on the
    hand-computed edge cases too."""
    graph, inputs = _edge_case_graph()
    compile_graph(graph, "cortex-m4", tmp_path, inputs)
    assert simulate_build(tmp_path, cmsis_nn=str(CMSIS_NN)).report["bit_exact"] is True


def test_report_of_a_cortex_m_build_has_no_roofline(tiny_m4_build, tmp_path):
    """No DMA on a microcontroller: no bandwidth roofs that do not exist (tests/test_report.py pins the rest)."""
    from tinydeploy.report import write_report

    simulate_build(tiny_m4_build)
    files = write_report(tiny_m4_build, tmp_path / "r.html")
    assert [f.name for f in files] == ["r.html", "r_cycles.png", "r_memory.png", "r_summary.json"]
    page = files[0].read_text()
    assert "roofline" not in page.lower() and page.count("data:image/png;base64,") == 2


def _round_half_away(value: float) -> int:
    return int(np.copysign(np.floor(abs(value) + 0.5), value))


def _edge_case_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    """One network with hand-checkable kernels: an identity fully-connected layer with per-channel requant
    (right shifts with ties, a left shift that saturates, shift 0), two softmaxes and an Add."""
    from tinydeploy.ir.arith import softmax_cmsis_params

    g = Graph(name="cmsis_edge_cases")
    depth = 5                                                # one SMLAD group + a depth tail of 1
    g.add_tensor(Tensor("x", "int8", (1, 8, depth)))
    g.add_const("eye", np.eye(depth, dtype=np.int8), "int8")
    g.add_tensor(Tensor("acc", "int32", (1, 8, depth)))
    g.add_tensor(Tensor("y_fc", "int8", (1, 8, depth)))
    half = 1 << 30                                           # 0.5 in Q0.31
    g.nodes += [Node("fc", "MatMulInt", ["x", "eye"], ["acc"], {"a_zero": 0}),
                Node("rq", "RequantCMSIS", ["acc"], ["y_fc"], {
                    # x/4, 2x (saturating), x/2, ~x, x/8
                    "multiplier": np.array([half, half, half, (1 << 31) - 1, half]),
                    "shift": np.array([-1, 2, 0, 0, -2]), "zero_point": 0, "lo": -128, "hi": 127})]
    g.add_tensor(Tensor("acc2", "int32", (1, 8, depth)))
    g.add_tensor(Tensor("y_fc_tensor", "int8", (1, 8, depth)))
    g.nodes += [Node("fc2", "MatMulInt", ["x", "eye"], ["acc2"], {"a_zero": 0}),      # per-tensor: x/4
                Node("rq2", "RequantCMSIS", ["acc2"], ["y_fc_tensor"], {
                    "multiplier": half, "shift": -1, "zero_point": 2, "lo": -100, "hi": 100})]
    for name, scale in (("sm_fine", 0.1), ("sm_coarse", 2.0)):
        mult, shift, diff_min = softmax_cmsis_params(scale)
        g.add_tensor(Tensor(f"{name}_in", "int8", (3, 4)))
        g.add_tensor(Tensor(name, "int8", (3, 4)))
        g.nodes.append(Node(name, "SoftmaxS8", [f"{name}_in"], [name],
                            {"multiplier": mult, "shift": shift, "diff_min": diff_min}))
    for name in ("a", "b", "y_add"):
        g.add_tensor(Tensor(name, "int8", (1, 16)))
    g.nodes.append(Node("add", "AddS8", ["a", "b"], ["y_add"], {  # scales 1, 1 -> 2 (see test_arith)
        "a_offset": 0, "a_mult": half, "a_shift": 0, "b_offset": 0, "b_mult": half, "b_shift": 0, "left_shift": 20,
        "multiplier": half, "shift": -19, "zero_point": 0, "lo": -128, "hi": 127}))
    g.inputs = ["x", "sm_fine_in", "sm_coarse_in", "a", "b"]
    g.outputs = ["y_fc", "y_fc_tensor", "sm_fine", "sm_coarse", "y_add"]
    x = np.array([2, 6, -2, -6, 1, -1, 3, -3, 127, -128, 5, -5, 100, -100, 0, 7, -7, 9, -9, 4,
                  10, -10, 11, -11, 12, -12, 13, -13, 14, -14, 15, -15, 64, -64, 65, -65, 66, -66, 67, -67])
    inputs = {"x": x.reshape(1, 8, depth).astype(np.int8),
              "sm_fine_in": np.array([[0, 0, 0, 0], [5, 5, -100, -100], [10, -100, -100, -100]], np.int8),
              "sm_coarse_in": np.array([[127, -128, 0, 0], [0, -7, -8, -8], [3, 3, 3, 3]], np.int8),
              "a": np.array([[1, -1, 3, -3, 2, 100, -100, 0, 127, -128, 5, -5, 7, -7, 9, -9]], np.int8),
              "b": np.array([[2, -2, 0, 0, 2, 100, -100, 0, 127, -128, 0, 0, 0, 0, 0, 0]], np.int8)}
    return g, inputs


def test_cmsis_kernels_on_hand_computed_edge_cases(tmp_path):
    """The C kernels (fully connected fast and general requant paths, arm_softmax_s8, arm_elementwise_add_s8) in
    the Cortex-M ISS against rules written out by hand: ties round away from zero, left shifts saturate,
    probabilities are 1/256 steps from -128."""
    graph, inputs = _edge_case_graph()
    project = compile_graph(graph, "cortex-m4", tmp_path, inputs)
    assert any("fully connected (arm_fully_connected_" in note for note in project.notes)
    sim = simulate_build(tmp_path)
    assert sim.report["bit_exact"] is True                  # equals the golden interpreter ...
    clip = lambda v: max(-128, min(127, v))                 # noqa: E731
    # two roundings, as TFLite: the doubling high multiply by 0.5 rounds half up (gemmlowp's nudge: -1.5 -> -1),
    # the divide by 2^shift after it rounds half away from zero (so x/4 of 5 is 2.5 -> 3, 3/2 -> 2, not 1)
    up = lambda v: int(np.floor(v / 2 + 0.5))                # noqa: E731
    rules = [lambda v: _round_half_away(up(v) / 2), lambda v: clip(2 * v), up, lambda v: v,
             lambda v: _round_half_away(up(v) / 4)]
    x = inputs["x"].astype(int).reshape(8, 5)
    expected_fc = [[clip(rules[c](int(x[r, c]))) for c in range(5)] for r in range(8)]
    assert sim.outputs["y_fc"].reshape(8, 5).tolist() == expected_fc   # ... and the hand-written rules
    # per-tensor requant (arm_fully_connected_s8): x/4 as above, + zero point 2, clipped to [-100, 100]
    expected_tensor = [[max(-100, min(100, rules[0](int(v)) + 2)) for v in row] for row in x]
    assert sim.outputs["y_fc_tensor"].reshape(8, 5).tolist() == expected_tensor
    assert sim.outputs["sm_fine"].tolist() == [[-64] * 4, [0, 0, -128, -128], [127, -128, -128, -128]]
    assert sim.outputs["sm_coarse"].tolist() == [[127, -128, -128, -128], [127, -128, -128, -128], [-64] * 4]
    a, b = inputs["a"].astype(int)[0], inputs["b"].astype(int)[0]
    assert sim.outputs["y_add"][0].tolist() == [clip(_round_half_away((p + q) / 2)) for p, q in zip(a, b, strict=True)]
    network = (tmp_path / "network.c").read_text()
    assert "arm_softmax_s8(" in network and "arm_elementwise_add_s8(" in network
    assert "arm_fully_connected_per_channel_s8(" in network and "arm_fully_connected_s8(" in network


@needs_cmsis_nn
def test_softmax_and_add_semantics_match_cmsis_nn_on_random_rows(tmp_path):
    """ir/arith.py's softmax_cmsis and add_cmsis against Arm's C compiled for the host: 200 random cases each
    (scales over four decades, rows 1..128, clustered and spread logits)."""
    import subprocess

    from tinydeploy.ir import arith

    root = str(CMSIS_NN)
    driver = tmp_path / "driver.c"
    driver.write_text(r'''#include <stdio.h>
#include "arm_nnfunctions.h"
int main(void) {
    int kind, n, cols, p[13];
    static int8_t a[4096], b[4096], y[4096];
    while (scanf("%d %d %d", &kind, &n, &cols) == 3) {
        for (int i = 0; i < 13; i++) scanf("%d", &p[i]);
        for (int i = 0; i < n; i++) { int v; scanf("%d", &v); a[i] = (int8_t)v; }
        for (int i = 0; i < n; i++) { int v; scanf("%d", &v); b[i] = (int8_t)v; }
        if (kind == 0) arm_softmax_s8(a, n / cols, cols, p[0], p[1], p[2], y);
        else arm_elementwise_add_s8(a, b, p[0], p[1], p[2], p[3], p[4], p[5], p[6], y, p[7], p[8], p[9], p[10],
                                    p[11], n);
        for (int i = 0; i < n; i++) printf("%d ", y[i]);
        printf("\n");
    }
    return 0;
}
''')
    sources = [f"{root}/Source/SoftmaxFunctions/{f}" for f in ("arm_softmax_s8.c", "arm_nn_softmax_common_s8.c")]
    sources.append(f"{root}/Source/BasicMathFunctions/arm_elementwise_add_s8.c")
    subprocess.run(["gcc", "-O1", f"-I{root}/Include", str(driver), *sources, "-o", str(tmp_path / "ref")],
                   check=True)
    rng = np.random.default_rng(7)
    cases, expected = [], []
    for _ in range(200):
        cols, rows = int(rng.integers(1, 129)), 3
        spread = int(rng.choice([4, 40, 256]))
        x = np.clip(rng.integers(-spread, spread, (rows, cols)) + int(rng.integers(-100, 100)), -128, 127)
        mult, shift, diff_min = arith.softmax_cmsis_params(float(10.0 ** rng.uniform(-3, 0.5)))
        cases.append((0, x, x, [mult, shift, diff_min] + [0] * 10, cols))
        expected.append(arith.softmax_cmsis(x, mult, shift, diff_min))
        sa, sb, so = 10.0 ** rng.uniform(-3, 0, 3)
        za, zb, zo = (int(v) for v in rng.integers(-128, 128, 3))
        p = arith.add_cmsis_params(sa, sb, so)
        a, b = rng.integers(-128, 128, 64), rng.integers(-128, 128, 64)
        args = [-za, p["a_mult"], p["a_shift"], -zb, p["b_mult"], p["b_shift"], 20, zo, p["multiplier"], p["shift"],
                -128, 127, 0]
        cases.append((1, a, b, args, 64))
        expected.append(arith.add_cmsis(a, b, -za, p["a_mult"], p["a_shift"], -zb, p["b_mult"], p["b_shift"],
                                        p["multiplier"], p["shift"], zo))
    text = "".join(f"{k} {a.size} {cols}\n{' '.join(map(str, args))}\n{' '.join(map(str, a.ravel()))}\n"
                   f"{' '.join(map(str, b.ravel()))}\n" for k, a, b, args, cols in cases)
    lines = subprocess.run([str(tmp_path / "ref")], input=text, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(lines) == len(cases)
    for line, want in zip(lines, expected, strict=True):
        assert [int(v) for v in line.split()] == np.asarray(want).ravel().tolist()


@pytest.mark.parametrize("target", ["cortex-m4", "cluster8-ita"])
def test_firmware_sources_are_deterministic(tiny_zoo, tmp_path, target):
    """The same model and target give byte-identical firmware projects (DMA plans, folded tables, CMSIS calls)."""
    for name in ("a", "b"):
        compile_for(tiny_zoo / "model_qdq.onnx", tmp_path / name, target=target)
    files = sorted(p.name for p in (tmp_path / "a").iterdir()
                   if p.is_file() and p.suffix in (".c", ".h", ".S", ".ld", ".bin"))
    assert "network.c" in files and "weights.bin" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_softmax_kernel_on_random_rows_equals_the_golden_model(tmp_path):
    """arm_softmax_s8 (32-bit fixed point, exponentials cached per row) on random rows at three input scales
    and row lengths 1..200 (sums from one element to 2^27), against ir/arith.py's softmax_cmsis."""
    from tinydeploy.ir.arith import softmax_cmsis_params

    rng = np.random.default_rng(3)
    g, inputs = Graph(name="softmax_rows"), {}
    for i, (scale, cols) in enumerate(((0.02, 200), (0.3, 37), (3.0, 1), (0.07, 128))):
        mult, shift, diff_min = softmax_cmsis_params(scale)
        g.add_tensor(Tensor(f"x{i}", "int8", (24, cols)))
        g.add_tensor(Tensor(f"y{i}", "int8", (24, cols)))
        g.nodes.append(Node(f"softmax{i}", "SoftmaxS8", [f"x{i}"], [f"y{i}"],
                            {"multiplier": mult, "shift": shift, "diff_min": diff_min}))
        spread = rng.integers(1, 256, (24, 1))
        inputs[f"x{i}"] = np.clip(rng.integers(-128, 128, (24, 1)) + (rng.random((24, cols)) * spread).astype(int),
                                  -128, 127).astype(np.int8)
    g.inputs, g.outputs = list(inputs), [f"y{i}" for i in range(4)]
    compile_graph(g, "cortex-m4", tmp_path, inputs)
    assert "#define TD_SOFTMAX_MAX_COLS 200" in (tmp_path / "td_platform.h").read_text()
    assert simulate_build(tmp_path).report["bit_exact"] is True
