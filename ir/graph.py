"""The graph IR: tensors with static shapes and integer dtypes, nodes in topological order.

Before `passes.integerize` tensors may carry quantization parameters (scale, zero point) and nodes
may be quantized float ops ("q" ops); afterwards every op is defined on integers only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError

#: dtypes the IR knows, with their numeric ranges.
DTYPE_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
INTEGER_DTYPES = frozenset(DTYPE_RANGES)
FLOAT_DTYPES = frozenset({"float32"})


#: the largest tensor tinydeploy handles (elements): 64 Mi, beyond any target memory (L3 is 64 MiB); a model
#: asking for more is refused before anything allocates it
MAX_TENSOR_ELEMENTS = 1 << 26


def check_tensor_size(shape: tuple[int, ...], name: str) -> None:
    """Refuse a tensor with a negative dimension or more elements than any target can hold."""
    count = 1
    for dim in shape:
        if not isinstance(dim, int | np.integer) or dim < 0:
            raise UnsupportedModelError(f"shape {list(shape)} has an invalid dimension {dim!r}", tensor=name)
        count *= int(dim)
    if count > MAX_TENSOR_ELEMENTS:
        raise UnsupportedModelError(f"shape {list(shape)} has {count:,} elements, more than tinydeploy handles "
                                    f"({MAX_TENSOR_ELEMENTS:,}; the largest target memory is 64 MiB)", tensor=name)


def smallest_signed_dtype(lo: int, hi: int) -> str:
    """The narrowest signed (or uint8) dtype that holds [lo, hi]."""
    for name in ("int8", "uint8", "int16", "int32", "int64"):
        tlo, thi = DTYPE_RANGES[name]
        if tlo <= lo and hi <= thi:
            return name
    raise UnsupportedModelError(f"value range [{lo}, {hi}] does not fit int64")


@dataclass
class QuantParams:
    """Affine quantization: real = scale * (q - zero_point); per-tensor or per-channel along `axis`."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class Tensor:
    """A named value: activation (data None) or constant (data set)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None
    quant: QuantParams | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class Node:
    """One operation. `origin` is the ONNX node it came from (kept through passes for reports and C comments)."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    origin: str = ""


@dataclass
class Graph:
    """Tensors by name, nodes in topological order, graph inputs/outputs by name."""

    name: str = "network"
    tensors: dict[str, Tensor] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------------
    def add_tensor(self, tensor: Tensor) -> Tensor:
        check_tensor_size(tensor.shape, tensor.name)
        self.tensors[tensor.name] = tensor
        return tensor

    def add_const(self, name: str, value: np.ndarray, dtype: str | None = None) -> Tensor:
        value = np.asarray(value)
        dtype = dtype or str(value.dtype)
        name = self.unique_name(name)
        return self.add_tensor(Tensor(name, dtype, tuple(value.shape), value.astype(dtype)))

    def unique_name(self, base: str) -> str:
        if base not in self.tensors and not any(n.name == base for n in self.nodes):
            return base
        i = 1
        while f"{base}_{i}" in self.tensors:
            i += 1
        return f"{base}_{i}"

    # -- queries ------------------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    result.setdefault(name, []).append(node)
        return result

    def activations(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if not t.is_const]

    def constants(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if t.is_const]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def copy(self) -> Graph:
        """Deep copy except constant arrays, which passes must never mutate in place."""
        new = Graph(self.name, {}, [copy.deepcopy(n) for n in self.nodes], list(self.inputs),
                    list(self.outputs), copy.deepcopy(self.meta))
        for name, t in self.tensors.items():
            new.tensors[name] = Tensor(t.name, t.dtype, t.shape, t.data, copy.deepcopy(t.quant))
        return new

    def rename_tensor(self, old: str, new: str) -> None:
        """Rename a tensor everywhere (nodes, graph inputs/outputs, name maps in meta)."""
        if new in self.tensors:
            raise ValueError(f"tensor '{new}' already exists")
        t = self.tensors.pop(old)
        t.name = new
        self.tensors[new] = t
        for node in self.nodes:
            node.inputs = [new if i == old else i for i in node.inputs]
            node.outputs = [new if o == old else o for o in node.outputs]
        self.inputs = [new if i == old else i for i in self.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]
        for key in ("onnx_names", "output_names"):
            mapping = self.meta.get(key, {})
            if old in mapping:
                mapping[new] = mapping.pop(old)

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody uses (dead code) and tensors no node references."""
        live = set(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.outputs):
                kept.append(node)
                live.update(i for i in node.inputs if i)
        self.nodes = list(reversed(kept))
        live.update(self.inputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in live}

    def to_text(self) -> str:
        """A human-readable listing, one node per line (used by --dump-ir)."""
        lines = [f"graph {self.name}"]
        for name in self.inputs:
            t = self.tensors[name]
            lines.append(f"  input  {name}: {t.dtype}{list(t.shape)}")
        for node in self.nodes:
            outs = ", ".join(f"{o}: {self.tensors[o].dtype}{list(self.tensors[o].shape)}" for o in node.outputs)
            attrs = ", ".join(f"{k}={_short(v)}" for k, v in node.attrs.items())
            lines.append(f"  {outs} = {node.op}({', '.join(node.inputs)}){{{attrs}}}  # {node.origin}")
        for name in self.outputs:
            lines.append(f"  output {name}")
        return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 4:
            return str(value.tolist())
        return f"array{list(value.shape)}"
    return repr(value)
