"""The accelerator against ITA's public golden model: every stage of PyITA's vectors (shared/conformance/ita) on the
model and on the RTL, through `tinydeploy accel-check`."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED
from tinydeploy.ir import arith
from tinydeploy.sim.accel import check

ITA = SHARED / "conformance" / "ita"
VECTORS = sorted(ITA.glob("*.npz")) if ITA.is_dir() else []
needs_vectors = pytest.mark.skipif(not VECTORS, reason="needs ../shared/conformance/ita")
needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")


def assert_exact(results: list[check.StageResult]) -> None:
    assert [r.name for r in results if r.wrong] == [], "\n".join(r.line() for r in results)
    assert len(results) == 13


@needs_vectors
@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_every_stage_exact_on_the_model(path):
    assert_exact(check.accel_check(path)[0])


@needs_vectors
@needs_verilator
@pytest.mark.parametrize("path", [p for p in VECTORS if p.name.startswith("S64")], ids=lambda p: p.stem)
def test_every_stage_exact_on_the_rtl(path):
    results, acc = check.accel_check(path, rtl=True)
    assert_exact(results)
    assert acc.cycles == check.accel_check(path)[1].cycles        # RTL cycles == the timing model's


@needs_vectors
@needs_verilator
@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in VECTORS if p.name.startswith("S128")], ids=lambda p: p.stem)
def test_every_stage_exact_on_the_rtl_s128(path):
    assert_exact(check.accel_check(path, rtl=True)[0])


@needs_vectors
def test_deeploys_numerator_differs_from_itas(monkeypatch):
    """The check can fail: with Deeploy's ITAPartialMax numerator (L = 127) the softmax and A.V stages differ."""
    monkeypatch.setattr(check, "SOFTMAX_LEVELS", 256)
    results = {r.name: r for r in check.accel_check(VECTORS[0])[0]}
    assert results["A_partial_softmax"].wrong > 1000
    assert results["Qp_requant"].wrong == 0


def test_ita_gelu_keeps_the_lsb_a_shift_drops():
    """ITA's GELU folds the 1/2 into the requant: q * (erf + q_1), not (q * (erf + q_1)) >> 1."""
    consts = (-7091, -80, -7091)
    x = np.arange(-128, 128)
    full = arith.ita_gelu(x, *consts)
    assert (full % 2 != 0).sum() > 50 and full[128] == 0
    table = arith.ita_activation_table("gelu", (*consts, 74, 20, 0))
    assert table.shape == (256,) and table[255] == -127          # PyITA's GELU output scale is negative


@needs_vectors
def test_cli_accel_check_exit_codes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tinydeploy.cli", "accel-check", str(VECTORS[0])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count(" exact ") == 13 and "EXACT" in proc.stdout
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    proc = subprocess.run([sys.executable, "-m", "tinydeploy.cli", "accel-check", str(tmp_path / "other.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a PyITA vector file" in proc.stderr
