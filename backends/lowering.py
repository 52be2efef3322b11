"""Lowering of integer-IR nodes to C kernel calls, shared by every C backend.

Each IR op maps to one kernel *family* (a jinja template under `<backend>/templates/kernels/`); a family is
specialised per dtype signature into a kernel *instance* (a C function such as `td_requant_s32_s8`). The
generated project contains only the instances the graph uses. Elementwise ops, layout ops (transpose,
slice, concat, pad) and broadcasting all go through one strided loop nest (`td_loop`), so broadcasting
rules live here, in one place, instead of in every kernel.
"""

from __future__ import annotations

import json
from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TinyDeployError, node_context
from ..ir.arith import ITA_OCTAVE_BITS
from ..ir.graph import DTYPE_RANGES, Graph, Node, Tensor
from ..passes.kernel_choice import blocked_matmul_operands, conv_by_patches, layernorm_fits_int32, patch_depth

CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t"}
SUFFIXES = {"int8": "s8", "uint8": "u8", "int16": "s16", "int32": "s32", "int64": "s64"}
MAX_LOOP_DIMS = 4
MAX_BATCH_DIMS = 2
INT32_LO, INT32_HI = DTYPE_RANGES["int32"]


@dataclass(frozen=True)
class Kernel:
    """One kernel instance: the template family that renders it and the fields the template reads."""

    family: str
    name: str
    key: str                                   # canonical JSON of the fields: instance identity
    fields: dict[str, Any] = field(compare=False, hash=False)

    def context(self) -> dict[str, Any]:
        return {"name": self.name, **self.fields}


@dataclass
class Call:
    """One statement block in network_run(): optional static descriptors, then kernel calls."""

    node: Node
    kernels: list[Kernel] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    descriptors: list[str] = field(default_factory=list)
    #: constant parameter arrays this call needs (C name -> values), emitted beside the weights.
    params: dict[str, np.ndarray] = field(default_factory=dict)
    scratch_bytes: int = 0
    #: an accelerator call: the driver call queueing the job(s), without its last argument (the tile whose
    #: inputs the first job waits for, -1 outside a tile loop); the statement blocks on it, a tile loop queues it
    accel_job: str = ""


class Refs:
    """C expressions for tensors (pointer into the arena, the caller's buffers or the weights)."""

    def __init__(self, pointer: Callable[[str], str], scratch: Callable[[int], str],
                 aliases: dict[str, str] | None = None, param: Callable[[str], str] | None = None,
                 pitch: Callable[[str], int] | None = None) -> None:
        self.pointer = pointer
        self.scratch = scratch
        #: bytes between rows of a tensor that is a column tile of a wider one (0: rows packed)
        self.pitch = pitch or (lambda name: 0)
        #: Reshape outputs that share their input's bytes (no code needed), and views -> their storage root
        self.aliases = aliases or {}
        #: tensors stored as a transpose of another's bytes (backends/riscv/views.py), moved by strided DMA
        self.views: dict[str, Any] = {}
        #: where a kernel constant array (per-channel parameters, lookup tables) is read from
        self.param = param or (lambda name: name)


def ctype(dtype: str) -> str:
    return CTYPES[dtype]


def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= dim
    return list(reversed(strides))


def broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """Element strides of a contiguous `shape` read under numpy broadcasting to `out_shape` (0 = repeated)."""
    own = contiguous_strides(shape)
    pad = len(out_shape) - len(shape)
    result = []
    for axis, out_dim in enumerate(out_shape):
        src = axis - pad
        if src < 0 or shape[src] == 1:
            result.append(0)
        elif shape[src] == out_dim:
            result.append(own[src])
        else:
            raise ValueError(f"shape {list(shape)} does not broadcast to {list(out_shape)}")
    return result


