"""More of Deeploy's integer test suite (shared/conformance/deeploy-suite): every case with static shapes is
bit-exact with Deeploy's outputs in the golden interpreter and on every target (host C, cluster8, cluster8-ita,
cortex-m4 or, where its activations need more SRAM, cortex-m7; every layer traced); a KV cache sized from the
data is refused as a dynamic shape; a float model made of standard ops is never taken for an integer one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SHARED
from test_cluster import compile_for
from tinydeploy.errors import UnsupportedModelError
from tinydeploy.frontend.onnx_loader import graph_input_shapes, import_model
from tinydeploy.ir.interpreter import run_graph
from tinydeploy.passes.integerize import integerize
from tinydeploy.verify import verify_build

SUITE = SHARED / "conformance" / "deeploy-suite"
#: every case with static shapes (the _parallel decoders size their KV cache from the data: refused, see below)
SUPPORTED = sorted(p.name for p in SUITE.iterdir() if p.is_dir() and not p.name.endswith("_parallel")) \
    if SUITE.is_dir() else []
#: activation arenas beyond cortex-m4's 256 KiB of SRAM run on cortex-m7 (1 MiB)
BEYOND_M4 = {"Models_CCT_Int_ICCT"}
needs_suite = pytest.mark.skipif(not SUITE.is_dir(), reason="needs ../shared/conformance/deeploy-suite")
TARGETS = ("generic", "cluster8", "cluster8-ita", "cortex-m")


def case_inputs(name: str) -> tuple[list[str], list[np.ndarray]]:
    names = list(graph_input_shapes(onnx.load(SUITE / name / "network.onnx")))
    data = np.load(SUITE / name / "inputs.npz")
    return names, [data[k] for k in data.files][:len(names)]


@needs_suite
@pytest.mark.parametrize("name", SUPPORTED)
def test_golden_equals_deeploys_outputs(name):
    names, arrays = case_inputs(name)
    ranges = {n: (int(a.min()), int(a.max())) for n, a in zip(names, arrays, strict=True)}
    graph = integerize(import_model(SUITE / name / "network.onnx", input_ranges=ranges), "generic")
    results = run_graph(graph, dict(zip(graph.inputs, arrays, strict=True)))
    expected = np.load(SUITE / name / "outputs.npz")
    assert len(graph.outputs) == len(expected.files)
    for output, key in zip(graph.outputs, expected.files, strict=True):
        want = expected[key]
        assert np.array_equal(results[output].reshape(want.shape), want.astype(np.int64)), f"{name}: {output}"


@needs_suite
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_every_target_bit_exact(name, target, tmp_path):
    if target == "cortex-m":
        target = "cortex-m7" if name in BEYOND_M4 else "cortex-m4"
    compile_for(SUITE / name / "network.onnx", tmp_path, target)
    result = verify_build(tmp_path, layers=True)
    assert result.bit_exact, result.first.describe()


@needs_suite
def test_a_kv_cache_with_a_data_dependent_length_is_refused():
    """microLlama's _parallel cases leave the KV-cache length symbolic (Deeploy's runner sizes it from the data)."""
    with pytest.raises(UnsupportedModelError, match="dynamic shape"):
        import_model(SUITE / "Models_microLlama_INT8_microLlama1_parallel" / "network.onnx")


@needs_suite
def test_a_standard_op_graph_needs_integer_inputs():
    """Whole-number constants do not make a float model an integer one: without integer test data it is refused."""
    with pytest.raises(UnsupportedModelError, match="--inputs"):
        import_model(SUITE / "Sub" / "network.onnx")


def test_gemm_with_integer_alpha_and_beta(tmp_path):
    """Deeploy's GEMM/Regular_RQPerRow kind: alpha * A @ B + beta * C with integer alpha, beta, on the host C too."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b, c = rng.integers(-128, 128, (16, 8)), rng.integers(-1000, 1000, (8,))
    node = helper.make_node("Gemm", ["x", "B", "C"], ["y"], alpha=2.0, beta=3.0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                              [numpy_helper.from_array(b.astype(np.float32), "B"),
                               numpy_helper.from_array(c.astype(np.float32), "C")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "network.onnx")
    x = rng.integers(-128, 128, (4, 16))
    np.savez(tmp_path / "inputs.npz", x=x.astype(np.float32))
    graph = integerize(import_model(tmp_path / "network.onnx", input_ranges={"x": (-128, 127)}), "generic")
    got = run_graph(graph, {"x": x})[graph.outputs[0]]
    assert np.array_equal(got, 2 * x @ b + 3 * c)
    compile_for(tmp_path / "network.onnx", tmp_path / "build", "generic")
    assert verify_build(tmp_path / "build", layers=True).bit_exact
