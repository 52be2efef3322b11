"""Writes a self-contained C project for an integer graph: network.[ch], kernels.[ch], weights, golden vectors,
a test harness, Makefile and CMakeLists.txt, plus `tinydeploy.json` (the manifest `verify` and `simulate` read).

Pure function of (graph, target, inputs, options): the same input gives byte-identical files (no timestamps,
no absolute paths in sources, everything ordered by the graph).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ..errors import TinyDeployError, node_context
from ..ir.graph import Graph
from ..ir.interpreter import cast_outputs, run_graph
from ..ir.ops import node_macs
from ..passes.fuse_attention import has_accelerator
from ..passes.memory import ArenaPlan, plan_arena, reshape_aliases, scratch_name
from ..resources import package_path
from ..target import AccelSpec, DmaSpec, Target
from .lowering import CTYPES, Call, Kernel, Lowering, Refs

BACKENDS_DIR = package_path("backends")
MANIFEST = "tinydeploy.json"
MANIFEST_FORMAT = 1
#: constants above this many bytes in total go into a binary blob (.incbin) instead of C initialisers:
#: compilers take minutes on 100 MB of initialiser text (gcc: 78 s for 25 MB of int8 measured here).
C_ARRAY_WEIGHTS_LIMIT = 2 * 1024 * 1024
WEIGHT_ALIGNMENT = 16
IO_ALIGNMENT = 8


@dataclass
class ProjectOptions:
    weights: str = "auto"          # auto | c | incbin
    template_dirs: list[Path] = field(default_factory=lambda: [BACKENDS_DIR / "generic" / "templates"])
    runtime_dirs: list[Path] = field(default_factory=lambda: [BACKENDS_DIR / "generic" / "runtime"])
    model_path: str = ""
    #: extra templates rendered into the project (name without .j2), e.g. a linker script
    extra_files: list[str] = field(default_factory=list)
    #: run every kernel on L1 tiles moved by DMA (passes/tile.py; cluster targets)
    tiled: bool = False
    #: L2 bytes for weights staged from L3 (passes/stage.py); None: what the arena and the code estimate leave
    stage_bytes: int | None = None


@dataclass
class IoSlot:
    """One graph input or output inside the packed `in`/`out` byte buffers of network_run()."""

    name: str
    cname: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def element_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def count(self) -> int:
        return self.nbytes // self.element_bytes

    @property
    def is_signed(self) -> int:
        return int(not self.dtype.startswith("u"))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "c_name": self.cname, "dtype": self.dtype, "shape": list(self.shape),
                "offset": self.offset, "nbytes": self.nbytes}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> IoSlot:
        """A slot as the manifest (tinydeploy.json) records it."""
        return cls(entry["name"], entry.get("c_name", ""), entry["dtype"], tuple(entry["shape"]), entry["offset"],
                   entry["nbytes"])


# --- naming ----------------------------------------------------------------------------------------------
NOISE = (("_DequantizeLinear_Output", ""), ("_QuantizeLinear_Output", "_q"), ("_output_0", ""))


def _tokens(name: str) -> list[str]:
    for noise, replacement in NOISE:
        name = name.replace(noise, replacement)
    return [tok for tok in re.split(r"[^0-9A-Za-z]+", name) if tok]


def common_prefix(names: list[str]) -> list[str]:
    """The longest token prefix that more than half of the names share (e.g. 'inner mobilebert')."""
    prefix: list[str] = []
    token_lists = [_tokens(n) for n in names]
    while True:
        counts: dict[tuple[str, ...], int] = {}
        for toks in token_lists:
            if len(toks) > len(prefix) + 1 and toks[:len(prefix)] == prefix:
                key = tuple(toks[:len(prefix) + 1])
                counts[key] = counts.get(key, 0) + 1
        best = max(counts.items(), key=lambda kv: (kv[1], kv[0]), default=None)
        if best is None or best[1] * 2 <= len(names):
            break
        prefix = list(best[0])
    # keep the word before an index ('layer' in 'layer_0'): a bare number names nothing
    while prefix and any(len(t) > len(prefix) and t[:len(prefix)] == prefix and t[len(prefix)].isdigit()
                         for t in token_lists):
        prefix.pop()
    return prefix


def c_identifier(name: str, prefix: str, strip: list[str], max_len: int = 48) -> str:
    """A readable C identifier from an ONNX/IR name: shared path prefix dropped, long names keep their tail."""
    toks = _tokens(name)
    if toks[:len(strip)] == strip and len(toks) > len(strip):
        toks = toks[len(strip):]
    while len(toks) > 1 and (len("_".join(toks)) > max_len or toks[0].isdigit()):
        toks = toks[1:]
    ident = "_".join(toks)[-max_len:] or "tensor"
    return f"{prefix}{ident}"


def unique_identifiers(names: list[str], prefix: str, taken: set[str]) -> dict[str, str]:
    result = {}
    strip = common_prefix(names)
    for name in names:
        base = c_identifier(name, prefix, strip)
        ident, i = base, 2
        while ident in taken:
            ident, i = f"{base}_{i}", i + 1
        taken.add(ident)
        result[name] = ident
    return result


def c_comment(text: str | bytes) -> str:
    """A name safe inside a C comment: decoded, printable, no comment terminator or line continuation."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text.replace("*/", "* /").replace("\\", "/")


