"""`tinydeploy simulate BUILD`: cross-build a cluster project's firmware and run it in the cluster ISS.

Writes BUILD/outputs.npz (the packed outputs read back from the firmware's `td_output`) and BUILD/report.json:
bit_exact (against the golden vectors of compile), cycles_total, instructions per hart, guest instructions/s,
and `layers`: one entry per IR step {name, op, engine, macs, cycles, bytes_dma}.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TinyDeployError
from .cluster import ClusterISS, ClusterSpec, SimResult
from .energy import add_energy
from .host import check_build_files, run_make
from .interrupt import deferred_sigint

if TYPE_CHECKING:
    from ..verify import Sample

GCC_ARCH_FLAGS = {"riscv": "-march=rv32imc -mabi=ilp32", "cmsis": "-mcpu=cortex-m4 -mthumb"}


@dataclass
class Simulation:
    result: SimResult
    outputs: dict[str, np.ndarray]
    trace: dict[int, bytes]
    report: dict[str, Any]
    wall_seconds: float


def build_firmware(build_dir: Path, cc: str | None = None, trace: bool = False, backend: str = "riscv",
                   cmsis_nn: str | None = None) -> Path:
    """make the firmware with pip ziglang's clang (default) or a gcc cross compiler; returns the ELF path.

    cmsis_nn: a CMSIS-NN checkout to build the Cortex-M kernels from instead of tinydeploy's own."""
    out = ("fw-trace" if trace else "fw") + ("-cmsis-nn" if cmsis_nn else "")
    out += "" if cc is None else f"-{Path(cc).name}"      # one folder per compiler; run_make also checks flags
    if cc is None or cc in ("zig", "clang"):
        variables = [f"CC={sys.executable} -m ziglang cc"]
    else:
        if shutil.which(cc) is None and not Path(cc).is_file():
            raise TinyDeployError(f"--cc {cc}: cross compiler not found (default: pip ziglang's clang)")
        variables = [f"CC={cc}", f"ARCH_FLAGS={GCC_ARCH_FLAGS[backend]}",
                     "LDFLAGS=-nostartfiles -static -Wl,--gc-sections -lgcc"]
    if trace:
        variables.append("EXTRA_CFLAGS=-DTD_TRACE")
    if cmsis_nn:
        if backend != "cmsis":
            raise TinyDeployError("--cmsis-nn applies to Cortex-M builds")
        if not (Path(cmsis_nn) / "Include" / "arm_nnfunctions.h").is_file():
            raise TinyDeployError(f"--cmsis-nn {cmsis_nn}: not a CMSIS-NN checkout (no Include/arm_nnfunctions.h)")
        variables.append(f"CMSIS_NN={Path(cmsis_nn).resolve()}")
    run_make(build_dir, out, variables, "firmware build")
    return build_dir / out / "firmware.elf"


