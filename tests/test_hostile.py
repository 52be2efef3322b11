"""Hostile input, one case each: bad arguments, paths, files, models and build folders end with exit 2 and one
`error:` line that names the argument/file/tensor/node, never a traceback; the user's files are never lost;
results never come from a stale firmware."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CONFORMANCE

CLI = [sys.executable, "-m", "tinydeploy.cli"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Assert exit 2, exactly one `error:` line, no traceback, and that the line names `words`; returns it."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert "internal error" not in errors[0], errors[0]
    for word in words:
        assert word in errors[0], f"'{word}' not in: {errors[0]}"
    return errors[0]


@pytest.fixture(scope="module")
def builds(tiny_zoo, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile_builds")
    result = {}
    for target in ("generic", "cluster8", "cluster8-ita"):
        proc = cli("compile", tiny_zoo / "model_qdq.onnx", "--target", target, "-o", root / target)
        assert proc.returncode == 0, proc.stderr
        result[target] = root / target
    return result


def damaged_copy(build: Path, tmp_path: Path) -> Path:
    copy_ = tmp_path / build.name
    shutil.copytree(build, copy_)
    return copy_


# --- arguments ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value", [("--seq", "0"), ("--heads", "0"), ("--layers", "-1"), ("--vocab", "0"),
                                         ("--seq", "100000"), ("--hidden", "-5"), ("--seed", "-3")])
def test_zoo_arguments_are_validated(tmp_path, flag, value):
    refused(cli("zoo", "mobilebert", "-o", tmp_path / "m", flag, value), f"{flag} {value}")
    assert not (tmp_path / "m").exists()


def test_zoo_heads_must_divide(tmp_path):
    refused(cli("zoo", "mobilebert", "-o", tmp_path / "m", "--heads", "3"), "--heads 3", "does not divide")


def test_unknown_target_refused_before_any_work(tmp_path):
    refused(cli("demo", "--target", "nope", "-o", tmp_path / "d"), "unknown target 'nope'")
    assert not (tmp_path / "d").exists()


def test_verbose_after_the_subcommand(tiny_zoo, tmp_path):
    proc = cli("golden", tiny_zoo, "--target", "nope", "-o", tmp_path / "g.npz", "-v")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert "unrecognized" not in proc.stderr


def test_usage_error_is_one_line():
    proc = cli("compile")
    refused(proc, "compile", "required")


# --- paths ----------------------------------------------------------------------------------------------------
def test_output_that_is_a_file(tiny_zoo, tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    refused(cli("zoo", "mobilebert", "-o", tmp_path / "afile"), "afile", "is a file")
    refused(cli("compile", tiny_zoo / "model_qdq.onnx", "-o", tmp_path / "afile"), "afile", "is a file")
    refused(cli("golden", tiny_zoo, "--target", "generic", "-o", tmp_path), "is a folder")
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_output_on_a_read_only_filesystem(tiny_zoo):
    refused(cli("compile", tiny_zoo / "model_qdq.onnx", "-o", "/proc/tinydeploy-build"), "/proc/tinydeploy-build")
    refused(cli("golden", tiny_zoo, "--target", "generic", "-o", "/proc/tinydeploy/g.npz"), "/proc/tinydeploy")


def test_golden_writes_exactly_the_named_file(tiny_zoo, tmp_path):
    proc = cli("golden", tiny_zoo, "--target", "generic", "-o", tmp_path / "name")
    assert proc.returncode == 0 and f"wrote {tmp_path / 'name'} " in proc.stdout
    assert (tmp_path / "name").is_file() and not (tmp_path / "name.npz").exists()
    assert "last_hidden_state" in np.load(tmp_path / "name").files


def test_compile_refuses_a_folder_of_user_files(tiny_zoo, tmp_path):
    user = tmp_path / "project"
    user.mkdir()
    for name in ("Makefile", "main.c", "notes.txt"):
        (user / name).write_text(f"the user's {name}\n")
    before = {p.name: p.read_text() for p in user.iterdir()}
    for where in (user, Path(".")):
        refused(cli("compile", tiny_zoo / "model_qdq.onnx", "-o", where, cwd=user), "not empty")
    assert {p.name: p.read_text() for p in user.iterdir()} == before
    proc = cli("compile", tiny_zoo / "model_qdq.onnx", "-o", user, "--force")
    assert proc.returncode == 0 and (user / "tinydeploy.json").is_file() and not (user / "notes.txt").exists()


def test_recompile_replaces_a_build(tiny_zoo, tmp_path):
    build = tmp_path / "b"
    assert cli("compile", tiny_zoo / "model_qdq.onnx", "-o", build).returncode == 0
    (build / "outputs.npz").write_bytes(b"stale")
    assert cli("compile", tiny_zoo / "model_qdq.onnx", "-o", build).returncode == 0
    assert not (build / "outputs.npz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- inputs ---------------------------------------------------------------------------------------------------
def golden_with(tiny_zoo: Path, tmp_path: Path, **arrays) -> subprocess.CompletedProcess:
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    return cli("golden", tiny_zoo, "--target", "generic", "--inputs", path, "-o", tmp_path / "g.npz")


def test_token_ids_outside_the_vocabulary(tiny_zoo, tmp_path):
    refused(golden_with(tiny_zoo, tmp_path, input_ids=np.full((1, 32), 1000)), "input_ids", "1000", "[0, 999]")
    refused(golden_with(tiny_zoo, tmp_path, input_ids=np.full((1, 32), -1)), "input_ids", "-1")


def test_float_and_fractional_inputs(tiny_zoo, tmp_path):
    refused(golden_with(tiny_zoo, tmp_path, input_ids=np.full((1, 32), 1.5)), "input_ids", "float64")
    refused(golden_with(tiny_zoo, tmp_path, input_ids=np.full((1, 32), 3.0)), "input_ids", "float64")


def test_wrong_key_and_shape(tiny_zoo, tmp_path):
    refused(golden_with(tiny_zoo, tmp_path, ids=np.zeros((1, 32), np.int64)), "no array named 'input_ids'", "ids")
    refused(golden_with(tiny_zoo, tmp_path, input_ids=np.zeros((1, 31), np.int64)), "input_ids", "[1, 31]")


def test_inputs_file_that_is_not_an_npz(tiny_zoo, tmp_path):
    for content in (b"junk", b"", b"PK\x03\x04broken"):
        (tmp_path / "bad.npz").write_bytes(content)
        refused(cli("golden", tiny_zoo, "--inputs", tmp_path / "bad.npz", "-o", tmp_path / "g.npz"), "bad.npz")
    refused(cli("golden", tiny_zoo, "--inputs", tmp_path / "missing.npz", "-o", tmp_path / "g.npz"), "missing.npz")


# --- models ---------------------------------------------------------------------------------------------------
def save_mutant(tmp_path: Path, source: Path, edit) -> Path:
    model = copy.deepcopy(onnx.load(source))
    edit(model)
    path = tmp_path / "mutant.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="needs ../shared/conformance")
def test_deeploy_graph_with_a_cycle(tmp_path):
    case = CONFORMANCE / "Attention"

    def cycle(m):
        m.graph.node[0].input[0] = m.graph.node[-1].output[0]
    path = save_mutant(tmp_path, case / "network.onnx", cycle)
    refused(cli("golden", path, "--inputs", case / "inputs.npz", "--target", "generic", "-o", tmp_path / "g.npz"),
            "node", "cycle")


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="needs ../shared/conformance")
def test_deeploy_graph_with_an_undefined_input(tmp_path):
    case = CONFORMANCE / "Attention"

    def undefined(m):
        m.graph.node[1].input[0] = "nowhere"
    path = save_mutant(tmp_path, case / "network.onnx", undefined)
    refused(cli("golden", path, "--inputs", case / "inputs.npz", "--target", "generic", "-o", tmp_path / "g.npz"),
            "node", "'nowhere'")


def test_onnx_checker_message_names_the_node(tiny_zoo, tmp_path):
    def duplicate_attribute(m):
        node = next(n for n in m.graph.node if n.op_type == "Softmax")
        node.attribute.append(onnx.helper.make_attribute("axis", 1))
    path = save_mutant(tmp_path, tiny_zoo / "model_qdq.onnx", duplicate_attribute)
    refused(cli("golden", path, "--inputs", tiny_zoo / "inputs.npz", "-o", tmp_path / "g.npz"),
            "ONNX checker", "Softmax'")


def test_truncated_model(tiny_zoo, tmp_path):
    data = (tiny_zoo / "model_qdq.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[:len(data) // 3])
    refused(cli("compile", tmp_path / "cut.onnx", "-o", tmp_path / "b"), "cut.onnx")


def test_external_data_model_runs_from_another_folder(tiny_zoo, tmp_path):
    model = onnx.load(tiny_zoo / "model_qdq.onnx")
    (tmp_path / "ext").mkdir()
    onnx.save_model(model, tmp_path / "ext" / "model.onnx", save_as_external_data=True, location="model.data",
                    size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli("golden", tmp_path / "ext" / "model.onnx", "--inputs", tiny_zoo / "inputs.npz", "--target", "generic",
               "-o", "g.npz", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    os.remove(tmp_path / "ext" / "model.data")
    refused(cli("golden", tmp_path / "ext" / "model.onnx", "--inputs", tiny_zoo / "inputs.npz", "-o", "g.npz",
                cwd=elsewhere), "external tensor data")


# --- build folders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"target": 3}'])
def test_damaged_manifest(builds, tmp_path, content):
    build = damaged_copy(builds["generic"], tmp_path)
    (build / "tinydeploy.json").write_text(content)
    refused(cli("verify", build), "tinydeploy.json", "damaged")


def test_missing_manifest_and_golden(builds, tmp_path):
    build = damaged_copy(builds["cluster8"], tmp_path)
    (build / "golden.npz").unlink()
    refused(cli("simulate", build), "golden.npz")
    (build / "golden.npz").write_bytes(b"PK\x03\x04")
    refused(cli("simulate", build), "golden.npz")
    (build / "tinydeploy.json").unlink()
    refused(cli("simulate", build), "tinydeploy.json")
    refused(cli("simulate", tmp_path / "nothing"), "does not exist")


def test_missing_weights_blob_is_named(builds, tmp_path):
    build = damaged_copy(builds["cluster8"], tmp_path)
    (build / "weights.bin").unlink()
    refused(cli("simulate", build), "weights.bin")


def test_damaged_weights_blob_on_the_accelerator_target(builds, tmp_path):
    build = damaged_copy(builds["cluster8-ita"], tmp_path)
    blob = bytearray((build / "weights.bin").read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.integers(0, len(blob), size=2000):
        blob[i] ^= 0xFF
    (build / "weights.bin").write_bytes(bytes(blob))
    refused(cli("simulate", build), "weights.bin")


def test_simulate_with_another_compiler_never_reuses_a_stale_elf(builds, tmp_path):
    """Each compiler's firmware has its own folder, and objects made with other make variables are rebuilt."""
    from tinydeploy.sim.host import BUILD_STAMP, run_make

    build = damaged_copy(builds["generic"], tmp_path)
    run_make(build, "host-x", ["CC=gcc", "EXTRA_CFLAGS=-DTD_A=1"], "host build")
    exe = build / "host-x" / "network"
    first = hashlib.sha256(exe.read_bytes()).hexdigest()
    run_make(build, "host-x", ["CC=gcc", "EXTRA_CFLAGS=-DTD_A=1"], "host build")
    assert hashlib.sha256(exe.read_bytes()).hexdigest() == first
    run_make(build, "host-x", ["CC=gcc", "EXTRA_CFLAGS=-DTD_A=1 -O0"], "host build")
    assert (build / "host-x" / BUILD_STAMP).read_text() == "CC=gcc\nEXTRA_CFLAGS=-DTD_A=1 -O0\n"
    assert hashlib.sha256(exe.read_bytes()).hexdigest() != first
    refused(cli("simulate", builds["cluster8"], "--cc", "no-such-gcc"), "no-such-gcc")


def test_unrepresentable_requant_scale_names_the_node(tiny_zoo, tmp_path):
    """An output scale of 1e-30 makes the requant multiplier ~1e28: refused naming the node, never a wrapped int."""
    def tiny_scale(m):
        q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and "MatMul" in n.input[0])
        init = next(i for i in m.graph.initializer if i.name == q.input[1])
        init.CopyFrom(onnx.numpy_helper.from_array(np.array(1e-30, np.float32), init.name))
    path = save_mutant(tmp_path, tiny_zoo / "model_qdq.onnx", tiny_scale)
    line = refused(cli("golden", path, "--inputs", tiny_zoo / "inputs.npz", "-o", tmp_path / "g.npz"),
                   "requant scale", "node '")
    assert "too large" in line
