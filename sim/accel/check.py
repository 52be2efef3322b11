"""`tinydeploy accel-check`: every stage of a PyITA vector file through the accelerator, model or RTL.

PyITA (the golden model in the ITA repository) writes attention and feed-forward vectors with every
intermediate (array names: shared/conformance/ita/README.md). Each stage becomes accelerator jobs, exactly as
the ISS issues them: registers plus operands in memory, tiled by rows to the RTL build's memories, run by
`model.run_job` or by the Verilated RTL (`rtl.RtlAccelerator`). Stage by stage, PyITA's own inputs go in (not
our previous stage's outputs), so a difference is pinned to one stage.

  Q/K/V projections   GEMM + bias, requant (steps 0-2 of requant_*)
  QK^T                A = Qp_requant @ Kp_requant^T, requant (step 3)
  streaming softmax   the QK^T job with the softmax unit: numerator L = 255, unsigned 8-bit output
  A.V                 A_partial_softmax read as uint8 (the sign mode), @ Vp_requant, requant (step 4)
  output projection   @ Wo + Bo, requant (step 5)
  head sum            [O_1 .. O_H] @ [I; ..; I]: the exact int32 sum of the heads' int8 outputs, requant (step 6)
  FFN1 (+activation)  FF @ Wff + Bff, requant (ffn step 0), then the activation unit's LUT (ITA's GELU or ReLU
                      with its own requant, ir/arith.ita_activation_table)
  FFN2                FFp_requant @ Wff2 + Bff2, requant (ffn step 1)
  activation unit     ITA's integer GELU on all 256 inputs (gelu_int32, ir/arith.ita_gelu) and the unit's LUT
                      applied by a job to every int8 input (gelu_table, relu_table)

PyITA also clips every accumulator to 26 bits; the vectors never reach that bound (largest |acc| ~ 3e5), and our
accelerator keeps 32-bit accumulators, so a model that did would differ here (noted, not modelled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import TinyDeployError
from ...ir import arith
from ...target import AccelSpec
from .model import (
    JOB_REGISTERS,
    MODE_A_UNSIGNED,
    MODE_LUT,
    MODE_SOFTMAX,
    MODE_TRANS_B,
    Job,
    cycles_of,
    run_job,
)

#: ITA's streaming softmax as the accelerator runs it: 16-column blocks, L = 255 (sm_levels = 2 (L + 1))
SOFTMAX_GROUP, SOFTMAX_LEVELS = 16, 512
ACTIVATIONS = ("identity", "gelu", "relu")


def clip_word(lo: int, hi: int) -> int:
    return ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)


@dataclass
class StageResult:
    """One stage: elements compared, how many differ, and the first difference."""

    name: str
    what: str
    total: int
    wrong: int
    first: str = ""

    def line(self) -> str:
        if not self.wrong:
            return f"{self.name:22s} exact      ({self.total:,} elements; {self.what})"
        return (f"{self.name:22s} DIFFERENT  {self.wrong:,} of {self.total:,} elements; first {self.first} "
                f"({self.what})")


class Memory:
    """A flat address space for one job's operands (what the ISS's L1 is for a real job)."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}
        self.top = 0x1000

    def put(self, data: bytes) -> int:
        address = self.top
        self.blocks[address] = data
        self.top += (len(data) + 0xFF) // 0x100 * 0x100 + 0x100
        return address

    def read(self, address: int, nbytes: int) -> bytes:
        for start, data in self.blocks.items():
            if start <= address and address + nbytes <= start + len(data):
                return data[address - start:address - start + nbytes]
        raise TinyDeployError(f"job read outside its operands at 0x{address:x}")


