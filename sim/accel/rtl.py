"""The accelerator RTL (sim/accel/rtl/ita_tile.v) under Verilator, driven through pyverilator.

`RtlAccelerator.run(job, read)` has the same contract as `model.run_job`: it programs the job's registers, pulses
start and clocks until done, serving the RTL's L1 port (read beats of the operands, writes of Y) from `read`; it
also returns the RTL's cycle count, which calibrates the timing model. The Verilated model is built once per
source hash into $XDG_CACHE_HOME/tinydeploy/rtl (about 30 s).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ...errors import TinyDeployError
from ...resources import package_path
from ...target import AccelSpec
from .model import MODE_TRANS_B, Job, load_beats, operand_rows, pitch, row_bytes, y_bytes

SOURCE = package_path("sim", "accel", "rtl", "ita_tile.v")
#: widest row of the RTL (its index widths are written for it)
N_MAX = 512
#: the loader (128 bytes a beat) and the epilogue pipeline are written as loops Verilator must unroll
UNROLL = ("--unroll-count", "256", "--unroll-stmts", "10000000")
#: job registers -> the RTL's address inputs
ADDRESSES = {"a": "a_addr", "b": "b_addr", "bias": "bias_addr", "rq": "rq_addr", "lut": "lut_addr",
             "stages": "stg_addr", "r": "r_addr", "v0": "v0_addr", "v1": "v1_addr", "v2": "v2_addr",
             "v3": "v3_addr", "y": "y_addr", "y_pitch": "y_pitch", "r_pitch": "r_pitch"}
CONFIG = ("rq_clip", "rq2_mul", "rq2_shift", "rq2_add", "rq2_clip", "lut_min", "sm_levels", "sm_offset", "sm_clip",
          "sm_bits",
          "rq3_mul", "rq3_shift", "rq3_add", "rq3_clip")


def _parameters(spec: AccelSpec) -> dict[str, int]:
    """ita_tile.v's parameters for an accelerator description (the target's [accelerator] section)."""
    if spec.max_columns != N_MAX:
        raise TinyDeployError(f"the RTL is written for rows of up to {N_MAX} columns (max_columns = "
                              f"{spec.max_columns} in the target)")
    return {"PE": spec.processing_elements, "W": spec.dot_width, "A_BYTES": spec.a_bytes, "B_BYTES": spec.b_bytes,
            "Y_BYTES": spec.y_bytes, "N_MAX": N_MAX}


def _build_dir(parameters: dict[str, int]) -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    digest = hashlib.sha256(SOURCE.read_bytes() + repr(sorted(parameters.items())).encode()).hexdigest()[:16]
    return Path(root) / "tinydeploy" / "rtl" / digest


def _build(build: Path, parameters: dict[str, int]) -> None:
    """Verilate and compile the RTL into `build` (several minutes): in a private directory first, renamed into
    place when done, so concurrent runs neither share a half-built model nor fail when another finished first."""
    from pyverilator import PyVerilator

    print("building the accelerator RTL with Verilator (once per RTL version; a few minutes)", file=sys.stderr)
    staging = build.with_name(f"{build.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(SOURCE, staging / SOURCE.name)
    cwd = os.getcwd()
    try:
        os.chdir(staging)
        PyVerilator.build(SOURCE.name, build_dir="obj", quiet=True, dump_en=False,
                          args=["-O3", "--x-assign", "fast", "--x-initial", "fast", *UNROLL,
                                *(f"-G{k}={v}" for k, v in parameters.items())])
    finally:
        os.chdir(cwd)
    try:
        staging.rename(build)
    except OSError:                    # another run built it meanwhile
        shutil.rmtree(staging, ignore_errors=True)


class RtlAccelerator:
    """One Verilated ita_tile instance, built with the memories and array of `spec`."""

    def __init__(self, spec: AccelSpec | None = None) -> None:
        self.spec = spec or AccelSpec()
        parameters = _parameters(self.spec)
        if shutil.which("verilator") is None:
            raise TinyDeployError("verilator is not installed (apt-get install -y verilator); needed for --accel rtl")
        from pyverilator import PyVerilator

        build = _build_dir(parameters)
        so_file = build / "obj" / "Vita_tile"
        if not so_file.exists():
            _build(build, parameters)
        if not so_file.exists():
            raise TinyDeployError(f"the accelerator RTL build in {build} is incomplete (an interrupted build?): "
                                  f"remove that folder and run again")
        self.sim = PyVerilator(str(so_file))
        self.sim.auto_eval = False   # evaluate on clock edges only: every input write would re-evaluate the array
        self.io = self.sim.io
        self.io.rst = 1
        self._tick()
        self.io.rst = 0

    def _tick(self) -> None:
        self.io.clk = 1
        self.sim.eval()
        self.io.clk = 0
        self.sim.eval()

    def run(self, job: Job, read: Callable[[int, int], bytes]) -> tuple[bytes, int]:
        """(Y bytes, RTL cycles) of one job whose operands `read(address, bytes)` returns: the testbench is the
        L1 side of the accelerator's port (it serves read beats and takes writes)."""
        r = job.regs
        m, k, n = r["m"], r["k"], r["n"]
        problem = self.spec.job_problem(m, k, n, y_bytes(r), bool(r["mode"] & MODE_TRANS_B))
        if problem:
            raise TinyDeployError(f"job {m}x{k}x{n} does not fit the RTL build: {problem}")
        l1 = _L1Image(read, operand_rows(r))
        io = self.io
        io.mode, io.m, io.k, io.n = r["mode"] & 0x7FF, m, k, n
        io.stage_count = r["stage_count"]
        for name in CONFIG:
            io[name] = r[name] & 0xFFFFFFFF
        for name, port in ADDRESSES.items():
            io[port] = r[name] & 0xFFFFFFFF
        io.start = 1
        self._tick()
        io.start = 0
        limit = 16 + load_beats(r, self.spec.port_bytes) + m * ((n + 15) // 16) * ((k + 63) // 64 + 2) + m * 64
        for _ in range(limit):
            if io.l1_rd_req:
                io.l1_rd_data = l1.beat(int(io.l1_rd_addr), self.spec.port_bytes)
            if io.l1_wr_en:
                l1.write(int(io.l1_wr_addr), int(io.l1_wr_data), int(io.l1_wr_be))
            if not io.busy:
                break
            self._tick()
        else:
            raise TinyDeployError(f"the accelerator RTL did not finish a {m}x{k}x{n} job in {limit} cycles")
        row, row_pitch = row_bytes(r, "y"), pitch(r, "y")
        return b"".join(l1.written(r["y"] + i * row_pitch, row) for i in range(m)), int(io.cycles)


class _L1Image:
    """What the accelerator's port sees of L1: the bytes of the job's operand rows (other bytes read as a 0xA5
    pattern, so an RTL that uses a byte outside its operands fails the comparison) and the bytes it writes."""

    def __init__(self, read: Callable[[int, int], bytes], rows: list[tuple[int, int]]) -> None:
        self.rows = [(address, read(address, size)) for address, size in rows if size]
        self.out: dict[int, int] = {}

    def beat(self, address: int, size: int) -> int:
        window = bytearray(b"\xa5" * size)
        for start, data in self.rows:
            lo, hi = max(start, address), min(start + len(data), address + size)
            if lo < hi:
                window[lo - address:hi - address] = data[lo - start:hi - start]
        return int.from_bytes(window, "little")

    def write(self, address: int, data: int, enables: int) -> None:
        for j in range(enables.bit_length()):
            if enables >> j & 1:
                self.out[address + j] = data >> (8 * j) & 0xFF

    def written(self, address: int, size: int) -> bytes:
        """`size` bytes at `address` as the RTL wrote them (a byte it never wrote is an error)."""
        missing = next((a for a in range(address, address + size) if a not in self.out), None)
        if missing is not None:
            raise TinyDeployError(f"the accelerator RTL never wrote Y byte 0x{missing:08x}")
        return bytes(self.out[a] for a in range(address, address + size))
