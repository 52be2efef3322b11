"""A model's inputs from the user: read from an .npz, checked against the graph's input types and ranges.

Every problem is one TinyDeployError naming the file and the key: a missing key, an array that is not an
integer array (a float holding 1.5 is never rounded into a token id), a wrong shape, a value outside the
input's integer type or outside the table a Gather indexes with it (token ids beyond the vocabulary).
A leading sample dimension (shape [N, *input shape]) gives N samples.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..errors import TinyDeployError
from ..ir.graph import DTYPE_RANGES, Graph

#: keys numpy.savez gives positional arrays
POSITIONAL_KEY = re.compile(r"arr_\d+$")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz file (no pickles); a file that is not one is refused naming it."""
    if not path.is_file():
        raise TinyDeployError(f"inputs file '{path}' does not exist" if not path.exists()
                              else f"inputs file '{path}' is not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise TinyDeployError(f"'{path}' is a single .npy array, not an .npz of named inputs")
            return {key: data[key] for key in data.files}
    except TinyDeployError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise TinyDeployError(f"'{path}' is not a readable .npz file ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def select_arrays(arrays: dict[str, np.ndarray], names: list[str], source: str,
                  positional: bool) -> dict[str, np.ndarray]:
    """Arrays for the graph inputs `names`: by name; by position only for numpy's arr_N keys or when the model's
    dialect names its inputs arbitrarily (Deeploy's test data; it may append constant operands)."""
    if all(name in arrays for name in names):
        return {name: arrays[name] for name in names}
    keys = list(arrays)
    if (positional or all(POSITIONAL_KEY.match(k) for k in keys)) and len(keys) >= len(names):
        return dict(zip(names, (arrays[k] for k in keys[:len(names)]), strict=True))
    missing = [name for name in names if name not in arrays]
    raise TinyDeployError(f"{source} has no array named '{missing[0]}' (it holds {keys}; the model's inputs are "
                          f"{names})")


def gather_bounds(graph: Graph, name: str) -> tuple[int, int] | None:
    """[0, size - 1] of the axis a Gather indexes with input `name`, if some Gather does."""
    for node in graph.nodes:
        if node.op == "Gather" and len(node.inputs) > 1 and node.inputs[1] == name:
            data = graph.tensors[node.inputs[0]]
            axis = node.attrs.get("axis", 0)
            return 0, data.shape[axis] - 1
    return None


def value_bounds(graph: Graph, name: str) -> tuple[int, int, str] | None:
    """(lo, hi, what) an input's values must keep beyond its dtype: indices within the table a Gather reads with it,
    0 or 1 for an attention mask (graph.meta['input_values']); None when only the dtype bounds it."""
    found = []
    table = gather_bounds(graph, name)
    if table is not None:
        found.append((*table, f"indices into a table of {table[1] + 1} rows (e.g. token ids within the vocabulary)"))
    values = graph.meta.get("input_values", {}).get(name)
    if values is not None:
        found.append((values[0], values[1], "an attention mask: 1 keeps a position, 0 masks it"))
    if not found:
        return None
    return max(f[0] for f in found), min(f[1] for f in found), found[-1][2]


def whole_float_values(value: np.ndarray, where: str) -> np.ndarray:
    """Deeploy's test data stores integers in float arrays: accepted when every value is a whole number."""
    if value.dtype.kind != "f" or not np.all(np.isfinite(value)) or not np.all(np.mod(value, 1) == 0):
        bad = value.reshape(-1)[np.flatnonzero(~np.isfinite(value) | (np.mod(value, 1) != 0))[:1]]
        example = f" (e.g. {bad[0]})" if bad.size else ""
        raise TinyDeployError(f"{where} holds {value.dtype} values that are not whole numbers{example}; the model's "
                              "inputs are integers")
    return value.astype(np.int64)


def observed_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The test arrays of an .npz for the model inputs `names` (positional keys allowed), as Deeploy's runner reads
    them: their values type the inputs (observed_ranges), their shapes size symbolic dimensions."""
    return select_arrays(read_npz(path), names, str(path), positional=True)


def observed_ranges(arrays: dict[str, np.ndarray], source: str) -> dict[str, tuple[int, int]]:
    """The value range of each test array (observed_arrays from `source`): Deeploy's runner types a model's
    inputs from its test data, which may hold whole numbers in float arrays."""
    ranges = {}
    for name, value in arrays.items():
        where = f"{source} array '{name}'"
        if value.dtype.kind == "f":
            value = whole_float_values(value, where)
        if value.dtype.kind not in "iub":
            raise TinyDeployError(f"{where} holds {value.dtype} values; the model's inputs are integers")
        if value.size:
            ranges[name] = (int(value.min()), int(value.max()))
    return ranges


def quantize_input(value: np.ndarray, quant: dict, where: str) -> np.ndarray:
    """Float data for a float model input: quantized as the model's own QuantizeLinear does (round half to even,
    saturate to the dtype), so the integer graph sees exactly what onnxruntime's first QuantizeLinear produces."""
    if not np.all(np.isfinite(value)):
        raise TinyDeployError(f"{where} holds NaN or infinite values")
    lo, hi = DTYPE_RANGES[quant["dtype"]]
    codes = np.rint(value.astype(np.float32) / np.float32(quant["scale"])) + quant["zero_point"]
    return np.clip(codes, lo, hi).astype(np.int64)


