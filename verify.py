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


def load_manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / "tinydeploy.json"
    if not path.is_file():
        raise TinyDeployError(f"{build_dir} is not a tinydeploy build (no tinydeploy.json); run tinydeploy compile")
    return json.loads(path.read_text())


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


def golden_outputs(build_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) stored by compile in golden.npz."""
    data = np.load(build_dir / "golden.npz")
    inputs = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    outputs = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
    return inputs, outputs


def golden_tensors(manifest: dict[str, Any], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every intermediate tensor from the golden interpreter, re-deriving the integer graph from the model."""
    from .backends import backend_passes
    from .frontend.onnx_loader import import_model
    from .ir.interpreter import run_graph
    from .passes.integerize import integerize

    model = Path(manifest.get("model", ""))
    if not model.is_file():
        raise TinyDeployError(f"--layers needs the model the build came from, not found at '{model}'")
    if manifest.get("model_sha256") and hashlib.sha256(model.read_bytes()).hexdigest() != manifest["model_sha256"]:
        raise TinyDeployError(f"model '{model}' changed since this build was compiled; recompile first")
    ranges = {k: tuple(v) for k, v in manifest.get("input_ranges", {}).items()} or None
    arithmetic = manifest.get("arithmetic_target", manifest["target"])
    graph = integerize(import_model(str(model), input_ranges=ranges), arithmetic)
    graph, _ = backend_passes(graph, manifest["target"])     # the same rewrites as compile: same tensor names
    return run_graph(graph, inputs, keep_all=True)


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
                 say: Callable[[str], None] = lambda msg: None) -> VerifyResult:
    """Run `build_dir` (host build, or the ISS for cluster builds), compare with golden bit for bit; writes
    mismatch.npz on the first divergence."""
    build = Path(build_dir)
    manifest = load_manifest(build)
    inputs, expected = golden_outputs(build)
    got, trace, log = _run(build, manifest, layers, sanitize, cc, say)
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
         say: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict[int, bytes], str]:
    """(outputs, trace, console) from the host harness (generic builds) or the cluster ISS (riscv builds)."""
    if manifest.get("backend") in ("riscv", "cmsis"):
        from .sim.firmware import simulate_build

        if sanitize:
            raise TinyDeployError("--sanitize builds for the host; cluster firmware runs in the ISS (use a "
                                  "generic build to sanitize the kernels)")
        outputs_file = build / "outputs.npz"
        if not layers and outputs_file.is_file():
            say(f"using {outputs_file} from tinydeploy simulate")
            data = np.load(outputs_file)
            return {k: data[k] for k in data.files}, {}, ""
        sim = simulate_build(build, cc=None if cc == "gcc" else cc, trace=layers, say=say)
        return sim.outputs, sim.trace, sim.result.console
    if manifest.get("backend") != "generic":
        raise TinyDeployError(f"verify of '{manifest.get('backend')}' builds is not implemented yet")
    from .sim.host import build_host, run_host

    exe = build_host(build, cc=cc, sanitize=sanitize, trace=layers)
    say(f"built {exe.relative_to(build)} with {cc}{' (ASan+UBSan)' if sanitize else ''}")
    run = run_host(exe, exe.parent, trace=layers)
    return unpack_outputs(manifest, run.outputs), run.trace, run.stdout.strip()


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
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        got = traced_tensor(trace[entry["id"]], dtype, entry)
        mismatch = compare_arrays(entry["name"], got, golden[entry["name"]], entry, position=entry["id"])
        if mismatch:
            mismatch.tile = tile_of(manifest, entry["node"], mismatch.index)
            np.savez(build / MISMATCH_FILE, got=got, golden=golden[entry["name"]].astype(entry["dtype"]),
                     tensor=np.array(entry["name"]), node=np.array(entry["node"]))
            return mismatch
    return None
