"""Writing where the user points us without losing their files.

A result file is written beside its destination and renamed over it (never half-written, also on Ctrl-C).
A result folder is written into a fresh staging folder beside the destination and swapped in at the end: an
interrupted or failed run leaves the old folder as it was. A non-empty folder that is not one of ours is
refused unless the user says --force.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ModelFileError, TinyDeployError


def model_file(path: str | Path) -> Path:
    """The ONNX file a model argument names: the file itself, or a zoo/Deeploy folder's model_qdq.onnx or
    network.onnx."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file '{path}' does not exist")
    if path.is_dir():
        candidates = [path / "model_qdq.onnx", path / "network.onnx"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise ModelFileError(f"'{path}' is a directory without model_qdq.onnx or network.onnx")
        path = found[0]
    return path


def finite(value: Any) -> Any:
    """`value` with NaN/Infinity (a figure that does not apply) replaced by None, numpy scalars as Python ones."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:     # numpy scalars
        return finite(value.item())
    return value


def strict_json(value: Any) -> str:
    """JSON every parser accepts (JavaScript's JSON.parse included): NaN and infinities become null."""
    return json.dumps(finite(value), indent=1, allow_nan=False) + "\n"


def output_file(path: str | Path, flag: str = "-o") -> Path:
    """A writable destination file: not a folder, its folder creatable."""
    dest = Path(path)
    if dest.is_dir():
        raise TinyDeployError(f"{flag} {path}: is a folder; give a file name")
    _make_parent(dest, flag)
    return dest


def _make_parent(dest: Path, flag: str) -> None:
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TinyDeployError(f"{flag} {dest}: a part of the path is a file, not a folder") from None
    except OSError as exc:
        raise TinyDeployError(f"{flag} {dest}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK):
        raise TinyDeployError(f"{flag} {dest}: folder {parent} is not writable")


@contextlib.contextmanager
def atomic_file(path: str | Path, flag: str = "-o") -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` when the block succeeds, removed otherwise."""
    dest = output_file(path, flag)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise TinyDeployError(f"{flag} {dest}: cannot write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_folder(path: str | Path, *, ours: Callable[[Path], bool], what: str, force: bool = False,
                  flag: str = "-o") -> Iterator[Path]:
    """Yields an empty staging folder beside `path`; it replaces `path` when the block succeeds.

    `ours(folder)` says whether an existing folder is a previous result of the same kind (then it is
    replaced); any other non-empty folder is refused unless `force`."""
    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise TinyDeployError(f"{flag} {path}: is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not ours(dest) and not force:
        raise TinyDeployError(f"{flag} {path}: folder is not empty and holds no {what}; choose another folder "
                              f"or pass --force to replace its contents")
    if dest.exists() and dest.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise TinyDeployError(f"{flag} {path}: is the current folder (or one above it), which cannot be replaced; "
                              "write into a subfolder")
    _make_parent(dest, flag)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise TinyDeployError(f"{flag} {path}: cannot write beside it ({exc.strerror or exc})") from None
    try:
        yield stage
        stage.chmod(0o755)
        _swap_in(stage, dest, flag)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, dest: Path, flag: str) -> None:
    """Replace `dest` by `stage` (the old folder is renamed aside first and removed after)."""
    old = None
    try:
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            old.rmdir()
            os.replace(dest, old)
        os.replace(stage, dest)
    except OSError as exc:
        if old is not None and old.exists() and not dest.exists():
            os.replace(old, dest)
        raise TinyDeployError(f"{flag} {dest}: cannot replace the folder ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