def collapse_loops(dims: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop unit dims and merge adjacent dims that every operand walks contiguously."""
    keep = [i for i, d in enumerate(dims) if d != 1]
    dims = [dims[i] for i in keep]
    strides = [[s[i] for i in keep] for s in strides]
    axis = len(dims) - 2
    while axis >= 0:
        if all(s[axis] == s[axis + 1] * dims[axis + 1] for s in strides):
            dims[axis:axis + 2] = [dims[axis] * dims[axis + 1]]
            for s in strides:
                s[axis:axis + 2] = [s[axis + 1]]
        axis -= 1
    return dims, strides


def pad_front(values: list[int], count: int, fill: int) -> list[int]:
    return [fill] * (count - len(values)) + values


def loop_descriptor(node: Node, name: str, dims: list[int], strides: list[list[int]],
                    max_dims: int = MAX_LOOP_DIMS) -> str:
    """A `static const td_loop` for the strided nest (operands first, the output last)."""
    dims, strides = collapse_loops(list(dims), [list(s) for s in strides])
    if len(dims) > max_dims:
        raise TinyDeployError(f"needs a {len(dims)}-D loop after collapsing, the C kernels support {max_dims}",
                              node=node.name)
    dims = pad_front(dims, max_dims, 1)
    rows = ", ".join("{" + ", ".join(str(v) for v in pad_front(s, max_dims, 0)) + "}" for s in strides)
    return f"static const td_loop {name} = {{{{{', '.join(str(d) for d in dims)}}}, {{{rows}}}}};"


def check_int32(node: Node, what: str, values: np.ndarray | int) -> None:
    arr = np.asarray(values)
    if arr.size and (int(arr.min()) < INT32_LO or int(arr.max()) > INT32_HI):
        raise TinyDeployError(f"parameter '{what}' does not fit int32 (range [{arr.min()}, {arr.max()}])",
                              node=node.name)


# --- lowering context ------------------------------------------------------------------------------------
class Lowering:
    """Lowers the nodes of one graph; kernel instances are shared by name across nodes."""

    def __init__(self, graph: Graph, refs: Refs, cores: int = 1, blocked_matmul: bool = False,
                 cmsis_nn: bool = False) -> None:
        self.graph = graph
        self.cores = cores
        #: the project links CMSIS-NN's entry points (ours or a user's checkout): call them where they apply
        self.cmsis_nn = cmsis_nn
        #: the backend has a register-blocked int8 GEMM specialised on K and the row strides (riscv)
        self.blocked_matmul = blocked_matmul
        #: requant-family kernels in 32-bit arithmetic where the value ranges allow it (32-bit targets)
        self.narrow = blocked_matmul
        self._graph = graph
        self._ranges: dict[str, tuple[int, int]] | None = None
        self.refs = refs
        self.kernels: dict[tuple[str, str], Kernel] = {}
        self._names: set[str] = set()

    def t(self, name: str) -> Tensor:
        return self.graph.tensors[name]

    def kernel(self, family: str, base: str, **fields: Any) -> Kernel:
        """The unique instance for (family, fields); names get a numeric suffix only on a real clash."""
        key = json.dumps(fields, sort_keys=True)
        known = self.kernels.get((family, key))
        if known is not None:
            return known
        name, i = base, 2
        while name in self._names:
            name, i = f"{base}_v{i}", i + 1
        kernel = Kernel(family, name, key, fields)
        self.kernels[(family, key)] = kernel
        self._names.add(name)
        return kernel

    def const_data(self, name: str) -> np.ndarray | None:
        """The values of a constant of the graph being lowered (also inside a tile view), else None."""
        return self._graph.tensors[name].data

    @property
    def source_graph(self) -> Graph:
        """The graph being lowered, with its whole tensors and constants (`graph` is a tile view inside
        lower_view)."""
        return self._graph

    def narrow_requant(self, node: Node) -> bool:
        """True when a requant-family op provably computes in 32 bits (faster on RV32 cores than int64)."""
        if not self.narrow or node.op not in NARROW_OPS:
            return False
        if self._ranges is None:
            from ..ir.verify import value_ranges

            self._ranges = value_ranges(self._graph, check=False)
        return requant_fits_int32(self._graph, node, self._ranges)

    def lower_view(self, index: int, node: Node, refs: Refs, tensors: dict[str, Tensor]) -> Call:
        """Lower `node` as if its tensors had the shapes in `tensors` and lived where `refs` says (an L1 tile)."""
        saved = self.graph, self.refs
        self.graph, self.refs = _GraphView(self.graph, tensors), refs
        try:
            return self.lower(index, node)
        finally:
            self.graph, self.refs = saved

    def lower(self, index: int, node: Node) -> Call:
        try:
            rule = LOWERINGS[node.op]
        except KeyError:
            raise TinyDeployError(f"op '{node.op}' has no C kernel (supported: {', '.join(sorted(LOWERINGS))})",
                                  node=node.name) from None
        call = Call(node)
        with node_context(node.origin or node.name, node.op, "lowering"):
            rule(self, index, node, call)
        return call


class _GraphView:
    """A graph whose tensors are overridden by tile-shaped stand-ins (only `.tensors` is read when lowering)."""

    def __init__(self, graph: Graph, overrides: dict[str, Tensor]) -> None:
        self.tensors = ChainMap(overrides, graph.tensors)


NARROW_OPS = ("Requant", "AddRequant", "MulRequant")


def requant_fits_int32(graph: Graph, node: Node, ranges: dict[str, tuple[int, int]]) -> bool:
    """Whether every intermediate of a requant-family op fits int32: the requantized value x (for the fused ops,
    each Add/Mul term bounded by the operand ranges) and mul*x + add*2^shift + 2^(shift-1)."""
    in_ranges = [ranges.get(name) for name in node.inputs]
    if any(r is None for r in in_ranges):
        return False
    at = node.attrs
    if node.op == "Requant":
        x_lo, x_hi = in_ranges[0]
    else:  # every partial term of the Add/Mul must fit too: bound by the sum of absolute terms
        def span(r: tuple[int, int], zero: str) -> int:
            return max(abs(r[0] - int(at.get(zero, 0))), abs(r[1] - int(at.get(zero, 0))))

        def scale(name: str) -> int:
            return int(np.abs(np.asarray(at.get(name, 1), dtype=np.int64)).max())

        a, b = span(in_ranges[0], "a_zero"), span(in_ranges[1], "b_zero")
        x_hi = a * scale("mul_a") + b * scale("mul_b") if node.op == "AddRequant" else a * b
        x_lo = -x_hi
    mul = int(np.abs(np.asarray(at["mul"], dtype=np.int64)).max())
    add = int(np.abs(np.asarray(at["add"], dtype=np.int64)).max())
    shift = int(np.asarray(at["shift"], dtype=np.int64).max())
    if int(np.asarray(at["shift"], dtype=np.int64).min()) < 0 or shift > 30:
        return False
    bound = mul * max(abs(x_lo), abs(x_hi)) + (add << shift) + (1 << shift)
    return max(abs(x_lo), abs(x_hi)) <= INT32_HI and bound <= INT32_HI


def kernel_constants(graph: Graph, node: Node, index: int) -> list[tuple[str, str, np.ndarray]]:
    """(C name, kind, values) of the constant arrays an elementwise kernel reads: per-channel parameters
    ("param", broadcast over the output) and lookup tables ("table")."""
    if node.op == "ITAGemm":   # the LUT of an activation stage, the epilogue stage table
        out_dtype = graph.tensors[node.outputs[0]].dtype
        found = [(f"p{index}_table", "table", np.asarray(st["table"]).astype(out_dtype))
                 for st in node.attrs.get("stages", []) if st["op"] == "LUT"]
        stages = ita_stage_table(graph, node)
        if stages.size:
            found.append((f"p{index}_stages", "table", stages))
        return found
    spec = ELEMENTWISE.get(node.op)
    if spec is None:
        return []
    found = []
    for cname, attr, default in spec.params:
        value = np.asarray(node.attrs.get(attr, default))
        if value.size > 1:
            found.append((f"p{index}_{cname}", "param", value.astype(np.int32)))
    for cname, attr in spec.tables:
        out_dtype = graph.tensors[node.outputs[0]].dtype
        found.append((f"p{index}_{cname}", "table", np.asarray(node.attrs[attr]).astype(out_dtype)))
    return found


# --- elementwise family ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Elementwise:
    """How an IR op maps onto the strided elementwise kernel."""

    inputs: tuple[str, ...]                      # C names of the tensor inputs, in IR order
    params: tuple[tuple[str, str, int], ...] = ()  # (C name, IR attr, default): scalar, or array if per-channel
    tables: tuple[tuple[str, str], ...] = ()    # (C name, IR attr): lookup tables passed as pointers


ELEMENTWISE: dict[str, Elementwise] = {
    "Add": Elementwise(("a", "b"), (("mul_a", "mul_a", 1), ("mul_b", "mul_b", 1), ("a_zero", "a_zero", 0),
                                    ("b_zero", "b_zero", 0))),
    "Mul": Elementwise(("a", "b"), (("a_zero", "a_zero", 0), ("b_zero", "b_zero", 0))),
    "Requant": Elementwise(("x",), (("mul", "mul", 1), ("shift", "shift", 0), ("add", "add", 0), ("lo", "lo", 0),
                                    ("hi", "hi", 0))),
    "AddRequant": Elementwise(("a", "b"), (("mul_a", "mul_a", 1), ("mul_b", "mul_b", 1), ("a_zero", "a_zero", 0),
                                           ("b_zero", "b_zero", 0), ("mul", "mul", 1), ("shift", "shift", 0),
                                           ("add", "add", 0), ("lo", "lo", 0), ("hi", "hi", 0))),
    "MulRequant": Elementwise(("a", "b"), (("a_zero", "a_zero", 0), ("b_zero", "b_zero", 0), ("mul", "mul", 1),
                                           ("shift", "shift", 0), ("add", "add", 0), ("lo", "lo", 0),
                                           ("hi", "hi", 0))),
    "RequantCMSIS": Elementwise(("x",), (("multiplier", "multiplier", 0), ("shift", "shift", 0),
                                         ("zero_point", "zero_point", 0), ("lo", "lo", 0), ("hi", "hi", 0))),
    "AddS8": Elementwise(("a", "b"), (("a_offset", "a_offset", 0), ("a_mult", "a_mult", 0), ("a_shift", "a_shift", 0),
                                      ("b_offset", "b_offset", 0), ("b_mult", "b_mult", 0), ("b_shift", "b_shift", 0),
                                      ("left_shift", "left_shift", 20), ("multiplier", "multiplier", 0),
                                      ("shift", "shift", 0), ("zero_point", "zero_point", 0), ("lo", "lo", 0),
                                      ("hi", "hi", 0))),
    "MulS8": Elementwise(("a", "b"), (("a_zero", "a_zero", 0), ("b_zero", "b_zero", 0), ("multiplier", "multiplier", 0),
                                      ("shift", "shift", 0), ("zero_point", "zero_point", 0), ("lo", "lo", 0),
                                      ("hi", "hi", 0))),
    "RequantShift": Elementwise(("x",), (("mul", "mul", 1), ("add", "add", 0), ("log2d", "log2d", 0),
                                         ("lo", "lo", 0), ("hi", "hi", 0))),
    "INoNorm": Elementwise(("x", "w", "b"), (("mul", "mul", 1), ("log2d", "log2d", 0), ("lo", "lo", 0),
                                             ("hi", "hi", 0))),
    "LUT": Elementwise(("x",), (("in_min", "in_min", -128),), (("table", "table"),)),
    "Relu": Elementwise(("x",), (("zero", "zero", 0),)),
    "IGELU": Elementwise(("x",), (("gelu_b", "b", 0), ("one", "one", 0))),
    "IHardswish": Elementwise(("x",), (("one_over_six", "one_over_six", 0), ("three", "three", 0), ("six", "six", 0),
                                       ("input_offset", "input_offset", 0))),
    "TrueIntegerDiv": Elementwise(("x",), (("divisor", "y", 1), ("delta", "delta", 0), ("eps", "eps", 0),
                                           ("eta", "eta", 0))),
}


def lower_elementwise(low: Lowering, index: int, node: Node, call: Call) -> None:
    spec = ELEMENTWISE[node.op]
    out = low.t(node.outputs[0])
    out_shape = out.shape
    arrays: list[tuple[str, str, str, list[int]]] = []  # (C name, ctype, pointer expr, strides)
    for cname, tname in zip(spec.inputs, node.inputs, strict=True):
        tensor = low.t(tname)
        arrays.append((cname, ctype(tensor.dtype), low.refs.pointer(tname), broadcast_strides(tensor.shape,
                                                                                             out_shape)))
    scalars: list[tuple[str, int]] = []
    for cname, attr, default in spec.params:
        value = np.asarray(node.attrs.get(attr, default))
        check_int32(node, attr, value)
        if value.size == 1:
            scalars.append((cname, int(value.reshape(-1)[0])))
            continue
        param = f"p{index}_{cname}"
        call.params[param] = value.astype(np.int32)
        arrays.append((cname, "int32_t", low.refs.param(param), broadcast_strides(value.shape, out_shape)))
    tables = []
    for cname, attr in spec.tables:
        param = f"p{index}_{cname}"
        call.params[param] = np.asarray(node.attrs[attr]).astype(out.dtype)
        tables.append((cname, ctype(out.dtype), low.refs.param(param)))
    loop = f"loop_{index}"
    call.descriptors.append(loop_descriptor(node, loop, list(out_shape), [a[3] for a in arrays]
                                            + [contiguous_strides(out_shape)]))
    suffix = "_".join(SUFFIXES[low.t(i).dtype] for i in node.inputs) + "_" + SUFFIXES[out.dtype]
    per_channel = "_pc" if len(arrays) > len(spec.inputs) else ""
    narrow = low.narrow_requant(node)
    kernel = low.kernel("elementwise", f"td_{node.op.lower()}_{suffix}{per_channel}{'_n32' if narrow else ''}",
                        op=node.op, narrow=narrow,
                        doc=f"{node.op}: elementwise over a strided loop nest",
                        arrays=[{"name": a[0], "ctype": a[1]} for a in arrays], out_ctype=ctype(out.dtype),
                        pointers=[{"name": t[0], "ctype": t[1]} for t in tables],
                        scalars=[s[0] for s in scalars])
    call.kernels.append(kernel)
    args = [f"&{loop}", *[a[2] for a in arrays], low.refs.pointer(node.outputs[0]), *[t[2] for t in tables],
            *[str(s[1]) for s in scalars]]
    call.statements.append(f"{kernel.name}({', '.join(args)});")


def copy_kernel(low: Lowering, dtype: str) -> Kernel:
    return low.kernel("elementwise", f"td_copy_{SUFFIXES[dtype]}", op="Copy",
                      doc="strided copy (transpose, slice, concat, pad)",
                      arrays=[{"name": "x", "ctype": ctype(dtype)}], out_ctype=ctype(dtype), pointers=[], scalars=[])


def emit_copy(low: Lowering, call: Call, name: str, src: str, dst: str, dims: list[int], src_strides: list[int],
              dst_strides: list[int], dtype: str) -> None:
    """A strided copy of `dims` elements from src to dst (pointer expressions with offsets)."""
    kernel = copy_kernel(low, dtype)
    call.kernels.append(kernel)
    call.descriptors.append(loop_descriptor(call.node, name, dims, [src_strides, dst_strides]))
    call.statements.append(f"{kernel.name}(&{name}, {src}, {dst});")


def offset_ptr(pointer: str, offset: int) -> str:
    return pointer if offset == 0 else f"{pointer} + {offset}"


def lower_transpose(low: Lowering, index: int, node: Node, call: Call) -> None:
    src, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    in_strides = contiguous_strides(src.shape)
    strides = [in_strides[p] for p in node.attrs["perm"]]
    emit_copy(low, call, f"loop_{index}", low.refs.pointer(src.name), low.refs.pointer(out.name), list(out.shape),
              strides, contiguous_strides(out.shape), out.dtype)


def lower_slice(low: Lowering, index: int, node: Node, call: Call) -> None:
    src, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    in_strides = contiguous_strides(src.shape)
    strides, offset = list(in_strides), 0
    at = node.attrs
    for start, end, axis, step in zip(at["starts"], at["ends"], at["axes"], at["steps"], strict=True):
        axis %= len(src.shape)
        first, _, _ = slice(start, end, step).indices(src.shape[axis])
        offset += first * in_strides[axis]
        strides[axis] = in_strides[axis] * step
    emit_copy(low, call, f"loop_{index}", offset_ptr(low.refs.pointer(src.name), offset), low.refs.pointer(out.name),
              list(out.shape), strides, contiguous_strides(out.shape), out.dtype)


def lower_concat(low: Lowering, index: int, node: Node, call: Call) -> None:
    out = low.t(node.outputs[0])
    axis = node.attrs["axis"] % len(out.shape)
    out_strides = contiguous_strides(out.shape)
    position = 0
    for part, name in enumerate(node.inputs):
        src = low.t(name)
        dst = offset_ptr(low.refs.pointer(out.name), position * out_strides[axis])
        emit_copy(low, call, f"loop_{index}_{part}", low.refs.pointer(name), dst, list(src.shape),
                  contiguous_strides(src.shape), out_strides, out.dtype)
        position += src.shape[axis]


def lower_pad(low: Lowering, index: int, node: Node, call: Call) -> None:
    src, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    check_int32(node, "value", node.attrs["value"])
    fill = low.kernel("fill", f"td_fill_{SUFFIXES[out.dtype]}", doc="fill a buffer with one value",
                      out_ctype=ctype(out.dtype))
    call.kernels.append(fill)
    out_ptr = low.refs.pointer(out.name)
    call.statements.append(f"{fill.name}({out_ptr}, {out.size}, {int(node.attrs['value'])});")
    call.statements.append("TD_BARRIER(); /* the fill must finish on every core before the copy overwrites it */")
    out_strides = contiguous_strides(out.shape)
    offset = sum(node.attrs["pads"][axis] * out_strides[axis] for axis in range(len(out.shape)))
    emit_copy(low, call, f"loop_{index}", low.refs.pointer(src.name), offset_ptr(out_ptr, offset), list(src.shape),
              contiguous_strides(src.shape), out_strides, out.dtype)


def lower_reshape(low: Lowering, index: int, node: Node, call: Call) -> None:
    """Reshape is free when the planner aliased it; otherwise (graph input/output involved) a memcpy."""
    if node.outputs[0] in low.refs.aliases:
        call.statements.append(f"/* aliases {low.refs.pointer(node.inputs[0])}: no data movement */")
        return
    src, dst = low.refs.pointer(node.inputs[0]), low.refs.pointer(node.outputs[0])
    call.statements.append(f"if (TD_HART_ID == 0) memcpy({dst}, {src}, {low.t(node.outputs[0]).nbytes});")


# --- matmul ----------------------------------------------------------------------------------------------
def _matmul_operand_strides(shape: tuple[int, ...], transposed: bool) -> tuple[int, int]:
    """(row, col) element strides of the logical (rows x cols) matrix stored as the last two dims of `shape`."""
    stored_cols = shape[-1]
    return (1, stored_cols) if transposed else (stored_cols, 1)


def _abs_bound(dtype: str, zero: int) -> int:
    lo, hi = DTYPE_RANGES[dtype]
    return max(abs(lo - zero), abs(hi - zero))


def matmul_params(low: Lowering, node: Node) -> dict[str, Any]:
    """The td_matmul_params fields of a (batched, possibly transposed, broadcast) matmul node."""
    a, b, out = low.t(node.inputs[0]), low.t(node.inputs[1]), low.t(node.outputs[0])
    bias = low.t(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    at = node.attrs
    m, n = out.shape[-2], out.shape[-1]
    k = a.shape[-2] if at.get("trans_a") else a.shape[-1]
    batch_shape = out.shape[:-2]
    batch_strides = [broadcast_strides(a.shape[:-2], batch_shape), broadcast_strides(b.shape[:-2], batch_shape)]
    batch_strides = [[s * a.shape[-1] * a.shape[-2] for s in batch_strides[0]],
                     [s * b.shape[-1] * b.shape[-2] for s in batch_strides[1]]]
    bias_rc = [0, 0]
    if bias is not None:
        full = broadcast_strides(bias.shape, out.shape)
        batch_strides.append(full[:-2])
        bias_rc = full[-2:]
    batch_strides.append(contiguous_strides(batch_shape) if batch_shape else [])
    batch_strides[-1] = [s * m * n for s in batch_strides[-1]]
    dims, strides = collapse_loops(list(batch_shape), batch_strides)
    if len(dims) > MAX_BATCH_DIMS:
        raise TinyDeployError(f"needs {len(dims)} batch dims after collapsing, the matmul kernel has "
                              f"{MAX_BATCH_DIMS}", node=node.name)
    dims = pad_front(dims, MAX_BATCH_DIMS, 1)
    strides = [pad_front(s, MAX_BATCH_DIMS, 0) for s in strides]
    a_rc = _matmul_operand_strides(a.shape, bool(at.get("trans_a")))
    b_rc = _matmul_operand_strides(b.shape, bool(at.get("trans_b")))
    fields: dict[str, Any] = {
        "m": m, "n": n, "k": k, "batch": dims, "a_batch_stride": strides[0], "a_row_stride": a_rc[0],
        "a_col_stride": a_rc[1], "a_zero": int(at.get("a_zero", 0)), "b_batch_stride": strides[1],
        "b_row_stride": b_rc[0], "b_col_stride": b_rc[1], "b_zero": int(at.get("b_zero", 0))}
    if bias is not None:
        fields.update(bias_batch_stride=strides[2], bias_row_stride=bias_rc[0], bias_col_stride=bias_rc[1])
    return fields


def params_descriptor(ctype_name: str, name: str, fields: dict[str, Any]) -> str:
    """`static const <type> <name> = {.field = value, ...};` (lists become C brace lists)."""
    body = ", ".join(f".{k} = {_c_pair(v) if isinstance(v, list) else v}" for k, v in fields.items())
    return f"static const {ctype_name} {name} = {{{body}}};"


def lower_matmul(low: Lowering, index: int, node: Node, call: Call) -> None:
    a, b, out = low.t(node.inputs[0]), low.t(node.inputs[1]), low.t(node.outputs[0])
    bias = low.t(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    fields = matmul_params(low, node)
    a_zero, b_zero, k, n = fields["a_zero"], fields["b_zero"], fields["k"], fields["n"]
    a_rc = (fields["a_row_stride"], fields["a_col_stride"])
    b_rc = (fields["b_row_stride"], fields["b_col_stride"])
    bound = k * _abs_bound(a.dtype, a_zero) * _abs_bound(b.dtype, b_zero)
    if bias is not None:
        bound += _abs_bound(bias.dtype, 0)
    acc = "int32_t" if bound <= INT32_HI else "int64_t"
    row_accumulate = b_rc[1] == 1 and out.dtype == "int32" and acc == "int32_t"
    blocked = (low.blocked_matmul and blocked_matmul_operands(low.graph, node) and acc == "int32_t"
               and a_rc[1] == 1 and b_rc[1] == 1)
    name = f"td_matmul_{SUFFIXES[a.dtype]}_{SUFFIXES[b.dtype]}_{SUFFIXES[out.dtype]}"
    if bias is not None:
        name += f"_bias{SUFFIXES[bias.dtype]}"
    shape_fields = {}
    if blocked:
        name += f"_4x4_k{k}_a{a_rc[0]}_b{b_rc[0]}_y{n}"
        shape_fields = {"k_const": k, "a_row_const": a_rc[0], "b_row_const": b_rc[0], "y_row_const": n}
    elif not row_accumulate:
        name += "_dot"
    kernel = low.kernel("matmul", name, doc="batched integer matrix multiply with zero points and optional bias",
                        a_ctype=ctype(a.dtype), b_ctype=ctype(b.dtype), out_ctype=ctype(out.dtype),
                        bias_ctype=ctype(bias.dtype) if bias is not None else "", acc_ctype=acc,
                        row_accumulate=row_accumulate, blocked=blocked, **shape_fields)
    call.kernels.append(kernel)
    params = f"mm_{index}"
    call.descriptors.append(params_descriptor("td_matmul_params", params, fields))
    args = [low.refs.pointer(a.name), low.refs.pointer(b.name)]
    if bias is not None:
        args.append(low.refs.pointer(bias.name))
    args += [low.refs.pointer(out.name), f"&{params}"]
    call.statements.append(f"{kernel.name}({', '.join(args)});")


# --- CMSIS-NN ----------------------------------------------------------------------------------------------
def lower_fully_connected(low: Lowering, index: int, node: Node, call: Call) -> None:
    """FullyConnectedS8 -> arm_fully_connected_per_channel_s8, or arm_fully_connected_s8 when every output channel
    has the same multiplier and shift (per-tensor weights), with CMSIS-NN's argument structs (cmsis backend)."""
    x, w = low.t(node.inputs[0]), low.t(node.inputs[1])
    at = node.attrs
    channels, depth = w.shape
    batches = x.size // depth
    multiplier, shift = np.asarray(at["multiplier"], dtype=np.int32), np.asarray(at["shift"], dtype=np.int32)
    if low.t(node.outputs[0]).dtype == "int16":      # CMSIS-NN has no int16-output FC: tinydeploy's own
        call.params[f"p{index}_multiplier"] = np.broadcast_to(multiplier, (channels,)).copy()
        call.params[f"p{index}_shift"] = np.broadcast_to(shift, (channels,)).copy()
        args = [low.refs.pointer(x.name), low.refs.pointer(w.name), low.refs.pointer(node.inputs[2]),
                low.refs.pointer(node.outputs[0]), str(batches), str(depth), str(channels), str(-int(at["a_zero"])),
                str(int(at["zero_point"])), low.refs.param(f"p{index}_multiplier"),
                low.refs.param(f"p{index}_shift"), str(int(at["lo"])), str(int(at["hi"]))]
        call.statements.append(f"td_fully_connected_s8_s16({', '.join(args)});")
        return
    per_tensor = bool(np.all(multiplier == multiplier.flat[0]) and np.all(shift == shift.flat[0]))
    if per_tensor:
        function = "arm_fully_connected_s8"
        quant = (f"static const cmsis_nn_per_tensor_quant_params fcq_{index} = {{{int(multiplier.flat[0])}, "
                 f"{int(shift.flat[0])}}};")
    else:
        function = "arm_fully_connected_per_channel_s8"
        call.params[f"p{index}_multiplier"] = multiplier
        call.params[f"p{index}_shift"] = shift
        quant = (f"static const cmsis_nn_per_channel_quant_params fcq_{index} = {{(int32_t *)p{index}_multiplier, "
                 f"(int32_t *)p{index}_shift}};")
    call.descriptors += [
        f"static const cmsis_nn_fc_params fc_{index} = {{.input_offset = {-int(at['a_zero'])}, .filter_offset = 0, "
        f".output_offset = {int(at['zero_point'])}, .activation = {{{int(at['lo'])}, {int(at['hi'])}}}}};", quant,
        f"static const cmsis_nn_dims fcd_{index}[4] = {{{{{batches}, 1, 1, {depth}}}, {{{depth}, 1, 1, {channels}}}, "
        f"{{1, 1, 1, {channels}}}, {{{batches}, 1, 1, {channels}}}}}; /* input, filter, bias, output */"]
    args = [f"&td_nn_context, &fc_{index}, &fcq_{index}, &fcd_{index}[0]", low.refs.pointer(x.name),
            f"&fcd_{index}[1]", low.refs.pointer(w.name), f"&fcd_{index}[2]", low.refs.pointer(node.inputs[2]),
            f"&fcd_{index}[3]", low.refs.pointer(node.outputs[0])]
    call.statements.append(f"(void){function}({', '.join(args)});")


#: below this many elements per call, a broadcast operand makes CMSIS-NN calls cost more than the strided kernel
CMSIS_MIN_BLOCK = 16


def _suffix_block(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int | None:
    """Elements of `shape` when it equals the trailing dims of out_shape (leading 1s aside): it then repeats
    contiguously over the output; None for any other broadcast."""
    dims = list(shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    if len(dims) > len(out_shape) or (dims and tuple(dims) != tuple(out_shape[-len(dims):])):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _cmsis_blocks(low: Lowering, node: Node) -> tuple[int, int, tuple[bool, bool]] | None:
    """(block, repeats, which operands advance per repeat) to run a binary op as contiguous CMSIS-NN calls."""
    out = low.t(node.outputs[0])
    blocks = [_suffix_block(low.t(name).shape, out.shape) for name in node.inputs[:2]]
    if any(b is None for b in blocks) or min(blocks) < CMSIS_MIN_BLOCK:  # type: ignore[type-var]
        return None
    if max(blocks) != out.size:         # neither operand covers the output (both broadcast)
        return None
    block = min(blocks)                 # type: ignore[type-var]
    return block, out.size // block, (blocks[0] == out.size, blocks[1] == out.size)


def _block_pointers(low: Lowering, node: Node, block: int, repeats: int,
                    advances: tuple[bool, bool]) -> tuple[list[str], str]:
    """Pointer expressions of the two operands and the output inside the loop over blocks (index r)."""
    step = f" + r * {block}" if repeats > 1 else ""
    ptrs = [low.refs.pointer(name) + (step if adv else "") for name, adv in zip(node.inputs, advances, strict=True)]
    return ptrs, low.refs.pointer(node.outputs[0]) + step


def _emit_blocks(call: Call, text: str, repeats: int) -> None:
    call.statements.append(f"for (int32_t r = 0; r < {repeats}; ++r) {{\n    {text}\n}}" if repeats > 1 else text)


def _add_s8_args(at: dict, ptrs: list[str], out: str, block: int) -> list[str]:
    """arm_elementwise_add_s8(in1, in2, in1 offset/mult/shift, in2 offset/mult/shift, left shift, out, out offset,
    out mult, out shift, act min, act max, block size)."""
    return [*ptrs, *[str(int(at[k])) for k in ("a_offset", "a_mult", "a_shift", "b_offset", "b_mult", "b_shift",
                                                 "left_shift")],
            out, *[str(int(at[k])) for k in ("zero_point", "multiplier", "shift", "lo", "hi")], str(block)]


def _mul_s8_args(at: dict, ptrs: list[str], out: str, block: int) -> list[str]:
    """arm_elementwise_mul_s8(in1, in2, in1 offset, in2 offset, out, out offset, out mult, out shift, act min,
    act max, block size)."""
    return [*ptrs, str(-int(at["a_zero"])), str(-int(at["b_zero"])), out,
            *[str(int(at[k])) for k in ("zero_point", "multiplier", "shift", "lo", "hi")], str(block)]


#: binary int8 ops with a CMSIS-NN entry point: (function, its argument list)
CMSIS_ELEMENTWISE = {"AddS8": ("arm_elementwise_add_s8", _add_s8_args),
                     "MulS8": ("arm_elementwise_mul_s8", _mul_s8_args)}


def lower_cmsis_elementwise(low: Lowering, index: int, node: Node, call: Call) -> None:
    """AddS8 / MulS8 -> CMSIS-NN calls over contiguous blocks (cmsis backend), else the strided C kernel."""
    plan = _cmsis_blocks(low, node) if low.cmsis_nn else None
    if plan is None:
        lower_elementwise(low, index, node, call)
        return
    block, repeats, advances = plan
    ptrs, out = _block_pointers(low, node, block, repeats, advances)
    function, arguments = CMSIS_ELEMENTWISE[node.op]
    _emit_blocks(call, f"(void){function}({', '.join(arguments(node.attrs, ptrs, out, block))});", repeats)


def lower_softmax_s8(low: Lowering, index: int, node: Node, call: Call) -> None:
    """SoftmaxS8 -> arm_softmax_s8 (rows of the last axis) on CMSIS-NN backends, else the portable C kernel (also
    for a masked softmax: arm_softmax_s8 has no mask)."""
    if not low.cmsis_nn or len(node.inputs) > 1:
        lower_softmax(low, index, node, call)
        return
    x = low.t(node.inputs[0])
    rows, cols = _rows_cols(x)
    at = node.attrs
    call.statements.append(f"arm_softmax_s8({low.refs.pointer(x.name)}, {rows}, {cols}, {int(at['multiplier'])}, "
                           f"{int(at['shift'])}, {int(at['diff_min'])}, {low.refs.pointer(node.outputs[0])});")


def _nhwc(shape: tuple[int, ...]) -> str:
    """A [.., rows, cols] shape as cmsis_nn_dims {n, h, w, c} (rank 3 or 4)."""
    dims = [1] * (4 - len(shape)) + list(shape)
    return "{" + ", ".join(str(d) for d in dims) + "}"


def lower_batch_matmul(low: Lowering, index: int, node: Node, call: Call) -> None:
    """BatchMatMulS8 -> arm_batch_matmul_s8 with CMSIS-NN's argument structs (cmsis backend)."""
    lhs, rhs, out = low.t(node.inputs[0]), low.t(node.inputs[1]), low.t(node.outputs[0])
    at = node.attrs
    fc = (f"{{{-int(at['a_zero'])}, {-int(at['b_zero'])}, {int(at['zero_point'])}, "
          f"{{{int(at['lo'])}, {int(at['hi'])}}}}}")
    call.descriptors += [
        f"static const cmsis_nn_bmm_params bmm_{index} = {{false, false, {fc}}};",
        f"static const cmsis_nn_per_tensor_quant_params bmmq_{index} = {{{int(at['multiplier'])}, "
        f"{int(at['shift'])}}};",
        f"static const cmsis_nn_dims bmmd_{index}[3] = {{{_nhwc(lhs.shape)}, {_nhwc(rhs.shape)}, "
        f"{_nhwc(out.shape)}}}; /* lhs, rhs (transposed), output */"]
    args = [f"&td_nn_context, &bmm_{index}, &bmmq_{index}, &bmmd_{index}[0]", low.refs.pointer(lhs.name),
            f"&bmmd_{index}[1]", low.refs.pointer(rhs.name), f"&bmmd_{index}[2]", low.refs.pointer(out.name)]
    call.statements.append(f"(void)arm_batch_matmul_s8({', '.join(args)});")


# --- accelerator -----------------------------------------------------------------------------------------
def _clip_word(lo: int, hi: int) -> str:
    """Two int16 clip bounds packed in one 32-bit register value (lo in the low half)."""
    return f"0x{((hi & 0xFFFF) << 16) | (lo & 0xFFFF):08X}u"


def ita_job_fields(node: Node, out_dtype: str, residual_dtype: str | None) -> dict[str, Any]:
    """The accelerator's epilogue registers for one ITAGemm (td_ita_job): mode bits and stage parameters."""
    at = node.attrs
    fields: dict[str, Any] = {"mode": 0, "rq_clip": _clip_word(at["lo"], at["hi"])}
    mode = (ITA_MODE_TRANS_B if at.get("trans_b") else 0) | (ITA_MODE_A_UNSIGNED if at.get("a_unsigned") else 0)
    mode |= (ITA_MODE_Y16 if out_dtype == "int16" else 0) | (ITA_MODE_R16 if residual_dtype == "int16" else 0)
    for index, stage in enumerate(at.get("stages", [])):
        if stage["op"] == "Requant" and mode & ITA_MODE_SOFTMAX:     # after the softmax
            mode |= ITA_MODE_REQUANT3
            fields.update(rq3_mul=int(stage["mul"]), rq3_shift=int(stage["shift"]), rq3_add=int(stage["add"]),
                          rq3_clip=_clip_word(stage["lo"], stage["hi"]))
        elif stage["op"] == "Requant":
            mode |= ITA_MODE_REQUANT2
            fields.update(rq2_mul=int(stage["mul"]), rq2_shift=int(stage["shift"]), rq2_add=int(stage["add"]),
                          rq2_clip=_clip_word(stage["lo"], stage["hi"]))
        elif stage["op"] == "LUT":
            after_stages = any(s["op"] in ("AddRequant", "MulRequant") for s in at["stages"][:index])
            mode |= ITA_MODE_LUT | (ITA_MODE_LUT_LAST if after_stages else 0)
            fields.update(lut_min=int(stage.get("in_min", -128)))
        elif stage["op"] == "ITAPartialMax":
            mode |= ITA_MODE_SOFTMAX
            mode |= ITA_MODE_SM_MASK if "operand" in stage else 0       # the key mask, read from v0
            fields.update(sm_bits=int(stage.get("octave_bits", ITA_OCTAVE_BITS)))
            fields.update(sm_group=int(stage["group_width"]), sm_levels=int(stage["n_levels"]),
                          sm_offset=int(stage.get("out_offset", 0)), sm_clip=_clip_word(stage["lo"], stage["hi"]))
    fields["mode"] = mode
    return fields


def ita_stage_sources(graph: Graph, node: Node) -> dict[int, int]:
    """ITAGemm input index -> stage source code: 0 the residual tile (accel_r), 1..4 vectors (accel_v0..v3)."""
    out_shape = graph.tensors[node.outputs[0]].shape
    sources, vectors = {}, 0
    for position in range(4, len(node.inputs)):
        if tuple(graph.tensors[node.inputs[position]].shape) == tuple(out_shape):
            sources[position] = 0
        else:
            vectors += 1
            sources[position] = vectors
    return sources


def ita_stage_table(graph: Graph, node: Node) -> np.ndarray:
    """The int32 stage table the accelerator reads from L1 (target.STAGE_FIELDS)."""
    from ..target import STAGE_FIELDS

    sources = ita_stage_sources(graph, node)
    rows = []
    for stage in node.attrs.get("stages", []):
        if "operand" not in stage or stage["op"] == "ITAPartialMax":     # the softmax's mask has no table row
            continue
        values = {**stage, "kind": 1 if stage["op"] == "AddRequant" else 2, "src": sources[stage["operand"]],
                  "chain": stage.get("chain", 0)}
        rows.append([int(np.asarray(values.get(f, 1 if f.startswith("mul") else 0)).reshape(-1)[0])
                     for f in STAGE_FIELDS])
    return np.asarray(rows, dtype=np.int32).reshape(len(rows), len(STAGE_FIELDS))


#: td_ita_job.mode bits (mirrored by the accelerator model and the RTL)
ITA_MODE_TRANS_B, ITA_MODE_REQUANT2, ITA_MODE_LUT, ITA_MODE_SOFTMAX, ITA_MODE_REQUANT3 = 1, 2, 4, 8, 16
ITA_MODE_A_UNSIGNED, ITA_MODE_Y16, ITA_MODE_SM_MASK, ITA_MODE_LUT_LAST, ITA_MODE_R16 = 32, 64, 128, 256, 512


def lower_ita_gemm(low: Lowering, index: int, node: Node, call: Call) -> None:
    """ITAGemm -> one driver call that programs the accelerator per matrix of the batch (hart 0)."""
    kernel = low.kernel("ita_gemm", "td_ita_gemm", doc="GEMM + requant + epilogue on the ITA-like accelerator")
    call.kernels.append(kernel)
    call.descriptors.append(params_descriptor("td_matmul_params", f"mm_{index}", matmul_params(low, node)))
    sources = ita_stage_sources(low.graph, node)
    residual = next((node.inputs[position] for position, source in sources.items() if source == 0), None)
    fields = ita_job_fields(node, low.t(node.outputs[0]).dtype, low.t(residual).dtype if residual else None)
    constants = {}
    for cname, _kind, values in kernel_constants(low.graph, node, index):
        call.params[cname] = values
        constants[cname.rsplit("_", 1)[-1]] = low.refs.param(cname)
    fields["stage_count"] = int(ita_stage_table(low.graph, node).shape[0])
    fields["y_pitch"] = low.refs.pitch(node.outputs[0])            # bytes (tile strides are)
    fields["r_pitch"] = low.refs.pitch(residual) if residual else 0
    call.descriptors.append(params_descriptor("td_ita_job", f"ita_{index}", fields))
    def byte_pointer(name: str, const: bool) -> str:
        """The driver moves bytes: a uint8 operand (ITA's sign mode) or an int16 tile passes as int8 bytes."""
        pointer = low.refs.pointer(name)
        return f"({'const ' if const else ''}int8_t *){pointer}" if low.t(name).dtype != "int8" else pointer

    operands = ["NULL"] * 5                     # r, v0, v1, v2, v3
    for position, source in sources.items():
        operands[source] = byte_pointer(node.inputs[position], True)

    args = [byte_pointer(node.inputs[0], True), *[low.refs.pointer(name) for name in node.inputs[1:4]]]
    args += [constants.get("table", "NULL"), constants.get("stages", "NULL"), *operands,
             byte_pointer(node.outputs[0], False), f"&mm_{index}", f"&ita_{index}"]
    call.accel_job = f"{kernel.name}({', '.join(args)}"
    call.statements.append(f"td_accel_wait({call.accel_job}, -1));")


def _c_pair(values: list[int]) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


# --- row-wise ops (softmax, norms) -----------------------------------------------------------------------
def _rows_cols(tensor: Tensor) -> tuple[int, int]:
    cols = tensor.shape[-1]
    return tensor.size // max(cols, 1), cols


def _key_mask(low: Lowering, node: Node, cols: int) -> Tensor | None:
    """The key mask operand of a softmax (contract 6): an int32 vector over the last axis, or None."""
    if len(node.inputs) < 2:
        return None
    mask = low.t(node.inputs[1])
    if mask.size != cols or mask.dtype != "int32":
        raise TinyDeployError(f"softmax key mask of shape {list(mask.shape)} ({mask.dtype}) is not an int32 vector "
                              f"over the last axis ({cols})", node=node.name, tensor=mask.name)
    return mask


def lower_softmax(low: Lowering, index: int, node: Node, call: Call) -> None:
    x, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    rows, cols = _rows_cols(x)
    at = node.attrs
    mask = _key_mask(low, node, cols)
    masked = "_masked" if mask is not None else ""
    kernel = low.kernel("softmax", f"td_{node.op.lower()}{masked}_{SUFFIXES[x.dtype]}_{SUFFIXES[out.dtype]}",
                        op=node.op, doc=f"{node.op} over the last axis", in_ctype=ctype(x.dtype),
                        out_ctype=ctype(out.dtype), masked=mask is not None, mask_ctype="int32_t")
    call.kernels.append(kernel)
    head = [low.refs.pointer(x.name), *([low.refs.pointer(mask.name)] if mask is not None else []),
            low.refs.pointer(out.name), str(rows), str(cols)]
    if node.op == "ISoftmax":
        rest = [at["coeff_a"], at["coeff_b"], at["coeff_c"], at["log2"], at["n_levels"],
                int(at.get("round_nearest", 0)), at.get("out_offset", 0), at["lo"], at["hi"]]
        call.scratch_bytes = 8 * cols * low.cores  # one row of int64 per core
        tail = [f"(int64_t *){low.refs.scratch(index)}"]
    elif node.op == "SoftmaxS8":
        rest = [at["multiplier"], at["shift"], at["diff_min"]]
        tail = []
    elif node.op == "ITAPartialMax":
        if cols % at["group_width"]:
            raise TinyDeployError(f"row length {cols} is not a multiple of the group width {at['group_width']}",
                                  node=node.name)
        rest = [at["group_width"], at["n_levels"], at.get("out_offset", 0), at["lo"], at["hi"],
                at.get("octave_bits", ITA_OCTAVE_BITS)]
        tail = []
    else:
        rest = [at["n_levels"], at.get("out_offset", 0)]
        tail = []
    for i, value in enumerate(rest):
        check_int32(node, f"argument {i}", value)
    call.statements.append(f"{kernel.name}({', '.join(head + [str(int(v)) for v in rest] + tail)});")


def _norm_vector(low: Lowering, node: Node, name: str, cols: int) -> Tensor:
    tensor = low.t(name)
    if tensor.size != cols or any(d != 1 for d in tensor.shape[:-1]):
        raise TinyDeployError(f"norm parameter of shape {list(tensor.shape)} is not a vector over the last axis "
                              f"({cols})", node=node.name, tensor=name)
    return tensor


#: the integer LayerNorms (weight and bias vectors); ILayerNormRequant also writes a requantized copy
NORMS_WITH_BIAS = ("ILayerNorm", "ILayerNormRequant")


def copy_requant_fits_int32(graph: Graph, node: Node) -> bool:
    """Whether ILayerNormRequant's requant of its clipped value (in [lo, hi]) fits int32: requant_fits_int32 on
    that Requant."""
    at = node.attrs
    requant = Node(node.name, "Requant", [node.outputs[0]], [node.outputs[1]],
                   {"mul": at["mul"], "shift": at["shift"], "add": at["add"]})
    return requant_fits_int32(graph, requant, {node.outputs[0]: (int(at["lo"]), int(at["hi"]))})


def lower_norm(low: Lowering, index: int, node: Node, call: Call) -> None:
    x, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    rows, cols = _rows_cols(x)
    vectors = [_norm_vector(low, node, name, cols) for name in node.inputs[1:]]
    fields = {"in_ctype": ctype(x.dtype), "out_ctype": ctype(out.dtype), "w_ctype": ctype(vectors[0].dtype),
              "b_ctype": ctype(vectors[1].dtype) if len(vectors) > 1 else ""}
    suffix = "_".join(SUFFIXES[t.dtype] for t in [x, *vectors, out])
    narrow = layernorm_fits_int32(low.source_graph, node)
    copy = node.op == "ILayerNormRequant"
    if copy:
        copy_out = low.t(node.outputs[1])
        fields.update(copy_ctype=ctype(copy_out.dtype), copy_narrow=copy_requant_fits_int32(low.graph, node))
        suffix += "_" + SUFFIXES[copy_out.dtype]
    kernel = low.kernel("norm", f"td_{node.op.lower()}_{suffix}{'_n32' if narrow else ''}", op=node.op,
                        doc=f"{node.op} over the last axis", narrow=narrow, writes_copy=copy, **fields)
    call.kernels.append(kernel)
    at = node.attrs
    outs = [low.refs.pointer(name) for name in node.outputs]
    args = [low.refs.pointer(x.name), *[low.refs.pointer(v.name) for v in vectors], *outs,
            str(rows), str(cols), str(int(at["log2d"])), str(int(at["lo"])), str(int(at["hi"]))]
    if copy:
        args += [str(int(at[k])) for k in ("mul", "shift", "add", "rq_lo", "rq_hi")]
    call.statements.append(f"{kernel.name}({', '.join(args)});")


def lower_mean(low: Lowering, index: int, node: Node, call: Call) -> None:
    x, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    axes = sorted(a % len(x.shape) for a in node.attrs["axes"])
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise TinyDeployError(f"mean over non-adjacent axes {axes} is not supported", node=node.name)
    outer = int(np.prod(x.shape[:axes[0]], dtype=np.int64))
    reduced = int(np.prod(x.shape[axes[0]:axes[-1] + 1], dtype=np.int64))
    inner = int(np.prod(x.shape[axes[-1] + 1:], dtype=np.int64))
    mean = node.op == "IntegerMean"
    kernel = low.kernel("reduce", f"td_{'mean' if mean else 'sum'}_{SUFFIXES[x.dtype]}_{SUFFIXES[out.dtype]}",
                        doc=f"{node.op} over adjacent axes", in_ctype=ctype(x.dtype), out_ctype=ctype(out.dtype),
                        mean=mean)
    call.kernels.append(kernel)
    call.statements.append(f"{kernel.name}({low.refs.pointer(x.name)}, {low.refs.pointer(out.name)}, {outer}, "
                           f"{reduced}, {inner});")


def window_geometry(node: Node, x: Tensor, out: Tensor) -> list[int]:
    """N C H W M OH OW KH KW SH SW PH PW DH DW groups of a Conv/MaxPool (a 1-D window is a 2-D one of height 1)."""
    at = node.attrs
    rank = len(x.shape) - 2

    def two_d(values: list[int], fill: int) -> list[int]:
        return [fill, *values] if rank == 1 else list(values)

    kernel, strides = two_d(at["kernel_shape"], 1), two_d(at.get("strides", [1] * rank), 1)
    dilations = two_d(at.get("dilations", [1] * rank), 1)
    pads = at.get("pads", [0] * (2 * rank))
    begins = two_d(pads[:rank], 0)
    in_hw, out_hw = two_d(list(x.shape[2:]), 1), two_d(list(out.shape[2:]), 1)
    return [x.shape[0], x.shape[1], *in_hw, out.shape[1], *out_hw, *kernel, *strides, *begins, *dilations,
            int(at.get("group", 1)), int(at.get("a_zero", 0))]


def depthwise_window(node: Node, weights: Tensor) -> tuple[int, int, int] | None:
    """(kernel height, width, horizontal dilation) of a convolution with one input channel per group and a
    window of at most 5x5 taps (depthwise layers): its kernel specialises on them; else None."""
    shape = [int(d) for d in weights.shape[2:]]
    kh, kw = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    dilations = node.attrs.get("dilations") or [1] * len(shape)
    if int(weights.shape[1]) != 1 or kh * kw > 25:
        return None
    return kh, kw, int(dilations[-1])


def lower_window(low: Lowering, index: int, node: Node, call: Call) -> None:
    """ConvInt and MaxPool: one direct loop nest over output rows (the end padding only bounds the output)."""
    x, out = low.t(node.inputs[0]), low.t(node.outputs[0])
    conv = node.op == "ConvInt"
    weights = low.t(node.inputs[1]) if conv else None
    geometry = f"p{index}_geometry"
    call.params[geometry] = np.asarray(window_geometry(node, x, out), dtype=np.int32)
    fields: dict[str, Any] = {"op": node.op, "in_ctype": ctype(x.dtype), "out_ctype": ctype(out.dtype)}
    if conv:
        bias = low.t(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        # the verifier bounds the output by the sum of |terms|, so every partial sum fits the output's int32
        fields.update(w_ctype=ctype(weights.dtype), bias_ctype=ctype(bias.dtype) if bias else "int32_t",
                      acc_ctype="int32_t")
    patches = conv and conv_by_patches(node, x, weights, out)
    fields["patches"] = patches
    window = depthwise_window(node, weights) if conv and not patches else None
    if conv:     # one channel per group: the inside-the-input windows run with constant trip counts
        fields.update(zip(("window_kh", "window_kw", "window_dw"), window or (0, 0, 0), strict=True))
    suffix = "_patches" if patches else (f"_k{window[0]}x{window[1]}d{window[2]}" if window else "")
    name = f"td_{'conv' if conv else 'maxpool'}_{SUFFIXES[x.dtype]}_{SUFFIXES[out.dtype]}{suffix}"
    doc = ("ConvInt: gathered patches, four filters at a time" if patches
           else f"{node.op}: direct loop nest over output rows")
    kernel = low.kernel("window", name, doc=doc, **fields)
    call.kernels.append(kernel)
    args = [low.refs.pointer(x.name)]
    if conv:
        args += [low.refs.pointer(weights.name), low.refs.pointer(bias.name) if bias else "NULL"]
    args += [low.refs.pointer(out.name), low.refs.param(geometry)]
    if patches:   # one int16 patch (channels x taps) per core
        call.scratch_bytes = -(-2 * patch_depth(x, weights) * low.cores // 16) * 16
        args.append(f"(int16_t *){low.refs.scratch(index)}")
    call.statements.append(f"{kernel.name}({', '.join(args)});")


def lower_gather(low: Lowering, index: int, node: Node, call: Call) -> None:
    data, idx, out = low.t(node.inputs[0]), low.t(node.inputs[1]), low.t(node.outputs[0])
    axis = node.attrs.get("axis", 0) % len(data.shape)
    outer = int(np.prod(data.shape[:axis], dtype=np.int64))
    inner = int(np.prod(data.shape[axis + 1:], dtype=np.int64))
    kernel = low.kernel("gather", f"td_gather_{SUFFIXES[data.dtype]}_{SUFFIXES[idx.dtype]}",
                        doc="Gather (embedding lookup)", data_ctype=ctype(data.dtype), index_ctype=ctype(idx.dtype))
    call.kernels.append(kernel)
    call.statements.append(f"{kernel.name}({low.refs.pointer(data.name)}, {low.refs.pointer(idx.name)}, "
                           f"{low.refs.pointer(out.name)}, {outer}, {data.shape[axis]}, {inner}, {idx.size});")


LOWERINGS: dict[str, Callable[[Lowering, int, Node, Call], None]] = {
    **{name: lower_elementwise for name in ELEMENTWISE},
    "MatMulInt": lower_matmul,
    "ITAGemm": lower_ita_gemm,
    "FullyConnectedS8": lower_fully_connected,
    "BatchMatMulS8": lower_batch_matmul,
    **{name: lower_cmsis_elementwise for name in CMSIS_ELEMENTWISE},
    "SoftmaxS8": lower_softmax_s8,
    "Transpose": lower_transpose,
    "Slice": lower_slice,
    "Concat": lower_concat,
    "Pad": lower_pad,
    "Reshape": lower_reshape,
    "ISoftmax": lower_softmax,
    "ITAPartialMax": lower_softmax,
    "ITAMax": lower_softmax,
    "ILayerNorm": lower_norm,
    "ILayerNormRequant": lower_norm,
    "IRMSNorm": lower_norm,
    "IntegerMean": lower_mean,
    "ReduceSum": lower_mean,
    "ConvInt": lower_window,
    "MaxPool": lower_window,
    "Gather": lower_gather,
}
