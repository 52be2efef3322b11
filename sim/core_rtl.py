"""The cluster's core as RTL: OpenHW CV32E40P under Verilator, running the very firmware tinydeploy builds for a
one-core cluster target (cluster1), for calibrating the ISS's core timing ([core] in targets/cluster8.toml).

The core's RTL is not part of tinydeploy: pass a checkout of github.com/openhwgroup/cv32e40p (or set
TD_CV32E40P; ../shared/third_party/cv32e40p is looked for too). The testbench is tinydeploy's
(sim/rtl/cv32e40p): zero-wait-state memories and the MMIO device of the target's generated td_platform.h; DMA
transfers complete at once and the barrier opens at once (one core), so per-layer cycles are the core's alone.
The Verilator model is built once per (RTL, testbench, platform) and cached under ~/.cache/tinydeploy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TinyDeployError
from ..resources import package_path
from .firmware import _output_bytes, build_firmware
from .native import _cache_dir

#: the core's sources, in compile order (CV32E40P without the PULP extensions or an FPU)
RTL_SOURCES = (
    "rtl/include/cv32e40p_apu_core_pkg.sv", "rtl/include/cv32e40p_fpu_pkg.sv", "rtl/include/cv32e40p_pkg.sv",
    "rtl/cv32e40p_if_stage.sv", "rtl/cv32e40p_cs_registers.sv", "rtl/cv32e40p_register_file_ff.sv",
    "rtl/cv32e40p_load_store_unit.sv", "rtl/cv32e40p_id_stage.sv", "rtl/cv32e40p_aligner.sv",
    "rtl/cv32e40p_decoder.sv", "rtl/cv32e40p_compressed_decoder.sv", "rtl/cv32e40p_fifo.sv",
    "rtl/cv32e40p_prefetch_buffer.sv", "rtl/cv32e40p_hwloop_regs.sv", "rtl/cv32e40p_mult.sv",
    "rtl/cv32e40p_int_controller.sv", "rtl/cv32e40p_ex_stage.sv", "rtl/cv32e40p_alu_div.sv",
    "rtl/cv32e40p_alu.sv", "rtl/cv32e40p_ff_one.sv", "rtl/cv32e40p_popcnt.sv", "rtl/cv32e40p_apu_disp.sv",
    "rtl/cv32e40p_controller.sv", "rtl/cv32e40p_obi_interface.sv", "rtl/cv32e40p_prefetch_controller.sv",
    "rtl/cv32e40p_sleep_unit.sv", "rtl/cv32e40p_core.sv", "bhv/cv32e40p_sim_clock_gate.sv",
)
#: Verilator 5.006 flags the core's cs_registers for mixing blocking and non-blocking assignments to different
#: (constant) elements of one array; harmless, so BLKANDNBLK is off with the usual lint noise
VERILATOR_FLAGS = ("--cc", "--exe", "--build", "-j", "1", "-O2", "--top-module", "tb_cluster", "-Wno-fatal",
                   "-Wno-lint", "-Wno-style", "-Wno-UNOPTFLAT", "-Wno-MULTIDRIVEN", "-Wno-LATCH", "-Wno-BLKANDNBLK",
                   "-Wno-COMBDLY", "-Wno-TIMESCALEMOD")
COUNTERS = ("instr", "ld_stall", "jr_stall", "imiss", "branch", "br_taken", "jump", "load", "store")


def find_cv32e40p(path: str | Path | None = None) -> Path | None:
    """A CV32E40P checkout: `path` (refused when it is not one), else $TD_CV32E40P, else
    ../shared/third_party/cv32e40p beside the checkout; None when none is found."""
    def is_checkout(candidate: str | Path | None) -> bool:
        return bool(candidate) and (Path(candidate) / "rtl" / "cv32e40p_core.sv").is_file()

    if path:
        if not is_checkout(path):
            raise TinyDeployError(f"{path} is not a CV32E40P checkout (no rtl/cv32e40p_core.sv)")
        return Path(path)
    found = [c for c in (os.environ.get("TD_CV32E40P"),
                         Path(__file__).resolve().parents[2] / "shared" / "third_party" / "cv32e40p") if is_checkout(c)]
    return Path(found[0]) if found else None


def build_testbench(rtl: Path, platform_header: Path) -> Path:
    """The Verilator model of the testbench around `rtl`'s core for this platform (built once, then cached)."""
    if shutil.which("verilator") is None:
        raise TinyDeployError("verilator not found: `make install` installs it (Debian package verilator)")
    tb = package_path("sim", "rtl", "cv32e40p")
    sources = [rtl / s for s in RTL_SOURCES]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise TinyDeployError(f"{rtl}: not the expected CV32E40P sources (missing {missing[0]})")
    digest = hashlib.sha256()
    for f in [*sources, tb / "tb_cluster.sv", tb / "tb_cluster.cpp", platform_header]:
        digest.update(f.read_bytes())
    out = _cache_dir() / f"cv32e40p-tb-{digest.hexdigest()[:16]}"
    binary = out / "Vtb_cluster"
    if binary.is_file():
        return binary
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        include = Path(tmp) / "include"
        include.mkdir()
        shutil.copy(platform_header, include / "td_platform.h")
        command = ["verilator", *VERILATOR_FLAGS, "-Mdir", str(Path(tmp) / "obj"), f"+incdir+{rtl / 'rtl/include'}",
                   f"+incdir+{rtl / 'bhv/include'}", "-CFLAGS", f"-O2 -I{include}", *map(str, sources),
                   str(tb / "tb_cluster.sv"), str(tb / "tb_cluster.cpp")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise TinyDeployError("verilator could not build the CV32E40P testbench:\n" + result.stderr[-2000:])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "obj" / "Vtb_cluster", binary)
    return binary


