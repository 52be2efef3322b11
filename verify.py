"""`tinydeploy verify BUILD`: run a compiled project and compare it with the golden interpreter, bit for bit.

Outputs are compared element by element with the golden vectors written at compile time. With `layers`,
every intermediate tensor the firmware produced (its trace) is compared, in execution order, with the
golden interpreter's value; the first diverging tensor names the layer, op, ONNX node and element.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TinyDeployError

MISMATCH_FILE = "mismatch.npz"


@dataclass
class Mismatch:
    """The first element where the build and the golden interpreter disagree."""

    tensor: str
    node: str
    op: str
    origin: str
    index: tuple[int, ...]
    got: int
    expected: int
    wrong: int
    total: int
    position: int = -1        # trace position (layer number) for --layers
    tile: str = ""            # which L1 tile of the step computed the element (cluster builds)

    def describe(self) -> str:
        where = f"layer {self.position} " if self.position >= 0 else ""
        tile = f" ({self.tile})" if self.tile else ""
        return (f"{where}{self.op} '{self.node}' (ONNX {self.origin or '?'}) tensor '{self.tensor}': "
                f"{self.wrong} of {self.total} elements differ; first at index {list(self.index)}{tile}: "
                f"got {self.got}, golden {self.expected}")


def tile_of(manifest: dict[str, Any], node: str, index: tuple[int, ...]) -> str:
    """The L1 tile (passes/tile.py decision in the manifest) that produced output element `index` of `node`."""
    for step in manifest.get("tiling", {}).get("steps", []):
        if step["node"] != node:
            continue
        if step["tiles"] <= 1 or step["axis"] is None or step["axis"] >= len(index):
            return f"tile 1 of {step['tiles']}"
        number = index[step["axis"]] // step["tile"]
        return f"tile {number + 1} of {step['tiles']}: {step['tile']} along axis {step['axis']}"
    return ""


@dataclass
class VerifyResult:
    bit_exact: bool
    outputs: dict[str, tuple[int, int]]          # name -> (elements, mismatching elements)
    first: Mismatch | None = None
    layers_checked: int = 0
    log: list[str] = field(default_factory=list)


MANIFEST_KEYS = {"target": str, "backend": str, "inputs": list, "outputs": list, "tensors": list}
SLOT_KEYS = {"name": str, "dtype": str, "shape": list, "offset": int, "nbytes": int}


def load_manifest(build_dir: Path) -> dict[str, Any]:
    """BUILD/tinydeploy.json, checked enough that a damaged one is one error naming it, not a crash later."""
    path = build_dir / "tinydeploy.json"
    if not build_dir.is_dir():
        raise TinyDeployError(f"build folder '{build_dir}' does not exist" if not build_dir.exists()
                              else f"'{build_dir}' is a file, not a build folder")
    if not path.is_file():
        raise TinyDeployError(f"{build_dir} is not a tinydeploy build (no tinydeploy.json); run tinydeploy compile")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TinyDeployError(f"{path} is damaged ({str(exc).splitlines()[0][:120]}); recompile the build") from None
    problem = manifest_problem(manifest)
    if problem:
        raise TinyDeployError(f"{path} is damaged ({problem}); recompile the build")
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """Why a parsed manifest cannot be used (the keys simulate and verify read), or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            return f"'{key}' missing or not a {kind.__name__}"
    for key in ("inputs", "outputs"):
        for slot in manifest[key]:
            if not isinstance(slot, dict) or any(not isinstance(slot.get(k), t) for k, t in SLOT_KEYS.items()):
                return f"an entry of '{key}' lacks {', '.join(SLOT_KEYS)}"
            try:
                dtype = np.dtype(slot["dtype"])
            except TypeError:
                return f"'{key}' entry '{slot['name']}' has dtype {slot['dtype']!r}"
            shape = slot["shape"]
            if (dtype.kind not in "iu" or not all(isinstance(d, int) and d >= 0 for d in shape)
                    or slot["offset"] < 0 or slot["nbytes"] != dtype.itemsize * int(np.prod(shape, dtype=np.int64))):
                return f"'{key}' entry '{slot['name']}' has an inconsistent dtype/shape/size"
    for entry in manifest["tensors"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or \
                not isinstance(entry.get("id"), int) or not isinstance(entry.get("dtype"), str):
            return "an entry of 'tensors' lacks name, id or dtype"
    for key in ("steps",):
        if key in manifest and not (isinstance(manifest[key], list)
                                    and all(isinstance(e, dict) for e in manifest[key])):
            return f"'{key}' is not a list of objects"
    return None


def compare_arrays(name: str, got: np.ndarray, expected: np.ndarray, info: dict[str, Any],
                   position: int = -1) -> Mismatch | None:
    """None when identical, else the first differing element (C order)."""
    got, expected = np.asarray(got).astype(np.int64), np.asarray(expected).astype(np.int64)
    if got.shape != expected.shape:
        raise TinyDeployError(f"shape {list(got.shape)} != golden {list(expected.shape)}", tensor=name)
    diff = got != expected
    if not diff.any():
        return None
    flat = int(np.flatnonzero(diff.reshape(-1))[0])
    index = tuple(int(i) for i in np.unravel_index(flat, got.shape))
    return Mismatch(name, info.get("node", ""), info.get("op", ""), info.get("origin", ""), index,
                    int(got.reshape(-1)[flat]), int(expected.reshape(-1)[flat]), int(diff.sum()), got.size, position)


def golden_outputs(build_dir: Path, manifest: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) stored by compile in golden.npz, checked against the build's manifest."""
    from .frontend.inputs import read_npz

    path = build_dir / "golden.npz"
    try:
        data = read_npz(path)
    except TinyDeployError as exc:
        raise TinyDeployError(f"golden vectors of {build_dir}: {exc.reason}; recompile the build") from None
    inputs = {s["name"]: data[f"input:{s['name']}"] for s in manifest["inputs"] if f"input:{s['name']}" in data}
    outputs = {s["name"]: data[f"output:{s['name']}"] for s in manifest["outputs"] if f"output:{s['name']}" in data}
    for kind, values in (("inputs", inputs), ("outputs", outputs)):
        for slot in manifest[kind]:
            value = values.get(slot["name"])
            if value is None or list(value.shape) != slot["shape"] or value.dtype.kind not in "iu":
                raise TinyDeployError(f"{path} is damaged ({kind[:-1]} '{slot['name']}' missing or not an integer "
                                      f"array of shape {slot['shape']}); recompile the build")
    return inputs, outputs


def integer_graph(manifest: dict[str, Any]):
    """The build's integer graph, re-derived from the model it came from (which must be unchanged)."""
    from .frontend.onnx_loader import import_model
    from .passes.integerize import integerize

    model = Path(str(manifest.get("model", "")))
    if not model.is_file():
        raise TinyDeployError(f"the model this build came from is needed, not found at '{model}'")
    if manifest.get("model_sha256") and hashlib.sha256(model.read_bytes()).hexdigest() != manifest["model_sha256"]:
        raise TinyDeployError(f"model '{model}' changed since this build was compiled; recompile first")
    ranges = {k: tuple(v) for k, v in manifest.get("input_ranges", {}).items()} or None
    arithmetic = manifest.get("arithmetic_target", manifest["target"])
    return integerize(import_model(str(model), input_ranges=ranges), arithmetic)


def golden_tensors(manifest: dict[str, Any], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every intermediate tensor from the golden interpreter, re-deriving the integer graph from the model."""
    from .backends import backend_passes
    from .ir.interpreter import run_graph

    graph, _ = backend_passes(integer_graph(manifest), manifest["target"])  # same rewrites: same tensor names
    return run_graph(graph, inputs, keep_all=True)


def golden_samples(manifest: dict[str, Any], path: str | Path) -> list[Sample]:
    """Samples from an inputs file (checked against the model's inputs) with their golden outputs."""
    from .frontend.inputs import load_inputs
    from .ir.interpreter import cast_outputs, run_graph

    graph = integer_graph(manifest)
    samples = []
    for inputs in load_inputs(path, graph, batched=True):
        outputs = cast_outputs(graph, run_graph(graph, inputs))
        samples.append(Sample(inputs, {name: outputs[name] for name in graph.outputs}))
    return samples


@dataclass
class Sample:
    """One set of inputs and the golden interpreter's outputs for it."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def pack_slots(slots: list[dict[str, Any]], values: dict[str, np.ndarray]) -> bytes:
    """A packed buffer of network_run() for the manifest's input or output slots (compile's own packing)."""
    from .backends.project import IoSlot, pack

    return pack([IoSlot.from_json(slot) for slot in slots], values)


def unpack_outputs(manifest: dict[str, Any], blob: bytes) -> dict[str, np.ndarray]:
    result = {}
    for slot in manifest["outputs"]:
        dtype = np.dtype(slot["dtype"]).newbyteorder("<")
        chunk = blob[slot["offset"]:slot["offset"] + slot["nbytes"]]
        if len(chunk) != slot["nbytes"]:
            raise TinyDeployError("the run wrote fewer output bytes than the network produces", tensor=slot["name"])
        result[slot["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(slot["shape"])
    return result


def verify_build(build_dir: str | Path, *, layers: bool = False, sanitize: bool = False, cc: str = "gcc",
                 say: Callable[[str], None] = lambda msg: None, sample: Sample | None = None) -> VerifyResult:
    """Run `build_dir` (host build, or the ISS for cluster builds), compare with golden bit for bit; writes
    mismatch.npz on the first divergence. `sample`: other inputs than the compiled-in golden ones."""
    build = Path(build_dir)
    manifest = load_manifest(build)
    inputs, expected = golden_outputs(build, manifest) if sample is None else (sample.inputs, sample.outputs)
    got, trace, log = _run(build, manifest, layers, sanitize, cc, say, sample)
    info = {t["name"]: t for t in manifest["tensors"]}
    result = VerifyResult(True, {})
    result.log.append(log)
    for name, value in expected.items():
        mismatch = compare_arrays(name, got[name], value, info.get(name, {}))
        result.outputs[name] = (value.size, mismatch.wrong if mismatch else 0)
        if mismatch:
            result.bit_exact = False
            result.first = result.first or mismatch
    if layers:
        layer_mismatch = _first_layer_mismatch(build, manifest, inputs, trace, say)
        result.layers_checked = len(trace)
        if layer_mismatch:
            result.bit_exact = False
            result.first = layer_mismatch
    return result


def _run(build: Path, manifest: dict[str, Any], layers: bool, sanitize: bool, cc: str,
         say: Callable[[str], None], sample: Sample | None) -> tuple[dict[str, np.ndarray], dict[int, bytes], str]:
    """(outputs, trace, console) from the host harness (generic builds) or the cluster ISS (riscv builds)."""
    if manifest.get("backend") in ("riscv", "cmsis"):
        from .sim.firmware import simulate_build

        if sanitize:
            raise TinyDeployError("--sanitize builds for the host; cluster firmware runs in the ISS (use a "
                                  "generic build to sanitize the kernels)")
        outputs_file = build / "outputs.npz"
        if not layers and sample is None and _fresh_outputs(build, outputs_file):
            say(f"using {outputs_file} from tinydeploy simulate")
            data = np.load(outputs_file)
            return {k: data[k] for k in data.files}, {}, ""
        sim = simulate_build(build, cc=None if cc == "gcc" else cc, trace=layers, say=say, sample=sample)
        return sim.outputs, sim.trace, sim.result.console
    if manifest.get("backend") != "generic":
        raise TinyDeployError(f"verify of '{manifest.get('backend')}' builds is not implemented yet")
    from .sim.host import build_host, check_build_files, run_host

    check_build_files(build, manifest)
    exe = build_host(build, cc=cc, sanitize=sanitize, trace=layers)
    say(f"built {exe.relative_to(build)} with {cc}{' (ASan+UBSan)' if sanitize else ''}")
    inputs_file = None
    if sample is not None:
        inputs_file = exe.parent / "inputs.bin"
        inputs_file.write_bytes(pack_slots(manifest["inputs"], sample.inputs))
    run = run_host(exe, exe.parent, trace=layers, inputs=inputs_file)
    return unpack_outputs(manifest, run.outputs), run.trace, run.stdout.strip()


def _fresh_outputs(build: Path, outputs_file: Path) -> bool:
    """outputs.npz of a simulate run of this very build (written after its manifest and golden vectors)."""
    if not outputs_file.is_file():
        return False
    newest_input = max((build / name).stat().st_mtime for name in ("tinydeploy.json", "golden.npz"))
    try:
        data = np.load(outputs_file, allow_pickle=False)
        readable = isinstance(data, np.lib.npyio.NpzFile)
    except (OSError, ValueError, EOFError):
        readable = False
    return readable and outputs_file.stat().st_mtime >= newest_input


def traced_tensor(raw: bytes, dtype: np.dtype, entry: dict[str, Any]) -> np.ndarray:
    """A traced tensor's value from its bytes (a view's bytes are its storage's: transposed back)."""
    if "storage" in entry:
        stored = np.frombuffer(raw, dtype=dtype).reshape(entry["storage"]["shape"])
        return np.transpose(stored, entry["storage"]["perm"])
    return np.frombuffer(raw, dtype=dtype).reshape(entry["shape"])


def _first_layer_mismatch(build: Path, manifest: dict[str, Any], inputs: dict[str, np.ndarray],
                          trace: dict[int, bytes], say: Callable[[str], None]) -> Mismatch | None:
    golden = golden_tensors(manifest, inputs)
    say(f"comparing {len(trace)} traced tensors with the golden interpreter")
    for entry in manifest["tensors"]:
        if entry["id"] not in trace:
            raise TinyDeployError("the run did not trace this tensor (did it stop early?)", tensor=entry["name"])
        if entry["name"] not in golden:
            raise TinyDeployError("tinydeploy.json names a tensor the model does not have; recompile the build",
                                  tensor=entry["name"])
        try:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            got = traced_tensor(trace[entry["id"]], dtype, entry)
        except (TypeError, ValueError, KeyError) as exc:
            raise TinyDeployError(f"tinydeploy.json's entry does not match the traced bytes ({exc}); recompile "
                                  "the build", tensor=entry["name"]) from None
        mismatch = compare_arrays(entry["name"], got, golden[entry["name"]], entry, position=entry["id"])
        if mismatch:
            mismatch.tile = tile_of(manifest, entry["node"], mismatch.index)
            np.savez(build / MISMATCH_FILE, got=got, golden=golden[entry["name"]].astype(entry["dtype"]),
                     tensor=np.array(entry["name"]), node=np.array(entry["node"]))
            return mismatch
    return None
