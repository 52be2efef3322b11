"""Import a QDQ-quantized ONNX model (onnxruntime `quantize_static`, QuantFormat.QDQ) into the IR.

Each ONNX value is tracked as one of:
  * an activation: an int8/int32 IR tensor with quantization parameters (the output of QuantizeLinear,
    or of a layout op applied to one);
  * a dequantized activation: the float view DequantizeLinear gives of an activation;
  * a pending float op: a compute op on dequantized inputs, waiting for the QuantizeLinear that gives
    it an output scale; it becomes a quantized IR op ("QMatMul", "QAdd", ...);
  * a constant: folded with ONNX's reference evaluator (the attention-mask and embedding-shift
    subgraphs vanish this way); a dequantized weight remembers its int8 values and parameters.
Layout ops (Reshape, Transpose, Slice, Concat, Pad, Gather, ...) run directly on the int8 data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..errors import UnsupportedModelError, node_context
from ..ir.graph import DTYPE_RANGES, MAX_TENSOR_ELEMENTS, Graph, Node, QuantParams, Tensor, check_tensor_size
from ..ir.ops import dequantize, op_def
from .float_subgraphs import ELEMENTWISE_OPS, Derived, elementwise_table, key_mask_source
from .onnx_loader import graph_input_shapes, read_initializer, window_attributes

#: float op -> quantized IR op
COMPUTE_OPS = {"MatMul": "QMatMul", "Gemm": "QMatMul", "Add": "QAdd", "Sub": "QSub", "Mul": "QMul",
               "Div": "QDiv", "Relu": "QRelu", "Tanh": "QTanh", "Sigmoid": "QSigmoid", "Softmax": "QSoftmax",
               "Gelu": "QGelu", "Conv": "QConv"}
#: float ops the importer keeps pending across several nodes (an elementwise expression, a softmax whose input is
#: scaled and masked, a LayerNorm) until a QuantizeLinear gives the result its scale
FLOAT_OPS = set(COMPUTE_OPS) | ELEMENTWISE_OPS | {"LayerNormalization"}
LAYOUT_OPS = {"Reshape", "Transpose", "Slice", "Concat", "Pad", "Squeeze", "Unsqueeze", "Flatten", "Gather",
              "Identity", "MaxPool"}
ONNX_TO_DTYPE = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                 onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64"}


@dataclass
class Const:
    value: np.ndarray
    #: for a dequantized weight: its integer values and parameters
    qvalue: np.ndarray | None = None
    quant: QuantParams | None = None


@dataclass
class Act:
    """An integer IR tensor (quantized activation or integer input such as token ids)."""

    tensor: str


@dataclass
class Deq:
    """The float view of an integer activation."""

    tensor: str


@dataclass
class Pending:
    node: onnx.NodeProto
    inputs: list[Any] = field(default_factory=list)


Value = Const | Act | Deq | Pending | Derived


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold(node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with ONNX's reference implementation (refusing, before it runs, an
    op whose constant shape operand asks for a tensor larger than any target holds)."""
    _check_fold_size(node, inputs)
    if node.op_type == "GatherElements" and len(inputs) == 2 and all(x is not None for x in inputs):
        # onnx's reference GatherElements mis-shapes results for data larger than the indices (onnx 1.23)
        data, indices = np.asarray(inputs[0]), np.asarray(inputs[1]).astype(np.int64)
        axis = int(_attrs(node).get("axis", 0)) % data.ndim
        return [np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis)]
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    clone = helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))],
                             domain=node.domain, **_attrs(node))
    inits = [numpy_helper.from_array(np.asarray(x), n) for x, n in zip(inputs, names, strict=True) if n]
    outputs = [helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.UNDEFINED, None)
               for i in range(len(node.output))]
    graph = helper.make_graph([clone], "fold", [], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {})]


#: ops whose output size is set by a constant operand: (operand index, how it gives the output shape)
SIZED_BY_OPERAND = {"Expand": 1, "ConstantOfShape": 0, "Tile": 1, "Reshape": 1}


