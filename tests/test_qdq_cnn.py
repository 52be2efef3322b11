"""A user's own CNN: torch -> ONNX -> onnxruntime quantize_static (QDQ, float input with QuantizeLinear, int8 or
uint8 activations, per-channel int8 weights) through tinydeploy: Conv (2-D, depthwise, pointwise, 1-D), MaxPool,
Gemm; close to onnxruntime and bit-exact on every target, every layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cluster import compile_for
from tinydeploy.frontend.fidelity import fidelity_report
from tinydeploy.frontend.inputs import load_inputs
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.passes.integerize import integerize
from tinydeploy.verify import verify_build

TARGETS = ("generic", "cluster8", "cluster8-ita", "cortex-m4")


def build_cnn(out: Path, activations: str) -> Path:
    """A small keyword-spotting-like network, quantized by onnxruntime with seeded calibration data."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, (5, 3), stride=(2, 1), padding=(2, 1))
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = torch.nn.Conv2d(8, 16, 1)
            self.c1d = torch.nn.Conv1d(16, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16 * 32, 4)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            x = torch.relu(self.pw(torch.relu(self.dw(x))))
            x = torch.nn.functional.max_pool2d(x, 2).reshape(1, 16, 32)
            return self.fc(torch.relu(self.c1d(x)).flatten(1))

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.data = iter([{"x": np.random.default_rng(i).standard_normal((1, 1, 16, 16)).astype(np.float32)}
                              for i in range(16)])

        def get_next(self):
            return next(self.data, None)

    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Net().eval(), torch.randn(1, 1, 16, 16), out / "float.onnx", opset_version=17,
                      input_names=["x"], output_names=["y"], dynamo=False)
    quantize_static(str(out / "float.onnx"), str(out / "model_qdq.onnx"), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8, per_channel=True)
    np.savez(out / "inputs.npz", x=np.random.default_rng(99).standard_normal((1, 1, 16, 16)).astype(np.float32))
    return out / "model_qdq.onnx"


@pytest.fixture(scope="module", params=["QInt8", "QUInt8"])
def cnn(request, tmp_path_factory) -> Path:
    return build_cnn(tmp_path_factory.mktemp(f"cnn_{request.param}"), request.param)


def test_close_to_onnxruntime(cnn):
    graph = import_model(cnn)
    assert {"QConv", "MaxPool"} <= {n.op for n in graph.nodes}
    int_graph = integerize(graph, "generic")
    inputs = load_inputs(cnn.parent / "inputs.npz", int_graph)[0]     # float data, quantized as the model does
    assert inputs["x"].dtype.kind in "iu" and graph.tensors["x"].dtype in ("int8", "uint8")
    report = fidelity_report(cnn, graph, int_graph, inputs)
    (y,) = report["end_to_end"]
    assert y["cosine"] > 0.999 and y["max_diff_lsb"] <= 2


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_bit_exact(cnn, target, tmp_path):
    compile_for(cnn, tmp_path, target)
    result = verify_build(tmp_path, layers=True)
    assert result.bit_exact, result.first.describe()
