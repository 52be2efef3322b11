"""Validation of a zoo model's architecture knobs (the --flags of `tinydeploy zoo`), shared by every spec."""

from __future__ import annotations

from typing import Any


def knob_problems(spec: Any, limits: dict[str, int]) -> list[str]:
    """One phrase per knob outside [1, its limit] (the limits keep an export within a machine's memory) and for a
    negative --seed; empty when every knob is fine."""
    found = []
    for knob, limit in limits.items():
        value = getattr(spec, knob)
        if not 1 <= value <= limit:
            found.append(f"--{knob.replace('_', '-')} {value} is outside [1, {limit}]")
    if spec.seed < 0:
        found.append(f"--seed {spec.seed} is negative")
    return found
