"""The installed package, not the source tree: a built wheel holds every data file the flow reads, and a fresh
virtual environment with only that wheel runs zoo -> compile -> simulate -> verify for every target from a
folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

#: tracked files that are not part of the package (tests, docs, benchmarks, project files)
NOT_SHIPPED = ("tests/", "docs/", "benchmarks/", ".ci/", ".gitignore", "Makefile", "README.md", "pyproject.toml")
TARGETS = ("generic", "cluster1", "cluster8", "cluster8-ita", "cortex-m4", "cortex-m7")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from the checkout (no build isolation: setuptools comes from the test's environment)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"      # a copy, so setuptools' build/ folder never lands in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "out", "models",
                                                                "__pycache__", "*.egg-info", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, text=True, cwd=out)
    wheels = list(out.glob("tinydeploy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel; its dependencies are this environment's, reached through a .pth file
    (installing torch & co. again would take minutes and prove nothing about tinydeploy's own files)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, text=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_tinydeploy_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def tracked_package_files() -> list[str]:
    """Files of the package in the checkout (git's list when available, else a walk)."""
    try:
        listing = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout
        files = listing.split()
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    return sorted(f for f in files if not f.startswith(NOT_SHIPPED) and "__pycache__" not in f)


def test_wheel_holds_every_package_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    shipped = {name.removeprefix("tinydeploy/") for name in names if name.startswith("tinydeploy/")}
    missing = [f for f in tracked_package_files() if f not in shipped]
    assert not missing, f"not in the wheel: {missing}"
    leaked = [n for n in names if not n.startswith(("tinydeploy/", "tinydeploy-0.1.0.dist-info/"))]
    assert not leaked, f"files outside the package: {leaked}"


def test_wheel_metadata_uses_spdx_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("tinydeploy-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


def run_installed(venv: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run([str(venv / "bin" / "tinydeploy"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_installed_package_is_not_the_checkout(installed, tmp_path):
    proc = subprocess.run([str(installed / "bin" / "python"), "-c", "import tinydeploy; print(tinydeploy.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(installed) in proc.stdout and str(REPO) not in proc.stdout


def test_wheel_runs_every_target(installed, tmp_path):
    """zoo -> compile -> simulate (firmware targets) -> verify, for every target, with the installed package."""
    proc = run_installed(installed, tmp_path, "zoo", "mobilebert", "-o", "models/tiny", "--layers", "1")
    assert proc.returncode == 0, proc.stderr
    for target in TARGETS:
        build = f"build/{target}"
        proc = run_installed(installed, tmp_path, "compile", "models/tiny/model_qdq.onnx", "--target", target,
                             "-o", build)
        assert proc.returncode == 0, f"{target}: {proc.stderr}"
        if target != "generic":
            proc = run_installed(installed, tmp_path, "simulate", build)
            assert proc.returncode == 0 and "BIT-EXACT" in proc.stdout, f"{target}: {proc.stdout}{proc.stderr}"
        proc = run_installed(installed, tmp_path, "verify", build, "--layers")
        assert proc.returncode == 0 and "BIT-EXACT" in proc.stdout, f"{target}: {proc.stdout}{proc.stderr}"
