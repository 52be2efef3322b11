"""Shared fixtures: the tiny MobileBERT zoo model is built once per test session (about 15 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYDEPLOY_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance" / "deeploy"


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    from tinydeploy.zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = tmp_path_factory.mktemp("tiny_mobilebert")
    build_mobilebert(out, MobileBertSpec.preset("tiny"))
    return out


@pytest.fixture(scope="session")
def full_zoo(tmp_path_factory) -> Path:
    from tinydeploy.zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = tmp_path_factory.mktemp("full_mobilebert")
    build_mobilebert(out, MobileBertSpec.preset("full"))
    return out