# --- layout of inputs/outputs ------------------------------------------------------------------------------
def io_slots(graph: Graph, names: list[str], cnames: dict[str, str]) -> list[IoSlot]:
    slots, offset = [], 0
    for name in names:
        t = graph.tensors[name]
        if t.dtype not in CTYPES:
            raise TinyDeployError(f"graph input/output dtype {t.dtype} is not an integer type", tensor=name)
        slots.append(IoSlot(name, cnames[name], t.dtype, t.shape, offset, t.nbytes))
        offset = (offset + t.nbytes + IO_ALIGNMENT - 1) // IO_ALIGNMENT * IO_ALIGNMENT
    return slots


def pack(slots: list[IoSlot], values: dict[str, np.ndarray]) -> bytes:
    blob = bytearray(_slots_bytes(slots))
    for slot in slots:
        data = np.ascontiguousarray(values[slot.name].astype(np.dtype(slot.dtype).newbyteorder("<"))).tobytes()
        blob[slot.offset:slot.offset + slot.nbytes] = data
    return bytes(blob)


# --- C text helpers -------------------------------------------------------------------------------------------
def c_initializer(values: np.ndarray, per_line: int = 24) -> str:
    """Comma-separated integers, `per_line` per line (fast path for 8-bit data through a string table)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return "0"
    if flat.dtype in (np.int8, np.uint8):
        table = np.array([str(v) for v in range(-128, 256)], dtype=object)
        text = table[flat.astype(np.int16) + 128]
    else:
        text = np.array([str(int(v)) for v in flat], dtype=object)
    lines = [", ".join(text[i:i + per_line]) for i in range(0, len(text), per_line)]
    return ",\n    ".join(lines)


# --- the project ----------------------------------------------------------------------------------------------
@dataclass
class Project:
    """Everything rendered for one graph (kept for reports and tests)."""

    graph: Graph
    plan: ArenaPlan
    calls: list[Call]
    kernels: list[Kernel]
    inputs: list[IoSlot]
    outputs: list[IoSlot]
    weights_bytes: int
    weights_format: str
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)    # what the backend's passes did, for the user


def build_project(graph: Graph, target: Target, out_dir: str | Path, inputs: dict[str, np.ndarray],
                  options: ProjectOptions | None = None) -> Project:
    """Lower, plan and write the project into out_dir (created; existing generated files are replaced)."""
    options = options or ProjectOptions()
    out = Path(out_dir)
    taken: set[str] = set()
    io_names = unique_identifiers(graph.inputs + graph.outputs, "t_", taken)
    activations = [o for node in graph.nodes for o in node.outputs if o not in io_names]
    act_names = unique_identifiers(activations, "t_", taken)
    const_names = unique_identifiers([t.name for t in graph.constants()], "w_", taken)
    cnames = {**io_names, **act_names, **const_names}
    aliases = reshape_aliases(graph)
    refs = Refs(pointer=lambda name: cnames[name], scratch=lambda step: f"s_{step}", aliases=aliases)
    lowering = Lowering(graph, refs, cores=int(target.section("cluster").get("cores", 1)),
                        blocked_matmul=options.tiled, cmsis_nn=target.backend == "cmsis")
    tiling, residency, staging = None, None, None
    if options.tiled:
        from .riscv.tiled import choose_views, lower_tiled

        refs.views = choose_views(graph, target, lowering, aliases)
        plan = plan_arena(graph, {}, aliases=aliases)   # kernel scratch lives in the L1 tiles
        constant_bytes = sum(t.nbytes for t in graph.constants())
        weights_level = _placement(target, plan, constant_bytes, tiled=True)["weights_region"].lower()
        calls, tiling, residency, staging = lower_tiled(graph, target, lowering, refs, weights_level,
                                                        _stage_capacity(target, graph, plan, options.stage_bytes))
    else:
        calls = []
        for i, node in enumerate(graph.nodes):
            with node_context(node.origin or node.name, node.op, "lowering"):
                calls.append(lowering.lower(i, node))
        plan = plan_arena(graph, {i: c.scratch_bytes for i, c in enumerate(calls) if c.scratch_bytes},
                          aliases=aliases)
    in_slots = io_slots(graph, graph.inputs, cnames)
    out_slots = io_slots(graph, graph.outputs, cnames)
    golden = cast_outputs(graph, run_graph(graph, inputs))
    constants = _constant_arrays(graph, calls, cnames)
    if tiling:
        from .riscv.tiled import pack_constants

        constants = pack_constants(constants, tiling, cnames)
    weights_format = _weights_format(options.weights, constants)
    weights_bytes = sum(v.nbytes for v in constants.values())
    placement = _placement(target, plan, weights_bytes, tiled=options.tiled)
    env = _environment(options.template_dirs)
    rendered = _render_kernels(env, lowering)
    context = _context(graph, target, plan, calls, rendered, cnames, in_slots, out_slots, constants, weights_format,
                       placement, options)
    context["l1_tiles_bytes"] = tiling.l1_peak if tiling else 0
    context["l1_resident_bytes"] = residency.size if residency else 0
    context["stage_bytes"] = staging.size if staging else 0
    context["stage_count"] = staging.transfers if staging else 0
    if residency and residency.offsets:      # activations kept in L1 between accelerator steps
        for row in context["buffers"]:
            root = residency.aliases.get(row["name"], row["name"]) if row.get("name") else None
            if root in residency.offsets:
                row.update(base="td_l1_resident", offset=residency.address(root))
    context["arena_used"] = any(row["base"] == "td_arena.bytes" for row in context["buffers"])
    context["nn_max_depth"] = max((graph.tensors[n.inputs[0]].shape[-1] for n in graph.nodes
                                   if n.op in ("FullyConnectedS8", "BatchMatMulS8")), default=0)
    context["softmax_max_cols"] = max((graph.tensors[n.inputs[0]].shape[-1] for n in graph.nodes
                                       if n.op == "SoftmaxS8"), default=0)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "network.h": env.get_template("network.h.j2").render(**context),
        "network.c": env.get_template("network.c.j2").render(**context),
        "kernels.h": env.get_template("kernels.h.j2").render(**context),
        "kernels.c": env.get_template("kernels.c.j2").render(**context, rendered=rendered),
        "weights.h": env.get_template("weights.h.j2").render(**context),
        "golden.h": env.get_template("golden.h.j2").render(**context),
        "golden.c": _golden_c(env, context, pack(in_slots, inputs), pack(out_slots, golden)),
        "main.c": env.get_template("main.c.j2").render(**context),
        "Makefile": env.get_template("Makefile.j2").render(**context),
        "CMakeLists.txt": env.get_template("CMakeLists.txt.j2").render(**context),
    }
    files.update(_weights_files(env, context, constants, weights_format))
    for name in options.extra_files:
        files[name] = env.get_template(f"{name}.j2").render(**context)
    for stale in ("weights.c", "weights.S", "weights.bin", "outputs.npz", "report.json", "mismatch.npz"):
        if stale not in files and (out / stale).exists():
            (out / stale).unlink()
    for name, text in files.items():
        path = out / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text if text.endswith("\n") else text + "\n")
    written = set(files) | {"golden.npz", MANIFEST}
    for runtime_dir in options.runtime_dirs:
        for src in sorted(runtime_dir.iterdir()):
            if src.is_file():
                shutil.copyfile(src, out / src.name)
                written.add(src.name)
    np.savez(out / "golden.npz", **{f"input:{k}": v for k, v in inputs.items()},
             **{f"output:{k}": v for k, v in golden.items()})
    manifest = _manifest(graph, target, plan, calls, cnames, in_slots, out_slots, weights_bytes, weights_format,
                         placement, options, refs.views)
    manifest["files"] = sorted(written)      # what simulate/verify need before they run make
    manifest["data_sha256"] = {name: hashlib.sha256(text).hexdigest() for name, text in sorted(files.items())
                               if isinstance(text, bytes)}     # binary blobs: a damaged one is named, not run
    if tiling is not None:
        manifest["tiling"] = {"l1_budget": tiling.l1_budget, "l1_peak": tiling.l1_peak,
                              "steps": [tiling.steps[i].to_json() for i in sorted(tiling.steps)]}
    if staging is not None:
        manifest["staging"] = {"capacity": staging.capacity, "bytes": staging.size, "constants": len(staging.buffers),
                               "transfers": staging.transfers, "staged_bytes": staging.nbytes,
                               "buffers": [{"key": b.key, "bytes": b.nbytes, "offset": b.offset, "issue": b.issue,
                                            "first": b.first, "last": b.last} for b in staging.buffers]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_text) + "\n")
    return Project(graph, plan, calls, list(lowering.kernels.values()), in_slots, out_slots, weights_bytes,
                   weights_format, manifest)


def _json_text(value: Any) -> str:
    """Attribute values json cannot hold (ONNX string attributes arrive as bytes) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value.item() if isinstance(value, np.generic) else value)


