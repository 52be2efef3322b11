"""Ctrl-C: compile and simulate stop within a second with exit 130 and "interrupted", no false diagnosis, no
half-written outputs, and an interrupted compile leaves the previous build as it was."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "tinydeploy.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory) -> Path:
    """A MobileBERT whose cluster8 simulation takes a few seconds of ISS time (8 layers, seq 128)."""
    out = tmp_path_factory.mktemp("mid")
    proc = cli("zoo", "mobilebert", "-o", str(out), "--layers", "8", "--seq", "128", "--hidden", "256",
               "--bottleneck", "64", "--intermediate", "256", "--heads", "4")
    assert proc.returncode == 0, proc.stderr
    return out / "model_qdq.onnx"


def interrupt_after(args: list[str], marker: str, delay: float) -> tuple[subprocess.CompletedProcess, float]:
    """Start the CLI, wait for `marker` on stderr, sleep `delay`, send SIGINT; (result, seconds to exit)."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    time.sleep(delay)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    elapsed = time.perf_counter() - sent
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err), elapsed


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("delay", [0.1, 0.5, 1.0])
def test_sigint_stops_simulate(mid_model, tmp_path, delay):
    build = tmp_path / "c8"
    assert cli("compile", str(mid_model), "--target", "cluster8", "-o", str(build)).returncode == 0
    before = digest(build)
    result, elapsed = interrupt_after(["simulate", str(build)], "built fw/firmware.elf", delay)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert "deadlock" not in result.stderr + result.stdout and "BIT-EXACT" not in result.stdout
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"
    after = digest(build)
    assert not (build / "outputs.npz").exists() and not (build / "report.json").exists()
    assert {k: v for k, v in after.items() if not k.startswith("fw/")} == before


def test_sigint_during_compile_keeps_the_old_build(mid_model, tmp_path):
    build = tmp_path / "b"
    assert cli("compile", str(mid_model), "--target", "cluster8", "-o", str(build)).returncode == 0
    before = digest(build)
    result, elapsed = interrupt_after(["compile", str(mid_model), "--target", "cluster8-ita", "-o", str(build)],
                                      "imported", 0.2)
    assert result.returncode == 130 and "interrupted" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and elapsed < 1.0
    assert digest(build) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a staging folder was left behind"
