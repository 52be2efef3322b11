"""Fuzzing the tinydeploy CLI: seeded mutators for models and build folders, and a driver that runs cases.

Every case is a function of one integer seed (and the corpus): `make_case(corpus, seed, dir)` picks a base
(the QDQ MobileBERT from the zoo, a Deeploy conformance network, or a compiled build), mutates it with a
`random.Random(seed)` and returns the CLI argv to run. A failing case is reproduced with

    .venv/bin/python tests/fuzzing.py run --work WORK_DIR --seed SEED [-v]

(the work dir printed by the test holds the corpus the seed was drawn against; with another work dir the
corpus is rebuilt, and the few mutations whose offsets depend on the length of a path in tinydeploy.json can
differ).

Mutators:
* `mutate_bytes` — protobuf (or any file) bytes: truncate, flip bits, overwrite bytes, duplicate/cut chunks;
* `mutate_model` — structural, on an `onnx.ModelProto`: nodes, attributes, shapes, element types,
  initializers, cycles, opset;
* `mutate_build` — a copy of a compiled build folder: tinydeploy.json, golden.npz, weights.bin, the C.

The driver calls `tinydeploy.cli.main(argv)` in-process with stdout/stderr redirected to StringIO (the CLI's
rich Console(stderr=True) looks `sys.stderr` up at every print, so it follows the redirection). To keep one
segfault, OOM or native hang from taking pytest down, cases run in worker processes (`python fuzzing.py
worker`), each calling main() in-process case after case, one thread per BLAS pool; the parent kills a
worker whose resident memory passes `MEMORY_LIMIT` (SIGABRT first: faulthandler prints where it was).

Time bound per case: `CASE_TIMEOUT` (60) seconds of wall time, enforced in the worker by SIGALRM (raises
`CaseTimeout`, re-armed every second because Unicorn drops exceptions raised in its hooks) and by the
parent, which kills a worker that has not answered `HARD_TIMEOUT_MARGIN` seconds later.

Pass criteria per case (`judge`): no exception escapes main(); exit code in {0, 1, 2}; exit 2 has exactly one
line starting with `error:` and it is the last line on stderr (no multi-line message); exit 0/1 has none;
"Traceback" appears nowhere; the case finishes within the bound; the worker survives.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import faulthandler
import gc
import io
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Wall-time bound per case (seconds). Normal cases take < 3 s on the tiny corpus.
CASE_TIMEOUT = 60.0
#: The parent kills a worker that has not answered this long after the bound.
HARD_TIMEOUT_MARGIN = 30.0
#: Resident-memory limit of a worker (bytes), checked every 50 ms by a watchdog thread in the parent (a thread
#: in the worker would wait for the GIL behind the allocating numpy call; no RLIMIT_AS either: every cluster ISS
#: run maps 8 x 1 GiB of Unicorn translation buffers, virtual and untouched). Normal cases stay below 0.5 GiB.
MEMORY_LIMIT = 3 << 30
#: Cycle budget passed to `simulate --max-cycles` (the unmutated builds need ~0.1-0.4 M).
MAX_CYCLES = 20_000_000
#: A worker is replaced after this many cases (bounds memory growth from caches and leaks).
CASES_PER_WORKER = 400

HERE = Path(__file__).resolve().parent
MINI_MOBILEBERT = ["--size", "tiny", "--layers", "1", "--seq", "16", "--hidden", "32", "--bottleneck", "16",
                   "--heads", "2", "--ffn-stack", "1", "--intermediate", "32", "--vocab", "64", "--embedding", "16"]

# Shares of the case kinds (by the first draw of the case's rng).
BUILD_SHARE = 0.25
BYTES_SHARE = 0.25          # the rest: structural model mutations
MOBILEBERT_SHARE = 0.4      # of the model cases, when Deeploy cases exist


class NotApplicable(Exception):
    """This mutator cannot apply to this input (e.g. no attributes); the caller draws another."""


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case exceeds CASE_TIMEOUT (BaseException: `except Exception` won't eat it)."""


# ----------------------------------------------------------------------------------------------------------
# (a) bytes
# ----------------------------------------------------------------------------------------------------------
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12, 0x1A, 0x22)


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"truncate at {cut}/{len(data)}"


def _flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    n = rng.choice((1, 1, 2, 4, 8, 32))
    positions = sorted(rng.randrange(len(buf) * 8) for _ in range(n))
    for bit in positions:
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf), f"flip {n} bit(s) at {positions[:4]}{'...' if n > 4 else ''}"


def _overwrite_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    n = rng.choice((1, 2, 4, 16))
    where = []
    for _ in range(n):
        i = rng.randrange(len(buf))
        value = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
        buf[i] = value if value != buf[i] else value ^ 0xFF
        where.append(i)
    return bytes(buf), f"overwrite {n} byte(s) at {sorted(where)[:4]}{'...' if n > 4 else ''}"


def _duplicate_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = rng.randrange(len(data))
    length = rng.randint(1, max(1, min(len(data) - start, rng.choice((4, 64, 4096)))))
    dest = rng.randrange(len(data) + 1)
    chunk = data[start:start + length]
    return data[:dest] + chunk + data[dest:], f"duplicate {length} B from {start} at {dest}"


def _cut_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = rng.randrange(len(data))
    length = rng.randint(1, max(1, min(len(data) - start, rng.choice((1, 8, 256, 65536)))))
    return data[:start] + data[start + length:], f"cut {length} B at {start}"


BYTE_MUTATORS = {"truncate": _truncate, "flip_bits": _flip_bits, "overwrite": _overwrite_bytes,
                 "duplicate_chunk": _duplicate_chunk, "cut_chunk": _cut_chunk}


def mutate_bytes(data: bytes, rng: random.Random, kind: str | None = None) -> tuple[bytes, str]:
    """One byte-level mutation of `data` (non-empty); returns (new bytes, description)."""
    if not data:
        return b"\x00", "empty -> one NUL byte"
    name = kind or rng.choice(sorted(BYTE_MUTATORS))
    out, desc = BYTE_MUTATORS[name](data, rng)
    return out, f"bytes.{name}: {desc}"


# ----------------------------------------------------------------------------------------------------------
# (b) structural, on an onnx.ModelProto
# ----------------------------------------------------------------------------------------------------------
HUGE_DIMS = (0, -1, -7, 2**31 - 1, 2**31, 2**40, 2**63 - 1, 10**6, 65536)
INT_VALUES = (0, -1, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, -128, 127, -(2**31), 2**31 - 1, 2**31, 2**62,
              -(2**63))
FLOAT_VALUES = (0.0, -0.0, -1.0, 1.0, 0.5, 1e-30, 1e30, 3.4e38, -3.4e38, math.nan, math.inf, -math.inf, 1e-45)
STANDARD_OPS = ("Add", "Mul", "MatMul", "Gemm", "Relu", "Softmax", "Reshape", "Transpose", "Gather", "Concat",
                "Slice", "QuantizeLinear", "DequantizeLinear", "RequantShift", "iSoftmax", "ITAMax", "Conv",
                "Identity", "Cast", "Constant", "Where", "LayerNormalization", "ReduceMean", "Div", "Sub", "Tanh")
#: TensorProto.DataType values (0 UNDEFINED ... 16 BFLOAT16, 17-23 float8/int4) and one out of the enum.
ELEM_TYPES = tuple(range(0, 24)) + (99, -1)
NUMPY_TYPES = ("int8", "uint8", "int16", "int32", "int64", "float32", "float64", "float16", "bool")


def _other(rng: random.Random, choices, current):
    """A random choice different from `current` (NaN counts as equal to NaN)."""
    def same(v):
        if isinstance(v, float) and isinstance(current, float) and math.isnan(v) and math.isnan(current):
            return True
        return type(v) is type(current) and v == current
    pool = [v for v in choices if not same(v)]
    if not pool:
        raise NotApplicable(f"no value other than {current!r}")
    return rng.choice(pool)


