"""Load an ONNX file with clear errors: missing/truncated/non-ONNX files, dynamic shapes, float-only models.

`import_model` is the frontend's entry point: it detects the dialect (QDQ from onnxruntime, or the
integer dialect of Deeploy/QuantLib) and returns the IR graph.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelFileError, UnsupportedModelError
from ..files import model_file
from ..ir.graph import Graph, check_tensor_size

#: Ops that only exist in the Deeploy/QuantLib integer dialect.
DEEPLOY_OPS = frozenset({"RequantShift", "iSoftmax", "ITAMax", "ITAPartialMax", "iNoNorm", "iLayerNorm",
                         "iGELU", "iHardswish", "IntegerMean", "TrueIntegerDiv", "IntegerDiv", "iRMSNorm",
                         "RQIntegerDiv"})

ONNX_INT_TYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                  onnx.TensorProto.INT16: "int16", onnx.TensorProto.INT32: "int32",
                  onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT: "float32"}


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read and parse an ONNX file; every failure is a one-line ModelFileError."""
    path = model_file(path)
    data = path.read_bytes()
    if not data:
        raise ModelFileError(f"'{path}' is empty, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-ish types: all mean "not ONNX"
        raise ModelFileError(f"'{path}' is not a valid ONNX file (truncated or another format): "
                             f"{type(exc).__name__}") from None
    if not model.graph.node:
        raise ModelFileError(f"'{path}' parsed as protobuf but holds no ONNX graph nodes "
                             "(truncated or not an ONNX model)")
    _load_external_data(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Tensors stored beside the model (external data) are read relative to the model's folder, not the cwd."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not any(uses_external_data(t) for t in model.graph.initializer):
        return
    try:
        load_external_data_for_model(model, str(path.resolve().parent))
    except Exception as exc:  # missing/short/out-of-folder data files raise several types; all mean the same
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"'{path}': its external tensor data cannot be read ({reason})") from None


def check_structure(model: onnx.ModelProto) -> None:
    """Every tensor a node reads is defined (graph input, initializer, a node) and the nodes form no cycle: names
    the node and tensor of an undefined input or a cycle, and a tensor written twice. Nodes listed out of
    topological order (Deeploy's Identity/OutputIdentity case) are put in order (stable), as onnxruntime does."""
    defined = {i.name for i in model.graph.input} | initializer_names(model) | {""}
    producer = {}
    for node in model.graph.node:
        for out in node.output:
            if out and (out in producer or out in defined):
                raise ModelFileError(f"tensor '{out}' is written twice (also by "
                                     f"'{producer.get(out, 'a graph input or initializer')}')", node=node.name or None)
            producer[out] = node.name or node.op_type
    for node in model.graph.node:
        for name in node.input:
            if name not in defined and name not in producer:
                raise ModelFileError(f"reads tensor '{name}', which no graph input, initializer or node defines",
                                     node=node.name or node.op_type)
    _order_nodes(model, defined)
    seen = set(defined).union(*(n.output for n in model.graph.node))
    for out in model.graph.output:
        if out.name not in seen:
            raise ModelFileError("graph output is not computed by any node", tensor=out.name)


def _order_nodes(model: onnx.ModelProto, defined: set[str]) -> None:
    """Reorder model.graph.node topologically (Kahn's algorithm, the file's order among ready nodes); a cycle is
    an error naming a node on it. A graph already in order is left untouched."""
    nodes = list(model.graph.node)
    seen = set(defined)
    for node in nodes:
        if not all(i in seen for i in node.input):
            break
        seen.update(node.output)
    else:
        return
    producer = {out: k for k, node in enumerate(nodes) for out in node.output if out}
    waiting = [0] * len(nodes)                 # inputs not yet computed, per node
    readers: dict[int, list[int]] = {}
    for k, node in enumerate(nodes):
        for i in set(node.input) & producer.keys():
            waiting[k] += 1
            readers.setdefault(producer[i], []).append(k)
    ready = [k for k, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for reader in readers.get(k, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) < len(nodes):
        done = set(order)
        stuck = nodes[min(set(range(len(nodes))) - done)]
        name = next(i for i in stuck.input if i in producer and producer[i] not in done)
        raise ModelFileError(f"reads tensor '{name}', which depends on this node's own output (a cycle)",
                             node=stuck.name or stuck.op_type)
    copies = [onnx.NodeProto.FromString(nodes[k].SerializeToString()) for k in order]
    del model.graph.node[:]
    model.graph.node.extend(copies)


def read_initializer(init: onnx.TensorProto) -> np.ndarray:
    """An initializer's values; one that does not decode (data shorter than its dims, unknown type) is named."""
    try:
        return numpy_helper.to_array(init)
    except Exception as exc:  # onnx raises ValueError, TypeError, KeyError... for the same thing: bad data
        raise ModelFileError(f"initializer cannot be decoded ({type(exc).__name__}: "
                             f"{str(exc).strip()[:120]})", tensor=init.name) from exc


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def graph_input_shapes(model: onnx.ModelProto, allow_symbolic: bool = False) -> dict[str, tuple[int, ...]]:
    """Static shapes of the real graph inputs; a symbolic or unknown dimension is an error (allow_symbolic: -1)."""
    inits = initializer_names(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = []
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            elif allow_symbolic:
                dims.append(-1)
            else:
                sym = d.dim_param or "?"
                raise UnsupportedModelError(
                    f"dynamic shape: dimension {i} is '{sym}'; tinydeploy needs static shapes "
                    "(export with fixed batch and sequence length, or fix it with onnxsim/--overwrite-input-shape)",
                    tensor=vi.name)
        if -1 not in dims:
            check_tensor_size(tuple(dims), vi.name)
        shapes[vi.name] = tuple(dims)
    return shapes


def symbolic_inputs(model: onnx.ModelProto) -> list[str]:
    """The real graph inputs with a symbolic or unknown dimension."""
    inits = initializer_names(model)
    return [vi.name for vi in model.graph.input if vi.name not in inits
            and any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)]


def bind_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Give the inputs' symbolic dimensions the sizes of their data, as Deeploy's runner does for a decoder whose KV
    cache length is symbolic (one compiled network per shape). Edits `model`; returns the inputs bound. A static
    dimension the data contradicts, or data of another rank, is an error naming the input."""
    bound = []
    for name in symbolic_inputs(model):
        if name not in shapes:
            continue
        vi = next(v for v in model.graph.input if v.name == name)
        dims, data = vi.type.tensor_type.shape.dim, tuple(shapes[name])
        if len(dims) != len(data):
            raise UnsupportedModelError(f"the input data has shape {list(data)}, the model declares rank {len(dims)}",
                                        tensor=name)
        for i, (d, size) in enumerate(zip(dims, data, strict=True)):
            if d.HasField("dim_value") and d.dim_value != size:
                raise UnsupportedModelError(f"the input data has {size} in dimension {i}, the model {d.dim_value}",
                                            tensor=name)
            d.Clear()
            d.dim_value = size
        bound.append(name)
    if bound:   # intermediate shapes derived from a symbolic dimension are recomputed by the importer
        symbolic = [vi for vi in model.graph.value_info
                    if any(not dim.HasField("dim_value") for dim in vi.type.tensor_type.shape.dim)]
        for vi in symbolic:
            model.graph.value_info.remove(vi)
    return bound


def drop_empty_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Remove the inputs with no elements (`shapes`: graph_input_shapes; an empty KV cache bound from the data): a
    Concat reading one skips it, a Concat left with one operand becomes an Identity. Any other reader is an error
    naming it. Edits `model`; returns the inputs removed."""
    empty = [name for name, shape in shapes.items() if 0 in shape]
    for name in empty:
        for node in model.graph.node:
            if name not in node.input:
                continue
            if node.op_type != "Concat":
                raise UnsupportedModelError(f"input '{name}' is empty (shape {list(shapes[name])}) and {node.op_type} "
                                            "reads it; only a Concat can take an empty operand", node=node.name)
            kept = [i for i in node.input if i != name]
            del node.input[:]
            node.input.extend(kept)
            if len(kept) == 1:
                node.op_type = "Identity"
                del node.attribute[:]
        model.graph.input.remove(next(v for v in model.graph.input if v.name == name))
    return empty


def const_array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return read_initializer(init)
    return None


#: Standard ops that also appear in integer-dialect graphs (integer values held in float tensors).
INTEGER_CAPABLE_OPS = frozenset({"MatMul", "Gemm", "Add", "ReduceMean", "Reshape", "Transpose", "Gather",
                                 "Constant", "Concat", "Slice", "Sub", "Pad", "Identity", "Flatten", "Squeeze",
                                 "Unsqueeze", "ReduceSum", "Conv", "MaxPool", "Mul"})


def _initializers_are_integers(model: onnx.ModelProto) -> bool:
    """True when every constant holds whole numbers: an integerized graph, not a float model's weights."""
    for init in model.graph.initializer:
        values = read_initializer(init)
        if values.dtype.kind == "f" and values.size and not np.all(np.mod(values, 1) == 0):
            return False
    return True


def detect_dialect(model: onnx.ModelProto) -> str:
    """'deeploy' (integer dialect), 'qdq' (QuantizeLinear/DequantizeLinear), or an error for float models."""
    ops = {n.op_type for n in model.graph.node}
    if ops & DEEPLOY_OPS:
        return "deeploy"
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    if ops <= INTEGER_CAPABLE_OPS and _initializers_are_integers(model):
        return "deeploy"
    if ops & {"QLinearMatMul", "QLinearConv", "MatMulInteger", "QLinearAdd"}:
        raise UnsupportedModelError(
            "operator-oriented (QOperator) quantized model; quantize with onnxruntime's QuantFormat.QDQ")
    raise UnsupportedModelError(
        "float-only model: no QuantizeLinear/DequantizeLinear and no integer-dialect ops; tinydeploy "
        "compiles 8-bit models (run `tinydeploy zoo` or onnxruntime.quantization.quantize_static with QDQ)")


def window_attributes(attrs: dict[str, Any], node: str, weight_shape: tuple[int, ...] | None = None) -> dict:
    """Conv/MaxPool window attributes with ONNX's defaults, for both importers: kernel (from the attribute, else
    the weights), strides, pads, dilations and, for a convolution (weights given), group. Explicit pads only."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)) != "NOTSET":
        raise UnsupportedModelError(f"auto_pad {auto_pad!r} (export with explicit pads)", node=node)
    if int(attrs.get("ceil_mode", 0)):
        raise UnsupportedModelError("ceil_mode 1 (export with ceil_mode 0)", node=node)
    kernel = [int(k) for k in attrs.get("kernel_shape", weight_shape[2:] if weight_shape else [])]
    rank = len(kernel)
    if rank not in (1, 2):
        raise UnsupportedModelError(f"{rank}-D window (1-D and 2-D are supported)", node=node)
    result: dict[str, Any] = {"kernel_shape": kernel, "strides": [int(v) for v in attrs.get("strides", [1] * rank)],
                              "pads": [int(v) for v in attrs.get("pads", [0] * (2 * rank))],
                              "dilations": [int(v) for v in attrs.get("dilations", [1] * rank)]}
    if weight_shape is not None:
        result["group"] = int(attrs.get("group", 1))
    return result


def check_standard_model(model: onnx.ModelProto, path: str | Path) -> None:
    """onnx.checker on standard-domain models (the Deeploy dialect has unregistered custom ops)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        where = next((line.split("Name:", 1)[1].strip() for line in lines if "Name:" in line), "")
        name, _, op = where.partition(" OpType: ")
        node = f" at node '{name}'" + (f" ({op})" if op else "") if where else ""
        raise ModelFileError(f"'{path}' fails the ONNX checker{node}: {lines[0] if lines else 'invalid'}") from None


def import_model(path: str | Path, *, input_ranges: dict[str, tuple[int, int]] | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """ONNX file -> IR graph (quantized for QDQ models, already integer for the Deeploy dialect).

    input_shapes: the shapes of the test data, which size the inputs' symbolic dimensions (an empty KV cache
    is dropped: drop_empty_inputs)."""
    model = load_onnx(path)
    check_structure(model)
    model_inputs = list(graph_input_shapes(model, allow_symbolic=True))
    bound = bind_input_shapes(model, input_shapes or {})
    dropped = drop_empty_inputs(model, graph_input_shapes(model))  # static shapes first: the most basic requirement
    dialect = detect_dialect(model)
    if dialect == "deeploy" and not {n.op_type for n in model.graph.node} & DEEPLOY_OPS and input_ranges is None:
        raise UnsupportedModelError(
            "only standard ONNX ops on float tensors and no quantization: whole-number constants do not make it an "
            "integer model; pass --inputs FILE.npz with its integer test inputs (as Deeploy's runner does)")
    if dialect == "qdq":
        check_standard_model(model, path)
    if dialect == "deeploy":
        from .deeploy import import_deeploy
        graph = import_deeploy(model, input_ranges=input_ranges)
    else:
        from .qdq import import_qdq
        graph = import_qdq(model)
    graph.meta["dialect"] = dialect
    graph.meta["source"] = str(path)
    if bound or dropped:
        graph.meta["model_inputs"] = model_inputs     # the file's inputs, in order (test data lists them all)
        graph.meta["bound_inputs"] = {name: list(input_shapes[name]) for name in bound}
        graph.meta["dropped_inputs"] = dropped
    if input_ranges:
        graph.meta["input_ranges"] = {k: [int(v[0]), int(v[1])] for k, v in input_ranges.items()}
    from ..ir.verify import verify
    verify(graph, check_ranges=dialect == "deeploy")  # MLIR-style: every stage hands on a verified graph
    return graph
