"""Fidelity: how closely the integer model follows onnxruntime's run of the QDQ model.

Three views, all on the same input:
  * end to end: each graph output, dequantized, vs onnxruntime's (cosine, max |diff| in LSB);
  * layer by layer: every quantized activation vs onnxruntime's QuantizeLinear output of the same tensor
    (errors accumulate along the network);
  * op in isolation: each linear op (MatMul/Gemm + requant, Add, Sub, Mul, Div) fed onnxruntime's own
    int8 inputs, its int8 output vs onnxruntime's: the loss that op alone adds.

The report dict holds no NaN or Infinity (a figure that does not apply, e.g. `identical` where the two scales
differ, is None), so json.dumps of it is strict JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..files import finite
from ..ir.graph import Graph, Tensor
from ..ir.interpreter import run_graph
from .onnx_loader import load_onnx

ISOLATED_OPS = ("QMatMul", "QAdd", "QSub", "QMul", "QDiv")


@dataclass
class Agreement:
    """One comparison; `diff_lsb` is measured in units of onnxruntime's scale."""

    name: str
    op: str
    elements: int
    cosine: float
    max_diff_lsb: float
    within_1lsb: float
    identical: float


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def _real(values: np.ndarray, t: Tensor) -> np.ndarray:
    q = t.quant
    return (values.astype(np.float64) - float(q.zero_point)) * float(q.scale)


def compare(name: str, op: str, ours: np.ndarray, ours_t: Tensor, ref_int: np.ndarray | None,
            ref_real: np.ndarray, ref_scale: float) -> Agreement:
    got = _real(ours, ours_t).reshape(ref_real.shape)
    diff = np.abs(got - ref_real) / ref_scale
    same_params = ref_int is not None and np.isclose(float(ours_t.quant.scale), ref_scale)
    identical = float(np.mean(ours.reshape(ref_int.shape) == ref_int)) if same_params else float("nan")
    return Agreement(name, op, int(ours.size), _cosine(got, ref_real), float(diff.max(initial=0.0)),
                     float(np.mean(diff <= 1.0 + 1e-6)), identical)


def _ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], extra: list[str]) -> dict[str, np.ndarray]:
    """Run onnxruntime with extra intermediate tensors exposed as outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    zero_types = {i.name: i.data_type for i in model.graph.initializer}
    types = {n.output[0]: zero_types.get(n.input[2], onnx.TensorProto.INT8) for n in model.graph.node
             if n.op_type == "QuantizeLinear" and len(n.input) > 2}     # int8 or uint8, as the zero point says
    for name in extra:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.INT8),
                                                                         None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _q_scale(model: onnx.ModelProto, q_output: str) -> tuple[float, int]:
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] == q_output:
            scale = float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])
            zero = int(numpy_helper.to_array(inits[node.input[2]]).reshape(-1)[0]) if len(node.input) > 2 else 0
            return scale, zero
    raise KeyError(q_output)


def fidelity_report(model_path: str | Path, quant_graph: Graph, int_graph: Graph,
                    inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Compare `int_graph` (integerized `quant_graph`) with onnxruntime on `inputs`."""
    model = load_onnx(model_path)
    onnx_names: dict[str, str] = quant_graph.meta.get("onnx_names", {})
    feeds = {name: np.asarray(v) for name, v in inputs.items()}
    float_inputs = quant_graph.meta.get("input_quant", {})
    ort_feeds = {vi.name: (((feeds[vi.name].astype(np.float32) - float_inputs[vi.name]["zero_point"])
                            * np.float32(float_inputs[vi.name]["scale"])) if vi.name in float_inputs
                           else feeds[vi.name].astype(np.int64))
                 for vi in model.graph.input if vi.name in feeds}
    ref = _ort_run(model, ort_feeds, sorted(set(onnx_names.values())))
    ours = run_graph(int_graph, feeds, keep_all=True)
    scales = {q: _q_scale(model, q) for q in set(onnx_names.values())}

    layers: list[Agreement] = []
    for tensor, qname in onnx_names.items():
        if tensor not in ours or qname not in ref:
            continue
        scale, zero = scales[qname]
        ref_int = ref[qname]
        layers.append(compare(tensor, _producer_op(quant_graph, tensor), ours[tensor], int_graph.tensors[tensor],
                              ref_int, (ref_int.astype(np.float64) - zero) * scale, scale))

    end_to_end = []
    out_names = quant_graph.meta.get("output_names", {})
    for tensor in int_graph.outputs:
        onnx_out = out_names.get(tensor)
        if onnx_out in ref:
            ref_real = ref[onnx_out].astype(np.float64)
            scale = float(int_graph.tensors[tensor].quant.scale)
            end_to_end.append(compare(onnx_out, "output", ours[tensor], int_graph.tensors[tensor], None,
                                      ref_real, scale))

    isolated = _isolated_ops(quant_graph, int_graph, ref, onnx_names, scales)
    worst = sorted(isolated, key=lambda a: (a.within_1lsb, -a.max_diff_lsb))[:5]
    total = sum(a.elements for a in isolated)
    within = sum(a.within_1lsb * a.elements for a in isolated) / total if total else None
    return finite({"model": str(model_path), "target": int_graph.meta.get("target"),
                    "end_to_end": [asdict(a) for a in end_to_end],
                    "linear_ops_within_1lsb": within, "linear_ops_elements": total,
                    "isolated_ops": [asdict(a) for a in isolated],
                    "worst_ops": [asdict(a) for a in worst],
                    "layers": [asdict(a) for a in layers]})


