"""More of Deeploy's integer test suite (shared/conformance/deeploy-suite): every case with static shapes is
bit-exact with Deeploy's outputs in the golden interpreter and on every target (host C, cluster8, cluster8-ita,
cortex-m4 or, where its activations need more SRAM, cortex-m7; every layer traced); a KV cache sized from the
data is refused as a dynamic shape; a float model made of standard ops is never taken for an integer one."""

from __future__ import annotations

from pathlib import Path

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
#: every case (the _parallel decoders' KV-cache length is symbolic: the test data sizes it, empty here)
SUPPORTED = sorted(p.name for p in SUITE.iterdir() if p.is_dir()) if SUITE.is_dir() else []
#: activation arenas beyond cortex-m4's 256 KiB of SRAM run on cortex-m7 (1 MiB)
BEYOND_M4 = {"Models_CCT_Int_ICCT"}
needs_suite = pytest.mark.skipif(not SUITE.is_dir(), reason="needs ../shared/conformance/deeploy-suite")
TARGETS = ("generic", "cluster8", "cluster8-ita", "cortex-m")


def case_inputs(name: str) -> tuple[list[str], list[np.ndarray]]:
    names = list(graph_input_shapes(onnx.load(SUITE / name / "network.onnx"), allow_symbolic=True))
    data = np.load(SUITE / name / "inputs.npz")
    return names, [data[k] for k in data.files][:len(names)]


@needs_suite
@pytest.mark.parametrize("name", SUPPORTED)
def test_golden_equals_deeploys_outputs(name):
    names, arrays = case_inputs(name)
    ranges = {n: (int(a.min()), int(a.max())) for n, a in zip(names, arrays, strict=True) if a.size}
    shapes = {n: a.shape for n, a in zip(names, arrays, strict=True)}
    graph = integerize(import_model(SUITE / name / "network.onnx", input_ranges=ranges, input_shapes=shapes),
                       "generic")
    by_name = dict(zip(names, arrays, strict=True))
    results = run_graph(graph, {n: by_name[n] for n in graph.inputs})
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


PARALLEL = "Models_microLlama_INT8_microLlama1_parallel"


@needs_suite
def test_a_kv_cache_length_comes_from_the_data(tmp_path):
    """microLlama's _parallel cases start with an empty KV cache (length 0 in the file): the Concats that append
    to it become copies of the new entry and the empty inputs leave the graph. Written with a symbolic length, it
    is a dynamic shape until the test data sizes it; data contradicting a static dimension is refused."""
    ranges = {n: (-128, 127) for n in case_inputs(PARALLEL)[0]}
    graph = import_model(SUITE / PARALLEL / "network.onnx", input_ranges=ranges)
    names, arrays = case_inputs(PARALLEL)
    assert len(graph.meta["dropped_inputs"]) == 16 and len(graph.inputs) == len(names) - 16
    symbolic = onnx.load(SUITE / PARALLEL / "network.onnx")
    for vi in symbolic.graph.input:
        if vi.name in graph.meta["dropped_inputs"]:
            vi.type.tensor_type.shape.dim[2].dim_param = "cache_length"
    onnx.save(symbolic, tmp_path / "symbolic.onnx")
    with pytest.raises(UnsupportedModelError, match="dynamic shape.*cache_length"):
        import_model(tmp_path / "symbolic.onnx", input_ranges=ranges)
    shapes = {n: a.shape for n, a in zip(names, arrays, strict=True)}
    bound = import_model(tmp_path / "symbolic.onnx", input_ranges=ranges, input_shapes=shapes)
    assert bound.meta["dropped_inputs"] == graph.meta["dropped_inputs"] and bound.inputs == graph.inputs
    longer = dict(shapes, **{n: (1, 16, 3, 4) for n in graph.meta["dropped_inputs"]})
    cached = import_model(tmp_path / "symbolic.onnx", input_ranges=ranges, input_shapes=longer)
    assert not cached.meta["dropped_inputs"] and cached.tensors[names[3]].shape == (1, 16, 3, 4)
    bad = dict(shapes, **{names[3]: (1, 15, 0, 4)})
    with pytest.raises(UnsupportedModelError, match=f"{names[3]}.*dimension 1"):
        import_model(tmp_path / "symbolic.onnx", input_ranges=ranges, input_shapes=bad)


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


def _plain_integer_model(tmp_path: Path, nodes: list, constants: tuple = ()) -> Path:
    """A Deeploy-style plain-ONNX graph x [1, 16] -> y [1, 16] with integer test data beside it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], list(constants))
    path = tmp_path / "network.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    np.savez(tmp_path / "inputs.npz", x=np.arange(-8, 8, dtype=np.float32).reshape(1, 16))
    return path


def test_nodes_listed_out_of_order_are_sorted(tmp_path):
    """Deeploy's Identity/OutputIdentity lists the Identity before the Add it reads: taken in dependency order."""
    from onnx import helper, numpy_helper

    one = numpy_helper.from_array(np.ones((1, 16), np.float32), "one")
    path = _plain_integer_model(tmp_path, [helper.make_node("Identity", ["s"], ["y"], name="idnt"),
                                           helper.make_node("Add", ["x", "one"], ["s"], name="add")], [one])
    graph = integerize(import_model(path, input_ranges={"x": (-8, 7)}), "generic")
    assert [n.op for n in graph.nodes][-1] != "Add"        # the Identity (a copy or alias) follows the Add
    x = np.arange(-8, 8).reshape(1, 16)
    assert np.array_equal(run_graph(graph, {"x": x})[graph.outputs[0]], x + 1)
    compile_for(path, tmp_path / "build", "generic")
    assert verify_build(tmp_path / "build").bit_exact


def test_a_fractional_constant_node_is_a_float_model(tmp_path):
    """Deeploy's Mixed/Dequant: (x - zero point) * 0.1 from Constant nodes. Never truncated to integers: refused,
    naming the constant."""
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Constant", [], ["zp"], value=numpy_helper.from_array(np.array(3, np.float32))),
             helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(np.array(0.1, np.float32)),
                              name="scale_const"),
             helper.make_node("Sub", ["x", "zp"], ["d"]), helper.make_node("Mul", ["d", "scale"], ["y"])]
    path = _plain_integer_model(tmp_path, nodes)
    with pytest.raises(UnsupportedModelError, match="scale_const.*non-integer values \\(e.g. 0.1\\)"):
        import_model(path, input_ranges={"x": (-8, 7)})
