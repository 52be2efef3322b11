"""The arena planner: no two simultaneously live buffers share bytes; the plan is close to the lower bound."""

from __future__ import annotations

import numpy as np
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.passes.integerize import integerize
from tinydeploy.passes.memory import Buffer, align, live_lower_bound, plan_arena, plan_buffers


def assert_valid(plan, alignment=16):
    placed = [(plan.offsets[b.name], b) for b in plan.buffers]
    for i, (oa, a) in enumerate(placed):
        assert oa % alignment == 0
        assert oa + a.size <= plan.size
        for ob, b in placed[i + 1:]:
            if a.overlaps(b):
                assert oa + align(a.size, alignment) <= ob or ob + align(b.size, alignment) <= oa, (a, b)


def test_chain_reuses_memory():
    """x0 -> x1 -> x2 -> x3: only neighbours are live together, so two slots suffice."""
    buffers = [Buffer(f"x{i}", 1024, i, i + 1) for i in range(4)]
    plan = plan_buffers(buffers)
    assert_valid(plan)
    assert plan.size == plan.lower_bound == 2048
    assert plan.total_bytes == 4096


def test_lower_bound_counts_simultaneous_bytes():
    buffers = [Buffer("a", 100, 0, 5), Buffer("b", 200, 1, 2), Buffer("c", 300, 3, 4)]
    assert live_lower_bound(buffers) == 112 + 304


def test_random_lifetimes_never_overlap():
    rng = np.random.default_rng(0)
    for trial in range(30):
        buffers = []
        for i in range(60):
            first = int(rng.integers(0, 50))
            buffers.append(Buffer(f"t{trial}_{i}", int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 8))))
        plan = plan_buffers(buffers)
        assert_valid(plan)
        assert plan.lower_bound <= plan.size <= plan.total_bytes


def test_tiny_mobilebert_plan(tiny_zoo):
    graph = integerize(import_model(tiny_zoo / "model_qdq.onnx"), "generic")
    plan = plan_arena(graph)
    assert_valid(plan)
    assert plan.size <= 1.10 * plan.lower_bound
    assert plan.size < plan.total_bytes / 10
    # reshapes alias their input: no separate buffer
    reshapes = [n.outputs[0] for n in graph.nodes if n.op == "Reshape" and n.outputs[0] not in graph.outputs]
    assert reshapes and all(r in plan.aliases and r not in plan.offsets for r in reshapes)
