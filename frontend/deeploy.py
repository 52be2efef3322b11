"""Import the integer ONNX dialect of Deeploy/QuantLib (RequantShift, iSoftmax, ITAMax, iNoNorm, ...).

Values in this dialect are integers stored in float tensors. Graph inputs are taken as int8 unless
`input_ranges` says otherwise (Deeploy's own test runner also infers input types from the test data).
Every produced tensor gets the narrowest integer dtype that holds its proven value range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import OverflowRiskError, UnsupportedModelError, node_context
from ..ir.graph import DTYPE_RANGES, Graph, Node, Tensor, smallest_signed_dtype
from ..ir.ops import op_def
from .onnx_loader import graph_input_shapes, window_attributes

# onnx-graphsurgeon prints its own warnings and critical errors; ours name the node instead (exceptions still raise)
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL + 10


def _scalar(value: Any) -> Any:
    """Deeploy stores scalar attributes as 1-element tensors or plain numbers."""
    if isinstance(value, gs.Constant):
        value = value.values
    arr = np.asarray(value)
    return arr.reshape(-1)[0].item() if arr.size == 1 else arr


def _int_array(t: gs.Tensor, node: gs.Node) -> np.ndarray:
    if not isinstance(t, gs.Constant):
        raise UnsupportedModelError(f"expected a constant for input '{t.name}'", node=node.name)
    values = np.asarray(t.values)
    flat = values.reshape(-1)
    fractional = flat[np.not_equal(np.mod(flat, 1), 0)] if values.dtype.kind == "f" else flat[:0]
    if fractional.size:
        raise UnsupportedModelError(f"constant holds non-integer values (e.g. {fractional.flat[0]:g}): float "
                                    "arithmetic, not an integer model", node=node.name, tensor=t.name)
    return values.astype(np.int64)


def _levels_range(n_levels: int, signed: bool) -> tuple[int, int]:
    return (-(n_levels // 2), n_levels // 2 - 1) if signed else (0, n_levels - 1)


class _Importer:
    def __init__(self, model: onnx.ModelProto, input_ranges: dict[str, tuple[int, int]] | None) -> None:
        self.model = model
        try:
            self.gsg = gs.import_onnx(model)
        except Exception as exc:  # onnx-graphsurgeon raises its own exception types on malformed graphs
            raise UnsupportedModelError(f"onnx-graphsurgeon cannot read the graph ({type(exc).__name__}: "
                                        f"{str(exc).strip()[:160]})") from exc
        self.graph = Graph(name=model.graph.name or "network")
        self.input_ranges = input_ranges or {}

    # -- tensors -----------------------------------------------------------------------------------------
    def const(self, t: gs.Tensor, node: gs.Node) -> str:
        if t.name not in self.graph.tensors:
            values = _int_array(t, node)
            lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
            self.graph.add_tensor(Tensor(t.name, smallest_signed_dtype(lo, hi), tuple(values.shape), values))
        return t.name

    def value(self, t: gs.Tensor, node: gs.Node) -> str:
        return self.const(t, node) if isinstance(t, gs.Constant) else t.name

    def emit(self, node: gs.Node, op: str, inputs: list[str], attrs: dict[str, Any]) -> None:
        out = node.outputs[0].name
        ir_node = Node(node.name or out, op, inputs, [out], attrs, origin=node.name or out)
        shapes = [self.graph.tensors[i].shape for i in inputs]
        shape = op_def(ir_node).shape(ir_node, shapes)[0]
        self.graph.add_tensor(Tensor(out, "int64", tuple(shape)))  # dtype fixed after range analysis
        self.graph.nodes.append(ir_node)

    # -- main --------------------------------------------------------------------------------------------
    def run(self) -> Graph:
        shapes = graph_input_shapes(self.model)
        for name, shape in shapes.items():
            lo, hi = self.input_ranges.get(name, DTYPE_RANGES["int8"])
            self.graph.add_tensor(Tensor(name, smallest_signed_dtype(lo, hi), shape))
            self.graph.inputs.append(name)
            self.graph.meta.setdefault("input_ranges", {})[name] = (lo, hi)
        self.gsg.toposort()
        for node in self.gsg.nodes:
            handler = HANDLERS.get(node.op)
            if handler is None:
                raise UnsupportedModelError(f"unsupported op '{node.op}' in the integer (Deeploy) dialect; "
                                            f"supported: {', '.join(sorted(HANDLERS))}", node=node.name)
            with node_context(node.name or node.op, node.op, "import"):
                handler(self, node)
        self.graph.outputs = [o.name for o in self.gsg.outputs]
        self.assign_dtypes()
        self.widen_concat_inputs()
        for node in self.graph.nodes:      # Deeploy offsets an unsigned iHardswish input by n_levels / 2
            if node.op == "IHardswish" and self.graph.tensors[node.inputs[0]].dtype == "uint8":
                node.attrs["input_offset"] = 128
        return self.graph

    def widen_concat_inputs(self) -> None:
        """Concat copies bytes: an input narrower than the output (uint8 into int16) is first widened by an exact
        elementwise op (x * 1 + 0), so every backend's copy sees one dtype."""
        for node in list(self.graph.nodes):
            if node.op != "Concat":
                continue
            out_dtype = self.graph.tensors[node.outputs[0]].dtype
            for position, name in enumerate(node.inputs):
                source = self.graph.tensors[name]
                if source.dtype == out_dtype:
                    continue
                wide = self.graph.add_tensor(Tensor(self.graph.unique_name(f"{name}_{out_dtype}"), out_dtype,
                                                    source.shape))
                zero = self.graph.add_const(f"{wide.name}_zero", np.zeros((), dtype=np.int8), "int8")
                widen = Node(f"{node.name}_widen_{position}", "Add", [name, zero.name], [wide.name], {"mul_b": 0},
                             origin=node.origin)
                self.graph.nodes.insert(self.graph.nodes.index(node), widen)
                node.inputs[position] = wide.name

    def assign_dtypes(self) -> None:
        """Give every produced tensor the narrowest dtype of its proven range."""
        from ..ir.verify import value_ranges
        for t in self.graph.activations():
            if t.name not in self.graph.inputs:
                t.dtype = "int64"
        ranges = value_ranges(self.graph, check=False)
        for t in self.graph.activations():
            if t.name in self.graph.inputs:
                continue
            lo, hi = ranges[t.name]
            dtype = smallest_signed_dtype(lo, hi)
            if dtype == "int64":
                producer = self.graph.producers()[t.name]
                raise OverflowRiskError(f"result may reach [{lo}, {hi}], beyond int32", node=producer.origin,
                                        tensor=t.name)
            t.dtype = dtype