def _environment(template_dirs: list[Path]) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=False, lstrip_blocks=False)


def _render_kernels(env: jinja2.Environment, lowering: Lowering) -> list[str]:
    return [env.get_template(f"kernels/{k.family}.c.j2").render(k=k.context()).strip()
            for k in lowering.kernels.values()]


def kernel_prototype(source: str) -> str:
    """The declaration of a rendered kernel: the signature of its last (public) function up to the brace.

    Helpers a template defines before the kernel are `static` and stay private to kernels.c."""
    body = re.sub(r"/\*.*?\*/", "", source, flags=re.S).strip()
    end = body.rindex("\n{")
    previous = body.rfind("\n}", 0, end)
    start = previous + 2 if previous >= 0 else 0
    lines = [line for line in body[start:end].strip().splitlines() if not line.startswith("#")]
    return "\n".join(lines).strip() + ";"


def _constant_arrays(graph: Graph, calls: list[Call], cnames: dict[str, str]) -> dict[str, np.ndarray]:
    """C name -> values of every constant the code reads (graph constants, then kernel parameters)."""
    used = {name for node in graph.nodes for name in node.inputs if name}
    arrays = {cnames[t.name]: t.data.astype(t.dtype) for t in graph.constants() if t.name in used}
    for call in calls:
        arrays.update(call.params)
    return arrays


