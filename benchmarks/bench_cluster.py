"""Benchmark: MobileBERT on the RISC-V cluster in the ISS (issue: RISC-V octa-core cluster).

Prints, each beside its goal:
- GEMM instructions per MAC: one int8 matmul layer (seq x hidden x hidden) on one core, all instructions of the
  step (DMA programming, edges, epilogue) over its MACs (goal <= 2.5; 2 is the RV32IMC limit);
- 8-core vs 1-core speedup on tiny MobileBERT and on the full model (goal >= 7x);
- cycles per inference of full MobileBERT seq 128, the DMA overlap (share of DMA busy cycles hidden behind
  compute), the ISS speed in guest instructions/s (goal >= 50 M) and the wall time of the simulation.

usage: python benchmarks/bench_cluster.py [--size full|tiny] [--model MODEL_QDQ.onnx] [--skip-full]
Without --model the zoo model is built once into ~/.cache/tinydeploy/bench/<size>.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import zoo_model  # noqa: E402

INSTR_PER_MAC_GOAL = 2.5
SPEEDUP_GOAL = 7.0
ISS_GOAL = 50e6


def compile_and_simulate(model: Path, target: str, out: Path) -> dict:
    from tinydeploy.backends import compile_graph
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.passes.integerize import integerize
    from tinydeploy.sim.firmware import simulate_build

    graph = integerize(import_model(model), target)
    inputs = dict(np.load(model.parent / "inputs.npz"))
    t0 = time.perf_counter()
    compile_graph(graph, target, out, {n: inputs[n] for n in graph.inputs}, model_path=str(model))
    compiled = time.perf_counter() - t0
    sim = simulate_build(out)
    report = dict(sim.report)
    report["compile_seconds"] = compiled
    return report


def gemm_graph(m: int, k: int, n: int):
    """One int8 x int8 -> int32 matmul with int8 weights, the shape of a MobileBERT projection."""
    from tinydeploy.ir.graph import Graph, Node, Tensor

    graph = Graph(name="gemm")
    graph.add_tensor(Tensor("x", "int8", (1, m, k)))
    rng = np.random.default_rng(0)
    graph.add_const("w", rng.integers(-128, 128, (k, n)).astype(np.int8), "int8")
    graph.add_tensor(Tensor("y", "int32", (1, m, n)))
    graph.nodes.append(Node("gemm", "MatMulInt", ["x", "w"], ["y"], {}))
    graph.inputs, graph.outputs = ["x"], ["y"]
    graph.meta["target"] = "cluster1"
    return graph, {"x": rng.integers(-128, 128, (1, m, k)).astype(np.int8)}


def gemm_instructions_per_mac(m: int, k: int, n: int) -> tuple[float, dict]:
    from tinydeploy.backends import compile_graph
    from tinydeploy.sim.firmware import simulate_build

    graph, inputs = gemm_graph(m, k, n)
    with tempfile.TemporaryDirectory() as tmp:
        compile_graph(graph, "cluster1", tmp, inputs)
        report = simulate_build(tmp).report
    layer = report["layers"][0]
    assert report["bit_exact"], "GEMM firmware is not bit-exact"
    return layer["instructions"] / layer["macs"], layer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--model", type=Path, help="model_qdq.onnx of a MobileBERT zoo build")
    parser.add_argument("--skip-full", action="store_true", help="only the GEMM and tiny-model figures")
    args = parser.parse_args()

    ipm, layer = gemm_instructions_per_mac(128, 512, 128)
    print(f"GEMM 128x512x128 on one core: {layer['instructions']:,} instructions for {layer['macs']:,} MACs "
          f"= {ipm:.3f} instructions/MAC (goal <= {INSTR_PER_MAC_GOAL}; RV32IMC limit 2.0), "
          f"{layer['cycles']:,} cycles")

    tiny = zoo_model("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        one = compile_and_simulate(tiny, "cluster1", Path(tmp) / "c1")
        eight = compile_and_simulate(tiny, "cluster8", Path(tmp) / "c8")
    speedup = one["cycles_inference"] / eight["cycles_inference"]
    print(f"tiny MobileBERT: 1 core {one['cycles_inference']:,} cycles, 8 cores {eight['cycles_inference']:,} cycles "
          f"-> speedup {speedup:.2f}x (goal >= {SPEEDUP_GOAL}x); bit-exact {one['bit_exact'] and eight['bit_exact']}")

    if args.skip_full:
        return 0
    model = args.model or zoo_model(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = compile_and_simulate(model, "cluster8", Path(tmp) / "full")
        wall = time.perf_counter() - t0
        single = compile_and_simulate(model, "cluster1", Path(tmp) / "full1")
    full_speedup = single["cycles_inference"] / full["cycles_inference"]
    ips = full["guest_instructions_per_second"]
    macs = sum(layer["macs"] for layer in full["layers"])
    cycles = full["cycles_inference"]
    print(f"{args.size} MobileBERT on cluster8: {cycles:,} cycles per inference (network_run; "
          f"{full['cycles_total']:,} with the harness's self-check) = {cycles / 500e6 * 1e3:.1f} ms at 500 MHz, "
          f"{macs / cycles:.2f} MAC/cycle, "
          f"bit-exact {full['bit_exact']}")
    print(f"{args.size} MobileBERT: 1 core {single['cycles_inference']:,} cycles -> 8-core speedup {full_speedup:.2f}x "
          f"(goal >= {SPEEDUP_GOAL}x); bit-exact {single['bit_exact']}")
    print(f"DMA: busy {full['dma_busy_cycles']:,} cycles, hart 0 waited {full['dma_stall_cycles'][0]:,} "
          f"-> overlap {full['dma_overlap']:.1%}")
    print(f"ISS: {full['guest_instructions']:,} guest instructions in {full['wall_seconds']:.1f} s = "
          f"{ips / 1e6:.0f} M instr/s (goal >= {ISS_GOAL / 1e6:.0f} M); whole run (compile + cross-build + "
          f"simulate) {wall:.0f} s")
    by_op: dict[str, list[int]] = {}
    for layer in full["layers"]:
        by_op.setdefault(layer["op"], [0, 0])
        by_op[layer["op"]][0] += layer["cycles"] or 0
        by_op[layer["op"]][1] += layer["macs"]
    print("cycles by op: " + ", ".join(f"{op} {c / cycles:.0%}" for op, (c, _) in
                                       sorted(by_op.items(), key=lambda kv: -kv[1][0])[:6]))
    print(json.dumps({"gemm_instr_per_mac": ipm, "speedup_8_vs_1_tiny": speedup, "speedup_8_vs_1": full_speedup,
                      "cycles": cycles,
                      "dma_overlap": full["dma_overlap"], "iss_instr_per_s": ips, "wall_s": wall}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