@dataclass
class RtlRun:
    """One firmware run on the RTL core."""

    exit_code: int
    console: str
    cycles: int
    instructions: int
    outputs_bit_exact: bool | None
    layers: list[dict[str, Any]] = field(default_factory=list)   # index, cycles and the COUNTERS per layer


def run_build(build: Path, rtl: Path, max_cycles: int = 4_000_000_000) -> RtlRun:
    """Run a one-core cluster build's firmware (compiled-in golden input) on the RTL core; its outputs are read
    back from the RTL's memory and compared with the golden outputs."""
    from ..verify import golden_outputs, load_manifest, pack_slots, unpack_outputs
    from .cluster import Symbols

    manifest = load_manifest(build)
    elf = build_firmware(build)
    binary = build_testbench(rtl, build / "td_platform.h")
    symbols = Symbols(elf)
    inputs, golden = golden_outputs(build, manifest)
    with tempfile.TemporaryDirectory(prefix="td-rtl-") as tmp:
        tmp_dir = Path(tmp)
        command = [str(binary), str(elf), f"+max_cycles={max_cycles}", f"+console={tmp_dir / 'console.txt'}"]
        for symbol, data in (("golden_input", pack_slots(manifest["inputs"], inputs)),
                             ("golden_output", pack_slots(manifest["outputs"], golden))):
            (tmp_dir / f"{symbol}.bin").write_bytes(data)
            command.append(f"+load=0x{symbols.by_name[symbol]:08x}:{tmp_dir / f'{symbol}.bin'}")
        output = symbols.by_name.get("td_output")
        if output is not None:
            command.append(f"+dump=0x{output:08x}:{_output_bytes(manifest)}:{tmp_dir / 'out.bin'}")
        result = subprocess.run(command, capture_output=True, text=True)
        console = (tmp_dir / "console.txt").read_text(errors="replace") if (tmp_dir / "console.txt").exists() else ""
        exact = None
        if output is not None and (tmp_dir / "out.bin").is_file():
            got = unpack_outputs(manifest, (tmp_dir / "out.bin").read_bytes())
            exact = all(np.array_equal(got[name], value) for name, value in golden.items())
    if result.returncode >= 2:
        raise TinyDeployError(f"the RTL run failed ({result.returncode}): " + (result.stdout + result.stderr)[-600:])
    return _parse(result.stdout, result.returncode, console, exact)


def _parse(stdout: str, exit_code: int, console: str, exact: bool | None) -> RtlRun:
    run = RtlRun(exit_code, console, 0, 0, exact)
    for line in stdout.splitlines():
        parts = line.split()
        if line.startswith("LAYER ") and len(parts) > 4:
            values = dict(kv.split("=", 1) for kv in parts[4:] if "=" in kv)
            run.layers.append({"index": int(parts[1]), "cycles": int(parts[3]) - int(parts[2]),
                               **{k: int(values[k]) for k in COUNTERS if k in values}})
        elif line.startswith("TOTAL "):
            totals = dict(kv.split("=", 1) for kv in parts[1:])
            run.cycles, run.instructions = int(totals["cycles"]), int(totals["instr"])
    return run