def _random_name(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz_/.:0123456789 "
    return rng.choice(("", "x", "unknown_tensor", "/some/path:0", "\u00e9\u00e8", "a" * 300)) if rng.random() < 0.5 \
        else "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def _tensor_names(model) -> list[str]:
    g = model.graph
    names = {v.name for v in g.input} | {v.name for v in g.output} | {i.name for i in g.initializer}
    for n in g.node:
        names.update(x for x in n.input if x)
        names.update(x for x in n.output if x)
    return sorted(names)


def _pick_node(model, rng: random.Random, need=lambda n: True):
    nodes = [i for i, n in enumerate(model.graph.node) if need(n)]
    if not nodes:
        raise NotApplicable("no suitable node")
    i = rng.choice(nodes)
    return i, model.graph.node[i]


def _node_label(i: int, node) -> str:
    return f"node #{i} '{node.name}' ({node.op_type})"


def m_delete_node(model, rng):
    i, node = _pick_node(model, rng)
    del model.graph.node[i]
    return f"delete {_node_label(i, node)}"


def m_swap_nodes(model, rng):
    if len(model.graph.node) < 2:
        raise NotApplicable("one node")
    i, j = rng.sample(range(len(model.graph.node)), 2)
    a, b = copy.deepcopy(model.graph.node[i]), copy.deepcopy(model.graph.node[j])
    model.graph.node[i].CopyFrom(b)
    model.graph.node[j].CopyFrom(a)
    return f"swap nodes #{i} ({a.op_type}) and #{j} ({b.op_type})"


def m_duplicate_node(model, rng):
    i, node = _pick_node(model, rng)
    model.graph.node.insert(rng.randrange(len(model.graph.node) + 1), copy.deepcopy(node))
    return f"duplicate {_node_label(i, node)} (two producers of its outputs)"


def m_change_op_type(model, rng):
    i, node = _pick_node(model, rng)
    seen = sorted({n.op_type for n in model.graph.node} - {node.op_type})
    r = rng.random()
    old = node.op_type
    new = rng.choice(seen) if seen and r < 0.5 else _other(rng, STANDARD_OPS, old) if r < 0.8 else _random_name(rng)
    if new == old:
        new += "_x"
    node.op_type = new
    if rng.random() < 0.2:
        node.domain = rng.choice(("", "ai.onnx", "com.microsoft", "bogus.domain"))
    return f"op_type of {_node_label(i, node)}: {old} -> {new!r} (domain {node.domain!r})"


def _redirect(model, rng, field_name: str):
    i, node = _pick_node(model, rng, lambda n: len(getattr(n, field_name)) > 0)
    names = getattr(node, field_name)
    k = rng.randrange(len(names))
    old = names[k]
    r = rng.random()
    new = _other(rng, _tensor_names(model), old) if r < 0.6 else _random_name(rng)
    if new == old:
        new += "_x"
    if r > 0.9 and field_name == "input":
        names.append(rng.choice(_tensor_names(model)))
        return f"add input {names[-1]!r} to {_node_label(i, node)}"
    if r > 0.95:
        del names[k]
        return f"remove {field_name} {k} ({old!r}) of {_node_label(i, node)}"
    names[k] = new
    return f"{field_name} {k} of {_node_label(i, node)}: {old!r} -> {new!r}"


def m_redirect_input(model, rng):
    return _redirect(model, rng, "input")


def m_redirect_output(model, rng):
    return _redirect(model, rng, "output")


def m_delete_attribute(model, rng):
    i, node = _pick_node(model, rng, lambda n: len(n.attribute) > 0)
    k = rng.randrange(len(node.attribute))
    name = node.attribute[k].name
    del node.attribute[k]
    return f"delete attribute {name!r} of {_node_label(i, node)}"


def _mutate_tensor_proto(t, rng: random.Random) -> str:
    """A TensorProto (initializer or Constant value) in place; returns a description."""
    from onnx import numpy_helper

    choice = rng.choice(("shape", "dtype", "values", "nan_inf", "truncate_raw", "empty", "scalar"))
    if choice == "shape":
        dims = list(t.dims)
        op = rng.choice(("dim", "add", "drop"))
        if op == "dim" and dims:
            k = rng.randrange(len(dims))
            dims[k] = _other(rng, (dims[k] + 1, max(dims[k] - 1, 0), 0, 1, -1, 2**31, dims[k] * 2), dims[k])
        elif op == "add" or not dims:
            dims.insert(rng.randrange(len(dims) + 1), rng.choice((1, 2, 0)))
        else:
            dims.pop(rng.randrange(len(dims)))
        old = list(t.dims)
        del t.dims[:]
        t.dims.extend(dims)
        return f"dims {old} -> {dims} (data unchanged)"
    if choice == "dtype":
        old = t.data_type
        t.data_type = rng.choice([e for e in ELEM_TYPES if e != old])
        return f"data_type {old} -> {t.data_type} (data unchanged)"
    try:
        arr = numpy_helper.to_array(t)
    except Exception as exc:
        raise NotApplicable(f"to_array: {exc}") from None
    if choice == "values":
        if arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            gen = np.random.default_rng(rng.randrange(2**32))
            new = gen.integers(info.min, info.max, size=arr.shape, endpoint=True).astype(arr.dtype)
        elif arr.dtype.kind == "f":
            gen = np.random.default_rng(rng.randrange(2**32))
            new = (gen.normal(size=arr.shape) * 10.0 ** rng.randint(-6, 30)).astype(arr.dtype)
        elif arr.dtype.kind == "b":
            new = ~arr
        else:
            raise NotApplicable(f"dtype {arr.dtype}")
        t.CopyFrom(numpy_helper.from_array(new, t.name))
        return f"random values ({arr.dtype}{list(arr.shape)})"
    if choice == "nan_inf":
        if arr.size == 0:
            raise NotApplicable("empty")
        flat = arr.reshape(-1).copy()
        k = rng.randrange(flat.size)
        if arr.dtype.kind == "f":
            flat[k] = _other(rng, (math.nan, math.inf, -math.inf, 0.0, 1e38), float(flat[k]))
        elif arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            flat[k] = _other(rng, (int(info.min), int(info.max), 0), int(flat[k]))
        else:
            raise NotApplicable(f"dtype {arr.dtype}")
        t.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape), t.name))
        return f"element {k} of {arr.dtype}{list(arr.shape)} := {flat[k]}"
    if choice == "truncate_raw":
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        raw = t.raw_data
        if not raw:
            raise NotApplicable("no raw data")
        cut = rng.randrange(len(raw))
        t.raw_data = raw[:cut]
        return f"raw_data truncated {len(raw)} -> {cut} B"
    if choice == "empty":
        if arr.ndim and arr.shape[0] == 0:
            raise NotApplicable("already empty")
        t.CopyFrom(numpy_helper.from_array(np.zeros((0,) + arr.shape[1:], arr.dtype), t.name))
        return f"empty ({arr.dtype}{[0, *arr.shape[1:]]})"
    if arr.ndim == 0:
        raise NotApplicable("already a scalar")
    t.CopyFrom(numpy_helper.from_array(np.asarray(arr.reshape(-1)[0] if arr.size else 0, arr.dtype), t.name))
    return f"scalar (was {list(arr.shape)})"


