"""Model zoo: MobileBERT built locally (no hub), exported to ONNX and quantized with onnxruntime.

`build_mobilebert` makes `MobileBertForSequenceClassification` with seeded random weights, exports
`model.onnx` (opset 17, static shapes, outputs: logits and the final hidden state), quantizes it with
onnxruntime's `quantize_static` to `model_qdq.onnx` (QDQ, symmetric int8 activations, per-channel int8
weights, seeded calibration inputs) and writes a seeded test input `inputs.npz`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .knobs import knob_problems
from .quantize import mask_float_nodes

#: Ops onnxruntime is asked to wrap in Q/DQ. Everything numeric is quantized so the integer graph has
#: a calibrated scale for every activation (including Softmax, Tanh and the attention scaling Div).
QUANTIZED_OP_TYPES = ["MatMul", "Gemm", "Add", "Mul", "Div", "Sub", "Softmax", "Tanh", "Relu", "Gather",
                      "Concat", "Reshape", "Transpose", "Slice", "Pad", "Squeeze", "Unsqueeze", "Gelu"]


@dataclass
class MobileBertSpec:
    """Architecture knobs; `full` is transformers' default MobileBERT (24 layers, 25M parameters)."""

    layers: int = 2
    hidden: int = 128
    bottleneck: int = 32
    heads: int = 2
    ffn_stack: int = 2
    intermediate: int = 128
    vocab: int = 1000
    embedding: int = 32
    seq: int = 32
    labels: int = 2
    seed: int = 0
    #: an attention_mask input (int64 [1, seq], 0 = padding) instead of the all-ones mask built inside the model
    mask: bool = False

    @classmethod
    def preset(cls, size: str) -> MobileBertSpec:
        if size == "tiny":
            return cls()
        if size == "full":
            return cls(layers=24, hidden=512, bottleneck=128, heads=4, ffn_stack=4, intermediate=512,
                       vocab=30522, embedding=128, seq=128)
        raise ValueError(f"unknown size '{size}' (tiny or full)")

    #: largest value of each knob the zoo builds (beyond them the export needs tens of GB)
    LIMITS = {"layers": 64, "hidden": 4096, "bottleneck": 4096, "heads": 64, "ffn_stack": 16, "intermediate": 16384,
              "vocab": 250_000, "embedding": 4096, "seq": 4096, "labels": 1000}

    def problems(self) -> list[str]:
        """What makes this spec unbuildable, one phrase per knob (empty when it is fine)."""
        found = knob_problems(self, self.LIMITS)
        if not found:
            for knob in ("hidden", "bottleneck"):
                if getattr(self, knob) % self.heads:
                    found.append(f"--heads {self.heads} does not divide --{knob} {getattr(self, knob)}")
        return found


def make_torch_model(spec: MobileBertSpec):
    """MobileBertForSequenceClassification with seeded random weights, in eval mode."""
    import torch
    from transformers import MobileBertConfig, MobileBertForSequenceClassification

    torch.manual_seed(spec.seed)
    config = MobileBertConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, intermediate_size=spec.intermediate, embedding_size=spec.embedding,
        true_hidden_size=spec.bottleneck, intra_bottleneck_size=spec.bottleneck,
        num_feedforward_networks=spec.ffn_stack, max_position_embeddings=max(512, spec.seq),
        num_labels=spec.labels, hidden_act="relu", normalization_type="no_norm",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        # with a mask input, eager attention: SDPA's export zeroes fully masked rows with IsNaN/Where after the
        # Softmax, which no integer softmax needs (contract 6 gives such a row all zeros itself)
        **({"attn_implementation": "eager"} if spec.mask else {}))
    model = MobileBertForSequenceClassification(config).eval()
    _randomize_norms(model, spec.seed)
    return model


def _randomize_norms(model, seed: int) -> None:
    """NoNorm weights start at exactly 1/0; give them a seeded spread so the graph exercises real scales."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("_norm.weight") or ".norm." in name:
                if name.endswith("weight"):
                    param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
                else:
                    param.copy_(0.05 * torch.randn(param.shape, generator=gen))


class _Wrapper:
    """Returns (logits, last hidden state) from input ids (and the attention mask when the spec asks for one)."""

    @staticmethod
    def build(model, with_mask: bool = False):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask=None):
                # Without a mask input: an explicit all-ones mask, as BERT exports have (the frontend folds it).
                mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
                out = self.inner(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                return out.logits, out.hidden_states[-1]

        return Wrapped(model).eval()


def padding_mask(spec: MobileBertSpec, seed: int) -> np.ndarray:
    """A key-padding mask [1, seq]: the first tokens kept, the rest (a seeded quarter or less) padding."""
    rng = np.random.default_rng(seed)
    mask = np.ones((1, spec.seq), dtype=np.int64)
    mask[0, spec.seq - int(rng.integers(0, spec.seq // 4 + 1)):] = 0
    return mask


def sample_inputs(spec: MobileBertSpec, seed: int) -> dict[str, np.ndarray]:
    """The model's inputs for one seeded sample."""
    sample = {"input_ids": seeded_input_ids(spec, seed)}
    if spec.mask:
        sample["attention_mask"] = padding_mask(spec, seed)
    return sample


def seeded_input_ids(spec: MobileBertSpec, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, spec.vocab, size=(1, spec.seq), dtype=np.int64)


def export_onnx(spec: MobileBertSpec, path: Path) -> None:
    """torch -> ONNX opset 17 with static shapes (batch 1, fixed sequence length)."""
    import torch

    model = _Wrapper.build(make_torch_model(spec), spec.mask)
    sample = {k: torch.from_numpy(v) for k, v in sample_inputs(spec, spec.seed).items()}
    with warnings.catch_warnings():  # tracer chatter about static shapes: intended here
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(sample.values()), str(path), input_names=list(sample),
                          output_names=["logits", "last_hidden_state"], opset_version=17,
                          do_constant_folding=True, dynamo=False)


def quantize_qdq(spec: MobileBertSpec, float_path: Path, qdq_path: Path, calib_samples: int = 8) -> None:
    """onnxruntime static quantization, QDQ format, symmetric int8 activations, per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([sample_inputs(spec, spec.seed + 1000 + i) for i in range(calib_samples)])

        def get_next(self):
            return next(self.batches, None)

    excluded = mask_float_nodes(float_path) if spec.mask else []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs pre-processing advice through the root logger
    try:
        quantize_static(
            str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OP_TYPES,
            nodes_to_exclude=excluded, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    finally:
        root.setLevel(level)


def build_mobilebert(out_dir: str | Path, spec: MobileBertSpec,
                     progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write model.onnx, model_qdq.onnx, inputs.npz and spec.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    paths = {"float": out / "model.onnx", "qdq": out / "model_qdq.onnx", "inputs": out / "inputs.npz"}
    say("exporting torch model to ONNX")
    export_onnx(spec, paths["float"])
    say("quantizing with onnxruntime (static, QDQ, int8)")
    quantize_qdq(spec, paths["float"], paths["qdq"])
    np.savez(paths["inputs"], **sample_inputs(spec, spec.seed + 7))
    (out / "spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return paths
