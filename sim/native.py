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
from ..resources import package_path

SOURCE = package_path("sim", "native", "td_iss_hooks.c")
MAX_CODE_REGIONS = 4


class CodeRegion(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("size", ctypes.c_uint64), ("host", ctypes.c_void_p)]


class CoreTiming(ctypes.Structure):
    """Mirror of td_core_timing: cycles beyond one per instruction (the target's [core] section; all zero: one
    instruction per cycle)."""

    _fields_ = [("load_use", ctypes.c_uint32), ("taken_branch", ctypes.c_uint32), ("jump", ctypes.c_uint32),
                ("jalr_dependency", ctypes.c_uint32), ("jalr_link", ctypes.c_uint32),
                ("misaligned_target", ctypes.c_uint32),
                ("mulh", ctypes.c_uint32), ("div", ctypes.c_uint32), ("memory_first", ctypes.c_uint32),
                ("per_register", ctypes.c_uint32), ("multiply_accumulate", ctypes.c_uint32),
                ("enabled", ctypes.c_uint32)]

    @classmethod
    def from_section(cls, core: dict) -> CoreTiming:
        """The [core] section's `*_cycles` keys (targets/cluster8.toml documents them)."""
        names = [name for name, _ in cls._fields_ if name != "enabled"]
        unknown = sorted(k for k in core if k.endswith("_cycles") and k.removesuffix("_cycles") not in names)
        if unknown:
            raise TinyDeployError(f"[core] has unknown timing keys {unknown}; known: "
                                  f"{[n + '_cycles' for n in names]}")
        values = {name: int(core.get(f"{name}_cycles", 0)) for name in names}
        if any(v < 0 for v in values.values()):
            raise TinyDeployError(f"[core] timing cycles must be >= 0: {values}")
        return cls(**values, enabled=int(any(values.values())))


class BlockCost(ctypes.Structure):
    """Mirror of td_block_cost (one slot of the hook's decoded-block cache)."""

    _fields_ = [("address", ctypes.c_uint64), ("size", ctypes.c_uint32), ("instructions", ctypes.c_uint32),
                ("extra", ctypes.c_uint32), ("end", ctypes.c_uint32)]


BLOCK_CACHE = 8192


class HartCounter(ctypes.Structure):
    """Mirror of td_hart_counter in td_iss_hooks.c."""

    _fields_ = [("instructions", ctypes.c_uint64), ("limit", ctypes.c_uint64), ("stop_block", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("last_block", ctypes.c_uint64), ("last_size", ctypes.c_uint64),
                ("isa", ctypes.c_uint64), ("stop", ctypes.c_void_p),
                ("regions", CodeRegion * MAX_CODE_REGIONS), ("cycles", ctypes.c_uint64),
                ("last_end", ctypes.c_uint64), ("timing", CoreTiming), ("cache", ctypes.POINTER(BlockCost))]

    def uncount(self, begin: int, end: int) -> None:
        """Take back the instructions and cycles of [begin, end): the tail of a block the hart stopped in (at an
        MMIO store); the next block it enters there falls through from `begin`."""
        instructions, cycles = ctypes.c_uint64(), ctypes.c_uint64()
        hooks_library().td_range_cost(ctypes.byref(self), ctypes.c_uint64(begin), ctypes.c_uint64(end),
                                      ctypes.byref(instructions), ctypes.byref(cycles))
        self.instructions -= instructions.value
        self.cycles -= cycles.value
        self.last_block, self.last_size, self.last_end = begin, 0, 0


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


def attach_counter(uc, regions: list[tuple[int, int, int]], limit: int, isa: int = 0,
                   timing: CoreTiming | None = None) -> HartCounter:
    """Install the native block hook on a Unicorn engine; regions are (base, size, host pointer) of code memory;
    `timing`: the core's pipeline cycles (None: one instruction per cycle).

    The caller keeps the returned counter alive (the hook holds a pointer to it and to its block cache)."""
    from unicorn import UC_HOOK_BLOCK
    from unicorn.unicorn_py3 import unicorn as ucmod

    counter = HartCounter(0, limit, NO_BLOCK, 0, 0, 0, isa, ctypes.cast(ucmod.uclib.uc_emu_stop, ctypes.c_void_p))
    if timing is not None and timing.enabled:
        counter.timing = timing
        counter.block_cache = (BlockCost * BLOCK_CACHE)()     # kept alive with the counter
        counter.cache = ctypes.cast(counter.block_cache, ctypes.POINTER(BlockCost))
    for i, (base, size, ptr) in enumerate(regions[:MAX_CODE_REGIONS]):
        counter.regions[i].base, counter.regions[i].size, counter.regions[i].host = base, size, ptr
    handle = ucmod.uc_hook_h()
    status = ucmod.uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
                                     ctypes.cast(hooks_library().td_block_hook, ctypes.c_void_p),
                                     ctypes.cast(ctypes.pointer(counter), ctypes.c_void_p), 1, 0)
    if status != 0:
        raise TinyDeployError(f"cannot install the ISS block hook (unicorn error {status})")
    return counter