def m_alter_attribute(model, rng):
    from onnx import AttributeProto, helper

    i, node = _pick_node(model, rng, lambda n: len(n.attribute) > 0)
    a = node.attribute[rng.randrange(len(node.attribute))]
    where = f"attribute {a.name!r} of {_node_label(i, node)}"
    if rng.random() < 0.25:     # change its type
        value = rng.choice((rng.choice(INT_VALUES), rng.choice(FLOAT_VALUES), "str", [1, 2, 3], [0.5], [],
                            ["a", "b"]))
        if value == []:
            new = AttributeProto(name=a.name, type=AttributeProto.INTS)
        else:
            new = helper.make_attribute(a.name, value)
        old_type = a.type
        a.CopyFrom(new)
        return f"{where}: type {old_type} -> {a.type} value {value!r}"
    if a.type == AttributeProto.INT:
        old, a.i = a.i, _other(rng, INT_VALUES, a.i)
        return f"{where}: {old} -> {a.i}"
    if a.type == AttributeProto.FLOAT:
        old, a.f = a.f, _other(rng, FLOAT_VALUES, float(a.f))
        return f"{where}: {old} -> {a.f}"
    if a.type in (AttributeProto.INTS, AttributeProto.FLOATS):
        values = list(a.ints if a.type == AttributeProto.INTS else a.floats)
        pool = INT_VALUES if a.type == AttributeProto.INTS else FLOAT_VALUES
        op = rng.choice(("set", "append", "drop", "clear"))
        if op == "set" and values:
            k = rng.randrange(len(values))
            values[k] = _other(rng, pool, values[k])
        elif op == "drop" and values:
            values.pop(rng.randrange(len(values)))
        elif op == "clear" and values:
            values = []
        else:
            values.append(rng.choice(pool))
        target = a.ints if a.type == AttributeProto.INTS else a.floats
        del target[:]
        target.extend(values)
        return f"{where}: {op} -> {values[:8]}"
    if a.type == AttributeProto.TENSOR:
        return f"{where}: " + _mutate_tensor_proto(a.t, rng)
    if a.type == AttributeProto.STRING:
        old, a.s = a.s, _random_name(rng).encode() + b"~"
        return f"{where}: {old!r} -> {a.s!r}"
    del node.attribute[:]
    return f"{where}: cleared all attributes (type {a.type})"


def m_add_attribute(model, rng):
    from onnx import helper

    i, node = _pick_node(model, rng)
    name = rng.choice(("axis", "perm", "transA", "transB", "div", "n_levels", "signed", "bogus", "mul", "add"))
    value = rng.choice((rng.choice(INT_VALUES), rng.choice(FLOAT_VALUES), [0, 2, 1], "x"))
    if any(a.name == name for a in node.attribute):
        raise NotApplicable("exists")
    node.attribute.append(helper.make_attribute(name, value))
    return f"add attribute {name}={value!r} to {_node_label(i, node)}"


def _value_infos(model, include_outputs=True):
    inits = {i.name for i in model.graph.initializer}
    vis = [v for v in model.graph.input if v.name not in inits]
    if include_outputs:
        vis += list(model.graph.output)
    return vis


def m_shape(model, rng):
    vis = _value_infos(model, include_outputs=rng.random() < 0.3)
    if not vis:
        raise NotApplicable("no graph inputs")
    vi = rng.choice(vis)
    shape = vi.type.tensor_type.shape
    op = rng.choice(("dim", "dim", "dim", "symbolic", "unknown", "add", "drop", "noshape"))
    dims = shape.dim
    if op in ("dim", "symbolic", "unknown") and len(dims):
        k = rng.randrange(len(dims))
        d = dims[k]
        if op == "dim":
            d.dim_value = _other(rng, HUGE_DIMS + (d.dim_value + 1, max(d.dim_value - 1, 1), 1), d.dim_value)
            return f"graph value {vi.name!r} dim {k} := {d.dim_value}"
        if op == "symbolic":
            d.dim_param = rng.choice(("batch", "N", "seq_len"))
            return f"graph value {vi.name!r} dim {k} := symbolic {d.dim_param!r}"
        d.Clear()
        return f"graph value {vi.name!r} dim {k} := unknown (no value, no param)"
    if op == "drop" and len(dims):
        k = rng.randrange(len(dims))
        del dims[k]
        return f"graph value {vi.name!r}: drop dim {k}"
    if op == "noshape" and vi.type.tensor_type.HasField("shape"):
        vi.type.tensor_type.ClearField("shape")
        return f"graph value {vi.name!r}: no shape"
    dims.add().dim_value = rng.choice((1, 2, 0, 3))
    return f"graph value {vi.name!r}: append a dim ({dims[-1].dim_value})"


def m_elem_type(model, rng):
    vis = _value_infos(model) + list(model.graph.value_info)
    if not vis:
        raise NotApplicable("no value infos")
    vi = rng.choice(vis)
    old = vi.type.tensor_type.elem_type
    vi.type.tensor_type.elem_type = rng.choice([e for e in ELEM_TYPES if e != old])
    return f"elem_type of {vi.name!r}: {old} -> {vi.type.tensor_type.elem_type}"


def m_initializer(model, rng):
    inits = model.graph.initializer
    if not inits:
        raise NotApplicable("no initializers")
    # Prefer the Constant nodes' tensors sometimes (the QDQ export may hold constants there).
    k = rng.randrange(len(inits))
    return f"initializer {inits[k].name!r}: " + _mutate_tensor_proto(inits[k], rng)


def m_remove_initializer(model, rng):
    inits = model.graph.initializer
    if not inits:
        raise NotApplicable("no initializers")
    k = rng.randrange(len(inits))
    name = inits[k].name
    del inits[k]
    return f"remove initializer {name!r}"


def m_cycle(model, rng):
    nodes = model.graph.node
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    if rng.random() < 0.3:      # self loop
        i, node = _pick_node(model, rng, lambda n: len(n.input) > 0 and len(n.output) > 0)
        k = rng.randrange(len(node.input))
        node.input[k] = node.output[0]
        return f"cycle: input {k} of {_node_label(i, node)} := its own output"
    # consumer c of p's output; p's input := c's output
    pairs = [(producer[x], c) for c, n in enumerate(nodes) for x in n.input if x in producer and n.output]
    pairs = [(p, c) for p, c in pairs if nodes[p].input]
    if not pairs:
        raise NotApplicable("no producer/consumer pair")
    p, c = rng.choice(pairs)
    k = rng.randrange(len(nodes[p].input))
    nodes[p].input[k] = nodes[c].output[0]
    return f"cycle: input {k} of {_node_label(p, nodes[p])} := output of {_node_label(c, nodes[c])}"


def m_graph_io(model, rng):
    g = model.graph
    op = rng.choice(("drop_output", "drop_input", "dup_output", "rename_output"))
    if op == "drop_output" and len(g.output) > 0:
        k = rng.randrange(len(g.output))
        name = g.output[k].name
        del g.output[k]
        return f"drop graph output {name!r}"
    if op == "drop_input" and len(g.input) > 0:
        k = rng.randrange(len(g.input))
        name = g.input[k].name
        del g.input[k]
        return f"drop graph input {name!r}"
    if op == "dup_output" and len(g.output) > 0:
        g.output.append(copy.deepcopy(g.output[rng.randrange(len(g.output))]))
        return f"duplicate graph output {g.output[-1].name!r}"
    if len(g.output) == 0:
        raise NotApplicable("no outputs")
    k = rng.randrange(len(g.output))
    old = g.output[k].name
    g.output[k].name = _other(rng, _tensor_names(model), old) if rng.random() < 0.6 else _random_name(rng) + "~"
    return f"graph output {k}: {old!r} -> {g.output[k].name!r}"


def m_opset(model, rng):
    if not model.opset_import:
        model.opset_import.add()
    k = rng.randrange(len(model.opset_import))
    op = model.opset_import[k]
    old = op.version
    op.version = _other(rng, (0, 1, 7, 10, 12, 25, 99, -1), old)
    if rng.random() < 0.3:
        model.ir_version = rng.choice((0, 1, 3, 99))
    return f"opset {op.domain!r} {old} -> {op.version} (ir_version {model.ir_version})"


STRUCT_MUTATORS = {
    "delete_node": m_delete_node, "swap_nodes": m_swap_nodes, "duplicate_node": m_duplicate_node,
    "change_op_type": m_change_op_type, "redirect_input": m_redirect_input, "redirect_output": m_redirect_output,
    "delete_attribute": m_delete_attribute, "alter_attribute": m_alter_attribute, "add_attribute": m_add_attribute,
    "shape": m_shape, "elem_type": m_elem_type, "initializer": m_initializer,
    "remove_initializer": m_remove_initializer, "cycle": m_cycle, "graph_io": m_graph_io, "opset": m_opset,
}
#: Relative weights (the rest 1): the mutations the issue names first are drawn more often.
STRUCT_WEIGHTS = {"initializer": 4, "alter_attribute": 3, "shape": 3, "redirect_input": 2, "change_op_type": 2,
                  "delete_node": 2, "delete_attribute": 2, "elem_type": 2}


