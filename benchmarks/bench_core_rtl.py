"""Benchmark: the ISS's core timing against the core's RTL (issue 19). Goal: ISS/RTL cycles within +-10% per kernel.

The same firmware (tinydeploy compile --target cluster1: one core of the cluster) runs on the OpenHW CV32E40P RTL
under Verilator (sim/core_rtl.py: zero-wait-state memories, DMA at once) and in the cluster ISS with the
[core] timing of targets/cluster8.toml and, for this comparison only, the same instant DMA and barrier. Prints,
per kernel (op kind), RTL cycles, RTL instructions and CPI, ISS cycles and the ISS/RTL ratio, and the same with
one instruction per cycle (the ISS before the core timing), for two models: tiny MobileBERT from the zoo (GEMM,
requant, softmax, elementwise, LUT) and a 2-layer random BERT (LayerNorm, GELU, masked softmax).

    .venv/bin/python benchmarks/bench_core_rtl.py [--cv32e40p PATH] [--json OUT]

PATH: a checkout of github.com/openhwgroup/cv32e40p (default: $TD_CV32E40P or ../shared/third_party/cv32e40p).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import zoo_model  # noqa: E402

GOAL = 0.10
TARGET = "cluster1"


def instant_dma(spec):
    """The target's ISS spec with DMA and barrier taking no time (what the RTL testbench does)."""
    from tinydeploy.target import DmaSpec

    fast = DmaSpec({pair: float(1 << 30) for pair in spec.dma.bandwidth}, setup=0, row=0)
    return dataclasses.replace(spec, dma=fast, barrier_cycles=0)


def iss_layers(build: Path, timing: bool) -> dict[int, int]:
    """Cycles per layer index of the build's firmware in the ISS (instant DMA; core timing on or off)."""
    from tinydeploy.sim.cluster import ClusterISS, ClusterSpec
    from tinydeploy.sim.firmware import build_firmware

    spec = instant_dma(ClusterSpec.from_target(TARGET))
    if not timing:
        spec = dataclasses.replace(spec, timing=None)
    result = ClusterISS(spec, build_firmware(build)).run()
    return {stamp.index: stamp.end - stamp.begin for stamp in result.layers}


def bert_model(out: Path) -> Path:
    from tinydeploy.zoo.bert import BertSpec, build_bert

    build_bert(out, BertSpec(layers=2, hidden=64, heads=4, intermediate=128, vocab=1000, seq=16))
    return out / "model_qdq.onnx"


def compare(model: Path, build: Path, rtl: Path) -> dict[str, dict[str, int]]:
    """Per op kind: RTL cycles and instructions, ISS cycles with and without the core timing."""
    from tinydeploy.backends import compile_graph
    from tinydeploy.cli import load_inputs, observed_inputs
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.passes.integerize import integerize
    from tinydeploy.sim.core_rtl import run_build

    graph = integerize(import_model(model, **observed_inputs(str(model), None)), TARGET)
    compile_graph(graph, TARGET, build, load_inputs(None, str(model), graph), model_path=str(model))
    run = run_build(build, rtl)
    if not run.outputs_bit_exact:
        raise SystemExit(f"{model}: the RTL run is not bit-exact: {run.console[-200:]}")
    timed, plain = iss_layers(build, True), iss_layers(build, False)
    steps = json.loads((build / "tinydeploy.json").read_text())["steps"]
    kinds: dict[str, dict[str, int]] = {}
    for layer in run.layers:
        kind = kinds.setdefault(steps[layer["index"]]["op"], {"layers": 0, "rtl": 0, "instr": 0, "iss": 0, "plain": 0})
        kind["layers"] += 1
        kind["rtl"] += layer["cycles"]
        kind["instr"] += layer["instr"]
        kind["iss"] += timed[layer["index"]]
        kind["plain"] += plain[layer["index"]]
    return kinds


def print_table(name: str, kinds: dict[str, dict[str, int]]) -> list[float]:
    print(f"\n{name}: per kernel (op kind), ISS with the CV32E40P timing vs RTL, and with 1 instruction/cycle")
    print(f"{'op':18s} {'layers':>6s} {'RTL cycles':>12s} {'RTL instr':>12s} {'CPI':>5s} {'ISS cycles':>12s} "
          f"{'ISS/RTL':>8s} {'1-IPC/RTL':>9s}")
    ratios = []
    for op, k in sorted(kinds.items(), key=lambda kv: -kv[1]["rtl"]):
        ratio = k["iss"] / k["rtl"]
        kernel = k["rtl"] >= 10_000       # layout steps of a few hundred cycles are not kernels
        ratios += [ratio] if kernel else []
        print(f"{op:18s} {k['layers']:6d} {k['rtl']:12,d} {k['instr']:12,d} {k['rtl'] / k['instr']:5.2f} "
              f"{k['iss']:12,d} {ratio:8.3f} {k['plain'] / k['rtl']:9.3f}{'' if kernel else '  (not a kernel)'}")
    total = {key: sum(k[key] for k in kinds.values()) for key in ("rtl", "instr", "iss", "plain")}
    print(f"{'total':18s} {'':6s} {total['rtl']:12,d} {total['instr']:12,d} {total['rtl'] / total['instr']:5.2f} "
          f"{total['iss']:12,d} {total['iss'] / total['rtl']:8.3f} {total['plain'] / total['rtl']:9.3f}")
    return ratios


def main() -> int:
    from tinydeploy.errors import TinyDeployError
    from tinydeploy.sim.core_rtl import find_cv32e40p

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv32e40p", help="CV32E40P checkout (github.com/openhwgroup/cv32e40p)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        rtl = find_cv32e40p(args.cv32e40p)
    except TinyDeployError as exc:
        print(f"error: {exc}")
        return 2
    if rtl is None:
        print("no CV32E40P checkout: pass --cv32e40p PATH (git clone https://github.com/openhwgroup/cv32e40p)")
        return 2
    results, ratios = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny MobileBERT (zoo)": zoo_model("tiny"), "2-layer BERT 64 wide, seq 16 (zoo bert)":
                  bert_model(Path(tmp) / "bert")}
        for i, (name, model) in enumerate(models.items()):
            results[name] = compare(model, Path(tmp) / f"build{i}", rtl)
            ratios += print_table(name, results[name])
    worst = max(abs(r - 1) for r in ratios)
    print(f"\nkernels within +-{GOAL:.0%} of the RTL: {sum(abs(r - 1) <= GOAL for r in ratios)} of {len(ratios)} "
          f"(worst {worst:+.1%}); RTL: CV32E40P at {rtl}, zero-wait-state memories, instant DMA in both")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