def check_array(graph: Graph, name: str, value: np.ndarray, source: str, *, batched: bool = False) -> np.ndarray:
    """`value` for graph input `name` in the input's dtype; batched=True accepts a leading sample axis."""
    tensor = graph.tensors[name]
    value = np.asarray(value)
    where = f"{source} array '{name}'"
    input_quant = graph.meta.get("input_quant", {}).get(name)
    if value.dtype.kind == "f" and input_quant is not None:
        value = quantize_input(value, input_quant, where)
    elif value.dtype.kind == "f" and graph.meta.get("dialect") == "deeploy":
        value = whole_float_values(value, where)
    if value.dtype.kind not in "iub":
        raise TinyDeployError(f"{where} holds {value.dtype} values; the input is {tensor.dtype} (integer): pass an "
                              "integer array")
    shape = tuple(tensor.shape)
    if value.shape != shape and not (batched and value.ndim == len(shape) + 1 and value.shape[1:] == shape):
        expected = f"{list(shape)}" + (f" or [N, {', '.join(map(str, shape))}]" if batched else "")
        raise TinyDeployError(f"{where} has shape {list(value.shape)}; the input needs {expected}")
    lo, hi = DTYPE_RANGES[tensor.dtype]
    what = f"{tensor.dtype}"
    bounds = value_bounds(graph, name)
    if bounds is not None:
        lo, hi, what = max(lo, bounds[0]), min(hi, bounds[1]), bounds[2]
    if value.size:
        vmin, vmax = int(value.min()), int(value.max())
        if vmin < lo or vmax > hi:
            bad = vmin if vmin < lo else vmax
            raise TinyDeployError(f"{where} holds {bad}, outside [{lo}, {hi}] ({what})")
    return value.astype(tensor.dtype)


def _checked_arrays(path: str | Path, graph: Graph, batched: bool) -> dict[str, np.ndarray]:
    """The graph's inputs from the file, checked; the file lists every input of the model, also those the
    import dropped because the data bound them empty (they must be empty here too)."""
    names = graph.meta.get("model_inputs", graph.inputs)
    arrays = select_arrays(read_npz(Path(path)), names, str(path), positional=graph.meta.get("dialect") == "deeploy")
    for name in graph.meta.get("dropped_inputs", []):
        if arrays[name].size:
            raise TinyDeployError(f"{path} array '{name}' has shape {list(arrays[name].shape)}; this model was "
                                  "compiled with it empty (compile once per input shape)")
    return {name: check_array(graph, name, arrays[name], str(path), batched=batched) for name in graph.inputs}


def load_inputs(path: str | Path, graph: Graph, *, batched: bool = False) -> list[dict[str, np.ndarray]]:
    """Checked inputs from an .npz: one dict per sample (one sample unless batched arrays carry N)."""
    return split_samples(graph, _checked_arrays(path, graph, batched), str(path))


def load_batch(path: str | Path, graph: Graph) -> tuple[list[dict[str, np.ndarray]], bool]:
    """load_inputs(batched=True), and whether the arrays carried a leading sample axis (even of length 1)."""
    arrays = _checked_arrays(path, graph, True)
    return split_samples(graph, arrays, str(path)), any(c is not None for c in _sample_counts(graph, arrays).values())


def _sample_counts(graph: Graph, arrays: dict[str, np.ndarray]) -> dict[str, int | None]:
    """Each input's leading sample count N, or None when it has the graph input's own shape."""
    return {name: (value.shape[0] if value.ndim == len(graph.tensors[name].shape) + 1 else None)
            for name, value in arrays.items()}


def split_samples(graph: Graph, arrays: dict[str, np.ndarray], source: str) -> list[dict[str, np.ndarray]]:
    """One dict per sample; every input must carry the same number of samples."""
    counts = _sample_counts(graph, arrays)
    batched = {c for c in counts.values() if c is not None}
    if not batched:
        return [arrays]
    if len(batched) > 1 or None in counts.values():
        raise TinyDeployError(f"{source}: inputs carry different sample counts {counts}")
    count = batched.pop()
    if count == 0:
        raise TinyDeployError(f"{source}: the sample axis is empty")
    return [{name: value[i] for name, value in arrays.items()} for i in range(count)]


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs over each input's dtype range; indices feeding a Gather stay inside the gathered axis."""
    rng = np.random.default_rng(seed)
    result = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        lo, hi = DTYPE_RANGES[t.dtype]
        bounds = value_bounds(graph, name)
        if bounds is not None:
            lo, hi = bounds[:2]
        result[name] = rng.integers(max(lo, -(2**31)), min(hi, 2**31 - 1) + 1, size=t.shape).astype(t.dtype)
    return result
