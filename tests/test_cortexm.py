"""The Cortex-M target: firmware for Thumb-2 M-class in the Cortex-M ISS, bit-exact; faults reported clearly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_cluster import compile_for, with_main
from tinydeploy.backends import compile_graph
from tinydeploy.errors import TinyDeployError
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.sim.cluster import GuestFault
from tinydeploy.sim.cortexm import CortexMISS
from tinydeploy.sim.firmware import build_firmware, simulate_build
from tinydeploy.verify import verify_build


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


def test_softmax_add_and_mul_call_the_cmsis_nn_api(tiny_m4_build):
    """TFLite arithmetic for softmax and Add (SoftmaxS8, AddS8 from integerize) and Mul -> Requant pairs (MulS8)
    become arm_softmax_s8 / arm_elementwise_add_s8 / arm_elementwise_mul_s8 calls; a broadcast vector operand
    (NoNorm's gamma and beta) is one call per row; a scalar operand stays on the strided C kernel."""
    network = (tiny_m4_build / "network.c").read_text()
    ops = [s["op"] for s in json.loads((tiny_m4_build / "tinydeploy.json").read_text())["steps"]]
    assert ops.count("SoftmaxS8") == network.count("arm_softmax_s8(") == 2
    assert ops.count("AddS8") == network.count("arm_elementwise_add_s8(") == 23
    assert ops.count("MulS8") == 17 and network.count("arm_elementwise_mul_s8(") == 13   # 4 scalar Q/K scalings
    assert "for (int32_t r = 0; r < 32; ++r) {" in network                             # per-row broadcast
    assert "ISoftmax" not in ops


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


@pytest.mark.skipif(not os.environ.get("TD_CMSIS_NN"), reason="set TD_CMSIS_NN to a CMSIS-NN checkout")
def test_against_a_real_cmsis_nn_checkout(tiny_m4_build):
    """simulate --cmsis-nn PATH: the same generated code linked with Arm's CMSIS-NN is bit-exact too."""
    report = simulate_build(tiny_m4_build, cmsis_nn=os.environ["TD_CMSIS_NN"]).report
    assert report["bit_exact"] is True


def test_report_of_a_cortex_m_build_has_no_roofline(tiny_m4_build, tmp_path):
    """No DMA on a microcontroller: the page says so instead of drawing bandwidth roofs that do not exist."""
    from tinydeploy.report import write_report

    simulate_build(tiny_m4_build)
    files = write_report(tiny_m4_build, tmp_path / "r.html")
    assert [f.name for f in files] == ["r.html", "r_cycles.png", "r_memory.png"]
    page = files[0].read_text()
    assert "No DMA on this target" in page and page.count("data:image/png;base64,") == 2