class Accelerator:
    """Runs jobs on the functional/timing model or on the Verilated RTL (same contract)."""

    def __init__(self, rtl: bool) -> None:
        self.rtl = None
        if rtl:
            from .rtl import RtlAccelerator

            self.rtl = RtlAccelerator()
        self.jobs = 0
        self.cycles = 0

    def run(self, regs: dict[str, int], memory: Memory) -> bytes:
        job = Job(self.jobs, regs)
        self.jobs += 1
        if self.rtl is None:
            self.cycles += cycles_of(regs, AccelSpec())
            return run_job(job, memory.read)
        data, cycles = self.rtl.run(job, memory.read)
        self.cycles += cycles
        return data

    def gemm(self, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, rq: tuple[int, int, int], *,
             trans_b: bool = False, softmax: bool = False, lut: np.ndarray | None = None) -> np.ndarray:
        """requant(a @ b + bias) [-> LUT | -> streaming softmax] as jobs of at most the RTL's memory sizes."""
        a = np.asarray(a)
        m, k = a.shape
        n = b.shape[0] if trans_b else b.shape[1]
        spec = AccelSpec()
        problem = spec.job_problem(1, k, n, trans_b=trans_b)
        if problem:
            raise TinyDeployError(f"a {k}x{n} weight operand does not fit the accelerator: {problem}")
        rows = max(1, spec.rows_per_job(k, n))
        bias = np.zeros(n, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(n)
        mode = (MODE_TRANS_B if trans_b else 0) | (MODE_SOFTMAX if softmax else 0) | (MODE_LUT if lut is not None
                                                                                       else 0)
        if a.dtype == np.uint8:
            mode |= MODE_A_UNSIGNED
        out = []
        for first in range(0, m, rows):
            tile = a[first:first + rows]
            memory = Memory()
            regs = dict.fromkeys(JOB_REGISTERS, 0)
            regs.update(mode=mode, m=tile.shape[0], k=k, n=n, rq_clip=clip_word(-128, 127),
                        lut_min=-128 & 0xFFFFFFFF, sm_group=SOFTMAX_GROUP, sm_levels=SOFTMAX_LEVELS, sm_bits=5,
                        sm_clip=clip_word(0, 255))
            regs["a"] = memory.put(np.ascontiguousarray(tile).tobytes())
            regs["b"] = memory.put(np.ascontiguousarray(b, dtype=np.int8).tobytes())
            regs["bias"] = memory.put(bias.astype("<i4").tobytes())
            regs["rq"] = memory.put(np.stack([np.full(n, v, "<i4") for v in rq]).tobytes())
            if lut is not None:
                regs["lut"] = memory.put(np.asarray(lut, np.int8).tobytes())
            regs["y"] = memory.put(bytes(tile.shape[0] * n))
            out.append(np.frombuffer(self.run(regs, memory), np.uint8 if softmax else np.int8).reshape(-1, n))
        return np.concatenate(out)


def _compare(name: str, what: str, got: np.ndarray, want: np.ndarray) -> StageResult:
    got, want = np.asarray(got, np.int64), np.asarray(want, np.int64).reshape(np.shape(got))
    diff = got != want
    first = ""
    if diff.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(diff)[0]), got.shape))
        first = f"at {list(index)}: got {got[index]}, PyITA {want[index]}"
    return StageResult(name, what, got.size, int(diff.sum()), first)


def _params(data: dict[str, np.ndarray], step: int, head: int, ffn: bool = False) -> tuple[int, int, int]:
    suffix = "_ffn" if ffn else ""
    mul, shift, add = (np.asarray(data[f"requant_{k}{suffix}"]).astype(np.int64) for k in
                       ("eps_mult", "right_shift", "add"))
    if ffn:
        return int(mul.reshape(-1)[step]), int(shift.reshape(-1)[step]), int(add.reshape(-1)[step])
    return int(mul[step, head]), int(shift[step, head]), int(add[step, head])


REQUIRED = ("Q", "K", "V", "Wq", "Wk", "Wv", "Wo", "Bq", "Bk", "Bv", "Bo", "Qp_requant", "Kp_requant",
            "Vp_requant", "A_requant", "A_partial_softmax", "O_soft_requant", "Out_soft_requant",
            "Out_soft_sum_requant", "requant_eps_mult", "requant_right_shift", "requant_add")


def load_vectors(path: str | Path) -> dict[str, np.ndarray]:
    from ...frontend.inputs import read_npz

    data = read_npz(Path(path))
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise TinyDeployError(f"{path} is not a PyITA vector file: no array {', '.join(missing[:4])}")
    return data