def _producer_op(graph: Graph, tensor: str) -> str:
    producer = graph.producers().get(tensor)
    return producer.op if producer else "input"


def _isolated_ops(quant_graph: Graph, int_graph: Graph, ref: dict[str, np.ndarray], onnx_names: dict[str, str],
                  scales: dict[str, tuple[float, int]]) -> list[Agreement]:
    """Each linear op's integer lowering fed onnxruntime's int8 inputs."""
    by_origin: dict[str, list] = {}
    for node in int_graph.nodes:
        by_origin.setdefault(node.origin, []).append(node)
    results = []
    for qnode in quant_graph.nodes:
        if qnode.op not in ISOLATED_OPS:
            continue
        out = qnode.outputs[0]
        nodes = by_origin.get(qnode.origin, [])
        if out not in onnx_names or onnx_names[out] not in ref or not nodes:
            continue
        feeds = {}
        for name in qnode.inputs:
            t = quant_graph.tensors[name]
            if t.is_const:
                continue
            if name not in onnx_names or onnx_names[name] not in ref:
                break
            feeds[name] = ref[onnx_names[name]].astype(np.int64).reshape(t.shape)
        else:
            sub = Graph("isolated", int_graph.tensors, nodes, list(feeds), [out])
            got = run_graph(sub, feeds)[out]
            scale, zero = scales[onnx_names[out]]
            ref_int = ref[onnx_names[out]]
            results.append(compare(qnode.origin, qnode.op[1:], got, int_graph.tensors[out], ref_int,
                                   (ref_int.astype(np.float64) - zero) * scale, scale))
    return results


#: below this many elements a share is given as a count ("0 of 2 elements"), not a percentage
FEW_ELEMENTS = 100


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _within(a: dict[str, Any]) -> str:
    """`a`'s share within 1 LSB, with the number of elements it is taken over."""
    n, share = a["elements"], a["within_1lsb"]
    if share is None:
        return f"n/a of {n:,} elements within 1 LSB"
    if n < FEW_ELEMENTS:
        return f"{round(share * n)} of {n} elements within 1 LSB"
    return f"{_pct(share)} of {n:,} elements within 1 LSB"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"fidelity of {report['model']} on target {report['target']} vs onnxruntime (QDQ)",
             "  agreement = share of a tensor's elements within 1 LSB (one step of its int8 scale) of onnxruntime "
             "running the same QDQ model on the same input"]
    if report["end_to_end"]:
        lines.append("  outputs (end to end: the error accumulated over the whole network):")
    for a in report["end_to_end"]:
        cosine = "n/a" if a["cosine"] is None else f"{a['cosine']:.5f}"
        lines.append(f"    {a['name']}: cosine {cosine}, max |diff| {a['max_diff_lsb']:.1f} LSB, {_within(a)}")
    elements = report.get("linear_ops_elements") or 0
    lines.append(f"  linear ops fed onnxruntime's int8 inputs: {_pct(report['linear_ops_within_1lsb'], 3)} of "
                 f"{elements:,} elements within 1 LSB ({len(report['isolated_ops'])} ops)")
    if report["worst_ops"]:
        lines.append("  ops that lose the most (in isolation):")
    for a in report["worst_ops"]:
        identical = "" if a["identical"] is None else f", {_pct(a['identical'], 1)} identical"
        lines.append(f"    {a['op']:<7} {a['name']}: {_within(a)}, max {a['max_diff_lsb']:.1f} LSB{identical}")
    worst_layers = sorted(report["layers"], key=lambda a: -2.0 if a["cosine"] is None else a["cosine"])[:3]
    if worst_layers:
        lines.append("  layers with the lowest cosine (accumulated error):")
        for a in worst_layers:
            cosine = "n/a" if a["cosine"] is None else f"{a['cosine']:.5f}"
            lines.append(f"    {a['op']:<9} {a['name']}: cosine {cosine}, max {a['max_diff_lsb']:.1f} LSB")
    return "\n".join(lines)