def mutate_model(model, rng: random.Random, count: int | None = None, kind: str | None = None) -> str:
    """Apply 1-3 structural mutations to `model` (an onnx.ModelProto) in place; returns their description."""
    if count is None:
        count = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
    names = sorted(STRUCT_MUTATORS)
    weights = [STRUCT_WEIGHTS.get(n, 1) for n in names]
    done = []
    for _ in range(count):
        for _attempt in range(30):
            name = kind or rng.choices(names, weights)[0]
            try:
                done.append(f"{name}: {STRUCT_MUTATORS[name](model, rng)}")
                break
            except NotApplicable:
                if kind:
                    raise
    if not done:
        raise NotApplicable("no mutator applied")
    return "struct." + " | ".join(done)


# ----------------------------------------------------------------------------------------------------------
# (c) build folders
# ----------------------------------------------------------------------------------------------------------
WRONG_VALUES = (None, "x", "", -1, 0, 1.5, [], {}, True, [1, 2], {"a": 1}, 2**63, "9" * 300)


def _json_descend(doc, rng: random.Random):
    """A random (container, key) location inside doc (at least one level deep), or None for the root."""
    parent, key, node = None, None, doc
    path = []
    while isinstance(node, (dict, list)) and node and (parent is None or rng.random() < 0.6):
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        k = rng.choice(keys)
        parent, key, node = node, k, node[k]
        path.append(k)
    return parent, key, path


def mutate_manifest(path: Path, rng: random.Random) -> str:
    text = path.read_text()
    op = rng.choice(("truncate", "garbage", "empty", "delete", "non_utf8", "root_type", "missing_key", "missing_key",
                     "wrong_type", "wrong_type", "number", "number", "swap_list"))
    if op == "truncate":
        cut = rng.randrange(len(text))
        path.write_text(text[:cut])
        return f"truncate at {cut}/{len(text)}"
    if op == "garbage":
        pos = rng.randrange(len(text))
        junk = rng.choice(("}", "{", ",", "\"", "NaN", "\x00", "]]", "garbage"))
        path.write_text(text[:pos] + junk + text[pos:])
        return f"insert {junk!r} at {pos}"
    if op == "empty":
        path.write_text("")
        return "empty file"
    if op == "delete":
        path.unlink()
        return "deleted"
    if op == "non_utf8":
        path.write_bytes(b"\xff\xfe" + text.encode()[:100])
        return "non-UTF-8 bytes"
    doc = json.loads(text)
    if op == "root_type":
        value = rng.choice(([], "manifest", 42, None, [doc]))
        path.write_text(json.dumps(value))
        return f"root := {json.dumps(value)[:40]}"
    parent, key, where = _json_descend(doc, rng)
    if parent is None:
        raise NotApplicable("empty document")
    if op == "missing_key":
        del parent[key]
        desc = f"delete {where}"
    elif op == "wrong_type":
        old = parent[key]
        choices = [v for v in WRONG_VALUES if type(v) is not type(old)]
        parent[key] = rng.choice(choices)
        desc = f"{where} := {json.dumps(parent[key])[:40]} (was {type(old).__name__})"
    elif op == "number":
        ints = [trail for trail, node in _json_nodes(doc) if isinstance(node, int) and not isinstance(node, bool)]
        if not ints:
            raise NotApplicable("no ints")
        trail = rng.choice(ints)
        node = doc
        for k in trail[:-1]:
            node = node[k]
        old = node[trail[-1]]
        node[trail[-1]] = rng.choice((0, -1, old + 1, old - 1, -old, 2**31, 2**40, old * 1000))
        desc = f"{trail} {old} -> {node[trail[-1]]}"
    else:
        lists = [node for _, node in _json_nodes(doc) if isinstance(node, list) and len(node) >= 2]
        if not lists:
            raise NotApplicable("no lists")
        lst = rng.choice(lists)
        i, j = rng.sample(range(len(lst)), 2)
        lst[i], lst[j] = lst[j], lst[i]
        desc = f"swap list elements {i} and {j} of a {len(lst)}-element list"
    path.write_text(json.dumps(doc, indent=1))
    return f"{op}: {desc}"


def _json_nodes(node, trail=()):
    """Every node of a parsed JSON document with its key path (dict keys sorted: reproducible by seed)."""
    yield list(trail), node
    children = sorted(node.items()) if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _json_nodes(child, (*trail, key))


def mutate_npz(path: Path, rng: random.Random) -> str:
    op = rng.choice(("bytes", "bytes", "delete", "drop_key", "rename_key", "dtype", "shape", "empty_array",
                     "object_array", "extra_key", "scalar"))
    if op == "delete":
        path.unlink()
        return "deleted"
    if op == "bytes":
        data, desc = mutate_bytes(path.read_bytes(), rng)
        path.write_bytes(data)
        return desc
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:        # already damaged by a first mutation
        raise NotApplicable(f"np.load: {exc}") from None
    if not arrays:
        raise NotApplicable("no arrays")
    key = rng.choice(sorted(arrays))
    if op == "drop_key":
        del arrays[key]
        desc = f"drop {key!r}"
    elif op == "rename_key":
        new = rng.choice((key.split(":", 1)[-1], "output:" + key, key.replace("output:", "input:"),
                          key.replace("input:", "output:"), "arr_0"))
        arrays[new] = arrays.pop(key)
        desc = f"rename {key!r} -> {new!r}"
    elif op == "dtype":
        dtype = rng.choice(NUMPY_TYPES + ("complex64",))
        arrays[key] = arrays[key].astype(dtype)
        desc = f"{key!r} as {dtype}"
    elif op == "shape":
        a = arrays[key]
        choice = rng.choice(("flat", "add_axis", "slice", "grow"))
        if choice == "flat":
            arrays[key] = a.reshape(-1)
        elif choice == "add_axis":
            arrays[key] = a[None]
        elif choice == "slice":
            arrays[key] = a.reshape(-1)[: max(a.size // 2, 0)]
        else:
            arrays[key] = np.concatenate([a.reshape(-1), a.reshape(-1)])
        desc = f"{key!r} shape {list(a.shape)} -> {list(arrays[key].shape)} ({choice})"
    elif op == "empty_array":
        arrays[key] = np.zeros((0,), arrays[key].dtype)
        desc = f"{key!r} := empty"
    elif op == "object_array":
        arrays[key] = np.array([None, "x"], dtype=object)
        desc = f"{key!r} := object array (needs allow_pickle)"
    elif op == "extra_key":
        name = rng.choice(("output:bogus", "input:bogus", "output:", "bogus"))
        arrays[name] = np.zeros((3,), np.int8)
        desc = f"extra array {name!r}"
    else:
        arrays[key] = np.asarray(7, arrays[key].dtype)
        desc = f"{key!r} := 0-d scalar"
    np.savez(path, **arrays)
    return f"{op}: {desc}"


def mutate_blob(path: Path, rng: random.Random) -> str:
    op = rng.choice(("bytes", "bytes", "empty", "append", "delete"))
    if op == "delete":
        path.unlink()
        return "deleted"
    if op == "empty":
        path.write_bytes(b"")
        return "empty"
    data = path.read_bytes()
    if op == "append":
        extra = bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 4096))))
        path.write_bytes(data + extra)
        return f"append {len(extra)} B"
    kind = rng.choice(("truncate", "flip_bits", "overwrite"))
    new, desc = mutate_bytes(data, rng, kind)
    path.write_bytes(new)
    return desc


SOURCE_SUFFIXES = (".c", ".h", ".S", ".ld")
NUMBER = re.compile(r"(?<![A-Za-z_0-9.])\d+")


