"""Ladder rung 3: generated C on the host (gcc and clang, ASan+UBSan) is bit-exact with the golden interpreter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFORMANCE
from tinydeploy.backends import compile_graph
from tinydeploy.cli import load_inputs, observed_inputs
from tinydeploy.errors import TinyDeployError
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.passes.integerize import integerize
from tinydeploy.verify import load_manifest, verify_build

SOURCES = ("network.c", "network.h", "kernels.c", "kernels.h", "weights.h", "golden.c", "golden.h", "main.c",
           "Makefile", "CMakeLists.txt", "td_runtime.h")
CONFORMANCE_CASES = sorted(p.name for p in CONFORMANCE.iterdir() if p.is_dir() and p.name != "Models_ICCT_ITA") \
    if CONFORMANCE.exists() else []


def compile_model(model: Path, out: Path, arithmetic: str = "generic", weights: str = "auto"):
    graph = integerize(import_model(model, **observed_inputs(str(model), None)), arithmetic)
    inputs = load_inputs(None, str(model), graph)
    return compile_graph(graph, "generic", out, inputs, weights=weights, model_path=str(model))


@pytest.fixture(scope="module")
def tiny_build(tiny_zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_build")
    compile_model(tiny_zoo / "model_qdq.onnx", out)
    return out


# --- bit-exactness ----------------------------------------------------------------------------------------
def test_tiny_mobilebert_bit_exact_every_layer(tiny_build):
    result = verify_build(tiny_build, layers=True)
    assert result.bit_exact, result.first.describe()
    manifest = load_manifest(tiny_build)
    assert result.layers_checked == len(manifest["tensors"]) > 150
    assert result.outputs["last_hidden_state"] == (32 * 128, 0)


def test_tiny_mobilebert_sanitizers_clean(tiny_build):
    result = verify_build(tiny_build, sanitize=True)
    assert result.bit_exact


def test_tiny_mobilebert_clang_warning_free(tiny_build):
    """-Wall -Wextra -Werror with clang (system clang, else pip ziglang's)."""
    result = verify_build(tiny_build, cc="clang")
    assert result.bit_exact


@pytest.mark.parametrize("arithmetic", ["cluster8-ita", "cortex-m4"])
def test_other_arithmetic_styles_bit_exact(tiny_zoo, tmp_path, arithmetic):
    """ITA streaming softmax + 8-bit requant, and CMSIS doubling-high-mul requant, as portable C."""
    compile_model(tiny_zoo / "model_qdq.onnx", tmp_path, arithmetic)
    result = verify_build(tmp_path, layers=True)
    assert result.bit_exact, result.first.describe()


def test_weights_blob_variant_bit_exact(tiny_zoo, tmp_path):
    project = compile_model(tiny_zoo / "model_qdq.onnx", tmp_path, weights="incbin")
    assert project.weights_format == "incbin"
    assert (tmp_path / "weights.bin").stat().st_size >= project.weights_bytes
    assert not (tmp_path / "weights.c").exists()
    for cc in ("gcc", "clang"):
        assert verify_build(tmp_path, cc=cc).bit_exact


@pytest.mark.skipif(not CONFORMANCE_CASES, reason="shared/conformance/deeploy not found")
@pytest.mark.parametrize("case", CONFORMANCE_CASES)
def test_deeploy_conformance_in_c(case, tmp_path):
    """Every Deeploy case the golden interpreter passes, as C under ASan+UBSan, every layer compared."""
    compile_model(CONFORMANCE / case / "network.onnx", tmp_path)
    result = verify_build(tmp_path, layers=True, sanitize=True)
    assert result.bit_exact, result.first.describe()
    # the C outputs equal Deeploy's published outputs too
    expected = np.load(CONFORMANCE / case / "outputs.npz")
    golden = np.load(tmp_path / "golden.npz")
    outs = [k for k in golden.files if k.startswith("output:")]
    for key, ref in zip(outs, expected.files, strict=True):
        assert np.array_equal(golden[key].reshape(-1), expected[ref].reshape(-1).astype(golden[key].dtype))


# --- the project as a product ------------------------------------------------------------------------------
def test_generated_sources_are_deterministic(tiny_zoo, tmp_path):
    compile_model(tiny_zoo / "model_qdq.onnx", tmp_path / "a")
    compile_model(tiny_zoo / "model_qdq.onnx", tmp_path / "b")
    for name in (*SOURCES, "weights.c"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_project_is_self_contained_with_make(tiny_build, tmp_path):
    """The project builds and self-checks with nothing but make and a C compiler (no Python)."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_build, copy, ignore=shutil.ignore_patterns("host-*"))
    proc = subprocess.run(["make", "-s", "-C", str(copy), "run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: all outputs bit-exact" in proc.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_project_builds_with_cmake(tiny_zoo, tmp_path):
    compile_model(tiny_zoo / "model_qdq.onnx", tmp_path / "src", weights="incbin")
    build = tmp_path / "cmake-build"
    for cmd in (["cmake", "-S", str(tmp_path / "src"), "-B", str(build)], ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([str(build / "network")], capture_output=True, text=True)
    assert proc.returncode == 0 and "PASS" in proc.stdout


def test_generated_code_names_onnx_nodes(tiny_build):
    text = (tiny_build / "network.c").read_text()
    assert "(ONNX /inner/mobilebert/encoder/layer.0/attention/self/query/MatMul)" in text
    assert "malloc" not in text and "malloc" not in (tiny_build / "kernels.c").read_text()


def test_corrupted_kernel_is_localised_to_its_layer(tiny_zoo, tmp_path):
    """A wrong LUT kernel: verify --layers names the first LUT layer, the element, and writes both tensors."""
    compile_model(tiny_zoo / "model_qdq.onnx", tmp_path)
    kernels = tmp_path / "kernels.c"
    text = kernels.read_text()
    assert "(table[x - in_min])" in text
    kernels.write_text(text.replace("(table[x - in_min])", "(table[x - in_min] ^ (x == 3))"))
    result = verify_build(tmp_path, layers=True)
    assert not result.bit_exact
    manifest = load_manifest(tmp_path)
    first_lut = next(t for t in manifest["tensors"] if t["op"] == "LUT")
    assert result.first.op == "LUT" and result.first.position == first_lut["id"]
    assert result.first.got != result.first.expected
    dump = np.load(tmp_path / "mismatch.npz")
    assert dump["got"].shape == dump["golden"].shape and (dump["got"] != dump["golden"]).any()


# --- errors ---------------------------------------------------------------------------------------------------
def _graph_with_transpose(shape: tuple[int, ...], perm: list[int]) -> Graph:
    g = Graph("t")
    g.add_tensor(Tensor("x", "int8", shape))
    g.add_tensor(Tensor("y", "int8", tuple(shape[p] for p in perm)))
    g.nodes.append(Node("odd_transpose", "Transpose", ["x"], ["y"], {"perm": perm}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def test_too_many_loop_dims_names_the_node(tmp_path):
    graph = _graph_with_transpose((2, 3, 2, 3, 2), [4, 3, 2, 1, 0])
    with pytest.raises(TinyDeployError, match="odd_transpose.*5-D loop"):
        compile_graph(graph, "generic", tmp_path, {"x": np.zeros((2, 3, 2, 3, 2), np.int8)})


def test_collapsible_transpose_compiles_and_runs(tmp_path):
    graph = _graph_with_transpose((2, 3, 4, 5, 6), [0, 1, 2, 4, 3])  # collapses to 3 loop dims
    x = np.arange(720).reshape(2, 3, 4, 5, 6).astype(np.int8)
    compile_graph(graph, "generic", tmp_path, {"x": x})
    assert verify_build(tmp_path).bit_exact


def test_unimplemented_backend_is_a_clear_error(tiny_zoo, tmp_path):
    target = tmp_path / "fpga.toml"
    target.write_text('extends = "generic"\nname = "fpga"\nbackend = "hls"\n')
    graph = integerize(import_model(tiny_zoo / "model_qdq.onnx"), "generic")
    with pytest.raises(TinyDeployError, match="target 'fpga' needs the 'hls' backend, which is not implemented"):
        compile_graph(graph, str(target), tmp_path / "out", {})


# --- the 32-bit integer LayerNorm ---------------------------------------------------------------------------
def _layernorm_graph(rows: np.ndarray, weight: np.ndarray, bias: np.ndarray, log2d: int) -> Graph:
    g = Graph("ln")
    g.add_tensor(Tensor("x", "int16", rows.shape))
    g.add_const("w", weight.astype(np.int32), "int32")
    g.add_const("b", bias.astype(np.int32), "int32")
    g.add_tensor(Tensor("y", "int16", rows.shape))
    g.nodes.append(Node("ln", "ILayerNorm", ["x", "w", "b"], ["y"], {"log2d": log2d, "lo": -32768, "hi": 32767}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def _extreme_layernorm_rows(cols: int, rng: np.random.Generator) -> np.ndarray:
    """Rows at the 32-bit kernel's edges: constant (std 1), full-scale alternating (largest std), one outlier
    (largest |x - mean| / std), tiny spread, random."""
    alternating = np.where(np.arange(cols) % 2 == 0, -32768, 32767)
    outlier = np.full(cols, -32768)
    outlier[cols // 3] = 32767
    small = rng.integers(-2, 3, cols)
    return np.stack([np.full(cols, 32767), alternating, outlier, small, rng.integers(-32768, 32768, cols),
                     rng.normal(0, 300, cols).round().clip(-32768, 32767)]).astype(np.int16)


@pytest.mark.parametrize("target", ["generic", "cluster8"])
@pytest.mark.parametrize("largest_weight", [2**15 - 1, 2**15])
def test_narrow_layernorm_is_exact_at_its_limits(tmp_path, target, largest_weight):
    """The 32-bit ILayerNorm (reciprocal division, int32 products) equals arith.i_layernorm on rows at its
    limits, with |w| at 2^15 - 1 and |bias| at 2^30; one weight of 2^15 selects the 64-bit kernel, exact too."""
    from tinydeploy.sim.firmware import simulate_build

    rng = np.random.default_rng(5)
    cols = 96
    x = _extreme_layernorm_rows(cols, rng)
    weight = rng.integers(-32767, 32768, cols)
    weight[:2] = [largest_weight, -32767]
    bias = rng.integers(-2**30, 2**30 + 1, cols)
    bias[:2] = [2**30, -2**30]
    graph = _layernorm_graph(x, weight, bias, log2d=16)
    compile_graph(graph, target, tmp_path, {"x": x})
    narrow = "td_ilayernorm_s16_s32_s32_s16_n32" in (tmp_path / "kernels.c").read_text()
    assert narrow == (largest_weight < 2**15)
    if target == "generic":
        assert verify_build(tmp_path).bit_exact
    else:
        assert simulate_build(tmp_path).report["bit_exact"]


# --- convolutions on the cores --------------------------------------------------------------------------------
def _conv_graph(x: np.ndarray, w: np.ndarray, group: int, pads: list[int], strides: list[int],
                x_zero: int) -> Graph:
    from tinydeploy.ir.ops import op_def

    g = Graph("conv")
    g.add_tensor(Tensor("x", "int8", x.shape))
    g.add_const("w", w, "int8")
    g.add_const("b", np.arange(w.shape[0], dtype=np.int32) * 7 - 20, "int32")
    node = Node("conv", "ConvInt", ["x", "w", "b"], ["y"], {
        "kernel_shape": list(w.shape[2:]), "strides": strides, "pads": pads, "dilations": [1, 1],
        "group": group, "a_zero": x_zero})
    g.add_tensor(Tensor("y", "int32", tuple(op_def(node).shape(node, [x.shape, w.shape, (w.shape[0],)])[0])))
    g.nodes.append(node)
    g.inputs, g.outputs = ["x"], ["y"]
    return g


@pytest.mark.parametrize("target", ["generic", "cluster8"])
@pytest.mark.parametrize("kind", ["patches", "depthwise"])
def test_convolution_kernels_are_exact_at_the_borders(tmp_path, target, kind):
    """The patch kernel (one group) and the depthwise kernel's constant-window path equal arith.conv_int with
    padding, stride 2 and an input zero point (borders take the general path, the inside the fast one)."""
    from tinydeploy.sim.firmware import simulate_build

    rng = np.random.default_rng(11)
    channels = 6
    x = rng.integers(-128, 128, (1, channels, 9, 11)).astype(np.int8)
    w_shape = (10, channels, 3, 3) if kind == "patches" else (channels, 1, 3, 3)
    w = rng.integers(-128, 128, w_shape).astype(np.int8)
    graph = _conv_graph(x, w, 1 if kind == "patches" else channels, [1, 1, 1, 1], [2, 1], x_zero=-5)
    compile_graph(graph, target, tmp_path, {"x": x})
    assert ("_patches" if kind == "patches" else "_k3x3d1") in (tmp_path / "kernels.c").read_text()
    if target == "generic":
        assert verify_build(tmp_path).bit_exact
    else:
        assert simulate_build(tmp_path).report["bit_exact"]