def _check_fold_size(node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> None:
    """The output of Expand/ConstantOfShape/Tile/Reshape stays within MAX_TENSOR_ELEMENTS (checked before the
    reference evaluator allocates it); the same for Range's length."""
    index = SIZED_BY_OPERAND.get(node.op_type)
    if node.op_type == "Range" and len(inputs) == 3 and all(x is not None for x in inputs):
        start, limit, delta = (float(np.asarray(x).reshape(-1)[0]) for x in inputs)
        length = np.ceil((limit - start) / delta) if delta else np.inf
        if not np.isfinite(length) or length > MAX_TENSOR_ELEMENTS:
            raise UnsupportedModelError(f"Range of {length} elements", node=node.name or node.op_type)
    if index is None or index >= len(inputs) or inputs[index] is None:
        return
    operand = np.asarray(inputs[index]).reshape(-1)
    if node.op_type == "Tile" and inputs[0] is not None:
        operand = np.asarray(inputs[0]).shape * operand if operand.size == np.asarray(inputs[0]).ndim else operand
    if node.op_type == "Reshape":
        operand = operand[operand > 0]
    dims = [int(d) for d in operand if d > 0]
    check_tensor_size(tuple(dims), node.output[0] if node.output else node.name)


def _qparams(scale: np.ndarray, zero: np.ndarray | None, axis: int | None, ndim: int) -> QuantParams:
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros_like(scale, dtype=np.int64) if zero is None else np.asarray(zero).astype(np.int64)
    if scale.size > 1:
        axis = (axis if axis is not None else 1) % ndim
    else:
        axis = None
    return QuantParams(scale.reshape(-1) if scale.size > 1 else scale.reshape(()), zero.reshape(scale.shape),
                       axis)


def _same_quant(a: QuantParams | None, b: QuantParams | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.axis == b.axis and a.scale.shape == b.scale.shape and np.array_equal(a.scale, b.scale)
            and np.array_equal(a.zero_point, b.zero_point))


class _QDQImporter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = Graph(name=model.graph.name or "network")
        self.env: dict[str, Value] = {}
        self.counter = 0
        self.skip: set[str] = set()          # outputs of the QuantizeLinear nodes folded into a float input
        self.raw_inputs: dict[str, np.dtype] = {}   # integer graph inputs (token ids, masks) -> their ONNX dtype
        self.mask_vectors: dict[str, str] = {}      # mask input -> its [seq] vector in the IR

    # -- helpers ---------------------------------------------------------------------------------------
    def new_tensor(self, base: str, dtype: str, shape: tuple[int, ...], quant: QuantParams | None) -> str:
        name = self.graph.unique_name(base)
        self.graph.add_tensor(Tensor(name, dtype, tuple(int(d) for d in shape), None, quant))
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any], origin: str) -> None:
        self.counter += 1
        node = Node(f"{op}_{self.counter}", op, inputs, outputs, attrs, origin=origin)
        shapes = [self.graph.tensors[i].shape for i in inputs]
        expected = op_def(node).shape(node, shapes)
        for out, shape in zip(outputs, expected, strict=True):
            if self.graph.tensors[out].shape != tuple(shape):
                raise UnsupportedModelError(f"shape mismatch importing {op}: {self.graph.tensors[out].shape} "
                                            f"vs {tuple(shape)}", node=origin)
        self.graph.nodes.append(node)

    def const_tensor(self, name: str, c: Const) -> str:
        """An integer constant tensor for a dequantized weight (its int8/int32 values)."""
        if c.qvalue is None:
            raise UnsupportedModelError("float constant operand is not quantized (expected a "
                                        "DequantizeLinear weight)", tensor=name)
        if name in self.graph.tensors:
            return name
        dtype = str(c.qvalue.dtype)
        self.graph.add_tensor(Tensor(name, dtype, tuple(c.qvalue.shape), c.qvalue, c.quant))
        return name

    def quant_of(self, tensor: str) -> QuantParams | None:
        return self.graph.tensors[tensor].quant

    # -- main loop ---------------------------------------------------------------------------------------
    def run(self) -> Graph:
        for init in self.model.graph.initializer:
            self.env[init.name] = Const(read_initializer(init))
        for name, shape in graph_input_shapes(self.model).items():
            vi = next(v for v in self.model.graph.input if v.name == name)
            elem = vi.type.tensor_type.elem_type
            if elem == onnx.TensorProto.FLOAT and self.quantized_float_input(name, shape):
                continue
            if elem not in ONNX_TO_DTYPE:
                raise UnsupportedModelError(
                    f"graph input has element type {onnx.TensorProto.DataType.Name(elem)}; the integer flow "
                    "needs integer inputs (token ids) or a QuantizeLinear right after a float input",
                    tensor=name)
            dtype = "int32" if elem == onnx.TensorProto.INT64 else ONNX_TO_DTYPE[elem]
            self.raw_inputs[name] = helper.tensor_dtype_to_np_dtype(elem)
            self.graph.add_tensor(Tensor(name, dtype, shape))
            self.graph.inputs.append(name)
            self.env[name] = Act(name)
        for node in self.model.graph.node:
            if node.output and node.output[0] in self.skip:     # a float input's QuantizeLinear: folded above
                continue
            with node_context(node.name or node.op_type, node.op_type, "import"):
                self.visit(node)
        for out in self.model.graph.output:
            value = self.env.get(out.name)
            if isinstance(value, Pending):
                raise UnsupportedModelError("graph output is a float result without QuantizeLinear",
                                            node=value.node.name, tensor=out.name)
            if isinstance(value, Derived):
                raise UnsupportedModelError(f"graph output is computed only from the input '{value.source}' "
                                            "(a mask), not by the network", tensor=out.name)
            if not isinstance(value, Act | Deq):
                raise UnsupportedModelError("graph output is not computed from the inputs", tensor=out.name)
            self.graph.outputs.append(value.tensor)
            self.graph.meta.setdefault("output_names", {})[value.tensor] = out.name
        return self.graph

    def quantized_float_input(self, name: str, shape: tuple[int, ...]) -> bool:
        """A float graph input read only by QuantizeLinear nodes of one scale and zero point becomes an integer
        input with those parameters (graph.meta['input_quant']: tinydeploy quantizes float input data with them,
        exactly as the model's first QuantizeLinear would)."""
        readers = [n for n in self.model.graph.node if name in n.input]
        if not readers or any(n.op_type != "QuantizeLinear" or n.input[0] != name for n in readers):
            return False
        params = []
        for q in readers:
            ins = [self.env.get(i) if i else None for i in q.input]
            if any(v is not None and not isinstance(v, Const) for v in ins[1:]):
                return False
            params.append(self._params(q, ins, len(shape)))
        (quant, dtype), rest = params[0], params[1:]
        if quant.per_channel or any(not _same_quant(quant, q) or d != dtype for q, d in rest):
            return False
        self.graph.add_tensor(Tensor(name, dtype, shape, quant=quant))
        self.graph.inputs.append(name)
        self.graph.meta.setdefault("input_quant", {})[name] = {
            "scale": float(np.asarray(quant.scale).reshape(-1)[0]),
            "zero_point": int(np.asarray(quant.zero_point).reshape(-1)[0]), "dtype": dtype}
        for q in readers:
            self.skip.add(q.output[0])
            self.env[q.output[0]] = Act(name)
        return True

    def visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        ins = [self.env.get(i) if i else None for i in node.input]
        for name, value in zip(node.input, ins, strict=True):
            if name and value is None:
                raise UnsupportedModelError(f"input '{name}' is undefined", node=node.name)
            if isinstance(value, Pending) and op != "QuantizeLinear" and op not in FLOAT_OPS:
                raise UnsupportedModelError(
                    f"float result of {value.node.op_type} '{value.node.name}' feeds {op} without "
                    "QuantizeLinear: the model is only partly quantized (quantize every op, e.g. pass "
                    "op_types_to_quantize to quantize_static)", node=node.name)
        if self.derived(node, ins):
            return
        if op == "Constant":
            self.env[node.output[0]] = Const(_fold(node, [])[0])
        elif op in ("IsNaN", "IsInf") and isinstance(ins[0], Act | Deq):  # integers are never NaN/inf
            shape = self.graph.tensors[ins[0].tensor].shape
            self.env[node.output[0]] = Const(np.zeros(shape, dtype=bool))
        elif op == "Where" and isinstance(ins[0], Const) and not all(isinstance(v, Const) for v in ins):
            self.env[node.output[0]] = self.select(node, ins)
        elif op == "Shape" and isinstance(ins[0], Act | Deq):  # static shapes: a constant
            shape = np.array(self.graph.tensors[ins[0].tensor].shape, dtype=np.int64)
            self.env[node.output[0]] = Const(_fold(node, [np.zeros(shape, np.float32)])[0])
        elif op == "QuantizeLinear":
            self.quantize_linear(node, ins)
        elif op == "DequantizeLinear":
            self.dequantize_linear(node, ins)
        elif all(isinstance(v, Const) or v is None for v in ins):
            outs = _fold(node, [v.value if v is not None else None for v in ins])
            for name, value in zip(node.output, outs, strict=True):
                self.env[name] = Const(value)
        elif op in LAYOUT_OPS:
            self.layout(node, ins)
        elif op in FLOAT_OPS:
            if len(node.output) != 1 and not (op == "LayerNormalization" and not any(node.output[1:])):
                raise UnsupportedModelError(f"{op} with several outputs", node=node.name)
            self.env[node.output[0]] = Pending(node, ins)
        else:
            raise UnsupportedModelError(
                f"unsupported op '{op}' (supported: {', '.join(sorted(set(COMPUTE_OPS) | LAYOUT_OPS))}, "
                "QuantizeLinear, DequantizeLinear and constant subgraphs)", node=node.name)

    def derived(self, node: onnx.NodeProto, ins: list[Value | None]) -> bool:
        """Nodes that compute only from one integer input (an attention mask) and constants become a Derived value
        (probed later, when a softmax reads it). True when `node` was taken this way."""
        sources = [v for v in ins if isinstance(v, Derived)]
        raw = [i for i, v in enumerate(ins) if isinstance(v, Act) and v.tensor in self.raw_inputs]
        if node.op_type == "Gather" and isinstance(ins[0], Const):   # an embedding lookup, not mask arithmetic
            return False
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):   # an integer input's own dequantization
            raw = []
        if not sources and (not raw or node.op_type == "Shape"):
            return False
        others = [v for i, v in enumerate(ins) if v is not None and not isinstance(v, Const | Derived) and i not in raw]
        if others:
            if node.op_type == "Add" and len(sources) == 1 and not raw:
                return False                                   # scores + mask: a pending Add for the softmax
            raise UnsupportedModelError(f"{node.op_type} combines an activation with a value computed from the "
                                        f"input '{(sources[0].source if sources else ins[raw[0]].tensor)}' "
                                        "(tinydeploy takes such values only as a softmax's attention mask)",
                                        node=node.name)
        if len(node.output) != 1:
            raise UnsupportedModelError(f"{node.op_type} with several outputs on an input mask", node=node.name)
        if node.op_type == "Shape":
            probe = self.derived_probe(sources[0])
            self.env[node.output[0]] = Const(_fold(node, [probe])[0])
            return True
        values = sources + [Derived(ins[i].tensor, (), node.input[i]) for i in raw]
        self.env[node.output[0]] = Derived.combine(values, node)
        return True

    def derived_probe(self, value: Derived) -> np.ndarray:
        """`value` evaluated for an all-ones input (for its shape)."""
        source = value.source
        return value.evaluate(np.ones(self.graph.tensors[source].shape, self.raw_inputs[source]), self.constants())

    def constants(self) -> dict[str, np.ndarray]:
        return {name: v.value for name, v in self.env.items() if isinstance(v, Const)}

    def select(self, node: onnx.NodeProto, ins: list[Value | None]) -> Value:
        """Where with a constant, uniform condition (a NaN guard, a folded mask) is one of its branches."""
        cond = np.asarray(ins[0].value, dtype=bool)
        if cond.all() or not cond.any():
            chosen = ins[1] if cond.all() else ins[2]
            out_shape = np.broadcast_shapes(cond.shape, self._shape_of(ins[1]), self._shape_of(ins[2]))
            if tuple(out_shape) == tuple(self._shape_of(chosen)):
                return chosen
        raise UnsupportedModelError("Where with a data-dependent condition", node=node.name)

    @staticmethod
    def zero_add_operand(p: Pending) -> Value | None:
        """For Add(x, c) with c a constant of zeros (a folded all-ones attention mask): x."""
        if p.node.op_type != "Add" or len(p.inputs) != 2:
            return None
        for this, other in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
            if isinstance(this, Const) and not np.any(this.value) and isinstance(other, Deq):
                return other
        return None

    # -- Q / DQ ----------------------------------------------------------------------------------------
    def _params(self, node: onnx.NodeProto, ins: list[Value | None], ndim: int) -> tuple[QuantParams, str]:
        scale, zero = ins[1], ins[2] if len(ins) > 2 else None
        if not isinstance(scale, Const) or (zero is not None and not isinstance(zero, Const)):
            raise UnsupportedModelError("quantization scale/zero point must be constants", node=node.name)
        axis = _attrs(node).get("axis")
        dtype = "int8" if zero is None else str(zero.value.dtype)
        if dtype not in ("int8", "uint8", "int16", "int32"):
            raise UnsupportedModelError(f"quantized type {dtype} is not supported (int8/uint8/int16/int32)",
                                        node=node.name)
        return _qparams(scale.value, None if zero is None else zero.value, axis, ndim), dtype

    def quantize_linear(self, node: onnx.NodeProto, ins: list[Value | None]) -> None:
        x, out = ins[0], node.output[0]
        if isinstance(x, Const):
            q, dtype = self._params(node, ins, x.value.ndim)
            folded = _fold(node, [v.value if v is not None else None for v in ins])[0]
            self.env[out] = Const(folded, folded, q)
            return
        if isinstance(x, Pending):
            x = self.zero_add_operand(x) or x
        if isinstance(x, Pending):
            self.env[out] = Act(self.materialize_pending(x, node, ins))
            self.graph.meta.setdefault("onnx_names", {})[self.env[out].tensor] = out
            return
        shape = self._shape_of(x)
        q, dtype = self._params(node, ins, len(shape))
        if isinstance(x, Deq):
            if _same_quant(self.quant_of(x.tensor), q):
                self.env[out] = Act(x.tensor)
                self.graph.meta.setdefault("onnx_names", {}).setdefault(x.tensor, out)
            else:  # re-quantization of an activation to other parameters
                t = self.new_tensor(out, dtype, shape, q)
                self.add_node("QRequant", [x.tensor], [t], self._qattrs([x.tensor], q, dtype), node.name)
                self.env[out] = Act(t)
                self.graph.meta.setdefault("onnx_names", {})[t] = out
        else:
            raise UnsupportedModelError("QuantizeLinear of an integer tensor", node=node.name)

    def materialize_pending(self, x: Pending, qnode: onnx.NodeProto, ins: list[Value | None]) -> str:
        """The integer IR op(s) for the float subgraph ending in `x`, quantized by `qnode`."""
        op = x.node.op_type
        simple = all(v is None or isinstance(v, Const | Deq) for v in x.inputs)
        if op == "Softmax" and not simple:
            return self.masked_softmax(x, qnode, ins)
        if op == "LayerNormalization":
            return self.layer_norm(x, qnode, ins)
        if simple and op in COMPUTE_OPS:
            inputs, attrs = self.pending_operands(x)
            shape = self.op_shape(x, inputs, attrs)
            q, dtype = self._params(qnode, ins, len(shape))
            return self.materialize(x, inputs, attrs, shape, q, dtype)
        return self.elementwise(x, qnode, ins)

    def pending_tree(self, root: Pending) -> tuple[list[onnx.NodeProto], dict[str, str]]:
        """The ONNX nodes of a pending float subgraph (topological order) and its leaves: ONNX name -> IR tensor
        of each dequantized activation it reads."""
        nodes: list[onnx.NodeProto] = []
        leaves: dict[str, str] = {}

        def visit(p: Pending) -> None:
            if any(p.node is n for n in nodes):
                return
            for name, value in zip(p.node.input, p.inputs, strict=True):
                if isinstance(value, Pending):
                    visit(value)
                elif isinstance(value, Deq):
                    leaves[name] = value.tensor
                elif isinstance(value, Act | Derived):
                    raise UnsupportedModelError(f"{p.node.op_type} reads the integer value '{name}' in a float "
                                                "subgraph", node=p.node.name)
            nodes.append(p.node)

        visit(root)
        return nodes, leaves

    def elementwise(self, x: Pending, qnode: onnx.NodeProto, ins: list[Value | None]) -> str:
        """An elementwise float subgraph of one 8-bit activation (GELU's Erf or tanh form, ...) -> QTable: its
        values on every input code, quantized by integerize to a lookup table."""
        nodes, leaves = self.pending_tree(x)
        tensors = sorted(set(leaves.values()))
        if len(tensors) != 1:
            raise UnsupportedModelError(f"float subgraph ending in {x.node.op_type} reads {len(tensors)} activations "
                                        f"({', '.join(tensors)}); tinydeploy integerizes float subgraphs of one "
                                        "activation (quantize the ops between them)", node=x.node.name)
        src = self.graph.tensors[tensors[0]]
        lo, hi = DTYPE_RANGES[src.dtype]
        if hi - lo > 255 or src.quant is None or src.quant.per_channel:
            raise UnsupportedModelError(f"float subgraph ending in {x.node.op_type} on a {src.dtype} activation "
                                        "(tables are built for per-tensor 8-bit inputs)", node=x.node.name)
        codes = np.arange(lo, hi + 1, dtype=np.int64)
        real = dequantize(codes, src.quant.scale, src.quant.zero_point, None).astype(np.float32)
        values = elementwise_table(nodes, list(leaves), self.constants(), real, x.node.output[0])
        q, dtype = self._params(qnode, ins, len(src.shape))
        t = self.new_tensor(x.node.output[0], dtype, src.shape, q)
        attrs = {"values": values, "in_min": lo, "ops": [n.op_type for n in nodes],
                 **self._qattrs([src.name], q, dtype)}
        self.add_node("QTable", [src.name], [t], attrs, x.node.name)
        return t

    def softmax_operand(self, value: Value | None, where: str) -> tuple[str, float, Derived | None]:
        """(scores tensor, scale factor, additive mask) of a softmax input `scores * c [/ c] [+ mask]`."""
        if isinstance(value, Deq):
            return value.tensor, 1.0, None
        if not isinstance(value, Pending) or value.node.op_type not in ("Mul", "Div", "Add"):
            kind = value.node.op_type if isinstance(value, Pending) else type(value).__name__
            raise UnsupportedModelError(f"softmax input computed by {kind}: tinydeploy takes a dequantized "
                                        "activation, scaled by a constant and plus an attention mask", node=where)
        a, b = value.inputs
        op = value.node.op_type
        if op == "Add":
            mask, other = (a, b) if isinstance(a, Derived | Const) else (b, a)
            tensor, factor, inner = self.softmax_operand(other, where)
            if isinstance(mask, Const) and not np.any(mask.value):
                return tensor, factor, inner
            if not isinstance(mask, Derived) or inner is not None:
                raise UnsupportedModelError("softmax input plus a value that is not one attention mask", node=where)
            return tensor, factor, mask
        const, other = (b, a) if isinstance(b, Const) or op == "Div" else (a, b)
        if not isinstance(const, Const) or const.value.size != 1 or float(const.value.reshape(-1)[0]) <= 0:
            raise UnsupportedModelError(f"softmax input scaled by {op} with a value that is not a positive scalar "
                                        "constant", node=where)
        tensor, factor, mask = self.softmax_operand(other, where)
        c = float(const.value.reshape(-1)[0])
        if mask is not None:
            raise UnsupportedModelError("softmax input scaled after the attention mask was added", node=where)
        return tensor, factor * c if op == "Mul" else factor / c, None

    def masked_softmax(self, x: Pending, qnode: onnx.NodeProto, ins: list[Value | None]) -> str:
        """Softmax((scores * c) + mask) -> QSoftmax(scores, mask vector) with input factor c (contract 6)."""
        where = x.node.name or "Softmax"
        axis = _attrs(x.node).get("axis", -1)
        tensor, factor, mask = self.softmax_operand(x.inputs[0], where)
        src = self.graph.tensors[tensor]
        if axis not in (-1, len(src.shape) - 1):
            raise UnsupportedModelError("Softmax over a non-last axis", node=where)
        if src.quant is None or src.quant.per_channel:
            raise UnsupportedModelError("softmax input without per-tensor quantization", node=where, tensor=tensor)
        lo, hi = DTYPE_RANGES[src.dtype]
        zero = int(np.asarray(src.quant.zero_point).reshape(-1)[0])
        bound = max(abs(lo - zero), abs(hi - zero)) * float(src.quant.scale) * factor
        inputs = [tensor]
        if mask is not None:
            key_mask_source(mask, self.constants(), self.graph.tensors[mask.source].shape,
                            self.raw_inputs[mask.source], src.shape, bound, where)
            inputs.append(self.mask_vector(mask.source, x.node.name))
        q, dtype = self._params(qnode, ins, len(src.shape))
        t = self.new_tensor(x.node.output[0], dtype, src.shape, q)
        self.add_node("QSoftmax", inputs, [t], {"input_factor": factor, **self._qattrs([tensor], q, dtype)},
                      x.node.name)
        return t

    def mask_vector(self, source: str, origin: str) -> str:
        """The key mask [seq] of integer input `source` [1, seq]; its values are checked to be 0 or 1."""
        if source not in self.mask_vectors:
            length = self.graph.tensors[source].shape[-1]
            t = self.new_tensor(f"{source}_keys", self.graph.tensors[source].dtype, (length,), None)
            self.add_node("Reshape", [source], [t], {"shape": [length]}, origin)
            self.mask_vectors[source] = t
            self.graph.meta.setdefault("input_values", {})[source] = [0, 1]
        return self.mask_vectors[source]

    def layer_norm(self, x: Pending, qnode: onnx.NodeProto, ins: list[Value | None]) -> str:
        """LayerNormalization over the last axis of a dequantized activation -> QLayerNorm (gamma, beta, eps as
        float attributes; integerize picks the integer LayerNorm's parameters)."""
        where = x.node.name or "LayerNormalization"
        a = _attrs(x.node)
        data = x.inputs[0]
        if not isinstance(data, Deq):
            raise UnsupportedModelError("LayerNormalization of a value that is not a dequantized activation",
                                        node=where)
        src = self.graph.tensors[data.tensor]
        if a.get("axis", -1) not in (-1, len(src.shape) - 1):
            raise UnsupportedModelError("LayerNormalization over more than the last axis", node=where)
        params = []
        for value, default in zip((x.inputs + [None, None])[1:3], (1.0, 0.0), strict=True):
            if value is not None and not isinstance(value, Const):
                raise UnsupportedModelError("LayerNormalization scale/bias must be constants", node=where)
            vec = np.broadcast_to(np.asarray(default if value is None else value.value, np.float64),
                                  (src.shape[-1],))
            params.append(np.array(vec))
        if src.quant is None or src.quant.per_channel:
            raise UnsupportedModelError("LayerNormalization input without per-tensor quantization", node=where)
        q, dtype = self._params(qnode, ins, len(src.shape))
        t = self.new_tensor(x.node.output[0], dtype, src.shape, q)
        self.add_node("QLayerNorm", [src.name], [t], {"gamma": params[0], "beta": params[1],
                                                      "epsilon": float(a.get("epsilon", 1e-5)),
                                                      **self._qattrs([src.name], q, dtype)}, where)
        return t

    def dequantize_linear(self, node: onnx.NodeProto, ins: list[Value | None]) -> None:
        x, out = ins[0], node.output[0]
        if isinstance(x, Const):
            q, _ = self._params(node, ins, x.value.ndim)
            folded = _fold(node, [v.value if v is not None else None for v in ins])[0]
            self.env[out] = Const(folded, x.value, q)
        elif isinstance(x, Act):
            q, _ = self._params(node, ins, len(self.graph.tensors[x.tensor].shape))
            t = self.graph.tensors[x.tensor]
            if t.quant is None:
                t.quant = q
            elif not _same_quant(t.quant, q):
                raise UnsupportedModelError("DequantizeLinear parameters differ from the QuantizeLinear "
                                            "that produced the tensor", node=node.name)
            self.env[out] = Deq(x.tensor)
        else:
            raise UnsupportedModelError("DequantizeLinear of a float value", node=node.name)

    def _shape_of(self, value: Value) -> tuple[int, ...]:
        if isinstance(value, Act | Deq):
            return self.graph.tensors[value.tensor].shape
        if isinstance(value, Const):
            return tuple(value.value.shape)
        return self.pending_shape(value)

    # -- compute ops -------------------------------------------------------------------------------------
    def operand(self, node: onnx.NodeProto, index: int, value: Value | None) -> str:
        if isinstance(value, Deq):
            return value.tensor
        if isinstance(value, Const):
            return self.const_tensor(node.input[index], value)
        if isinstance(value, Act):
            raise UnsupportedModelError("integer tensor used as a float operand without DequantizeLinear",
                                        node=node.name, tensor=node.input[index])
        raise UnsupportedModelError("missing operand", node=node.name)

    def _qattrs(self, inputs: list[str], out_q: QuantParams, out_dtype: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {"out": {"scale": out_q.scale, "zero_point": out_q.zero_point, "axis": out_q.axis},
                                 "out_dtype": out_dtype}
        for i, name in enumerate(inputs):
            q = self.graph.tensors[name].quant
            if q is not None:
                attrs[f"in{i}"] = {"scale": q.scale, "zero_point": q.zero_point, "axis": q.axis}
        return attrs

    def pending_shape(self, p: Pending) -> tuple[int, ...]:
        return self.op_shape(p, *self.pending_operands(p))

    def op_shape(self, p: Pending, inputs: list[str], attrs: dict[str, Any]) -> tuple[int, ...]:
        """Output shape of a pending op on its resolved IR operands."""
        probe = Node("probe", COMPUTE_OPS[p.node.op_type], inputs, [], attrs)
        return tuple(op_def(probe).shape(probe, [self.graph.tensors[i].shape for i in inputs])[0])

    def pending_operands(self, p: Pending) -> tuple[list[str], dict[str, Any]]:
        node, op = p.node, p.node.op_type
        attrs: dict[str, Any] = {}
        if op == "Gemm":
            a = _attrs(node)
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                raise UnsupportedModelError("Gemm with alpha/beta != 1 or transA", node=node.name)
            attrs["trans_b"] = int(a.get("transB", 0))
        if op == "Conv":
            attrs.update(window_attributes(_attrs(node), node.name, self._shape_of(p.inputs[1])))
        if op == "Softmax":
            axis = _attrs(node).get("axis", -1)
            if axis not in (-1, len(self._shape_of(p.inputs[0])) - 1):
                raise UnsupportedModelError("Softmax over a non-last axis", node=node.name)
        if op == "Gemm" and len(p.inputs) > 2 and isinstance(p.inputs[2], Const) and p.inputs[2].qvalue is None:
            inputs = [self.operand(node, i, v) for i, v in enumerate(p.inputs[:2])]
            return [*inputs, self.float_bias(node, inputs, p.inputs[2])], attrs
        inputs = [self.operand(node, i, v) for i, v in enumerate(p.inputs) if v is not None]
        return inputs, attrs

    def float_bias(self, node: onnx.NodeProto, inputs: list[str], bias: Const) -> str:
        """Quantize a float Gemm bias to int32 at scale s_a * s_w (what onnxruntime does for constant biases)."""
        qa, qw = self.quant_of(inputs[0]), self.quant_of(inputs[1])
        if qa is None or qw is None or qa.per_channel:
            raise UnsupportedModelError("float Gemm bias with unquantized operands", node=node.name)
        scale = (qa.scale * qw.scale).astype(np.float32)
        values = np.rint(bias.value / scale).astype(np.int64)
        if np.abs(values).max(initial=0) >= 2**31:
            raise UnsupportedModelError("Gemm bias does not fit int32 at scale s_a*s_w", node=node.name)
        name = f"{node.input[2]}_int32"
        quant = QuantParams(scale, np.zeros(scale.shape, np.int64), 0 if scale.size > 1 else None)
        return self.const_tensor(name, Const(bias.value, values.astype(np.int32), quant))

    def materialize(self, p: Pending, inputs: list[str], attrs: dict[str, Any], shape: tuple[int, ...],
                    q: QuantParams, dtype: str) -> str:
        """The quantized IR op for a pending float op, now that its output parameters are known."""
        t = self.new_tensor(p.node.output[0], dtype, shape, q)
        self.add_node(COMPUTE_OPS[p.node.op_type], inputs, [t], {**attrs, **self._qattrs(inputs, q, dtype)},
                      p.node.name)
        return t

    # -- layout ops on integer data ------------------------------------------------------------------------
    def layout(self, node: onnx.NodeProto, ins: list[Value | None]) -> None:
        op = node.op_type
        if op == "Gather":
            self.gather(node, ins)
            return
        if op == "Concat":
            self.concat(node, ins)
            return
        x = ins[0]
        if not isinstance(x, Deq | Act):
            raise UnsupportedModelError(f"{op} on a float value", node=node.name)
        src = self.graph.tensors[x.tensor]
        if src.quant is not None and src.quant.per_channel and op != "Identity":
            raise UnsupportedModelError(f"{op} on a per-channel quantized activation", node=node.name)
        params = [v.value if isinstance(v, Const) else None for v in ins[1:]]
        ir_op, attrs = self.layout_attrs(node, src, params)
        out_shape = _fold_shape(node, src.shape, params)
        if ir_op is None:
            self.env[node.output[0]] = type(x)(x.tensor)
            return
        t = self.new_tensor(node.output[0], src.dtype, out_shape, src.quant)
        self.add_node(ir_op, [src.name], [t], attrs, node.name)
        self.env[node.output[0]] = type(x)(t)

    def layout_attrs(self, node: onnx.NodeProto, src: Tensor, params: list[Any]) -> tuple[str | None, dict]:
        op, a = node.op_type, _attrs(node)
        if op == "Identity":
            return None, {}
        if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            return "Reshape", {"shape": list(_fold_shape(node, src.shape, params))}
        if op == "Transpose":
            return "Transpose", {"perm": list(a.get("perm", reversed(range(len(src.shape)))))}
        if op == "Slice":
            starts, ends = params[0], params[1]
            axes = params[2] if len(params) > 2 and params[2] is not None else np.arange(len(starts))
            steps = params[3] if len(params) > 3 and params[3] is not None else np.ones(len(starts), np.int64)
            clamp = [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
            return "Slice", {"starts": [c[0] for c in clamp], "ends": [min(c[1], 2**31 - 1) for c in clamp],
                             "axes": [int(x) for x in axes], "steps": [int(x) for x in steps]}
        if op == "MaxPool":          # max commutes with a positive scale: it runs on the codes, quantization kept
            if len(node.output) > 1 and node.output[1]:
                raise UnsupportedModelError("MaxPool with an Indices output", node=node.name)
            return "MaxPool", window_attributes(a, node.name)
        if op == "Pad":
            if a.get("mode", b"constant") not in (b"constant", "constant"):
                raise UnsupportedModelError("only constant padding is supported", node=node.name)
            pads = [int(p) for p in params[0]]
            fill = float(params[1].reshape(-1)[0]) if len(params) > 1 and params[1] is not None else 0.0
            if len(params) > 2 and params[2] is not None:
                raise UnsupportedModelError("Pad with axes input", node=node.name)
            q = src.quant
            qfill = int(np.rint(fill / float(q.scale)) + int(q.zero_point)) if q is not None else int(fill)
            lo, hi = DTYPE_RANGES[src.dtype]
            return "Pad", {"pads": pads, "value": int(np.clip(qfill, lo, hi))}
        raise UnsupportedModelError(f"layout op {op} is not supported", node=node.name)

    def gather(self, node: onnx.NodeProto, ins: list[Value | None]) -> None:
        data, idx = ins[0], ins[1]
        axis = int(_attrs(node).get("axis", 0))
        if isinstance(data, Const) and isinstance(idx, Act):
            table = self.const_tensor(node.input[0], data)
            q = self.graph.tensors[table].quant
            if q is not None and q.per_channel:
                raise UnsupportedModelError("Gather from a per-channel quantized table", node=node.name)
            shape = _gather_shape(self.graph.tensors[table].shape, self.graph.tensors[idx.tensor].shape, axis)
            t = self.new_tensor(node.output[0], self.graph.tensors[table].dtype, shape, q)
            self.add_node("Gather", [table, idx.tensor], [t], {"axis": axis}, node.name)
            self.env[node.output[0]] = Deq(t)
        elif isinstance(data, Deq | Act) and isinstance(idx, Const):
            src = self.graph.tensors[data.tensor]
            index = self.graph.add_const(f"{node.name or 'gather'}_indices", idx.value.astype(np.int32), "int32")
            shape = _gather_shape(src.shape, index.shape, axis)
            t = self.new_tensor(node.output[0], src.dtype, shape, src.quant)
            self.add_node("Gather", [src.name, index.name], [t], {"axis": axis}, node.name)
            self.env[node.output[0]] = type(data)(t)
        else:
            raise UnsupportedModelError("Gather needs a constant table with integer indices or an "
                                        "activation with constant indices", node=node.name)

    def concat(self, node: onnx.NodeProto, ins: list[Value | None]) -> None:
        """Concat of dequantized activations (and quantized constants) that share one scale."""
        axis = int(_attrs(node)["axis"])
        names: list[str] = []
        for i, v in enumerate(ins):
            if isinstance(v, Deq):
                names.append(v.tensor)
            elif isinstance(v, Const) and v.qvalue is not None:
                names.append(self.const_tensor(node.input[i], v))
            else:
                raise UnsupportedModelError("Concat of a float value", node=node.name, tensor=node.input[i])
        quants = [self.graph.tensors[n].quant for n in names]
        if not all(_same_quant(quants[0], q) for q in quants[1:]):
            raise UnsupportedModelError("Concat inputs with different quantization parameters", node=node.name)
        shapes = [self.graph.tensors[n].shape for n in names]
        out_shape = list(shapes[0])
        out_shape[axis] = sum(s[axis] for s in shapes)
        t = self.new_tensor(node.output[0], self.graph.tensors[names[0]].dtype, tuple(out_shape), quants[0])
        self.add_node("Concat", names, [t], {"axis": axis}, node.name)
        self.env[node.output[0]] = Deq(t)


def _gather_shape(data: tuple[int, ...], idx: tuple[int, ...], axis: int) -> tuple[int, ...]:
    axis %= len(data)
    return data[:axis] + idx + data[axis + 1:]


def _fold_shape(node: onnx.NodeProto, shape: tuple[int, ...], params: list[Any]) -> tuple[int, ...]:
    """Output shape of a layout op, computed by running it on a zero array of the input shape."""
    check_tensor_size(tuple(shape), node.input[0] if node.input else node.name)
    dummy = np.zeros(shape, dtype=np.float32)
    return tuple(_fold(node, [dummy, *params])[0].shape)


def import_qdq(model: onnx.ModelProto) -> Graph:
    """QDQ ONNX -> quantized IR graph (Q ops with float semantics, integer layout ops)."""
    graph = _QDQImporter(model).run()
    graph.remove_unused()
    for tensor, onnx_name in list(graph.meta.get("output_names", {}).items()):
        if tensor != onnx_name and onnx_name not in graph.tensors:
            graph.rename_tensor(tensor, onnx_name)
    return graph