def _weights_format(requested: str, constants: dict[str, np.ndarray]) -> str:
    if requested not in ("auto", "c", "incbin"):
        raise TinyDeployError(f"--weights must be auto, c or incbin (got '{requested}')")
    if requested != "auto":
        return requested
    total = sum(v.nbytes for v in constants.values())
    return "c" if total <= C_ARRAY_WEIGHTS_LIMIT else "incbin"


def _weights_layout(constants: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    layout, offset = [], 0
    for name, values in constants.items():
        dtype = str(values.dtype)
        layout.append({"name": name, "ctype": CTYPES[dtype], "dtype": dtype, "count": max(values.size, 1),
                       "shape": list(values.shape), "offset": offset, "nbytes": values.nbytes})
        offset = (offset + values.nbytes + WEIGHT_ALIGNMENT - 1) // WEIGHT_ALIGNMENT * WEIGHT_ALIGNMENT
    return layout


def _weights_files(env: jinja2.Environment, context: dict[str, Any], constants: dict[str, np.ndarray],
                   weights_format: str) -> dict[str, str | bytes]:
    if weights_format == "c":
        items = [dict(entry, values=c_initializer(constants[entry["name"]])) for entry in context["weights"]]
        return {"weights.c": env.get_template("weights.c.j2").render(**context, items=items)}
    blob = bytearray(context["weights_blob_bytes"])
    for entry in context["weights"]:
        data = constants[entry["name"]]
        blob[entry["offset"]:entry["offset"] + entry["nbytes"]] = data.astype(data.dtype.newbyteorder("<")).tobytes()
    return {"weights.S": env.get_template("weights.S.j2").render(**context), "weights.bin": bytes(blob)}


def _golden_c(env: jinja2.Environment, context: dict[str, Any], golden_in: bytes, golden_out: bytes) -> str:
    as_int8 = [np.frombuffer(blob, dtype=np.int8) for blob in (golden_in, golden_out)]
    return env.get_template("golden.c.j2").render(**context, golden_input=c_initializer(as_int8[0]),
                                                  golden_output=c_initializer(as_int8[1]))


def _accel_memories(target: Target) -> dict[str, int]:
    """The accelerator's job memories (bytes) for the driver, which splits a tile's rows into jobs that fit."""
    if not has_accelerator(target):
        return {}
    spec = AccelSpec.from_section(target.section("accelerator"))
    return {"a_bytes": spec.a_bytes, "y_bytes": spec.y_bytes}


def _buffer_table(graph: Graph, plan: ArenaPlan, cnames: dict[str, str], in_slots: list[IoSlot],
                  out_slots: list[IoSlot], calls: list[Call]) -> list[dict[str, Any]]:
    """One #define per activation: where its bytes are (arena offset, or the caller's in/out buffer)."""
    rows = []
    for slot in in_slots:
        rows.append({"cname": slot.cname, "ctype": CTYPES[slot.dtype], "const": True, "base": "in",
                     "offset": slot.offset, "tensor": graph.tensors[slot.name]})
    for slot in out_slots:
        rows.append({"cname": slot.cname, "ctype": CTYPES[slot.dtype], "const": False, "base": "out",
                     "offset": slot.offset, "tensor": graph.tensors[slot.name]})
    io = {s.name for s in in_slots + out_slots}
    for node in graph.nodes:
        for name in node.outputs:
            if name in io:
                continue
            root = plan.aliases.get(name, name)
            rows.append({"cname": cnames[name], "ctype": CTYPES[graph.tensors[name].dtype], "const": False,
                         "base": "td_arena.bytes", "offset": plan.offsets[root], "tensor": graph.tensors[name],
                         "alias": cnames[root] if root != name else "", "name": name})
    for step, call in enumerate(calls):
        if call.scratch_bytes:
            rows.append({"cname": f"s_{step}", "ctype": "int8_t", "const": False, "base": "td_arena.bytes",
                         "offset": plan.offsets[scratch_name(step)], "tensor": None, "scratch": call.scratch_bytes})
    return rows


def _trace_ids(graph: Graph) -> list[str]:
    return [o for node in graph.nodes for o in node.outputs]


def _context(graph: Graph, target: Target, plan: ArenaPlan, calls: list[Call], rendered_kernels: list[str],
             cnames: dict[str, str], in_slots: list[IoSlot], out_slots: list[IoSlot],
             constants: dict[str, np.ndarray], weights_format: str, placement: dict[str, Any],
             options: ProjectOptions) -> dict[str, Any]:
    weights = _weights_layout(constants)
    trace = {name: i for i, name in enumerate(_trace_ids(graph))}
    steps = []
    for index, call in enumerate(calls):
        node = call.node
        outs = [{"cname": cnames[o], "trace_id": trace[o], "nbytes": graph.tensors[o].nbytes,
                 "desc": f"{graph.tensors[o].dtype}{list(graph.tensors[o].shape)}"} for o in node.outputs]
        steps.append({"index": index, "op": node.op, "name": c_comment(node.name),
                      "origin": c_comment(node.origin or node.name), "statements": call.statements, "outputs": outs,
                      "descriptors": call.descriptors})
    blob_bytes = (weights[-1]["offset"] + weights[-1]["nbytes"]) if weights else 0
    return {
        **placement,
        "cluster": target.section("cluster"), "memory": target.section("memory"), "mmio": target.section("mmio"),
        "iss": target.section("iss"),
        "event": target.section("event"),
        "registers": [(k, v) for k, v in target.section("mmio").items() if k not in ("base", "size")],
        "accel_memories": _accel_memories(target),
        "events": [(k, v) for k, v in target.section("event").items() if k not in ("base", "size")],
        "model_name": c_comment(Path(options.model_path).name if options.model_path else graph.name),
        "target": target, "plan": plan, "steps": steps, "inputs": in_slots, "outputs": out_slots,
        "buffers": _buffer_table(graph, plan, cnames, in_slots, out_slots, calls),
        "kernel_prototypes": [kernel_prototype(src) for src in rendered_kernels],
        "weights": weights, "weights_format": weights_format, "weights_blob_bytes": blob_bytes,
        "weights_total": sum(v.nbytes for v in constants.values()),
        "input_bytes": _slots_bytes(in_slots), "output_bytes": _slots_bytes(out_slots),
        "ctypes": CTYPES, "c_comment": c_comment,
    }


#: L2 kept free for code, golden vectors, I/O buffers and small constants when deciding where weights go
L2_RESERVE = 1024 * 1024


#: L2 the firmware's code, tables and golden vectors take beside the arena, as the staging ring must leave it
#: before the build is linked: a base, per step (its function and DMA tables; full MobileBERT on cluster8 measured
#: 605 B per step over 1,840 steps), and twice the graph's inputs and outputs (golden vectors, output buffer)
STAGE_CODE_BASE = 256 * 1024
STAGE_CODE_PER_STEP = 640


def _stage_capacity(target: Target, graph: Graph, plan: ArenaPlan, requested: int | None = None) -> int:
    """L2 bytes for weights staged from L3 (passes/stage.py) on a target with an I/O DMA whose L3 is slower than L2
    (else 0): what the arena and the code estimate leave, or at most `requested` (compile --stage-bytes)."""
    memory, mmio = target.section("memory"), target.section("mmio") or {}
    if "io_dma_start" not in mmio or "l2_bytes" not in memory:
        return 0
    dma = DmaSpec.from_target(target)
    if dma.bandwidth[("l3", "l1")] >= dma.bandwidth[("l2", "l1")] and not dma.l3_burst:
        return 0                                 # an L3 as fast as L2 (weights on chip): a copy would only add a hop
    io_bytes = sum(graph.tensors[name].nbytes for name in (*graph.inputs, *graph.outputs))
    code = STAGE_CODE_BASE + STAGE_CODE_PER_STEP * len(graph.nodes) + 2 * io_bytes
    free = max(0, int(memory["l2_bytes"]) - code - plan.size)
    return free if requested is None else min(free, requested)


def _placement(target: Target, plan: ArenaPlan, weight_bytes: int, tiled: bool = False) -> dict[str, Any]:
    """Which memory holds the arena and the weights (cluster targets); portable targets: default sections.

    Tiled builds keep the arena in L2: L1 holds the tiles."""
    memory, cluster = target.section("memory"), target.section("cluster")
    if "sram_bytes" in memory:   # microcontroller: arena in SRAM (.bss), weights in XIP flash
        sram = memory["sram_bytes"] - memory.get("stack_bytes", 0)
        if plan.size > sram:
            raise TinyDeployError(f"model too large for {target.name}: activation arena {plan.size} B does not fit "
                                  f"its {memory['sram_bytes']} B of SRAM beside a {memory.get('stack_bytes', 0)} B "
                                  f"stack")
        if weight_bytes > memory["xip_bytes"]:
            raise TinyDeployError(f"model too large for {target.name}: {weight_bytes} B of weights, XIP flash "
                                  f"{memory['xip_bytes']} B")
        return {"arena_section": "", "arena_region": "SRAM", "weights_region": "XIP"}
    if "l1_bytes" not in memory:
        return {"arena_section": "", "arena_region": "default", "weights_region": "default"}
    stacks = int(cluster.get("cores", 1)) * int(memory.get("stack_bytes_per_core", 0))
    arena_in_l1 = not tiled and plan.size <= memory["l1_bytes"] - stacks
    l2_free = memory["l2_bytes"] - L2_RESERVE - (0 if arena_in_l1 else plan.size)
    weights_region = "L2" if weight_bytes <= l2_free else "L3"
    if weights_region == "L3" and weight_bytes > memory["l3_bytes"]:
        raise TinyDeployError(f"model too large for {target.name}: {weight_bytes} B of weights, L2 "
                              f"{memory['l2_bytes']} B, L3 {memory['l3_bytes']} B")
    if not arena_in_l1 and plan.size > memory["l2_bytes"] - L2_RESERVE:
        raise TinyDeployError(f"model too large for {target.name}: activation arena {plan.size} B does not fit "
                              f"L1 ({memory['l1_bytes']} B) or L2 ({memory['l2_bytes']} B)")
    return {"arena_section": ".l1.bss" if arena_in_l1 else "", "arena_region": "L1" if arena_in_l1 else "L2",
            "weights_region": weights_region}


def _slots_bytes(slots: list[IoSlot]) -> int:
    return slots[-1].offset + slots[-1].nbytes if slots else 0


def _manifest(graph: Graph, target: Target, plan: ArenaPlan, calls: list[Call], cnames: dict[str, str],
              in_slots: list[IoSlot], out_slots: list[IoSlot], weights_bytes: int, weights_format: str,
              placement: dict[str, Any], options: ProjectOptions, views: dict[str, Any]) -> dict[str, Any]:
    producers = graph.producers()
    onnx_names = graph.meta.get("onnx_names", {})
    tensors = []
    for i, name in enumerate(_trace_ids(graph)):
        node, t = producers[name], graph.tensors[name]
        tensors.append({"id": i, "name": name, "c_name": cnames[name], "onnx_name": onnx_names.get(name, name),
                        "dtype": t.dtype, "shape": list(t.shape), "node": node.name, "op": node.op,
                        "origin": node.origin})
        if name in views:                      # its bytes are a transpose of it (backends/riscv/views.py)
            tensors[-1]["storage"] = {"shape": list(views[name].shape), "perm": list(views[name].perm)}
    model_sha = ""
    if options.model_path and Path(options.model_path).is_file():
        model_sha = hashlib.sha256(Path(options.model_path).read_bytes()).hexdigest()
    return {
        "format": MANIFEST_FORMAT, "target": target.name, "backend": target.backend,
        "arithmetic_target": graph.meta.get("target", target.name),
        "input_ranges": graph.meta.get("input_ranges", {}),
        "model": str(Path(options.model_path).resolve()) if options.model_path else "", "model_sha256": model_sha,
        "inputs": [s.to_json() for s in in_slots], "outputs": [s.to_json() for s in out_slots],
        "tensors": tensors,
        "arena": {"bytes": plan.size, "sum_of_activations": plan.total_bytes, "lower_bound": plan.lower_bound,
                  "buffers": [{"name": b.name, "offset": plan.offsets[b.name], "bytes": b.size, "first": b.first,
                               "last": b.last} for b in plan.buffers]},
        "placement": placement,
        "weights": {"bytes": weights_bytes, "format": weights_format},
        "nodes": len(graph.nodes), "kernels": sorted({k.name for c in calls for k in c.kernels}),
        "steps": [{"index": i, "name": c.node.name, "op": c.node.op, "origin": c.node.origin,
                   "macs": node_macs(graph, c.node)} for i, c in enumerate(calls)],
    }
