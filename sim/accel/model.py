"""Functional and timing model of the ITA-like accelerator, as the cluster ISS sees it through MMIO.

A job is a snapshot of the registers at `accel_start` (see targets/cluster8-ita.toml [mmio]). Functionally the
job is the IR op ITAGemm (ir/ops.py) applied to the operands read from L1: int8 GEMM + int32 bias, per-column
requant (contract 1), then optionally a second requant, a LUT activation or the ITA streaming softmax
(contract 4) — the same functions the golden interpreter runs, so model and golden agree by construction.
Outputs are 8-bit, or int16 with MODE_Y16 (a projection into a 16-bit residual stream).
Timing (target.py: job_cycles, shared with the tiler's cost model) mirrors the RTL's schedule
(sim/accel/rtl/ita_tile.v): `setup + m * P` cycles, P = G*C + row, with G = ceil(n / PEs) column groups and
C = ceil(k / dot_width) chunks (16 PEs each reduce 64 int8 products per cycle: 1024 MAC/cycle) and `row` cycles
to drain each row's last group. With the softmax, each row then spends T = divider_cycles + G cycles in the
softmax tail (radix-4 divider, one normalisation pass), overlapping the next row on the array:
`setup + P + T + (m - 1) * max(P, T)`. tests/test_accel.py checks model cycles against the RTL's counter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...ir.arith import ITA_MAX_OCTAVE_BITS
from ...ir.graph import Node
from ...ir.ops import OPS
from ...target import STAGE_FIELDS, STAGE_WORDS, AccelSpec, job_cycles, loader_segments, port_beats

MODE_TRANS_B, MODE_REQUANT2, MODE_LUT, MODE_SOFTMAX, MODE_REQUANT3, MODE_A_UNSIGNED = 1, 2, 4, 8, 16, 32
#: Y elements are int16 (two bytes, little endian): a requant into a 16-bit residual stream (no softmax)
MODE_Y16 = 64
#: the softmax reads a key mask (contract 6): the int8 vector at v0, nonzero = keep
MODE_SM_MASK = 128
#: the LUT activation runs after the epilogue stages instead of before them (GELU after a bias-add stage)
MODE_LUT_LAST = 256
#: the residual tile R is int16 (a residual add into a 16-bit residual stream)
MODE_R16 = 512
#: B, bias and rq are the previous job's, still in the accelerator's buffers (its loader skips them); the driver sets
#: it for the second and later row jobs of a matrix, whose B, bias and rq it has not changed
MODE_KEEP_B = 1024
#: registers a job snapshots (names from the target's [mmio] table without the `accel_` prefix)
JOB_REGISTERS = ("mode", "a", "b", "bias", "rq", "y", "m", "k", "n", "rq_clip", "rq2_mul", "rq2_shift", "rq2_add",
                 "rq2_clip", "lut", "lut_min", "sm_group", "sm_levels", "sm_offset", "sm_clip", "stages",
                 "stage_count", "r", "v0", "v1", "v2", "v3", "rq3_mul", "rq3_shift",
                 "rq3_add", "rq3_clip", "y_pitch", "r_pitch", "sm_bits")
STAGE_KINDS = {1: "AddRequant", 2: "MulRequant"}
MAX_STAGES = 5
VECTOR_REGISTERS = ("v0", "v1", "v2", "v3")


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _clip(word: int) -> tuple[int, int]:
    lo, hi = word & 0xFFFF, (word >> 16) & 0xFFFF
    return (lo - 0x10000 if lo & 0x8000 else lo), (hi - 0x10000 if hi & 0x8000 else hi)


@dataclass
class Job:
    id: int
    regs: dict[str, int]
    done_at: int = 0
    result: bytes = b""
    layer: int = -1
    cycles: int = 0
    macs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.macs = self.regs["m"] * self.regs["k"] * self.regs["n"]

    def node(self, lut: np.ndarray | None, stage_table: np.ndarray | None = None) -> Node:
        """The ITAGemm this job computes (binary stages read operand 4 + src: R, v0 .. v3)."""
        r = self.regs
        lo, hi = _clip(r["rq_clip"])
        stages: list[dict] = []
        if r["mode"] & MODE_REQUANT2:
            lo2, hi2 = _clip(r["rq2_clip"])
            stages.append({"op": "Requant", "mul": _s32(r["rq2_mul"]), "shift": _s32(r["rq2_shift"]),
                           "add": _s32(r["rq2_add"]), "lo": lo2, "hi": hi2})
        activation = {"op": "LUT", "table": lut, "in_min": _s32(r["lut_min"])}
        if r["mode"] & MODE_LUT and not r["mode"] & MODE_LUT_LAST:
            stages.append(activation)
        if r["mode"] & MODE_SOFTMAX:
            slo, shi = _clip(r["sm_clip"])
            stages.append({"op": "ITAPartialMax", "group_width": r["sm_group"], "n_levels": r["sm_levels"],
                           "out_offset": _s32(r["sm_offset"]), "lo": slo, "hi": shi, "octave_bits": r["sm_bits"]})
            if r["mode"] & MODE_SM_MASK:
                stages[-1].update(operand=4 + 1, chain=0)          # operand 4 + 1: the vector at v0
        if r["mode"] & MODE_REQUANT3:
            lo3, hi3 = _clip(r["rq3_clip"])
            stages.append({"op": "Requant", "mul": _s32(r["rq3_mul"]), "shift": _s32(r["rq3_shift"]),
                           "add": _s32(r["rq3_add"]), "lo": lo3, "hi": hi3})
        for row in stage_table if stage_table is not None else []:
            fields = dict(zip(STAGE_FIELDS, (int(v) for v in row), strict=True))
            if fields["kind"] not in STAGE_KINDS:
                raise ValueError(f"stage table entry of kind {fields['kind']} (known: {sorted(STAGE_KINDS)})")
            stage = {"op": STAGE_KINDS[fields["kind"]], "operand": 4 + fields["src"], "chain": fields["chain"],
                     "a_zero": fields["a_zero"], "b_zero": fields["b_zero"], "mul": fields["mul"],
                     "shift": fields["shift"], "add": fields["add"], "lo": fields["lo"], "hi": fields["hi"]}
            if fields["kind"] == 1:
                stage.update(mul_a=fields["mul_a"], mul_b=fields["mul_b"])
            stages.append(stage)
        if r["mode"] & MODE_LUT and r["mode"] & MODE_LUT_LAST:
            stages.append(activation)
        return Node(f"job{self.id}", "ITAGemm", [], [], {"trans_b": int(bool(r["mode"] & MODE_TRANS_B)), "lo": lo,
                                                          "hi": hi, "stages": stages})


def y_bytes(regs: dict[str, int]) -> int:
    """Bytes per output element: 2 with MODE_Y16, else 1."""
    return 2 if regs["mode"] & MODE_Y16 else 1


def row_bytes(regs: dict[str, int], name: str) -> int:
    """Bytes of one row of the [m, n] operand `name` (y or r)."""
    if name == "y":
        return regs["n"] * y_bytes(regs)
    return regs["n"] * (2 if regs["mode"] & MODE_R16 else 1)


def pitch(regs: dict[str, int], name: str) -> int:
    """Bytes between rows of the [m, n] operand `name` (y or r): its pitch register, or a row's bytes when 0."""
    return regs.get(f"{name}_pitch", 0) or row_bytes(regs, name)