def simulate_build(build_dir: str | Path, *, cc: str | None = None, trace: bool = False,
                   max_cycles: int | None = None, accel: str = "model", cmsis_nn: str | None = None,
                   say: Callable[[str], None] = lambda m: None,
                   progress: Callable[[int, int, int, float], None] | None = None,
                   sample: Sample | None = None) -> Simulation:
    """Build, run in the ISS, write outputs.npz and report.json (only for the untraced run on the golden input).

    `sample`: other inputs (and their golden outputs) placed in the firmware's input and golden buffers before
    the run, so the same ELF runs them without recompiling. `progress(layers done, layers, cycles, guest
    instructions/s)` is called about twice a second."""
    from ..verify import golden_outputs, load_manifest, pack_slots, unpack_outputs

    build = Path(build_dir)
    manifest = load_manifest(build)
    backend = manifest.get("backend")
    if backend not in ("riscv", "cmsis"):
        raise TinyDeployError(f"simulate runs cluster and Cortex-M builds; this one is for {manifest.get('target')} "
                              f"(use tinydeploy verify for host builds)")
    golden = golden_outputs(build, manifest)[1] if sample is None else sample.outputs
    check_build_files(build, manifest)
    elf = build_firmware(build, cc, trace, backend, cmsis_nn)
    say(f"built {elf.relative_to(build)}")
    if backend == "cmsis":
        from .cortexm import CortexMISS

        iss = CortexMISS(manifest["target"], elf)
    else:
        iss = ClusterISS(ClusterSpec.from_target(manifest["target"]), elf, accel=accel)
    if sample is not None:
        _place(iss, elf, "golden_input", pack_slots(manifest["inputs"], sample.inputs))
        _place(iss, elf, "golden_output", pack_slots(manifest["outputs"], golden))
    t0 = time.perf_counter()
    steps = len(manifest.get("steps", []))
    last_line = [0.0]

    def report(cycles: int, instructions: int, layers: int) -> None:
        rate = instructions / max(time.perf_counter() - t0, 1e-9)
        if progress is not None:
            progress(layers, steps, cycles, rate)
        elif time.perf_counter() - last_line[0] >= 5.0:
            last_line[0] = time.perf_counter()
            say(f"layer {layers}/{steps}, {cycles / 1e6:.0f} M cycles, {rate / 1e6:.0f} M guest instr/s")

    with deferred_sigint():
        result = iss.run(max_cycles, progress=report)
    wall = time.perf_counter() - t0
    address = iss.symbols.by_name.get("td_output")
    if address is None:
        raise TinyDeployError(f"{elf} has no td_output symbol")
    outputs = unpack_outputs(manifest, iss.read(address, _output_bytes(manifest)))
    bit_exact = all(np.array_equal(outputs[k], v) for k, v in golden.items())
    report = _report(manifest, result, bit_exact, wall)
    report["accel_engine"] = accel
    report["accel_jobs_checked_against_rtl"] = iss.accel_jobs_checked
    report["accel_port_stall_cycles"] = iss.accel_port_stall
    if not trace and sample is None:
        np.savez(build / "outputs.npz", **outputs)
        (build / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return Simulation(result, outputs, iss.trace, report, wall)


def _place(iss, elf: Path, symbol: str, data: bytes) -> None:
    """Overwrite the start of a firmware buffer (the golden vectors) in the simulator's memory."""
    address = iss.symbols.by_name.get(symbol)
    if address is None:
        raise TinyDeployError(f"{elf} has no {symbol} symbol to place the inputs in")
    iss.write(address, data)


def _output_bytes(manifest: dict[str, Any]) -> int:
    slots = manifest["outputs"]
    return slots[-1]["offset"] + slots[-1]["nbytes"] if slots else 0


def _report(manifest: dict[str, Any], result: SimResult, bit_exact: bool, wall: float) -> dict[str, Any]:
    steps = manifest.get("steps", [])
    layers = []
    for stamp in result.layers:
        step = steps[stamp.index] if 0 <= stamp.index < len(steps) else {}
        layers.append({"index": stamp.index, "name": step.get("name", ""), "op": step.get("op", ""),
                       "origin": step.get("origin", ""), "engine": "accel" if stamp.accel_busy else "cores",
                       "macs": step.get("macs", 0),
                       "cycles": (stamp.end - stamp.begin) if stamp.end >= 0 else None,
                       "bytes_dma": sum(stamp.dma_bytes.values()), "dma": stamp.dma_bytes,
                       "dma_busy_cycles": stamp.dma_busy, "dma_stall_cycles": stamp.dma_stall,
                       "io_dma_busy_cycles": stamp.io_busy,
                       "instructions": stamp.instructions, "accel_busy_cycles": stamp.accel_busy,
                       "accel_macs": stamp.accel_macs, "accel_l1_bytes": stamp.accel_l1_bytes})
    stamped = [s for s in result.layers if s.end >= 0]
    inference = (stamped[-1].end - stamped[0].begin) if stamped else result.cycles
    report = {"target": manifest["target"], "bit_exact": bit_exact, "exit_code": result.exit_code,
            "cycles_total": result.cycles, "cycles_inference": inference, "instructions": result.instructions,
            "guest_instructions": result.guest_instructions,
            "guest_instructions_per_second": result.guest_instructions / wall if wall else 0.0,
            "wall_seconds": wall, "dma_busy_cycles": result.dma_busy_cycles, "console": result.console,
            "dma_stall_cycles": result.dma_stall_cycles, "dma_overlap": dma_overlap(result),
            "accel_busy_cycles": result.accel_busy_cycles, "io_dma_busy_cycles": result.io_dma_busy_cycles,
            "layers": layers}
    add_energy(report)
    return report


def dma_overlap(result: SimResult) -> float:
    """Fraction of the DMA engine's busy cycles hidden behind compute (1.0 = hart 0 never waited for DMA)."""
    if not result.dma_busy_cycles:
        return 1.0
    return max(0.0, 1.0 - result.dma_stall_cycles[0] / result.dma_busy_cycles)