Handler = Callable[[_Importer, gs.Node], None]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return register


@handles("Constant")
def _constant(imp: _Importer, node: gs.Node) -> None:
    out = node.outputs[0]
    values = _int_array(node.attrs["value"], node)   # a fractional constant is a float model, never truncated
    imp.graph.add_tensor(Tensor(out.name, smallest_signed_dtype(int(values.min()), int(values.max())),
                                tuple(values.shape), values))


@handles("MatMul")
def _matmul(imp: _Importer, node: gs.Node) -> None:
    imp.emit(node, "MatMulInt", [imp.value(t, node) for t in node.inputs], {})


@handles("Gemm")
def _gemm(imp: _Importer, node: gs.Node) -> None:
    """alpha * A @ B + beta * C; integer alpha/beta become the scales of an exact Add after the MatMul."""
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if not (alpha.is_integer() and beta.is_integer()):
        raise UnsupportedModelError(f"Gemm with alpha {alpha:g} / beta {beta:g} that are not integers in the "
                                    "integer dialect", node=node.name)
    attrs = {"trans_a": int(node.attrs.get("transA", 0)), "trans_b": int(node.attrs.get("transB", 0))}
    inputs = [imp.value(t, node) for t in node.inputs if t.name]
    if alpha == 1.0 and beta == 1.0:
        imp.emit(node, "MatMulInt", inputs, attrs)
        return
    product = imp.graph.unique_name(f"{node.outputs[0].name}_product")
    matmul = Node(f"{node.name}_matmul", "MatMulInt", inputs[:2], [product], attrs, origin=node.name)
    shape = op_def(matmul).shape(matmul, [imp.graph.tensors[i].shape for i in inputs[:2]])[0]
    imp.graph.add_tensor(Tensor(product, "int64", tuple(shape)))
    imp.graph.nodes.append(matmul)
    if len(inputs) > 2:
        imp.emit(node, "Add", [product, inputs[2]], {"mul_a": int(alpha), "mul_b": int(beta)})
    else:
        zero = imp.graph.add_const(f"{product}_zero", np.zeros((), dtype=np.int8), "int8").name
        imp.emit(node, "Add", [product, zero], {"mul_a": int(alpha), "mul_b": 0})


