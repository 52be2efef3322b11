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
