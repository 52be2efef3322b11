"""Builds and loads the ISS's native block hook (sim/native/td_iss_hooks.c) with the host C compiler.

The shared library is cached per source hash under $XDG_CACHE_HOME/tinydeploy (default ~/.cache), so it is
compiled once per machine; any C compiler works (cc, gcc, clang, else pip ziglang's clang).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from ..errors import TinyDeployError

SOURCE = Path(__file__).resolve().parent / "native" / "td_iss_hooks.c"
MAX_CODE_REGIONS = 4


class CodeRegion(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("size", ctypes.c_uint64), ("host", ctypes.c_void_p)]


class HartCounter(ctypes.Structure):
    """Mirror of td_hart_counter in td_iss_hooks.c."""

    _fields_ = [("instructions", ctypes.c_uint64), ("limit", ctypes.c_uint64), ("stop_block", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("last_block", ctypes.c_uint64), ("last_size", ctypes.c_uint64),
                ("stop", ctypes.c_void_p),
                ("regions", CodeRegion * MAX_CODE_REGIONS)]


NO_BLOCK = (1 << 64) - 1


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "tinydeploy"


def _compilers() -> list[list[str]]:
    found = [[cc] for cc in ("cc", "gcc", "clang") if shutil.which(cc)]
    return found + [[sys.executable, "-m", "ziglang", "cc"]]


@cache
def hooks_library() -> ctypes.CDLL:
    """The compiled hook library (built on first use)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = _cache_dir() / f"td_iss_hooks-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for compiler in _compilers():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            result = subprocess.run([*compiler, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(tmp, target)
                break
            errors.append(f"{' '.join(compiler)}: {result.stderr.strip()[-300:]}")
        else:
            raise TinyDeployError("cannot build the ISS's native hook library:\n" + "\n".join(errors))
    return ctypes.CDLL(str(target))
