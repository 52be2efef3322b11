"""Benchmark: MobileBERT on cluster8-ita (cores + ITA-like accelerator) in the ISS.

Prints for full MobileBERT seq 128 on each L3 of the cluster8-ita family (the default's named HyperRAM, the
idealised 2 GB/s L3 of the first hardware model, weights on chip) and for a variant whose weights fit L2 (same
layer shapes, fewer layers and a small vocabulary): cycles per inference, inferences/s and GOp/s at 500 MHz,
energy per inference, average power and GOp/J (sim/energy.py, the target's [energy] figures; on chip: without
the off-chip part), accelerator utilisation while busy and end to end (MACs / (1024 x cycles)), the speedup over
cluster8 (cores only: 8 RV32IMC CV32E40P cores without SIMD, 0.5 MAC/cycle each at best; a PULP cluster with
Xpulp SIMD reaches ~15 MAC/cycle on 8 cores with PULP-NN), and where the cycles go — beside the published ITA +
Deeploy result (Wiese et al., IEEE D&T 2025 / arXiv:2408.02473: 154 GOp/s, 32.5 inferences/s, 52 mW, 2960 GOp/J
measured at 0.65 V in 22 nm; ours: first-order event energies at 0.8 V).

usage: python benchmarks/bench_accel.py [--model MODEL_QDQ.onnx] [--skip-cores] [--targets T1,T2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import compile_and_simulate  # noqa: E402
from bench_compile import zoo_model  # noqa: E402

CLOCK_HZ = 500e6
PUBLISHED = ("ITA + Deeploy (published, Wiese et al. 2025, 22 nm at 0.65 V, measured): 154 GOp/s, 32.5 inferences/s, "
             "52 mW, 2960 GOp/J")
TARGETS = ("cluster8-ita", "cluster8-ita-l3-2gbs", "cluster8-ita-onchip")
UTILISATION_GOAL = 0.5


def l2_model() -> Path:
    """MobileBERT layer shapes (hidden 512, bottleneck 128, 4 FFNs, seq 128) with 2 layers and a 2048-word
    vocabulary: ~2 MB of weights, which fit L2 beside the arena."""
    from tinydeploy.zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = Path.home() / ".cache" / "tinydeploy" / "bench" / "l2"
    model = out / "model_qdq.onnx"
    if not model.exists():
        spec = MobileBertSpec.preset("full")
        spec.layers, spec.vocab = 2, 2048
        print(f"building the L2-resident MobileBERT variant into {out} (once)...", flush=True)
        build_mobilebert(out, spec)
    return model


def summarise(name: str, report: dict) -> dict:
    cycles = report["cycles_inference"]     # network_run only (the harness's self-check is not the model)
    macs = sum(layer["macs"] for layer in report["layers"])
    accel_macs = sum(layer["macs"] for layer in report["layers"] if layer["engine"] == "accel")
    busy = max(report["accel_busy_cycles"], 1)
    share: dict[str, int] = {}
    for layer in report["layers"]:
        key = "accelerator steps" if layer["engine"] == "accel" else f"cores: {layer['op']}"
        share[key] = share.get(key, 0) + (layer["cycles"] or 0)
    accel_steps = share.get("accelerator steps", 0)
    accel_stall = sum(layer["dma_stall_cycles"] for layer in report["layers"] if layer["engine"] == "accel")
    inf_s = CLOCK_HZ / cycles
    print(f"{name}: {cycles:,} cycles per inference -> {inf_s:.1f} inferences/s, "
          f"{2 * macs * inf_s / 1e9:.1f} GOp/s at 500 MHz; bit-exact {report['bit_exact']}; "
          f"weights in {report.get('weights_region', '?')}")
    print(f"  accelerator: {accel_macs:,} MACs, busy {busy:,} cycles -> utilisation {accel_macs / 1024 / busy:.0%} "
          f"while busy, {accel_macs / 1024 / cycles:.1%} end to end (goal > {UTILISATION_GOAL:.0%} with weights in L2)")
    cores = sorted(((k.split(": ")[1], v) for k, v in share.items() if k.startswith("cores")), key=lambda kv: -kv[1])
    print(f"  accelerator steps {accel_steps / cycles:.0%} of the time (of which waiting for DMA "
          f"{accel_stall / max(accel_steps, 1):.0%}); top core steps: "
          + ", ".join(f"{op} {v / cycles:.0%}" for op, v in cores[:4]))
    energy = report.get("energy")
    if energy:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in energy["breakdown_mj"].items())
        print(f"  energy: {energy['mj_per_inference']:.3f} mJ per inference ({parts} mJ), average "
              f"{energy['average_power_mw']:.0f} mW, {energy['gop_per_j']:,.0f} GOp/J; on chip "
              f"{energy['on_chip_gop_per_j']:,.0f} GOp/J (no clock tree, idle cores or interconnect modelled)")
    if "manifest" in report:
        print_ceilings(report, report["manifest"], accel_macs, cycles - accel_steps)
    return {"cycles": cycles, "inferences_per_s": inf_s, "utilisation_e2e": accel_macs / 1024 / cycles}


def _constant_bytes(step: dict, activations: set[str]) -> int:
    """Bytes of the constant operands (weights, bias, requant and stage tables) one tiled step loads."""
    total = 0
    for operand in step["operands"]:
        if operand["role"] == "in" and operand["key"] not in activations:
            total += operand["bytes"] * (step["tiles"] if operand["axis"] is not None else 1)
    return total


def print_ceilings(report: dict, manifest: dict, accel_macs: int, core_cycles: int) -> None:
    """What limits end-to-end utilisation: the best a step-by-step schedule can do with the measured traffic
    (every accelerator step at max(its accelerator cycles, its DMA-engine cycles), perfect overlap, no setup),
    and with activations that never leave L1 (only the constants stream, at the weights' level bandwidth)."""
    tiling = {step["index"]: step for step in manifest["tiling"]["steps"]}
    activations = {t["name"] for t in manifest["tensors"]} | {slot["name"] for slot in manifest["inputs"]}
    from tinydeploy.target import DmaSpec

    level = "l3" if manifest["placement"]["weights_region"] == "L3" else "l2"
    per_cycle = DmaSpec.from_target(manifest["target"]).bandwidth[(level, "l1")]
    measured = resident = 0
    for layer in report["layers"]:
        if layer["engine"] != "accel":
            continue
        busy = layer["accel_busy_cycles"] or 0
        measured += max(busy, layer["dma_busy_cycles"] or 0)
        resident += max(busy, int(_constant_bytes(tiling[layer["index"]], activations) / per_cycle))
    ideal = accel_macs / 1024
    print(f"  ceiling of a step-by-step schedule with this traffic: {ideal / (measured + core_cycles):.0%} end to "
          f"end ({measured:,} accelerator-step cycles if DMA and compute overlapped perfectly, + {core_cycles:,} "
          f"on the cores); with activations resident in L1 (only constants streamed at {per_cycle:g} B/cycle): "
          f"{ideal / (resident + core_cycles):.0%}, {ideal / max(resident, 1):.0%} without the core steps")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="full MobileBERT model_qdq.onnx (default: zoo build)")
    parser.add_argument("--skip-cores", action="store_true", help="skip the cluster8 (cores only) comparison")
    parser.add_argument("--targets", default=",".join(TARGETS), help="cluster8-ita family targets to run")
    args = parser.parse_args()
    print(PUBLISHED)
    model = args.model or zoo_model("full")
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets.split(","):
            ita = compile_and_simulate(model, target, Path(tmp) / target)
            ita["weights_region"] = _placement(Path(tmp) / target)
            ita["manifest"] = _manifest(Path(tmp) / target)
            full = summarise(f"full MobileBERT seq 128, {target} (L3: {_l3(target)})", ita)
            if not args.skip_cores and target == "cluster8-ita":
                cores = compile_and_simulate(model, "cluster8", Path(tmp) / "cores")
                print(f"  speedup over cluster8 ({cores['cycles_inference']:,} cycles; 8 CV32E40P cores without "
                      f"SIMD, 0.5 MAC/cycle each at best): {cores['cycles_inference'] / full['cycles']:.1f}x; "
                      f"cluster8 energy {cores['energy']['mj_per_inference']:.2f} mJ per inference")
        small = compile_and_simulate(l2_model(), "cluster8-ita", Path(tmp) / "l2")
        small["weights_region"] = _placement(Path(tmp) / "l2")
        small["manifest"] = _manifest(Path(tmp) / "l2")
        summarise("MobileBERT shapes, 2 layers, weights in L2, cluster8-ita", small)
    return 0


def _l3(target: str) -> str:
    from tinydeploy.target import DmaSpec

    dma = DmaSpec.from_target(target)
    return f"{dma.l3_part}, {dma.bandwidth[('l3', 'l1')]:g} B/cycle, {dma.l3_burst} cycles to a burst's first word"


def _manifest(build: Path) -> dict:
    import json

    return json.loads((build / "tinydeploy.json").read_text())


def _placement(build: Path) -> str:
    return _manifest(build)["placement"]["weights_region"]


if __name__ == "__main__":
    sys.exit(main())
