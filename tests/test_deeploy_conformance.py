"""Ladder rung 2: the golden interpreter reproduces Deeploy's published outputs bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import CONFORMANCE
from tinydeploy.frontend.onnx_loader import graph_input_shapes, import_model
from tinydeploy.ir.interpreter import run_graph
from tinydeploy.passes.integerize import integerize

CASES = sorted(p.name for p in CONFORMANCE.iterdir() if p.is_dir()) if CONFORMANCE.exists() else []


def run_case(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    folder = CONFORMANCE / name
    inputs = np.load(folder / "inputs.npz")
    expected = np.load(folder / "outputs.npz")
    names = list(graph_input_shapes(onnx.load(folder / "network.onnx")))
    # Some cases also store their constant operands in inputs.npz after the real inputs.
    arrays = [inputs[k] for k in inputs.files][: len(names)]
    # Like Deeploy's test runner, the input types come from the test data's value range.
    ranges = {n: (int(a.min()), int(a.max())) for n, a in zip(names, arrays, strict=True)}
    graph = integerize(import_model(folder / "network.onnx", input_ranges=ranges), "generic")
    results = run_graph(graph, dict(zip(graph.inputs, arrays, strict=True)))
    got = [results[o] for o in graph.outputs]
    return got, [expected[k] for k in expected.files]


@pytest.mark.skipif(not CASES, reason="shared/conformance/deeploy not found")
@pytest.mark.parametrize("name", CASES)
def test_conformance_bit_exact(name):
    got, expected = run_case(name)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        g = g.reshape(e.shape)
        mismatch = np.flatnonzero(g != e.astype(np.int64))
        assert mismatch.size == 0, (f"{name}: {mismatch.size}/{e.size} differ, first at {mismatch[0]}: "
                                    f"got {g.ravel()[mismatch[0]]} expected {e.ravel()[mismatch[0]]}")