def mutate_source(build: Path, rng: random.Random) -> str:
    files = sorted(p for p in build.iterdir() if p.is_file() and (p.suffix in SOURCE_SUFFIXES or p.name == "Makefile"))
    if not files:
        raise NotApplicable("no sources")
    path = rng.choice(files)
    name = path.name
    op = rng.choice(("delete_file", "garbage_line", "delete_line", "duplicate_line", "number", "number", "number",
                     "truncate_file"))
    if op == "delete_file":
        path.unlink()
        return f"delete {name}"
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        raise NotApplicable("empty file")
    k = rng.randrange(len(lines))
    if op == "garbage_line":
        junk = rng.choice(("}", "{", "#error fuzz\n", "int x = ;\n", "@@@\n", "/*", "#include \"missing.h\"\n"))
        lines[k] = junk
        desc = f"line {k + 1} := {junk.strip()!r}"
    elif op == "delete_line":
        desc = f"delete line {k + 1}: {lines[k].strip()[:60]!r}"
        del lines[k]
    elif op == "duplicate_line":
        lines.insert(k, lines[k])
        desc = f"duplicate line {k + 1}: {lines[k].strip()[:60]!r}"
    elif op == "number":
        candidates = [i for i, line in enumerate(lines) if NUMBER.search(line)]
        if not candidates:
            raise NotApplicable("no numbers")
        k = rng.choice(candidates)
        matches = list(NUMBER.finditer(lines[k]))
        m = rng.choice(matches)
        old = int(m.group())
        new = rng.choice([v for v in (0, 1, old + 1, max(old - 1, 0), old * 2, old * 1000 + 7, 2**31 - 1, 65535)
                          if v != old])                  # a mutation must change the number
        desc = f"line {k + 1}: number {old} -> {new} in {lines[k].strip()[:80]!r}"
        lines[k] = lines[k][:m.start()] + str(new) + lines[k][m.end():]
    else:
        desc = f"truncate after line {k} of {len(lines)}"
        lines = lines[:k]
    path.write_text("".join(lines))
    return f"{name} {op}: {desc}"


BUILD_MUTATORS = {"manifest": (0.30, lambda b, r: mutate_manifest(b / "tinydeploy.json", r)),
                  "golden": (0.20, lambda b, r: mutate_npz(b / "golden.npz", r)),
                  "weights": (0.15, lambda b, r: mutate_blob(b / "weights.bin", r)),
                  "source": (0.35, mutate_source)}


def mutate_build(build: Path, rng: random.Random, kind: str | None = None, count: int | None = None) -> str:
    """One (sometimes two) mutation(s) of a copied build folder; returns the description."""
    names = sorted(BUILD_MUTATORS)
    if count is None:
        count = 1 + (rng.random() < 0.15)
    done = []
    for _ in range(count):
        for _attempt in range(30):
            name = kind or rng.choices(names, [BUILD_MUTATORS[n][0] for n in names])[0]
            try:
                done.append(f"{name}.{BUILD_MUTATORS[name][1](build, rng)}")
                break
            except (NotApplicable, FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, ValueError):
                if kind:
                    raise
    if not done:
        raise NotApplicable("no build mutator applied")
    return "build." + " | ".join(done)


# ----------------------------------------------------------------------------------------------------------
# corpus and cases
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """What cases are drawn from: base models (ONNX + inputs.npz) and compiled builds."""

    work: str
    models: list[dict[str, Any]] = field(default_factory=list)     # {name, path, inputs}
    builds: list[dict[str, Any]] = field(default_factory=list)     # {name, path, command, target}

    def save(self) -> Path:
        path = Path(self.work) / "corpus.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        return cls(**json.loads(Path(path).read_text()))


def _prepare_step(argv: list[str]) -> None:
    result = run_argv(argv, timeout=600)
    if result["code"] != 0 or result["exception"]:
        raise RuntimeError(f"fuzz corpus: tinydeploy {' '.join(argv)} failed ({result['code']}): "
                           f"{result['exception'] or result['stderr_tail']}")


def prepare_corpus(work: str | Path, deeploy: str | Path | None = None) -> Corpus:
    """Build the corpus in `work` (reused when work/corpus.json exists): a mini QDQ MobileBERT (zoo, ~5 s), a
    generic build (weights.bin via --weights incbin, host-built once), cluster8 and cortex-m4 builds (simulated
    once, so their fw/ objects exist and mutated copies rebuild incrementally), and the Deeploy cases."""
    work = Path(work).resolve()
    if (work / "corpus.json").is_file():
        return Corpus.load(work / "corpus.json")
    work.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(str(work))
    zoo = work / "mobilebert"
    _prepare_step(["zoo", "mobilebert", "-o", str(zoo), *MINI_MOBILEBERT])
    model = zoo / "model_qdq.onnx"
    corpus.models.append({"name": "mobilebert_qdq", "path": str(model), "inputs": str(zoo / "inputs.npz")})
    for name, target, command in (("generic", "generic", "verify"), ("cluster8", "cluster8", "simulate"),
                                  ("cortex-m4", "cortex-m4", "simulate")):
        build = work / f"build-{name}"
        _prepare_step(["compile", str(model), "--target", target, "--weights", "incbin", "-o", str(build)])
        _prepare_step([command, str(build)])
        corpus.builds.append({"name": f"mobilebert-{name}", "path": str(build), "command": command,
                              "target": target})
    if deeploy is not None and Path(deeploy).is_dir():
        for case in sorted(Path(deeploy).iterdir()):
            if (case / "network.onnx").is_file():
                inputs = case / "inputs.npz"
                corpus.models.append({"name": f"deeploy/{case.name}", "path": str(case / "network.onnx"),
                                      "inputs": str(inputs) if inputs.is_file() else None})
    corpus.save()
    return corpus


_BASE_MODELS: dict[str, Any] = {}


def _base_model(path: str):
    import onnx

    if path not in _BASE_MODELS:
        _BASE_MODELS[path] = onnx.load_from_string(Path(path).read_bytes())
    model = onnx.ModelProto()
    model.CopyFrom(_BASE_MODELS[path])
    return model


@dataclass
class Case:
    seed: int
    kind: str           # bytes | struct | build
    base: str
    mutation: str
    argv: list[str]


def make_case(corpus: Corpus, seed: int, case_dir: Path) -> Case:
    """Write the mutated input of case `seed` under case_dir and return the argv to run (deterministic)."""
    rng = random.Random(seed)
    case_dir.mkdir(parents=True, exist_ok=True)
    r = rng.random()
    if corpus.builds and r < BUILD_SHARE:
        base = corpus.builds[rng.randrange(len(corpus.builds))]
        build = case_dir / "build"
        shutil.copytree(base["path"], build, symlinks=True)
        mutation = mutate_build(build, rng)
        if base["command"] == "simulate":
            argv = ["simulate", str(build), "--max-cycles", str(MAX_CYCLES)]
        else:
            argv = ["verify", str(build)] + (["--layers"] if rng.random() < 0.15 else [])
        return Case(seed, "build", base["name"], mutation, argv)
    kind = "bytes" if r < BUILD_SHARE + BYTES_SHARE else "struct"
    mobilebert = [m for m in corpus.models if not m["name"].startswith("deeploy/")]
    deeploy = [m for m in corpus.models if m["name"].startswith("deeploy/")]
    pool = mobilebert if (not deeploy or rng.random() < MOBILEBERT_SHARE) else deeploy
    base = pool[rng.randrange(len(pool))]
    if kind == "bytes":
        data, mutation = mutate_bytes(Path(base["path"]).read_bytes(), rng)
    else:
        model = _base_model(base["path"])
        mutation = mutate_model(model, rng)
        data = model.SerializeToString()
    path = case_dir / "model.onnx"
    path.write_bytes(data)
    command = "golden" if rng.random() < 0.6 else "compile"
    r = rng.random()
    target = "generic" if r < 0.8 else "cluster8-ita" if r < 0.95 else "cortex-m4"
    argv = [command, str(path), "--target", target]
    if base["inputs"] and rng.random() < 0.9:
        argv += ["--inputs", base["inputs"]]
    argv += ["-o", str(case_dir / ("golden.npz" if command == "golden" else "out"))]
    return Case(seed, kind, base["name"], mutation, argv)


