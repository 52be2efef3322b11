"""The accelerator RTL (sim/accel/rtl/ita_tile.v) under Verilator, driven through pyverilator.

`RtlAccelerator.run(job, read)` has the same contract as `model.run_job`: it loads the job's operands into
the RTL's memories through the 32-bit write port, pulses start, clocks until done and reads Y back; it also
returns the RTL's cycle count, which calibrates the timing model. The Verilated model is built once per
source hash into $XDG_CACHE_HOME/tinydeploy/rtl (about 30 s).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...errors import TinyDeployError
from ...resources import package_path
from ...target import AccelSpec
from .model import MODE_LUT, MODE_SM_MASK, STAGE_WORDS, Job, pitch, read_rows, row_bytes, y_bytes

SOURCE = package_path("sim", "accel", "rtl", "ita_tile.v")
#: widest row of the RTL (its index widths are written for it)
N_MAX = 512
SELECT = {"a": 0, "b": 1, "bias": 2, "rq": 3, "lut": 4, "stages": 5, "r": 6, "vectors": 7}
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
            build.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SOURCE, build / SOURCE.name)
            cwd = os.getcwd()
            try:
                os.chdir(build)
                self.sim = PyVerilator.build(SOURCE.name, build_dir="obj", quiet=True, dump_en=False,
                                             args=["-O3", "--x-assign", "fast", "--x-initial", "fast",
                                                   *(f"-G{k}={v}" for k, v in parameters.items())])
            finally:
                os.chdir(cwd)
        else:
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

    def _load(self, select: str, data: bytes, first_word: int = 0) -> None:
        io = self.io
        io.wr_sel = SELECT[select]
        words = np.frombuffer(data + bytes(-len(data) % 4), dtype="<u4")
        io.wr_en = 1
        for address, word in enumerate(words, start=first_word):
            io.wr_addr = address
            io.wr_data = int(word)
            self._tick()
        io.wr_en = 0

    def run(self, job: Job, read: Callable[[int, int], bytes]) -> tuple[bytes, int]:
        """(Y bytes, RTL cycles) of one job whose operands `read(address, bytes)` returns."""
        r = job.regs
        m, k, n = r["m"], r["k"], r["n"]
        out_bytes = m * n * y_bytes(r)
        problem = self.spec.job_problem(m, k, n, y_bytes(r))
        if problem:
            raise TinyDeployError(f"job {m}x{k}x{n} does not fit the RTL build: {problem}")
        self._load("a", read(r["a"], m * k))
        self._load("b", read(r["b"], k * n))
        self._load("bias", read(r["bias"], 4 * n))
        rq = np.frombuffer(read(r["rq"], 12 * n), dtype="<i4").reshape(3, n)
        for row in range(3):   # the RTL keeps mul, shift, add rows N_MAX words apart
            self._load("rq", rq[row].tobytes(), row * N_MAX)
        if r["mode"] & MODE_LUT:
            self._load("lut", read(r["lut"], 256))
        if r["mode"] & MODE_SM_MASK:
            self._load("vectors", read(r["v0"], n))
        if r["stage_count"]:
            self._load("stages", read(r["stages"], 4 * STAGE_WORDS * r["stage_count"]))
            if r["r"]:
                self._load("r", read_rows(read, r["r"], m, row_bytes(r, "r"), pitch(r, "r")))
            for j, name in enumerate(("v0", "v1", "v2", "v3")):
                if r[name]:
                    self._load("vectors", read(r[name], n), j * N_MAX // 4)
        io = self.io
        io.mode, io.m, io.k, io.n = r["mode"] & 0x3FF, m, k, n
        io.stage_count = r["stage_count"]
        for name in CONFIG:
            io[name] = r[name] & 0xFFFFFFFF
        io.start = 1
        self._tick()
        io.start = 0
        limit = 16 + m * ((n + 15) // 16) * ((k + 63) // 64 + 2) + m * 64
        for _ in range(limit):
            if not io.busy:
                break
            self._tick()
        else:
            raise TinyDeployError(f"the accelerator RTL did not finish a {m}x{k}x{n} job in {limit} cycles")
        cycles = int(io.cycles)
        out = bytearray()
        for address in range((out_bytes + 3) // 4):
            io.rd_addr = address
            self.sim.eval()
            out += int(io.rd_data).to_bytes(4, "little")
        return bytes(out[:out_bytes]), cycles
