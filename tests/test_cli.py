"""Every CLI subcommand end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONFORMANCE

needs_conformance = pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="needs ../shared/conformance/deeploy")


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinydeploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_shows_example():
    for sub in ("zoo", "golden", "fidelity", "compile", "verify", "simulate", "report", "targets", "demo"):
        proc = run_cli(sub, "--help")
        assert proc.returncode == 0 and "example: tinydeploy" in proc.stdout


def test_targets_lists_known_targets():
    proc = run_cli("targets")
    assert proc.returncode == 0
    for name in ("generic", "cluster8", "cluster8-ita", "cortex-m4"):
        assert name in proc.stdout


def test_zoo_custom_architecture(tmp_path):
    proc = run_cli("zoo", "mobilebert", "-o", str(tmp_path), "--layers", "1", "--hidden", "64", "--bottleneck",
                   "16", "--heads", "2", "--seq", "16", "--vocab", "100", "--intermediate", "32", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    ids = np.load(tmp_path / "inputs.npz")["input_ids"]
    assert ids.shape == (1, 16) and ids.max() < 100


def test_golden_writes_outputs_and_all_tensors(tiny_zoo, tmp_path):
    proc = run_cli("golden", str(tiny_zoo / "model_qdq.onnx"), "--target", "cluster8-ita", "--all",
                   "-o", str(tmp_path / "g.npz"))
    assert proc.returncode == 0, proc.stderr
    values = np.load(tmp_path / "g.npz")
    assert values["last_hidden_state"].dtype == np.int8
    assert len(values.files) > 100


@needs_conformance
def test_golden_on_deeploy_network(tmp_path):
    case = CONFORMANCE / "Softmax_Regular"
    proc = run_cli("golden", str(case / "network.onnx"), "--inputs", str(case / "inputs.npz"), "--target",
                   "generic", "-o", str(tmp_path / "g.npz"))
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "g.npz")["output"]
    expected = np.load(case / "outputs.npz")
    assert np.array_equal(got, expected[expected.files[0]].reshape(got.shape))


def test_fidelity_json(tiny_zoo, tmp_path):
    proc = run_cli("fidelity", str(tiny_zoo), "--target", "cluster8-ita", "--json", str(tmp_path / "f.json"))
    assert proc.returncode == 0, proc.stderr
    assert "ops that lose the most" in proc.stdout
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["linear_ops_within_1lsb"] >= 0.999


def test_demo_runs_on_existing_zoo_dir(tiny_zoo, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    for name in ("model_qdq.onnx", "inputs.npz"):
        (out / name).write_bytes((tiny_zoo / name).read_bytes())
    proc = run_cli("demo", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "cosine" in proc.stdout and "BIT-EXACT" in proc.stdout


def test_compile_then_verify(tiny_zoo, tmp_path):
    build = tmp_path / "b"
    proc = run_cli("compile", str(tiny_zoo / "model_qdq.onnx"), "--target", "generic", "-o", str(build))
    assert proc.returncode == 0, proc.stderr
    assert "live-set lower bound" in proc.stdout and (build / "network.c").exists()
    proc = run_cli("verify", str(build), "--layers")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BIT-EXACT" in proc.stdout and "intermediate tensors compared" in proc.stdout


@needs_conformance
def test_verify_reports_mismatch_with_exit_1(tmp_path):
    case = CONFORMANCE / "MatMul_Regular_RQ"
    build = tmp_path / "b"
    assert run_cli("compile", str(case / "network.onnx"), "-o", str(build)).returncode == 0
    network = build / "network.c"
    text = network.read_text().rstrip()
    assert text.endswith("}")
    network.write_text(text[:-1] + "    out[0] ^= 1; /* deliberate corruption */\n}\n")
    proc = run_cli("verify", str(build))
    assert proc.returncode == 1
    assert "MISMATCH" in proc.stdout


def test_verify_on_a_non_build_is_a_usage_error(tmp_path):
    proc = run_cli("verify", str(tmp_path))
    assert proc.returncode == 2 and "not a tinydeploy build" in proc.stderr


@needs_conformance
def test_compile_simulate_verify_on_cluster8(tmp_path):
    case = CONFORMANCE / "GEMM_Regular_RQPerColumn"
    build = tmp_path / "c8"
    assert run_cli("compile", str(case / "network.onnx"), "--target", "cluster8", "-o", str(build)).returncode == 0
    proc = run_cli("simulate", str(build))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BIT-EXACT" in proc.stdout and "M/s" in proc.stdout
    report = json.loads((build / "report.json").read_text())
    assert report["bit_exact"] and report["cycles_total"] > 0
    proc = run_cli("verify", str(build))
    assert proc.returncode == 0 and "BIT-EXACT" in proc.stdout


def test_report_of_tiny_mobilebert_on_cluster8_ita(tiny_zoo, tmp_path):
    """compile -> simulate -> report: a self-contained page with three plots; if Chromium is installed, the
    page renders headless to a screenshot."""
    build = tmp_path / "ita"
    assert run_cli("compile", str(tiny_zoo / "model_qdq.onnx"), "--target", "cluster8-ita", "-o",
                   str(build)).returncode == 0
    assert run_cli("report", str(build), "-o", str(tmp_path / "r.html")).returncode == 2   # not simulated yet
    assert run_cli("simulate", str(build)).returncode == 0
    proc = run_cli("report", str(build), "-o", str(tmp_path / "out" / "report.html"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "ITAGemm" in page and "accel" in page
    for name in ("cycles", "roofline", "memory"):
        assert (tmp_path / "out" / f"report_{name}.png").stat().st_size > 10_000
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        shot = tmp_path / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000",
                        f"--screenshot={shot}", (tmp_path / "out" / "report.html").as_uri()],
                       capture_output=True, timeout=120)
        assert shot.stat().st_size > 50_000


def test_compile_dump_ir_writes_every_pass(tiny_zoo, tmp_path):
    import onnx

    ir = tmp_path / "ir"
    proc = run_cli("compile", str(tiny_zoo / "model_qdq.onnx"), "--target", "cluster8-ita", "-o",
                   str(tmp_path / "b"), "--dump-ir", str(ir))
    assert proc.returncode == 0, proc.stderr
    stages = sorted(p.stem for p in ir.glob("*.onnx"))
    assert stages == ["00_import", "01_integerize", "02_fold_into_gather_tables", "03_untranspose_constant_weights",
                      "04_fuse_elementwise", "05_hoist_scalar_ops", "06_fuse_attention", "07_split_rows",
                      "08_fuse_norm_copies"]
    model = onnx.load(str(ir / "06_fuse_attention.onnx"))
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert ("ai.tinydeploy", "ITAGemm") in ops and not any(op == "MatMulInt" for _, op in ops)
    assert "ITAGemm(" in (ir / "06_fuse_attention.txt").read_text()


def test_simulate_inputs_runs_new_samples_on_the_same_firmware(tiny_zoo, tmp_path):
    """8 new samples through one compiled firmware: each bit-exact against its own golden outputs."""
    build = tmp_path / "c8"
    proc = run_cli("compile", str(tiny_zoo / "model_qdq.onnx"), "--target", "cluster8", "-o", str(build))
    assert proc.returncode == 0, proc.stderr
    manifest = (build / "tinydeploy.json").read_bytes()
    ids = np.random.default_rng(7).integers(0, 1000, size=(8, 1, 32))
    np.savez(tmp_path / "samples.npz", input_ids=ids)
    proc = run_cli("simulate", str(build), "--inputs", str(tmp_path / "samples.npz"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("BIT-EXACT") == 9 and "8/8 samples bit-exact" in proc.stdout
    assert (build / "tinydeploy.json").read_bytes() == manifest
    got = np.load(build / "samples.outputs.npz")["last_hidden_state"]
    assert got.shape == (8, 1, 32, 128) and not np.array_equal(got[0], got[1])
    for i in (0, 7):       # the golden interpreter on its own, sample by sample
        np.savez(tmp_path / "one.npz", input_ids=ids[i])
        assert run_cli("golden", str(tiny_zoo), "--target", "cluster8", "--inputs", str(tmp_path / "one.npz"),
                       "-o", str(tmp_path / "g.npz")).returncode == 0
        assert np.array_equal(got[i], np.load(tmp_path / "g.npz")["last_hidden_state"])
    summary = json.loads((build / "samples.report.json").read_text())
    assert [s["bit_exact"] for s in summary["samples"]] == [True] * 8


def test_verify_inputs_on_a_host_build(tiny_zoo, tmp_path):
    build = tmp_path / "gen"
    assert run_cli("compile", str(tiny_zoo / "model_qdq.onnx"), "-o", str(build)).returncode == 0
    np.savez(tmp_path / "s.npz", input_ids=np.random.default_rng(3).integers(0, 1000, size=(3, 1, 32)))
    proc = run_cli("verify", str(build), "--inputs", str(tmp_path / "s.npz"), "--layers")
    assert proc.returncode == 0 and "BIT-EXACT (3 samples)" in proc.stdout, proc.stdout + proc.stderr