@handles("Add")
def _add(imp: _Importer, node: gs.Node) -> None:
    imp.emit(node, "Add", [imp.value(t, node) for t in node.inputs], {})


@handles("RequantShift")
def _requant_shift(imp: _Importer, node: gs.Node) -> None:
    n_levels = int(_scalar(node.attrs.get("n_levels_out", node.attrs.get("n_levels", 256))))
    signed = bool(_scalar(node.attrs.get("signed", 1)))
    div = int(_scalar(node.attrs["div"]))
    log2d = int(np.log2(div))
    if 1 << log2d != div:
        raise UnsupportedModelError(f"RequantShift div={div} is not a power of two", node=node.name)
    lo, hi = _levels_range(n_levels, signed)
    source = imp.value(node.inputs[0], node)
    shape = imp.graph.tensors[source].shape
    mul, add = (_channel_axis(_int_array(node.inputs[i], node), shape) for i in (1, 2))
    attrs = {"mul": mul, "add": add, "log2d": log2d, "lo": lo, "hi": hi}
    imp.emit(node, "RequantShift", [source], attrs)


def _channel_axis(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Deeploy applies per-channel parameters of shape (C, 1, ..) along axis 1 (NCHW / NCW): reshaped so that
    numpy-style broadcasting does the same on a tensor of any rank (rank 3 included)."""
    channels = values.shape[0] if values.ndim else 1
    if (values.ndim >= 2 and values.size == channels > 1 and len(shape) >= 2 and shape[1] == channels):
        return values.reshape(1, channels, *[1] * (len(shape) - 2))
    return values


@handles("iSoftmax")
def _isoftmax(imp: _Importer, node: gs.Node) -> None:
    n_levels = int(_scalar(node.attrs["n_levels"]))
    attrs = {"coeff_a": int(_scalar(node.attrs["coeffA"])), "coeff_b": int(_scalar(node.attrs["coeffB"])),
             "coeff_c": int(_scalar(node.attrs["coeffC"])), "log2": int(_scalar(node.attrs["log2"])),
             "n_levels": n_levels, "lo": 0, "hi": n_levels - 1}
    imp.emit(node, "ISoftmax", [imp.value(node.inputs[0], node)], attrs)


@handles("ITAMax")
def _itamax(imp: _Importer, node: gs.Node) -> None:
    n_levels = int(_scalar(node.attrs.get("n_levels", 256)))
    imp.emit(node, "ITAMax", [imp.value(node.inputs[0], node)], {"n_levels": n_levels, "lo": 0, "hi": n_levels - 1})


@handles("ITAPartialMax")
def _ita_partial_max(imp: _Importer, node: gs.Node) -> None:
    n_levels = int(_scalar(node.attrs.get("n_levels", 256)))
    attrs = {"n_levels": n_levels, "group_width": int(_scalar(node.attrs.get("group_width", 16))),
             "lo": 0, "hi": n_levels // 2 - 1}
    imp.emit(node, "ITAPartialMax", [imp.value(node.inputs[0], node)], attrs)


@handles("iNoNorm")
def _inonorm(imp: _Importer, node: gs.Node) -> None:
    n_levels = int(_scalar(node.attrs["n_levels"]))
    lo, hi = _levels_range(n_levels, True)
    attrs = {"mul": int(_scalar(node.attrs["mul"])), "log2d": int(np.log2(int(_scalar(node.attrs["D"])))),
             "lo": lo, "hi": hi}
    imp.emit(node, "INoNorm", [imp.value(t, node) for t in node.inputs], attrs)


NORM_OPS = {"iLayerNorm": "ILayerNorm", "iRMSNorm": "IRMSNorm"}


@handles(*NORM_OPS)
def _integer_norm(imp: _Importer, node: gs.Node) -> None:
    """iLayerNorm / iRMSNorm: D = 2^log2d output divisor, signed n_levels output."""
    lo, hi = _levels_range(int(_scalar(node.attrs["n_levels"])), True)
    attrs = {"log2d": int(np.log2(int(_scalar(node.attrs["D"])))), "lo": lo, "hi": hi}
    imp.emit(node, NORM_OPS[node.op], [imp.value(t, node) for t in node.inputs], attrs)


@handles("iGELU")
def _igelu(imp: _Importer, node: gs.Node) -> None:
    attrs = {"b": int(_scalar(node.attrs["b"])), "one": int(_scalar(node.attrs["one"]))}
    imp.emit(node, "IGELU", [imp.value(node.inputs[0], node)], attrs)


@handles("IntegerMean", "ReduceMean", "ReduceSum")
def _reduce(imp: _Importer, node: gs.Node) -> None:
    """Deeploy's IntegerMean (default: the last axis); ONNX ReduceMean/ReduceSum take their axes from the
    attribute or, from opset 13 (ReduceSum) / 18 (ReduceMean), the second input; the default is every axis."""
    source = imp.value(node.inputs[0], node)
    rank = len(imp.graph.tensors[source].shape)
    default = [-1] if node.op == "IntegerMean" else list(range(rank))
    axes = _operand_or_attr(node, 1, "axes", default) or default
    attrs = {"axes": [a % rank for a in axes], "keepdims": int(node.attrs.get("keepdims", 1))}
    imp.emit(node, "ReduceSum" if node.op == "ReduceSum" else "IntegerMean", [source], attrs)


@handles("TrueIntegerDiv")
def _true_integer_div(imp: _Importer, node: gs.Node) -> None:
    attrs = {k.lower(): int(_scalar(node.attrs[k])) for k in ("Delta", "eps", "eta", "y")}
    imp.emit(node, "TrueIntegerDiv", [imp.value(node.inputs[0], node)], attrs)


@handles("Reshape")
def _reshape(imp: _Importer, node: gs.Node) -> None:
    src = imp.graph.tensors[imp.value(node.inputs[0], node)]
    target = [int(v) for v in _int_array(node.inputs[1], node)]
    shape = np.empty(src.shape, dtype=np.int8).reshape(target).shape
    imp.emit(node, "Reshape", [src.name], {"shape": list(shape)})


@handles("Transpose")
def _transpose(imp: _Importer, node: gs.Node) -> None:
    imp.emit(node, "Transpose", [imp.value(node.inputs[0], node)], {"perm": list(node.attrs["perm"])})


@handles("Gather")
def _gather(imp: _Importer, node: gs.Node) -> None:
    inputs = [imp.value(t, node) for t in node.inputs]
    imp.emit(node, "Gather", inputs, {"axis": int(node.attrs.get("axis", 0))})


@handles("iHardswish")
def _ihardswish(imp: _Importer, node: gs.Node) -> None:
    attrs = {k: int(_scalar(node.attrs[k])) for k in ("one_over_six", "three", "six")}
    imp.emit(node, "IHardswish", [imp.value(node.inputs[0], node)], {**attrs, "input_offset": 0})


@handles("Mul")
def _mul(imp: _Importer, node: gs.Node) -> None:
    imp.emit(node, "Mul", [imp.value(t, node) for t in node.inputs], {})


@handles("Conv")
def _conv(imp: _Importer, node: gs.Node) -> None:
    inputs = [imp.value(t, node) for t in node.inputs if t.name]
    imp.emit(node, "ConvInt", inputs, window_attributes(node.attrs, node.name, imp.graph.tensors[inputs[1]].shape))


@handles("MaxPool")
def _max_pool(imp: _Importer, node: gs.Node) -> None:
    if len(node.outputs) > 1 and node.outputs[1].name:
        raise UnsupportedModelError("MaxPool with an Indices output", node=node.name)
    imp.emit(node, "MaxPool", [imp.value(node.inputs[0], node)], window_attributes(node.attrs, node.name))


@handles("Sub")
def _sub(imp: _Importer, node: gs.Node) -> None:
    imp.emit(node, "Add", [imp.value(t, node) for t in node.inputs], {"mul_b": -1})


@handles("Concat")
def _concat(imp: _Importer, node: gs.Node) -> None:
    imp.emit(node, "Concat", [imp.value(t, node) for t in node.inputs], {"axis": int(node.attrs["axis"])})


def _operand_or_attr(node: gs.Node, index: int, name: str, default: list[int] | None) -> list[int] | None:
    """A constant operand (opset >= 10/11/13 style) or the attribute of the older opsets."""
    if len(node.inputs) > index and node.inputs[index].name:
        return [int(v) for v in _int_array(node.inputs[index], node).reshape(-1)]
    if name in node.attrs:
        return [int(v) for v in np.asarray(node.attrs[name]).reshape(-1)]
    return default


@handles("Slice")
def _slice(imp: _Importer, node: gs.Node) -> None:
    src = imp.graph.tensors[imp.value(node.inputs[0], node)]
    starts, ends = _operand_or_attr(node, 1, "starts", None), _operand_or_attr(node, 2, "ends", None)
    if starts is None or ends is None:
        raise UnsupportedModelError("Slice without constant starts/ends", node=node.name)
    axes = _operand_or_attr(node, 3, "axes", list(range(len(starts))))
    steps = _operand_or_attr(node, 4, "steps", [1] * len(starts))
    rank = len(src.shape)
    bounded = [max(min(e, 2**31 - 1), -(2**31)) for e in ends]      # INT64_MAX means "to the end"
    imp.emit(node, "Slice", [src.name], {"starts": starts, "ends": bounded, "axes": [a % rank for a in axes],
                                         "steps": steps})


@handles("Pad")
def _pad(imp: _Importer, node: gs.Node) -> None:
    if str(node.attrs.get("mode", "constant")) not in ("constant", "b'constant'"):
        raise UnsupportedModelError(f"Pad mode '{node.attrs.get('mode')}' (only constant)", node=node.name)
    src = imp.graph.tensors[imp.value(node.inputs[0], node)]
    pads = _operand_or_attr(node, 1, "pads", None)
    if pads is None or len(pads) != 2 * len(src.shape) or min(pads) < 0:
        raise UnsupportedModelError(f"Pad needs {2 * len(src.shape)} non-negative constant pads", node=node.name)
    value = _operand_or_attr(node, 2, "value", [0])
    imp.emit(node, "Pad", [src.name], {"pads": pads, "value": int(value[0]) if value else 0})


@handles("Identity", "Flatten", "Squeeze", "Unsqueeze")
def _shape_only(imp: _Importer, node: gs.Node) -> None:
    """Ops that only relabel the shape: one Reshape (free: an alias of its input's bytes)."""
    src = imp.graph.tensors[imp.value(node.inputs[0], node)]
    shape = list(src.shape)
    if node.op == "Flatten":
        axis = int(node.attrs.get("axis", 1)) % (len(shape) + 1)
        shape = [int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))]
    elif node.op == "Squeeze":
        axes = [a % len(shape) for a in _operand_or_attr(node, 1, "axes", [i for i, d in enumerate(shape) if d == 1])]
        shape = [d for i, d in enumerate(shape) if i not in axes]
    elif node.op == "Unsqueeze":
        axes = _operand_or_attr(node, 1, "axes", None)
        if axes is None:
            raise UnsupportedModelError("Unsqueeze without axes", node=node.name)
        rank = len(shape) + len(axes)
        for axis in sorted(a % rank for a in axes):
            shape.insert(axis, 1)
    imp.emit(node, "Reshape", [src.name], {"shape": shape})


def import_deeploy(model: onnx.ModelProto, *, input_ranges: dict[str, tuple[int, int]] | None = None) -> Graph:
    """Deeploy-dialect ONNX -> integer IR graph."""
    return _Importer(model, input_ranges).run()
