"""Target descriptions: the TOML files in targets/ (cores, memories, DMA, accelerator, arithmetic style)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TinyDeployError

TARGETS_DIR = Path(__file__).resolve().parent / "targets"


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


def load_target(name: str | Target) -> Target:
    """A target by name (or a path to a TOML file); unknown names list the known ones."""
    if isinstance(name, Target):
        return name
    path = Path(name) if str(name).endswith(".toml") else TARGETS_DIR / f"{name}.toml"
    if not path.exists():
        raise TinyDeployError(f"unknown target '{name}' (known: {', '.join(available_targets())})")
    raw = tomllib.loads(path.read_text())
    arith = raw.get("arithmetic", {})
    requant, softmax = arith.get("requant", "ita"), arith.get("softmax", "ibert")
    if requant not in ("ita", "cmsis") or softmax not in ("ita", "ibert"):
        raise TinyDeployError(f"target '{name}': arithmetic requant={requant!r} softmax={softmax!r} unknown")
    return Target(raw["name"], raw.get("description", ""), raw.get("backend", "generic"), requant, softmax, raw)
