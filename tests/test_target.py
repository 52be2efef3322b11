"""Hardware descriptions (target.py): the off-chip part of [l3] in cycles, and one DMA description that the ISS and
the tiler's cost model both read."""

from __future__ import annotations

import pytest
from tinydeploy.errors import TinyDeployError
from tinydeploy.passes.tile import Bandwidth
from tinydeploy.sim.cluster import ClusterSpec
from tinydeploy.target import DmaSpec, Target, load_target


def test_the_l3_part_in_cycles_at_the_target_clock():
    """cluster8's HyperRAM pair: 800 MB/s at 500 MHz is 1.6 B/cycle; 56 ns to a burst's first word is 28 cycles,
    paid by every row of a 2-D transfer from L3 (setup 30, 2 per row)."""
    dma = DmaSpec.from_target("cluster8")
    assert dma.bandwidth[("l3", "l1")] == pytest.approx(1.6) and dma.l3_burst == 28
    assert "S80KS2563" in dma.l3_part
    assert dma.cycles("l3", "l1", 1600, rows=2) == 30 + 2 * (2 + 28) + 1000
    assert dma.cycles("l2", "l1", 1600, rows=2) == 30 + 2 * 2 + 200          # on chip: no burst latency
    ideal = DmaSpec.from_target("cluster8-ita-l3-2gbs")
    assert ideal.bandwidth[("l3", "l1")] == 4.0 and ideal.l3_burst == 0


@pytest.mark.parametrize("name", ["cluster8", "cluster8-ita", "cluster8-ita-l3-2gbs", "cluster8-ita-onchip"])
def test_iss_and_cost_model_read_one_dma_description(name):
    dma = DmaSpec.from_target(name)
    assert ClusterSpec.from_target(name).dma == dma
    bandwidth = Bandwidth.from_target(load_target(name))
    for level in ("l1", "l2", "l3"):
        for nbytes, rows in ((64, 1), (4096, 64), (100_000, 3)):
            assert bandwidth.cycles(level, nbytes, rows) == dma.cycles(level, "l1", nbytes, rows)


def _target(raw: dict) -> Target:
    return Target("t", "", "riscv", "ita", "ibert", {"name": "t", **raw})


def test_an_l3_part_needs_a_clock_and_its_figures():
    with pytest.raises(TinyDeployError, match=r"\[l3\] needs a \[clock\] mhz"):
        DmaSpec.from_target(_target({"l3": {"bytes_per_second": 4e8, "first_word_ns": 40}}))
    with pytest.raises(TinyDeployError, match=r"\[l3\] needs first_word_ns"):
        DmaSpec.from_target(_target({"clock": {"mhz": 500}, "l3": {"bytes_per_second": 4e8}}))
    with pytest.raises(TinyDeployError, match="must be > 0"):
        DmaSpec.from_target(_target({"clock": {"mhz": 500}, "l3": {"bytes_per_second": 0, "first_word_ns": 4}}))
    legacy = DmaSpec.from_target(_target({"dma": {"l3_to_l2_bytes_per_cycle": 2}}))   # no [l3]: [dma]'s figure
    assert legacy.bandwidth[("l3", "l2")] == 2 and legacy.l3_burst == 0
