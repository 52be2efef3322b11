"""The cluster ISS's core timing (targets/cluster8.toml [core], sim/native/td_iss_hooks.c): the pipeline cycles of
hand-encoded RV32IMC code, and, with a CV32E40P checkout, the ISS against the core's RTL on real firmware."""

from __future__ import annotations

import ctypes
import struct

import pytest
from tinydeploy.errors import TinyDeployError
from tinydeploy.sim.cluster import ClusterSpec
from tinydeploy.sim.core_rtl import find_cv32e40p
from tinydeploy.sim.native import NO_BLOCK, CoreTiming, HartCounter, hooks_library

CODE_BASE = 0x1000
#: (encoding, what it costs beyond one cycle with CV32E40P's timing)
PROGRAM = [
    (0x0005A503, "lw a0, 0(a1)"),
    (0x00D50633, "add a2, a0, a3: reads the load's result, +1 load-use"),
    (0x02D61733, "mulh a4, a2, a3: +4"),
    (0x02D747B3, "div a5, a4, a3: +24"),
    (0x4188, "c.lw a0, 0(a1)"),
    (0x962A, "c.add a2, a2, a0: +1 load-use"),
    (0x00000097, "auipc ra, 0"),
    (0x000080E7, "jalr ra, 0(ra): +1 its address register was just written, +1 it is also the link register"),
]


def _range_cost(code: bytes, timing: CoreTiming, isa: int = 0) -> tuple[int, int]:
    buffer = ctypes.create_string_buffer(code)
    counter = HartCounter(0, 0, NO_BLOCK, 0, 0, 0, isa, None)
    counter.regions[0].base, counter.regions[0].size = CODE_BASE, len(code)
    counter.regions[0].host = ctypes.cast(buffer, ctypes.c_void_p)
    counter.timing = timing
    instructions, cycles = ctypes.c_uint64(), ctypes.c_uint64()
    hooks_library().td_range_cost(ctypes.byref(counter), ctypes.c_uint64(CODE_BASE),
                                  ctypes.c_uint64(CODE_BASE + len(code)), ctypes.byref(instructions),
                                  ctypes.byref(cycles))
    return instructions.value, cycles.value


def test_pipeline_cycles_of_hand_encoded_code():
    code = b"".join(struct.pack("<I" if word & 3 == 3 else "<H", word) for word, _ in PROGRAM)
    timing = ClusterSpec.from_target("cluster8").timing
    assert timing is not None and timing.enabled
    assert _range_cost(code, timing) == (8, 8 + 1 + 4 + 24 + 1 + 2)
    assert _range_cost(code, CoreTiming()) == (8, 8)              # no [core]: one instruction per cycle


#: Thumb-2 for the Cortex-M4 TRM timings: (halfwords, what it costs beyond one cycle)
THUMB = [
    ((0x6808,), "ldr r0, [r1]: the first of a run of loads/stores, +1"),
    ((0x684A,), "ldr r2, [r1, #4]: pipelined behind it"),
    ((0x4410,), "add r0, r2"),
    ((0x6018,), "str r0, [r3]: first of a new run, +1"),
    ((0xB5F0,), "push {r4-r7, lr}: 1 + 5"),
    ((0xFB01, 0x3002), "mla r0, r1, r2, r3: +1"),
    ((0xFB01, 0xF002), "mul r0, r1, r2"),
    ((0xFB91, 0xF0F2), "sdiv r0, r1, r2: +6"),
    ((0xFBB1, 0xF0F2), "udiv r0, r1, r2: +6"),
    ((0xF8D1, 0x0008), "ldr.w r0, [r1, #8]: +1"),
]


def test_cortex_m4_cycles_of_hand_encoded_thumb():
    from tinydeploy.target import load_target

    code = b"".join(struct.pack("<H", half) for halves, _ in THUMB for half in halves)
    timing = CoreTiming.from_section(load_target("cortex-m4").section("core"))
    assert _range_cost(code, timing, isa=1) == (10, 10 + 1 + 1 + 5 + 1 + 6 + 6 + 1)
    m7 = CoreTiming.from_section(load_target("cortex-m7").section("core"))
    assert not m7.enabled and _range_cost(code, m7, isa=1) == (10, 10)     # approximated as 1 instruction/cycle


def test_unknown_or_negative_timing_keys_are_refused():
    with pytest.raises(TinyDeployError, match="unknown timing keys.*branch_cycles"):
        CoreTiming.from_section({"branch_cycles": 2})
    with pytest.raises(TinyDeployError, match=">= 0"):
        CoreTiming.from_section({"jump_cycles": -1})


@pytest.mark.skipif(find_cv32e40p() is None, reason="no CV32E40P checkout (TD_CV32E40P or ../shared/third_party)")
def test_iss_matches_the_cv32e40p_rtl_per_kernel(tmp_path):
    """The tiny MobileBERT firmware for one core runs bit-exact on the RTL core, and every kernel's ISS cycles are
    within 10% of the RTL's (benchmarks/bench_core_rtl.py prints the table)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_compile import zoo_model
    from bench_core_rtl import compare

    kinds = compare(zoo_model("tiny"), tmp_path / "build", find_cv32e40p())
    kernels = {op: k for op, k in kinds.items() if k["rtl"] >= 10_000}
    assert {"MatMulInt", "ISoftmax", "Requant"} <= set(kernels)
    for op, k in kernels.items():
        assert abs(k["iss"] / k["rtl"] - 1) <= 0.10, (op, k)


def test_rtl_testbench_output_is_read_per_layer(tmp_path):
    """sim/core_rtl.py reads the testbench's LAYER and TOTAL lines; a folder that is not a CV32E40P checkout is
    refused by name."""
    from tinydeploy.sim.core_rtl import _parse

    out = ("PASS: all outputs bit-exact\nLAYER 3 100 350 instr=200 ld_stall=10 jr_stall=0 imiss=0 branch=20 "
           "br_taken=15 jump=4 load=60 store=30 dma_bytes=64 dma_transfers=1\n"
           "TOTAL cycles=1000 instr=800 dma_transfers=1 dma_bytes=64\nEXIT code=0 cycles_from_reset=1000\n")
    run = _parse(out, 0, "PASS", True)
    assert (run.cycles, run.instructions, run.outputs_bit_exact) == (1000, 800, True)
    assert run.layers == [{"index": 3, "cycles": 250, "instr": 200, "ld_stall": 10, "jr_stall": 0, "imiss": 0,
                           "branch": 20, "br_taken": 15, "jump": 4, "load": 60, "store": 30}]
    with pytest.raises(TinyDeployError, match="not a CV32E40P checkout"):
        find_cv32e40p(tmp_path)
