"""`--dump-ir DIR`: the IR after every pass, as text and as ONNX in a custom domain (viewable in Netron).

Ops keep their IR names in the domain `ai.tinydeploy`; scalar and list attributes become ONNX attributes, arrays
become tensor attributes, anything else (e.g. an ITAGemm's epilogue stages) a JSON string. Constants up to
INITIALIZER_LIMIT bytes are initializers; larger ones (weights) appear as graph inputs with their shape, so the
files stay small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .graph import Graph

DOMAIN = "ai.tinydeploy"
INITIALIZER_LIMIT = 64 * 1024


def _onnx_dtype(dtype: str) -> int:
    from onnx import TensorProto

    return {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
            "int32": TensorProto.INT32, "int64": TensorProto.INT64, "float32": TensorProto.FLOAT}[dtype]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attribute(name: str, value: Any):
    from onnx import helper, numpy_helper

    if isinstance(value, (bool, int, np.integer)):
        return helper.make_attribute(name, int(value))
    if isinstance(value, (float, np.floating)):
        return helper.make_attribute(name, float(value))
    if isinstance(value, str):
        return helper.make_attribute(name, value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return helper.make_attribute(name, numpy_helper.from_array(value, name))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, np.integer)) for v in value):
        return helper.make_attribute(name, [int(v) for v in value])
    return helper.make_attribute(name, json.dumps(_jsonable(value)))


def to_onnx(graph: Graph):
    """The IR graph as an ONNX ModelProto (custom-domain ops; not meant to run in onnxruntime)."""
    from onnx import helper, numpy_helper

    nodes = []
    for node in graph.nodes:
        proto = helper.make_node(node.op, list(node.inputs), list(node.outputs), name=node.name, domain=DOMAIN)
        proto.attribute.extend(_attribute(k, v) for k, v in node.attrs.items())
        if node.origin:
            proto.doc_string = f"ONNX origin: {node.origin}"
        nodes.append(proto)
    used = {name for node in graph.nodes for name in node.inputs if name}
    initializers, inputs = [], []
    for name in graph.inputs:
        t = graph.tensors[name]
        inputs.append(helper.make_tensor_value_info(name, _onnx_dtype(t.dtype), list(t.shape)))
    for t in graph.constants():
        if t.name not in used:
            continue
        if t.nbytes <= INITIALIZER_LIMIT:
            initializers.append(numpy_helper.from_array(np.asarray(t.data).astype(t.dtype), t.name))
        else:
            inputs.append(helper.make_tensor_value_info(t.name, _onnx_dtype(t.dtype), list(t.shape)))
    outputs = [helper.make_tensor_value_info(n, _onnx_dtype(graph.tensors[n].dtype), list(graph.tensors[n].shape))
               for n in graph.outputs]
    produced = {o for node in graph.nodes for o in node.outputs} - set(graph.outputs)
    value_info = [helper.make_tensor_value_info(n, _onnx_dtype(graph.tensors[n].dtype), list(graph.tensors[n].shape))
                  for n in sorted(produced)]
    onnx_graph = helper.make_graph(nodes, graph.name, inputs, outputs, initializers, value_info=value_info)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                             producer_name="tinydeploy")


class IrDumper:
    """Writes DIR/NN_<stage>.txt and .onnx, numbered in pass order."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None
        self.count = 0
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, stage: str, graph: Graph) -> None:
        if self.directory is None:
            return
        import onnx

        stem = self.directory / f"{self.count:02d}_{stage}"
        self.count += 1
        stem.with_suffix(".txt").write_text(graph.to_text())
        onnx.save(to_onnx(graph), str(stem.with_suffix(".onnx")))
