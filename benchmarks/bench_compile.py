"""Benchmark: compile time of full MobileBERT (goal < 30 s), arena vs lower bound, host build and run time.

usage: python benchmarks/bench_compile.py [--model MODEL_QDQ.onnx] [--size full|tiny] [--runs 3] [--repeat 3]
Without --model the zoo model is built once into ~/.cache/tinydeploy/bench/<size> (about 3 minutes for full).
Figures are medians over --runs compilations; the machine is shared, so read ratios, not single numbers.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COMPILE_GOAL_S = 30.0
ARENA_GOAL = 1.10


def zoo_model(size: str) -> Path:
    from tinydeploy.zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = Path.home() / ".cache" / "tinydeploy" / "bench" / size
    model = out / "model_qdq.onnx"
    if not model.exists():
        print(f"building the {size} MobileBERT zoo model into {out} (once)...", flush=True)
        build_mobilebert(out, MobileBertSpec.preset(size))
    return model


def compile_once(model: Path, out: Path) -> dict[str, float]:
    """One full compile (import, integerize, C generation) with stage timings."""
    from tinydeploy.backends import compile_graph
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.passes.integerize import integerize

    inputs = dict(np.load(model.parent / "inputs.npz"))
    t0 = time.perf_counter()
    graph = import_model(model)
    t1 = time.perf_counter()
    int_graph = integerize(graph, "generic")
    t2 = time.perf_counter()
    project = compile_graph(int_graph, "generic", out, {n: inputs[n] for n in int_graph.inputs},
                            model_path=str(model))
    t3 = time.perf_counter()
    return {"import": t1 - t0, "integerize": t2 - t1, "codegen": t3 - t2, "total": t3 - t0, "project": project}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="inferences per host run timing")
    args = parser.parse_args()
    model = Path(args.model) if args.model else zoo_model(args.size)

    from tinydeploy.sim.host import build_host, run_host

    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "build"
        runs = [compile_once(model, build) for _ in range(args.runs)]
        project = runs[-1]["project"]
        print(f"model: {model} ({len(project.graph.nodes)} integer ops, weights {project.weights_bytes / 1e6:.1f} MB)")
        for stage in ("import", "integerize", "codegen", "total"):
            print(f"  compile {stage:10s} median {statistics.median(r[stage] for r in runs):6.2f} s")
        total = statistics.median(r["total"] for r in runs)
        verdict = "met" if total < COMPILE_GOAL_S else "MISSED"
        print(f"compile time: {total:.2f} s (goal < {COMPILE_GOAL_S:.0f} s: {verdict}, "
              f"{COMPILE_GOAL_S / total:.1f}x headroom)")
        plan = project.plan
        ratio = plan.size / plan.lower_bound if plan.lower_bound else 1.0
        print(f"arena: {plan.size} B; sum of activations {plan.total_bytes} B ({plan.total_bytes / plan.size:.0f}x "
              f"reuse); live-set lower bound {plan.lower_bound} B; arena/lower bound {ratio:.3f} "
              f"(goal <= {ARENA_GOAL}: {'met' if ratio <= ARENA_GOAL else 'MISSED'})")
        t0 = time.perf_counter()
        exe = build_host(build, cc="gcc")
        print(f"host build (gcc -O2): {time.perf_counter() - t0:.1f} s")
        timings = []
        for _ in range(3):
            run = run_host(exe, exe.parent, repeat=args.repeat)
            match = re.search(r"([0-9.]+) ms per inference", run.stdout)
            if match:
                timings.append(float(match.group(1)))
            if run.returncode != 0:
                print("host run NOT bit-exact:\n" + run.stdout)
                return 1
        if timings:
            macs = sum(_macs(project.graph))
            ms = statistics.median(timings)
            print(f"host run: median {ms:.1f} ms per inference ({macs / 1e9:.2f} GMAC, {macs / ms / 1e6:.2f} GMAC/s), "
                  f"bit-exact")
    return 0


def _macs(graph) -> list[int]:
    from tinydeploy.ir.ops import node_macs

    return [node_macs(graph, n) for n in graph.nodes]


if __name__ == "__main__":
    sys.exit(main())
