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
    #: the L1 port: bytes per beat (32 word lanes) and cycles from the last beat's request to its data in the buffers
    port_bytes: int = 128
    port_latency: int = 1
    #: pipeline stages from the array's finished group to its outputs (requant, second requant, LUT, five
    #: AddRequant/MulRequant stages of two steps each, LUT after the stages)
    epilogue_stages: int = 14
    #: cycles from the array's read of an operand row to its multiply (the SRAM macros' registered read)
    read_latency: int = 1
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

    def job_problem(self, m: int, k: int, n: int, out_bytes: int = 1, trans_b: bool = False) -> str | None:
        """Why an m x k x n job does not fit the accelerator's memories, or None. B's stored rows (of B [k, n], or
        of B^T [n, k] with trans_b) are spread over dot_width banks of b_bytes / dot_width bytes each, row r in
        bank r mod dot_width (sim/accel/rtl/ita_tile.v), so the fullest bank decides."""
        if n > self.max_columns:
            return f"n = {n} > {self.max_columns} columns"
        stored, length = (n, k) if trans_b else (k, n)
        bank_rows = -(-stored // self.dot_width)
        for name, need, have in (("A", m * k, self.a_bytes), ("B", bank_rows * length * self.dot_width, self.b_bytes),
                                 ("Y", m * n * out_bytes, self.y_bytes)):
            if need > have:
                return f"{name} needs {need} B, the accelerator holds {have} B"
        return None

    def rows_per_job(self, k: int, n: int, out_bytes: int = 1) -> int:
        """Most rows of an [m, k] x [k, n] GEMM one job holds (0: not even one row fits)."""
        return min(self.a_bytes // max(k, 1), self.y_bytes // max(n * out_bytes, 1))


def port_beats(address: int, size: int, port_bytes: int) -> int:
    """Beats of the accelerator's L1 port to read `size` bytes at `address`: a beat reads port_bytes / 4
    consecutive words, so an unaligned start costs part of the first beat."""
    return -(-(address % 4 + size) // port_bytes) if size > 0 else 0


#: the accelerator's epilogue stage table in L1: STAGE_WORDS int32 per AddRequant/MulRequant stage, in this order
#: (backends/lowering.py writes it, sim/accel reads it)
STAGE_FIELDS = ("kind", "src", "chain", "mul_a", "mul_b", "a_zero", "b_zero", "mul", "shift", "add", "lo", "hi")
STAGE_WORDS = len(STAGE_FIELDS)


def loader_segments(m: int, k: int, n: int, *, trans_b: bool = False, keep_b: bool = False, lut: bool = False,
                    stages: int = 0, r_row_bytes: int = 0, vectors: tuple[int, ...] = ()) -> list[tuple[str, int, int]]:
    """What the accelerator's loader streams from L1 for one job, in its order (ita_tile.v): (register, rows, bytes
    per row). A; unless the job keeps B (a later row job of the same matrix), B row by row (each row goes to one
    bank), the int32 bias and the requant table's three rows; the LUT; the stage table (`stages` rows); the
    residual tile R row by row (`r_row_bytes` per row, when the stages read one); the per-column vectors
    (`vectors`: which of v0..v3). The ISS places these rows at the job's addresses (sim/accel/model.py
    operand_rows), the cost model at word-aligned ones (passes/tile.py): one description for both."""
    stored, length = (n, k) if trans_b else (k, n)
    segments = [("a", 1, m * k)]
    if not keep_b:
        segments += [("b", stored, length), ("bias", 1, 4 * n), ("rq", 3, 4 * n)]
    if lut:
        segments.append(("lut", 1, 256))
    if stages:
        segments.append(("stages", 1, 4 * STAGE_WORDS * stages))
        if r_row_bytes:
            segments.append(("r", m, r_row_bytes))
    segments += [(f"v{j}", 1, n) for j in vectors]
    return segments


def job_cycles(spec: AccelSpec, m: int, k: int, n: int, softmax: bool = False, beats: int = 0) -> int:
    """Cycles of one accelerator job from start to done: `beats` port beats to load its operands (the ISS counts
    them from the job's addresses, the cost model estimates them), the port's latency, then the array (the RTL's
    schedule: sim/accel/model.py explains it, tests/test_accel.py checks it against the RTL's cycle counter)."""
    groups, chunks = -(-n // spec.processing_elements), -(-k // spec.dot_width)
    array = groups * chunks + spec.row_cycles
    fixed = spec.setup_cycles + beats + spec.port_latency + spec.read_latency + spec.epilogue_stages
    if not softmax:
        return fixed + m * array
    tail = spec.divider_cycles + groups
    return fixed + array + tail + (m - 1) * max(array, tail)


def clock_of(target: Target) -> tuple[float | None, str]:
    """The clock in Hz from the target file, and where it was read (or a note that there is none)."""
    value = target.section("clock").get("mhz")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value) * 1e6, f"[clock] mhz = {value:g} in the target file"
    return None, "the target file names no clock"


LEVELS = ("l1", "l2", "l3")


@dataclass(frozen=True)
class DmaSpec:
    """The cluster's DMA engine and memories, one description for the ISS (sim/cluster.py) and the tiler's cost
    model (passes/tile.py): bytes per cycle between two levels, a fixed cost per transfer and per row (a 2-D
    transfer's rows are separate bursts), and for L3, the off-chip part named in [l3]: its bandwidth and the
    first-word latency every burst pays."""

    bandwidth: dict[tuple[str, str], float]       # (src, dst) -> bytes per cycle
    setup: int
    row: int
    l3_burst: int = 0                              # cycles before the first word of each burst from/to L3
    l3_part: str = ""

    @classmethod
    def from_target(cls, target: Target | str) -> DmaSpec:
        target = load_target(target)
        dma = target.section("dma")
        l2_l1 = float(dma.get("l2_to_l1_bytes_per_cycle", 8))
        l1_l1 = float(dma.get("l1_to_l1_bytes_per_cycle", l2_l1))
        l3, burst, part = cls._l3(target, float(dma.get("l3_to_l2_bytes_per_cycle", 4)))
        bandwidth = {(a, b): l3 if "l3" in (a, b) else (l1_l1 if a == b == "l1" else l2_l1)
                     for a in LEVELS for b in LEVELS}
        return cls(bandwidth, int(dma.get("setup_cycles", 30)), int(dma.get("row_cycles", 2)), burst, part)

    @staticmethod
    def _l3(target: Target, default: float) -> tuple[float, int, str]:
        """(bytes per cycle, burst latency in cycles, part) of L3: from [l3] at the target's clock, else [dma]."""
        part = target.section("l3")
        if not part:
            return default, 0, "L3 at [dma] l3_to_l2_bytes_per_cycle"
        clock_hz, _ = clock_of(target)
        if not clock_hz:
            raise TinyDeployError(f"target '{target.name}': [l3] needs a [clock] mhz to turn its part's figures "
                                  f"into cycles")
        try:
            per_cycle = float(part["bytes_per_second"]) / clock_hz
            burst = -(-int(round(float(part["first_word_ns"]) * clock_hz)) // 1_000_000_000)
        except KeyError as missing:
            raise TinyDeployError(f"target '{target.name}': [l3] needs {missing.args[0]}") from None
        if per_cycle <= 0 or burst < 0:
            raise TinyDeployError(f"target '{target.name}': [l3] bytes_per_second must be > 0, first_word_ns >= 0")
        return per_cycle, burst, str(part.get("part", "L3"))

    def cycles(self, src: str, dst: str, nbytes: int, rows: int = 1) -> int:
        """Cycles the engine is busy with one transfer of `rows` rows, `nbytes` bytes in all."""
        burst = self.l3_burst if "l3" in (src, dst) else 0
        return transfer_cycles(self.bandwidth[(src, dst)], self.setup, self.row + burst, nbytes, rows)


def transfer_cycles(per_cycle: float, setup: int, per_row: int, nbytes: int, rows: int) -> int:
    """The DMA engine's time for one transfer (DmaSpec.cycles; the cost model's Bandwidth.cycles)."""
    return setup + rows * per_row + int(-(-nbytes // per_cycle))