# ----------------------------------------------------------------------------------------------------------
# running one argv in-process
# ----------------------------------------------------------------------------------------------------------
def _package_root() -> Path:
    import tinydeploy

    return Path(tinydeploy.__file__).resolve().parent


def deepest_frame(frames: list[traceback.FrameSummary]) -> str | None:
    """file:line (function) of the deepest frame inside tinydeploy (not tests/, not the venv)."""
    root = _package_root()
    best = None
    for f in frames:
        path = Path(f.filename)
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in ("tests", ".venv"):
            continue
        best = f"{rel}:{f.lineno} ({f.name})"
    return best


class _Alarm:
    """SIGALRM -> CaseTimeout in the main thread; re-armed every second until the case ends."""

    def __init__(self, timeout: float) -> None:
        self.timeout, self.fired, self.stack = timeout, False, None
        self.active = threading.current_thread() is threading.main_thread() and timeout > 0

    def _handler(self, signum, frame) -> None:
        if not self.fired:
            self.fired = True
            self.stack = traceback.extract_stack(frame)
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        raise CaseTimeout(f"no exit within {self.timeout:.0f} s")

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._handler)
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


def _tail(text: str, n: int = 12, width: int = 400) -> str:
    return "\n".join(line[:width] for line in text.splitlines()[-n:])


TRACEBACK_FRAME = re.compile(r'^  File "([^"]+)", line (\d+), in (\S+)', re.M)


def parse_printed_traceback(text: str) -> dict[str, Any] | None:
    """{exception, frame, traceback} from the last traceback printed in `text` (tinydeploy -v), or None."""
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    block = text[start:]
    frames = [traceback.FrameSummary(f, int(n), fn) for f, n, fn in TRACEBACK_FRAME.findall(block)]
    lines = block.splitlines()
    # the exception line: the first line after the frames that is not indented
    exc = next((line for line in lines[1:] if line and not line.startswith(" ")), "?")
    return {"exception": exc[:300], "frame": deepest_frame(frames), "traceback": _tail(block, 30, 300)}