def attention_stages(acc: Accelerator, d: dict[str, np.ndarray]) -> list[StageResult]:
    """Multi-head attention: projections, QK^T, streaming softmax, A.V, output projection, head sum."""
    heads = d["Wq"].shape[0]
    results = []

    def per_head(name: str, what: str, compute: Callable[[int], np.ndarray]) -> None:
        got = np.stack([compute(h) for h in range(heads)])
        results.append(_compare(name, what, got, d[name]))

    for name, x, w, b, step in (("Qp_requant", "Q", "Wq", "Bq", 0), ("Kp_requant", "K", "Wk", "Bk", 1),
                                ("Vp_requant", "V", "Wv", "Bv", 2)):
        per_head(name, f"{x} @ {w} + {b}, requant step {step}",
                 lambda h, x=x, w=w, b=b, step=step: acc.gemm(d[x].astype(np.int8), d[w][h], d[b][h],
                                                               _params(d, step, h)))
    q, k, v = (d[n].astype(np.int8) for n in ("Qp_requant", "Kp_requant", "Vp_requant"))
    per_head("A_requant", "Qp_requant @ Kp_requant^T, requant step 3",
             lambda h: acc.gemm(q[h], k[h], None, _params(d, 3, h), trans_b=True))
    per_head("A_partial_softmax", f"the QK^T job with the streaming softmax, L = {SOFTMAX_LEVELS // 2 - 1}, uint8",
             lambda h: acc.gemm(q[h], k[h], None, _params(d, 3, h), trans_b=True, softmax=True))
    probabilities = d["A_partial_softmax"].astype(np.int8).view(np.uint8)
    per_head("O_soft_requant", "A_partial_softmax (read as uint8) @ Vp_requant, requant step 4",
             lambda h: acc.gemm(probabilities[h], v[h], None, _params(d, 4, h)))
    o = d["O_soft_requant"].astype(np.int8)
    per_head("Out_soft_requant", "O_soft_requant @ Wo + Bo, requant step 5",
             lambda h: acc.gemm(o[h], d["Wo"][h], d["Bo"][h], _params(d, 5, h)))
    heads_side = np.concatenate(list(d["Out_soft_requant"].astype(np.int8)), axis=1)      # [S, H*E]
    width = d["Out_soft_requant"].shape[-1]
    identities = np.tile(np.eye(width, dtype=np.int8), (heads, 1))                       # [H*E, E]
    got = acc.gemm(heads_side, identities, None, _params(d, 6, 0))[None]
    results.append(_compare("Out_soft_sum_requant", "sum of the heads ([O_1..O_H] @ [I;..;I]), requant step 6",
                            got, d["Out_soft_sum_requant"]))
    return results


def feedforward_stages(acc: Accelerator, d: dict[str, np.ndarray]) -> list[StageResult]:
    """FFN1 with the activation unit, FFN2, and the activation unit on every int8 input."""
    if "FF" not in d:
        return []
    activation = str(d.get("activation", np.array("identity")))
    if activation not in ACTIVATIONS:
        raise TinyDeployError(f"unknown activation '{activation}' (PyITA writes {', '.join(ACTIVATIONS)})")
    consts = np.asarray(d["gelu_consts"]).astype(np.int64)
    lut = None if activation == "identity" else arith.ita_activation_table(activation, consts)
    results = []
    got = acc.gemm(d["FF"].astype(np.int8), d["Wff"][0], d["Bff"][0], _params(d, 0, 0, ffn=True), lut=lut)
    results.append(_compare("FFp_requant", f"FF @ Wff + Bff, requant ffn step 0, activation {activation}",
                            got[None], d["FFp_requant"]))
    got = acc.gemm(d["FFp_requant"][0].astype(np.int8), d["Wff2"][0], d["Bff2"][0], _params(d, 1, 0, ffn=True))
    results.append(_compare("FF2p_requant", "FFp_requant @ Wff2 + Bff2, requant ffn step 1", got[None],
                            d["FF2p_requant"]))
    inputs = np.arange(-128, 128, dtype=np.int64)
    if "gelu_int32" in d:
        results.append(_compare("gelu_int32", "ITA's integer GELU on all 256 inputs (ir/arith.ita_gelu)",
                                arith.ita_gelu(inputs, *consts[:3]), d["gelu_int32"]))
    every_input = inputs.astype(np.int8).reshape(256, 1)
    for kind in ("gelu", "relu"):
        if f"{kind}_table" in d:     # a job: x * 1, requant 1/1, then the unit's LUT, for every int8 x
            got = acc.gemm(every_input, np.ones((1, 1), np.int8), None, (1, 0, 0),
                           lut=arith.ita_activation_table(kind, consts))
            results.append(_compare(f"{kind}_table", f"the activation unit's {kind.upper()} on every int8 input",
                                    got.reshape(-1), d[f"{kind}_table"]))
    return results


def accel_check(path: str | Path, rtl: bool = False) -> tuple[list[StageResult], Accelerator]:
    """Every stage of one PyITA vector file on the model (or the RTL)."""
    data = load_vectors(path)
    acc = Accelerator(rtl)
    return attention_stages(acc, data) + feedforward_stages(acc, data), acc
