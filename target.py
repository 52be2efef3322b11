"""Target descriptions: the TOML files in targets/ (cores, memories, DMA, accelerator, arithmetic style)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TinyDeployError
from .resources import package_path

TARGETS_DIR = package_path("targets")


@dataclass(frozen=True)
class Target:
    """One hardware target, read from targets/<name>.toml."""

    name: str
    description: str
    backend: str
    requant: str
    softmax: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def section(self, key: str) -> dict[str, Any]:
        return dict(self.raw.get(key, {}))


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def _read_raw(path: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The TOML of a target; `extends = "other"` starts from another target's file (tables merged by key)."""
    raw = tomllib.loads(path.read_text())
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if parent in seen:
        raise TinyDeployError(f"target '{path.stem}' extends itself through {' -> '.join(seen)}")
    parent_path = TARGETS_DIR / f"{parent}.toml"
    if not parent_path.exists():
        raise TinyDeployError(f"target '{path.stem}' extends unknown target '{parent}'")
    return _merge(_read_raw(parent_path, (*seen, parent)), raw)


def load_target(name: str | Target) -> Target:
    """A target by name (or a path to a TOML file); unknown names list the known ones."""
    if isinstance(name, Target):
        return name
    path = Path(name) if str(name).endswith(".toml") else TARGETS_DIR / f"{name}.toml"
    if not path.exists():
        raise TinyDeployError(f"unknown target '{name}' (known: {', '.join(available_targets())})")
    raw = _read_raw(path)
    arith = raw.get("arithmetic", {})
    requant, softmax = arith.get("requant", "ita"), arith.get("softmax", "ibert")
    if requant not in ("ita", "cmsis") or softmax not in ("ita", "ibert", "cmsis"):
        raise TinyDeployError(f"target '{name}': arithmetic requant={requant!r} softmax={softmax!r} unknown")
    return Target(raw["name"], raw.get("description", ""), raw.get("backend", "generic"), requant, softmax, raw)


@dataclass(frozen=True)
class AccelSpec:
    processing_elements: int = 16
    dot_width: int = 64
    setup_cycles: int = 1
    row_cycles: int = 1
    divider_cycles: int = 8
    #: the job memories (bytes) and widest row: a job's A [m, k], B [k, n] and Y [m, n] must fit them
    a_bytes: int = 8192
    b_bytes: int = 65536
    y_bytes: int = 8192
    max_columns: int = 512

    @classmethod
    def from_section(cls, section: dict) -> AccelSpec:
        defaults = cls()
        return cls(**{name: int(section.get(name, getattr(defaults, name))) for name in cls.__dataclass_fields__})

    @property
    def macs_per_cycle(self) -> int:
        return self.processing_elements * self.dot_width

    def job_problem(self, m: int, k: int, n: int, out_bytes: int = 1) -> str | None:
        """Why an m x k x n job does not fit the accelerator's memories, or None."""
        if n > self.max_columns:
            return f"n = {n} > {self.max_columns} columns"
        for name, need, have in (("A", m * k, self.a_bytes), ("B", k * n, self.b_bytes),
                                 ("Y", m * n * out_bytes, self.y_bytes)):
            if need > have:
                return f"{name} needs {need} B, the accelerator holds {have} B"
        return None

    def rows_per_job(self, k: int, n: int, out_bytes: int = 1) -> int:
        """Most rows of an [m, k] x [k, n] GEMM one job holds (0: not even one row fits)."""
        return min(self.a_bytes // max(k, 1), self.y_bytes // max(n * out_bytes, 1))


def job_cycles(spec: AccelSpec, m: int, k: int, n: int, softmax: bool = False) -> int:
    """Cycles of one accelerator job from start to done: the RTL's schedule (sim/accel/model.py explains it,
    tests/test_accel.py checks it against the RTL's cycle counter)."""
    groups, chunks = -(-n // spec.processing_elements), -(-k // spec.dot_width)
    array = groups * chunks + spec.row_cycles
    if not softmax:
        return spec.setup_cycles + m * array
    tail = spec.divider_cycles + groups
    return spec.setup_cycles + array + tail + (m - 1) * max(array, tail)


def clock_of(target: Target) -> tuple[float | None, str]:
    """The clock in Hz from the target file, and where it was read (or a note that there is none)."""
    value = target.section("clock").get("mhz")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value) * 1e6, f"[clock] mhz = {value:g} in the target file"
    return None, "the target file names no clock"
