"""Energy per inference from the simulation's events and the target's [energy] figures (each cited in the target
file): core instructions, accelerator MACs and the L1 bytes its jobs read and write, bytes the DMA reads and writes
per memory level (the off-chip part's share kept apart), and leakage over the cycles. Gives report.json's "energy"
(mJ per inference, average power, GOp/J, and GOp/J on chip: what a chip's power measurement sees) and each
layer's share.

A first-order event model: it knows nothing of voltage or activity beyond these counts (no clock tree, idle cores
or interconnect), and the figures are for the operating point the target file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TinyDeployError
from ..target import LEVELS, Target, clock_of, load_target


@dataclass(frozen=True)
class EnergyModel:
    """Picojoules per event and leakage power (the target's [energy] section)."""

    core_instruction_pj: float
    accel_mac_pj: float
    byte_pj: dict[str, float]        # per byte read or written at each memory level
    dma_byte_pj: float               # the DMA engine, per byte moved
    leakage_mw: float
    clock_hz: float
    operating_point: str

    @classmethod
    def from_target(cls, target: Target | str) -> EnergyModel | None:
        target = load_target(target)
        section = target.section("energy")
        if not section:
            return None
        clock_hz, _ = clock_of(target)
        try:
            model = cls(float(section["core_instruction_pj"]), float(section.get("accel_mac_pj", 0.0)),
                        {level: float(section[f"{level}_byte_pj"]) for level in LEVELS},
                        float(section.get("dma_byte_pj", 0.0)), float(section.get("leakage_mw", 0.0)),
                        float(clock_hz or 0), str(section.get("operating_point", "")))
        except KeyError as missing:
            raise TinyDeployError(f"target '{target.name}': [energy] needs {missing.args[0]}") from None
        if not model.clock_hz:
            raise TinyDeployError(f"target '{target.name}': [energy] needs a [clock] mhz (leakage per cycle)")
        return model

    def layer_pj(self, layer: dict[str, Any]) -> dict[str, float]:
        """Picojoules of one stamped layer by event class."""
        on_chip, off_chip = layer.get("accel_l1_bytes", 0) * self.byte_pj["l1"], 0.0
        for pair, nbytes in (layer.get("dma") or {}).items():
            ends = pair.split("->")
            on_chip += nbytes * (sum(self.byte_pj.get(e, 0.0) for e in ends if e != "l3") + self.dma_byte_pj)
            off_chip += nbytes * self.byte_pj.get("l3", 0.0) * ends.count("l3")
        cycles = layer.get("cycles") or 0
        return {"cores": layer.get("instructions", 0) * self.core_instruction_pj,
                "accelerator": layer.get("accel_macs", 0) * self.accel_mac_pj,
                "on-chip data movement": on_chip, "leakage": cycles / self.clock_hz * self.leakage_mw * 1e9,
                "off-chip memory": off_chip}


def add_energy(report: dict[str, Any]) -> None:
    """Add per-layer energy and GOp/J, and the inference's totals, to a simulation report (in place); nothing
    when the target has no [energy] section."""
    model = EnergyModel.from_target(report["target"])
    if model is None:
        return
    totals = dict.fromkeys(("cores", "accelerator", "on-chip data movement", "leakage", "off-chip memory"), 0.0)
    for layer in report["layers"]:
        parts = model.layer_pj(layer)
        pj = sum(parts.values())
        layer["energy_nj"] = round(pj / 1e3, 3)
        layer["gop_per_j"] = round(2 * layer.get("macs", 0) / pj * 1e3, 1) if pj else None
        for key, value in parts.items():
            totals[key] += value
    total_pj = sum(totals.values())
    on_chip_pj = total_pj - totals["off-chip memory"]     # what a chip's power measurement sees
    seconds = report["cycles_inference"] / model.clock_hz
    ops = 2 * sum(layer.get("macs", 0) for layer in report["layers"])
    report["energy"] = {
        "mj_per_inference": total_pj / 1e9, "average_power_mw": total_pj / 1e9 / seconds if seconds else None,
        "gop_per_j": ops / total_pj * 1e3 if total_pj else None, "gop_per_inference": ops / 1e9,
        "on_chip_gop_per_j": ops / on_chip_pj * 1e3 if on_chip_pj else None,
        "breakdown_mj": {key: value / 1e9 for key, value in totals.items()},
        "model": f"per-event energy of the target's [energy] section ({model.operating_point}): "
                 f"{model.core_instruction_pj:g} pJ/core instruction, {model.accel_mac_pj:g} pJ/accelerator MAC, "
                 + ", ".join(f"{lvl.upper()} {pj:g} pJ/B" for lvl, pj in model.byte_pj.items())
                 + f" (each byte a DMA moves counts at its source and destination), leakage {model.leakage_mw:g} mW"}