def run_argv(argv: list[str], timeout: float = CASE_TIMEOUT, full_stderr: bool = False) -> dict[str, Any]:
    """Call tinydeploy.cli.main(argv) in this process; returns code, output tails, error lines, exception."""
    from tinydeploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    result: dict[str, Any] = {"code": None, "exception": None, "frame": None, "traceback": None, "timed_out": False}
    t0 = time.perf_counter()
    alarm = _Alarm(timeout)
    try:
        # catch_warnings + a filter change invalidate the warning registries: each case shows its warnings
        # once per location, as a fresh `tinydeploy` process would (ResourceWarning hidden, as by default).
        with alarm, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ResourceWarning)
            try:
                result["code"] = main(argv)
            except SystemExit as exc:      # argparse, or a sys.exit in the code
                result["code"] = exc.code if isinstance(exc.code, int) or exc.code is None else 1
    except CaseTimeout:
        result["timed_out"] = True
    except Exception as exc:     # escaped main(): a traceback for the user
        frames = traceback.extract_tb(exc.__traceback__)
        result["exception"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        result["frame"] = deepest_frame(frames)
        result["traceback"] = _tail("".join(traceback.format_exception(exc)), 30, 300)
    if alarm.fired:     # also when Unicorn or a broad except swallowed the CaseTimeout
        result["timed_out"] = True
        result["frame"] = deepest_frame(alarm.stack or [])
        result["traceback"] = _tail("".join(traceback.format_list(alarm.stack or [])), 30, 300)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    stdout, stderr = out.getvalue(), err.getvalue()
    result["stdout_tail"] = _tail(stdout)
    result["stderr_tail"] = _tail(stderr)
    lines = stderr.splitlines()
    result["error_lines"] = [line[:600] for line in lines if line.startswith("error:")]
    result["error_is_last"] = bool(lines) and lines[-1].startswith("error:")
    result["traceback_printed"] = "Traceback" in stdout or "Traceback" in stderr
    # Not a failure, but reported: stderr lines other than progress (`· ...`) and the error line (warnings from
    # numpy/onnx, library logging), and stdout lines from libraries on a failed run.
    noise = [line for line in lines if line.strip() and not line.startswith(("· ", "error:"))]
    if result["code"] == 2:
        noise += [f"stdout: {line}" for line in stdout.splitlines() if line.strip()]
    result["noise"] = [line[:200] for line in noise[:6]]
    if full_stderr:
        result["stderr"] = stderr
    return result


def judge(result: dict[str, Any]) -> list[str]:
    """The acceptance criteria violated by one result (empty list = pass)."""
    problems = []
    if result.get("crashed"):
        problems.append(result["crashed"])
    if result["timed_out"]:
        problems.append(f"no exit within {result.get('timeout', CASE_TIMEOUT):.0f} s")
    if result["exception"]:
        problems.append(f"exception escaped main(): {result['exception']}")
    code = result["code"]
    if not (result["timed_out"] or result["exception"] or result.get("crashed")):
        if code not in (0, 1, 2):
            problems.append(f"exit code {code!r} not in 0/1/2")
        n = len(result["error_lines"])
        if code == 2 and n != 1:
            problems.append(f"exit 2 with {n} 'error:' lines")
        elif code == 2 and not result["error_is_last"]:
            problems.append("exit 2 but the error message spans several lines (error: line is not the last)")
        elif code in (0, 1) and n:
            problems.append(f"exit {code} with {n} 'error:' line(s)")
    if result["traceback_printed"] and not result["timed_out"]:     # (a re-armed CaseTimeout in a finaliser
        problems.append("'Traceback' printed")                      # prints "Exception ignored ... Traceback")
    return problems


def _is_internal(result: dict[str, Any]) -> bool:
    return any("internal error" in line for line in result.get("error_lines", []))


def run_case(corpus: Corpus, seed: int, scratch: Path, timeout: float = CASE_TIMEOUT, diagnose: bool = True,
             keep: bool = False) -> dict[str, Any]:
    """make_case + run_argv + judge. With `diagnose`, a case answered with `error: internal error` is run a
    second time with -v to recover the traceback (for the failure classes)."""
    case_dir = scratch / f"case-{seed}"
    shutil.rmtree(case_dir, ignore_errors=True)
    try:
        case = make_case(corpus, seed, case_dir)
    except Exception as exc:        # a bug of the fuzzer, not of tinydeploy: report it loudly
        return {"seed": seed, "kind": "?", "base": "?", "mutation": "?", "argv": [], "code": None,
                "exception": None, "frame": None, "timed_out": False, "error_lines": [], "traceback_printed": False,
                "problems": [f"fuzzer could not make the case: {type(exc).__name__}: {exc}"],
                "traceback": _tail(traceback.format_exc(), 30), "seconds": 0.0, "internal": False}
    result = run_argv(case.argv, timeout)
    result.update(seed=seed, kind=case.kind, base=case.base, mutation=case.mutation, argv=case.argv,
                  timeout=timeout)
    result["internal"] = _is_internal(result)
    result["problems"] = judge(result)
    if diagnose and result["internal"] and not result["exception"]:
        shutil.rmtree(case_dir, ignore_errors=True)
        again = make_case(corpus, seed, case_dir)
        verbose = run_argv(["-v", *again.argv], timeout, full_stderr=True)
        diagnosis = parse_printed_traceback(verbose.pop("stderr"))
        if verbose["exception"]:
            diagnosis = {k: verbose[k] for k in ("exception", "frame", "traceback")}
        if diagnosis:
            result["diagnosis"] = diagnosis
    if not keep:
        shutil.rmtree(case_dir, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------------------------------------
# worker processes and the campaign
# ----------------------------------------------------------------------------------------------------------
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "PYTHONFAULTHANDLER": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _worker(corpus_file: str, scratch: str) -> None:
    """stdin: one JSON request a line ({"seed", "timeout", "diagnose"}); fd 3 (dup of the original stdout):
    one JSON result a line. The real stdout goes to /dev/null (stray C-level prints)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    faulthandler.enable(sys.stderr)
    corpus = Corpus.load(corpus_file)
    import tinydeploy.cli  # noqa: F401  (warm the imports before the first case)
    proto.write(json.dumps({"ready": True}) + "\n")
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        req = json.loads(line)
        print(f"--- seed {req['seed']}", file=sys.stderr, flush=True)
        if req["seed"] < 0:
            _self_test(req["seed"])
        result = run_case(corpus, req["seed"], Path(scratch), req["timeout"], req["diagnose"])
        proto.write(json.dumps(result, default=str) + "\n")
        gc.collect()        # the ISS's Unicorn engines (8 GiB of mappings each run) go with their cycles


def _self_test(seed: int) -> None:
    """Negative seeds test the driver: -1 segfault, -2 a hang SIGALRM cannot stop, -3 a memory blow-up."""
    if seed == -1:
        faulthandler._sigsegv()
    if seed == -2:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    if seed == -3:
        hog = np.ones(int(os.environ.get("TINYDEPLOY_FUZZ_HOG", 1 << 30)), np.uint8)
        time.sleep(3600)
        del hog


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Worker:
    def __init__(self, index: int, corpus_file: Path, scratch: Path) -> None:
        self.index = index
        self.log_path = scratch / f"worker-{index}.log"
        self.log = open(self.log_path, "ab")   # noqa: SIM115
        scratch_w = scratch / f"w{index}"
        scratch_w.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fuzzing.py"), "worker", str(corpus_file),
                                      str(scratch_w)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env={**os.environ, **WORKER_ENV})
        self.buffer = b""
        self.seed: int | None = None
        self.started = 0.0
        self.done = 0
        self.ready = False

    def send(self, seed: int, timeout: float, diagnose: bool) -> None:
        self.seed, self.started = seed, time.monotonic()
        self.proc.stdin.write((json.dumps({"seed": seed, "timeout": timeout, "diagnose": diagnose}) + "\n").encode())
        self.proc.stdin.flush()

    def read_lines(self) -> list[str] | None:
        chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def log_tail(self, n: int = 25) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace")
        last = text.rfind(f"--- seed {self.seed}\n")
        return _tail(text[last:] if last >= 0 else text, n)

    def stop(self, kill: bool = False) -> None:
        with contextlib.suppress(Exception):
            if kill:
                self.proc.kill()
            else:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


@dataclass
class Campaign:
    """All results of a run of many seeds."""

    results: list[dict[str, Any]]
    seconds: float
    work: str

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["problems"]]

    def counts(self) -> Counter:
        return Counter("timeout" if r["timed_out"] else "crash" if r.get("crashed") else
                       "exception" if r["exception"] else f"exit {r['code']}" for r in self.results)

    def summary(self) -> str:
        counts = self.counts()
        internal = sum(r.get("internal", False) for r in self.results)
        kinds = Counter(r["kind"] for r in self.results)
        slowest = max(self.results, key=lambda r: r.get("seconds", 0.0), default=None)
        lines = [f"fuzz: {len(self.results)} cases in {self.seconds:.1f} s ({dict(sorted(kinds.items()))}); "
                 f"outcomes {dict(sorted(counts.items()))}; 'internal error' lines: {internal}; "
                 f"failures: {len(self.failures)}"]
        noisy = [r for r in self.results if r.get("noise")]
        if noisy:
            kinds_of_noise = Counter(_normalise(line) for r in noisy for line in r["noise"][:1])
            lines.append(f"{len(noisy)} cases printed other lines besides progress and the error line (not failures); "
                         f"most common first lines: " + "; ".join(f"[{n}x] {k} (e.g. seed "
                         f"{next(r['seed'] for r in noisy if _normalise(r['noise'][0]) == k)})"
                         for k, n in kinds_of_noise.most_common(5)))
        if slowest:
            lines.append(f"slowest case: seed {slowest['seed']} {slowest.get('seconds', 0):.1f} s "
                         f"({' '.join(slowest['argv'][:1])} {slowest['base']})")
        classes = failure_classes(self.results)
        if classes:
            lines.append(f"{len(classes)} distinct failure classes (incl. internal errors):")
            for key, group in classes.items():
                first = group[0]
                lines.append(f"  [{len(group)}x] {key}\n      e.g. seed {first['seed']} {first['base']} "
                             f"{first['argv'][0] if first['argv'] else ''}: {first['mutation'][:200]}")
        return "\n".join(lines)

    def failure_report(self, limit: int = 8) -> str:
        lines = [f"{len(self.failures)} of {len(self.results)} fuzz cases failed; first {limit} "
                 f"(reproduce: {sys.executable} {HERE / 'fuzzing.py'} run --work {self.work} --seed SEED -v):"]
        for r in self.failures[:limit]:
            lines.append(f"- seed {r['seed']} [{r['kind']} {r['base']}] {' / '.join(r['problems'])}\n"
                         f"  mutation: {r['mutation'][:300]}\n  argv: tinydeploy {' '.join(r['argv'])}")
            if r.get("frame"):
                lines.append(f"  deepest tinydeploy frame: {r['frame']}")
            detail = (r.get("traceback") or r.get("stderr_tail") or "").splitlines()
            lines.extend("    " + line for line in (detail[:8] if r.get("crashed") else detail[-6:]))
        lines.append(self.summary())
        return "\n".join(lines)


def _normalise(message: str) -> str:
    message = re.sub(r"'[^']*'", "'…'", message)
    message = re.sub(r"/[\w./+-]+", "PATH", message)
    return re.sub(r"-?\d+", "N", message)[:160]


def failure_key(r: dict[str, Any]) -> str | None:
    """Class of a failing (or internal-error) result: exception type + deepest tinydeploy frame, or the kind
    of violation + its normalised message."""
    diagnosis = r.get("diagnosis") or {}
    if r["exception"] or diagnosis:
        exc = r["exception"] or diagnosis["exception"]
        frame = r.get("frame") if r["exception"] else diagnosis.get("frame")
        tag = "escaped" if r["exception"] else "internal error"
        return f"{exc.split(':', 1)[0]} at {frame} ({tag})"
    if r["timed_out"]:
        return f"timeout at {r.get('frame')}"
    if r.get("crashed"):
        return f"{r['crashed'].split(':')[0]} at {r.get('frame')}"
    if r["problems"]:
        first_error = r["error_lines"][0] if r["error_lines"] else ""
        return f"{_normalise(r['problems'][0])} -- {_normalise(first_error)}"
    if r.get("internal"):
        return f"internal error (no traceback) -- {_normalise(r['error_lines'][0])}"
    return None


def failure_classes(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    classes: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        key = failure_key(r)
        if key:
            classes.setdefault(key, []).append(r)
    return dict(sorted(classes.items(), key=lambda kv: -len(kv[1])))


def run_campaign(corpus: Corpus, seeds, workers: int = 2, timeout: float = CASE_TIMEOUT,
                 scratch: str | Path | None = None, diagnose_limit: int = 300, progress=None,
                 hard_margin: float = HARD_TIMEOUT_MARGIN, memory_limit: int = MEMORY_LIMIT) -> Campaign:
    """Run every seed in worker processes (see the module docstring); returns the Campaign.

    diagnose_limit: how many `internal error` cases are rerun with -v for their traceback."""
    seeds = list(seeds)
    scratch = Path(scratch or Path(corpus.work) / "cases")
    scratch.mkdir(parents=True, exist_ok=True)
    corpus_file = corpus.save()
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    pending = list(reversed(seeds))
    pool: list[_Worker] = []
    selector = selectors.DefaultSelector()
    diagnosed = [0]
    over_memory: dict[int, int] = {}        # pid -> resident bytes when the watchdog stopped it
    stop = threading.Event()

    def watchdog() -> None:
        aborted: dict[int, float] = {}
        while not stop.wait(0.05):
            for w in list(pool):
                pid = w.proc.pid
                if pid in aborted:
                    if time.monotonic() - aborted[pid] > 2.0 and w.proc.poll() is None:
                        with contextlib.suppress(OSError):
                            w.proc.kill()
                    continue
                rss = _rss(pid)
                if rss > memory_limit:
                    over_memory[pid] = rss
                    aborted[pid] = time.monotonic()
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGABRT)      # faulthandler prints the stack, then it dies

    def spawn(index: int) -> _Worker:
        w = _Worker(index, corpus_file, scratch)
        selector.register(w.proc.stdout, selectors.EVENT_READ, w)
        return w

    def retire(w: _Worker, kill: bool) -> None:
        selector.unregister(w.proc.stdout)
        w.stop(kill)

    def feed(w: _Worker) -> None:
        if pending:
            diagnose = diagnosed[0] < diagnose_limit
            w.send(pending.pop(), timeout, diagnose)
        else:
            w.seed = None

    def lost(w: _Worker, why: str, frame_text: str) -> dict[str, Any]:
        # faulthandler's dump: "Fatal Python error: ...", then the frames, most recent call first
        start = frame_text.find("Fatal Python error")
        if start >= 0:
            dump = frame_text[start:].splitlines()
            frame_text = "\n".join([dump[0]] + [line for line in dump if line.startswith("  File")
                                                and "/tests/fuzzing.py" not in line][:12])
        frames = re.findall(r'File "([^"]+)", line (\d+) in (\w+)', frame_text)
        root = str(_package_root())
        inside = [f for f in frames if f[0].startswith(root) and "/tests/" not in f[0] and "/.venv/" not in f[0]]
        # faulthandler prints the most recent call first
        frame = f"{Path(inside[0][0]).relative_to(root)}:{inside[0][1]} ({inside[0][2]})" if inside else None
        described = {"kind": "?", "base": "?", "mutation": "?", "argv": []}
        with contextlib.suppress(Exception):
            case = make_case(corpus, w.seed, scratch / "describe")
            described = {"kind": case.kind, "base": case.base, "mutation": case.mutation, "argv": case.argv}
        shutil.rmtree(scratch / "describe", ignore_errors=True)
        return {"seed": w.seed, **described, "code": None, "exception": None, "frame": frame,
                "traceback": frame_text, "timed_out": False, "crashed": why, "error_lines": [],
                "traceback_printed": False, "seconds": time.monotonic() - w.started, "internal": False}

    try:
        for i in range(max(1, workers)):
            pool.append(spawn(i))
        threading.Thread(target=watchdog, daemon=True).start()
        while any(w.seed is not None or not w.ready for w in pool) or pending:
            events = selector.select(timeout=1.0)
            for key, _ in events:
                w: _Worker = key.data
                lines = w.read_lines()
                if lines is None:       # the worker died
                    code = w.proc.wait()
                    if w.proc.pid in over_memory:
                        why = (f"worker stopped: resident memory {over_memory[w.proc.pid] >> 20} MiB > "
                               f"{memory_limit >> 20} MiB")
                    elif not w.ready:
                        raise RuntimeError(f"fuzz worker failed to start (exit {code}):\n{w.log_tail()}")
                    else:
                        why = f"worker died (exit {code}, signal {-code if code < 0 else 0}) during the case"
                    result = lost(w, why, w.log_tail(80))
                    result["problems"] = [result["crashed"]]
                    results.append(result)
                    index = w.index
                    retire(w, kill=True)
                    pool[pool.index(w)] = spawn(index)
                    continue
                for line in lines:
                    msg = json.loads(line)
                    if msg.get("ready"):
                        w.ready = True
                        feed(w)
                        continue
                    results.append(msg)
                    diagnosed[0] += "diagnosis" in msg
                    w.done += 1
                    if progress:
                        progress(len(results), len(seeds), msg)
                    if w.done >= CASES_PER_WORKER and pending:
                        index = w.index
                        retire(w, kill=False)
                        pool[pool.index(w)] = spawn(index)
                    else:
                        feed(w)
            now = time.monotonic()
            for w in list(pool):
                if w.seed is not None and w.ready and now - w.started > timeout + hard_margin:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.proc.pid, signal.SIGABRT)     # faulthandler dumps the Python stack
                    time.sleep(1.0)
                    result = lost(w, f"worker killed: no answer within {timeout + hard_margin:.0f} s",
                                  w.log_tail(80))
                    result["timed_out"] = True
                    result["problems"] = [result["crashed"]]
                    results.append(result)
                    index = w.index
                    retire(w, kill=True)
                    pool[pool.index(w)] = spawn(index)
    finally:
        stop.set()
        for w in pool:
            with contextlib.suppress(Exception):
                retire(w, kill=False)
    results.sort(key=lambda r: r["seed"] if r["seed"] is not None else -1)
    return Campaign(results, time.monotonic() - t0, str(corpus.work))


# ----------------------------------------------------------------------------------------------------------
# command line: reproduce a seed, or run a campaign by hand
# ----------------------------------------------------------------------------------------------------------
def _default_deeploy() -> Path | None:
    shared = Path(os.environ.get("TINYDEPLOY_SHARED", HERE.parents[1] / "shared"))
    path = shared / "conformance" / "deeploy"
    return path if path.is_dir() else None


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tinydeploy fuzzing: reproduce seeds or run a campaign")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="reproduce cases in this process (prints argv, outputs and the verdict)")
    p.add_argument("--work", default="/tmp/tinydeploy-fuzz", help="corpus directory (built when missing)")
    p.add_argument("--seed", type=int, action="append", required=True)
    p.add_argument("--timeout", type=float, default=CASE_TIMEOUT)
    p.add_argument("-v", "--verbose", action="store_true", help="rerun with tinydeploy -v to show the traceback")
    p.add_argument("--keep", action="store_true", help="keep the mutated inputs under WORK/repro/case-SEED")
    p = sub.add_parser("campaign", help="run seeds A..B-1 in worker processes")
    p.add_argument("--work", default="/tmp/tinydeploy-fuzz")
    p.add_argument("--seeds", default="0:300", help="A:B")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=CASE_TIMEOUT)
    p.add_argument("--json", help="write every result to this file")
    p = sub.add_parser("worker")
    p.add_argument("corpus")
    p.add_argument("scratch")
    args = parser.parse_args(argv)
    if args.command == "worker":
        _worker(args.corpus, args.scratch)
        return 0
    corpus = prepare_corpus(args.work, _default_deeploy())
    if args.command == "campaign":
        a, b = (int(x) for x in args.seeds.split(":"))
        campaign = run_campaign(corpus, range(a, b), args.workers, args.timeout,
                                progress=lambda done, total, r: print(f"\r{done}/{total}", end="", flush=True))
        print()
        if args.json:
            Path(args.json).write_text(json.dumps(campaign.results, indent=1, default=str))
        print(campaign.failure_report(20) if campaign.failures else campaign.summary())
        return 1 if campaign.failures else 0
    scratch = Path(args.work) / "repro"
    status = 0
    for seed in args.seed:
        r = run_case(corpus, seed, scratch, args.timeout, diagnose=args.verbose, keep=args.keep)
        print(f"seed {seed} [{r['kind']} {r['base']}] {r['mutation']}")
        print(f"  argv: tinydeploy {' '.join(r['argv'])}")
        print(f"  exit {r['code']} in {r.get('seconds', 0):.2f} s; problems: {r['problems'] or 'none'}")
        for name in ("stdout_tail", "stderr_tail", "traceback"):
            if r.get(name):
                print(f"  {name}:\n" + "\n".join("    " + line for line in r[name].splitlines()))
        if r.get("diagnosis"):
            print("  with -v:\n" + "\n".join("    " + line for line in r["diagnosis"]["traceback"].splitlines()))
        if args.verbose and r["exception"] is None and not r.get("diagnosis") and r["code"] == 2:
            case = make_case(corpus, seed, scratch / f"case-{seed}-v")
            v = parse_printed_traceback(run_argv(["-v", *case.argv], args.timeout, full_stderr=True)["stderr"])
            if v:
                print("  with -v:\n" + "\n".join("    " + line for line in v["traceback"].splitlines()))
        status |= bool(r["problems"])
    return status


if __name__ == "__main__":
    sys.exit(_cli())