def read_rows(read: Callable[[int, int], bytes], address: int, m: int, n: int, row_pitch: int) -> bytes:
    """m rows of n bytes, `row_pitch` bytes apart, packed."""
    if row_pitch == n:
        return read(address, m * n)
    return b"".join(read(address + i * row_pitch, n) for i in range(m))


def operand_spans(regs: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(address, bytes) of every operand a job reads or writes (rows of y and r `pitch` bytes apart)."""
    m, k, n = regs["m"], regs["k"], regs["n"]
    spans = {"a": (regs["a"], m * k), "b": (regs["b"], k * n), "bias": (regs["bias"], 4 * n),
             "rq": (regs["rq"], 12 * n), "y": (regs["y"], (m - 1) * pitch(regs, "y") + row_bytes(regs, "y"))}
    if regs["mode"] & MODE_LUT:
        spans["lut"] = (regs["lut"], 256)
    if regs["mode"] & MODE_SM_MASK:
        spans["v0"] = (regs["v0"], n)
    if regs["stage_count"]:
        spans["stages"] = (regs["stages"], 4 * STAGE_WORDS * regs["stage_count"])
        for src in _stage_sources(regs):
            spans[src] = (regs[src], (m - 1) * pitch(regs, "r") + row_bytes(regs, "r") if src == "r" else n)
    return spans


def operand_rows(regs: dict[str, int]) -> list[tuple[int, int]]:
    """(address, bytes) of every row the accelerator's loader streams from L1, in its order (target.loader_segments
    at the job's addresses: B's rows, the rq table's and R's rows a row apart)."""
    m, k, n, mode, stages = regs["m"], regs["k"], regs["n"], regs["mode"], regs["stage_count"]
    vectors = tuple(j for j, name in enumerate(VECTOR_REGISTERS)
                    if regs[name] and (stages or (j == 0 and mode & MODE_SM_MASK)))
    segments = loader_segments(m, k, n, trans_b=bool(mode & MODE_TRANS_B), keep_b=bool(mode & MODE_KEEP_B),
                               lut=bool(mode & MODE_LUT), stages=stages,
                               r_row_bytes=row_bytes(regs, "r") if regs["r"] else 0, vectors=vectors)
    apart = {"r": pitch(regs, "r")}                 # R rows are a pitch apart; the other rows are packed
    return [(regs[name] + i * apart.get(name, size), size) for name, count, size in segments for i in range(count)]


def load_beats(regs: dict[str, int], port_bytes: int, rows: list[tuple[int, int]] | None = None) -> int:
    """Port beats the loader needs for the job's operands (target.port_beats per row; `rows`: operand_rows when
    the caller has them)."""
    rows = operand_rows(regs) if rows is None else rows
    return sum(port_beats(address, size, port_bytes) for address, size in rows)


def l1_bytes(regs: dict[str, int], rows: list[tuple[int, int]] | None = None) -> int:
    """L1 bytes the job moves through the port: the rows its loader reads (a job that keeps B reads no B, bias or
    rq) and the Y it writes (the energy model's L1 traffic of the accelerator)."""
    rows = operand_rows(regs) if rows is None else rows
    return sum(size for _, size in rows) + regs["m"] * row_bytes(regs, "y")


def cycles_of(regs: dict[str, int], spec: AccelSpec, beats: int | None = None) -> int:
    """The job's cycles from start to done (target.job_cycles with the loader's beats for its operands; `beats`
    when the caller has counted them already)."""
    beats = load_beats(regs, spec.port_bytes) if beats is None else beats
    return job_cycles(spec, regs["m"], regs["k"], regs["n"], bool(regs["mode"] & MODE_SOFTMAX), beats)


def _stage_sources(regs: dict[str, int]) -> list[str]:
    """The operand registers the job's stages may read: every stage source register that is non-zero (the driver
    writes 0 for sources the stage table does not use)."""
    return [name for name in ("r", *VECTOR_REGISTERS) if regs[name]]


def run_job(job: Job, read: Callable[[int, int], bytes]) -> bytes:
    """Compute the job's int8 output from the operands in memory (read(address, bytes))."""
    r = job.regs
    m, k, n = r["m"], r["k"], r["n"]
    a_type = np.uint8 if r["mode"] & MODE_A_UNSIGNED else np.int8      # sign mode of operand A (ITA's A.V)
    a = np.frombuffer(read(r["a"], m * k), dtype=a_type).reshape(m, k)
    b_shape = (n, k) if r["mode"] & MODE_TRANS_B else (k, n)
    b = np.frombuffer(read(r["b"], k * n), dtype=np.int8).reshape(b_shape)
    bias = np.frombuffer(read(r["bias"], 4 * n), dtype="<i4")
    rq = np.frombuffer(read(r["rq"], 12 * n), dtype="<i4").reshape(3, n)
    lut = np.frombuffer(read(r["lut"], 256), dtype=np.int8) if r["mode"] & MODE_LUT else None
    table, extra = None, []
    if r["mode"] & MODE_SOFTMAX and not 1 <= r["sm_bits"] <= ITA_MAX_OCTAVE_BITS:
        raise ValueError(f"softmax octave bits {r['sm_bits']} outside 1..{ITA_MAX_OCTAVE_BITS}")
    if r["mode"] & MODE_SM_MASK:
        if r["stage_count"] or not r["mode"] & MODE_SOFTMAX:
            raise ValueError("a softmax key mask needs the softmax and no epilogue stages (it occupies v0)")
        extra = [None, np.frombuffer(read(r["v0"], n), dtype=np.int8).reshape(n)]
    if r["stage_count"]:
        if r["stage_count"] > MAX_STAGES:
            raise ValueError(f"{r['stage_count']} epilogue stages (the accelerator has {MAX_STAGES})")
        table = np.frombuffer(read(r["stages"], 4 * STAGE_WORDS * r["stage_count"]), dtype="<i4")
        table = table.reshape(r["stage_count"], STAGE_WORDS)
        for name, shape in (("r", (m, n)), *((v, (n,)) for v in VECTOR_REGISTERS)):
            size = int(np.prod(shape))
            if not r[name]:
                extra.append(None)
                continue
            if name == "r":
                data = read_rows(read, r[name], m, row_bytes(r, "r"), pitch(r, "r"))
                extra.append(np.frombuffer(data, dtype="<i2" if r["mode"] & MODE_R16 else np.int8).reshape(shape))
            else:
                extra.append(np.frombuffer(read(r[name], size), dtype=np.int8).reshape(shape))
    # the IR ops compute on int64 values, as the golden interpreter holds them (int8 arithmetic would wrap)
    operands = [None if x is None else x.astype(np.int64) for x in (a, b, bias, rq, *extra)]
    y = np.asarray(OPS["ITAGemm"].run(job.node(lut, table), operands)[0], dtype=np.int64)
    if r["mode"] & MODE_Y16:
        if r["mode"] & MODE_SOFTMAX:
            raise ValueError("16-bit outputs with the softmax (its outputs are 8-bit)")
        return y.astype("<i2").tobytes()
    return (y & 0xFF).astype(np.uint8).tobytes()   # int8 or uint8 bytes
