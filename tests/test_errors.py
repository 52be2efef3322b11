"""Bad input: a one-line error naming the node/tensor and the reason, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tinydeploy.errors import ModelFileError, OverflowRiskError, UnsupportedModelError
from tinydeploy.frontend.onnx_loader import import_model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _float_matmul_model(dim: str | int = 4) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])


def _qdq_model_with(op: str) -> onnx.ModelProto:
    """int8 input -> DQ -> <op> -> Q -> int8 output."""
    x = helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], name="dq"),
             helper.make_node(op, ["xf"], ["yf"], name="the_unsupported_node"),
             helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["y"], name="q")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _overflowing_integer_model() -> onnx.ModelProto:
    """Integer dialect MatMul with K = 140000: |acc| can reach 128*127*140000 > 2^31."""
    k = 140_000
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    w = numpy_helper.from_array(np.full((k, 1), 127.0, np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="huge_dot")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_op_names_node(tmp_path):
    with pytest.raises(UnsupportedModelError, match="the_unsupported_node.*unsupported op 'Cos'"):
        import_model(_save(_qdq_model_with("Cos"), tmp_path / "m.onnx"))


def test_dynamic_shape_names_tensor(tmp_path):
    with pytest.raises(UnsupportedModelError, match="tensor 'x'.*dynamic shape.*'batch'"):
        import_model(_save(_float_matmul_model("batch"), tmp_path / "m.onnx"))


def test_float_only_model(tmp_path):
    with pytest.raises(UnsupportedModelError, match="float-only model"):
        import_model(_save(_float_matmul_model(), tmp_path / "m.onnx"))


def test_truncated_and_non_onnx_files(tmp_path, tiny_zoo):
    data = (tiny_zoo / "model_qdq.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    for name in ("trunc.onnx", "text.onnx"):
        with pytest.raises(ModelFileError, match="not a valid ONNX file|no ONNX graph"):
            import_model(tmp_path / name)
    with pytest.raises(ModelFileError, match="does not exist"):
        import_model(tmp_path / "missing.onnx")


def test_int32_accumulator_overflow_names_node(tmp_path):
    with pytest.raises(OverflowRiskError, match="huge_dot.*beyond int32"):
        import_model(_save(_overflowing_integer_model(), tmp_path / "m.onnx"), input_ranges={"x": (-128, 127)})


@pytest.mark.parametrize("case", ["unsupported", "dynamic", "float", "truncated", "overflow"])
def test_cli_reports_one_line_and_exit_2(tmp_path, case):
    path = tmp_path / "m.onnx"
    if case == "unsupported":
        _save(_qdq_model_with("Cos"), path)
    elif case == "dynamic":
        _save(_float_matmul_model("batch"), path)
    elif case == "float":
        _save(_float_matmul_model(), path)
    elif case == "truncated":
        path.write_bytes(_float_matmul_model().SerializeToString()[:40])
    else:
        _save(_overflowing_integer_model(), path)
    np.savez(tmp_path / "inputs.npz", x=np.zeros((1, 4), np.int8))
    proc = subprocess.run([sys.executable, "-m", "tinydeploy.cli", "golden", str(path), "-o", str(tmp_path / "o.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
