"""Benchmark: the Cortex-M target in the Cortex-M ISS.

Prints the instructions per MAC of the fully-connected kernel (arm_fully_connected_per_channel_s8 on one
128 x 512 -> 512 layer, every instruction of the layer; goal <= 1.0 with SMLAD, 0.5 is the limit), and for full
MobileBERT seq 128 on cortex-m7: cycles per inference, peak SRAM (static data + arena + stack) beside the internal
flash (code, constants) and XIP flash (weights) bytes.

With Arm's CMSIS-NN beside the checkout (../shared/third_party/CMSIS-NN, or --cmsis-nn PATH), the same firmware
is also linked with Arm's kernels (built as Arm's and Deeploy's CMake builds do: -Ofast, memcpy/memset builtins)
and both run on the same ISS: cycles per layer kind, tinydeploy's kernels vs Arm's, tiny MobileBERT on
cortex-m4 (and full MobileBERT on cortex-m7 unless --skip-full). Cycles are the ISS's: the [core] timing of the
target file (cortex-m4: the TRM's load/store, LDM/STM, branch, MLA and divide timings; cortex-m7: one instruction
per cycle as an approximation of its dual issue); no flash wait states.

usage: python benchmarks/bench_cortexm.py [--model MODEL_QDQ.onnx] [--skip-full] [--cmsis-nn PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import compile_and_simulate  # noqa: E402
from bench_compile import zoo_model  # noqa: E402

FC_GOAL = 1.0
DEFAULT_CMSIS_NN = Path(__file__).resolve().parents[1].parent / "shared" / "third_party" / "CMSIS-NN"


def fc_graph(m: int, k: int, n: int):
    from tinydeploy.ir.arith import cmsis_requant_params
    from tinydeploy.ir.graph import Graph, Node, Tensor

    rng = np.random.default_rng(0)
    graph = Graph(name="fully_connected")
    graph.add_tensor(Tensor("x", "int8", (1, m, k)))
    graph.add_const("w", rng.integers(-127, 128, (k, n)).astype(np.int8), "int8")
    graph.add_const("bias", rng.integers(-5000, 5000, (n,)).astype(np.int32), "int32")
    graph.add_tensor(Tensor("acc", "int32", (1, m, n)))
    graph.add_tensor(Tensor("y", "int8", (1, m, n)))
    multiplier, shift = cmsis_requant_params(rng.uniform(1e-4, 1e-3, n))
    graph.nodes += [Node("fc", "MatMulInt", ["x", "w", "bias"], ["acc"], {"a_zero": 3}),
                    Node("rq", "RequantCMSIS", ["acc"], ["y"], {"multiplier": multiplier, "shift": shift,
                                                                "zero_point": -2, "lo": -128, "hi": 127})]
    graph.inputs, graph.outputs = ["x"], ["y"]
    return graph, {"x": rng.integers(-128, 128, (1, m, k)).astype(np.int8)}


def fc_instructions_per_mac(m: int, k: int, n: int) -> tuple[float, dict]:
    from tinydeploy.backends import compile_graph
    from tinydeploy.sim.firmware import simulate_build

    graph, inputs = fc_graph(m, k, n)
    with tempfile.TemporaryDirectory() as tmp:
        project = compile_graph(graph, "cortex-m4", tmp, inputs)
        assert any("fully connected (arm_fully_connected_" in note for note in project.notes)
        report = simulate_build(tmp).report
    assert report["bit_exact"], "fully-connected firmware is not bit-exact"
    layer = report["layers"][0]
    return layer["instructions"] / layer["macs"], layer


def memory_figures(build: Path) -> dict[str, int]:
    """Peak SRAM = .data + .bss (the arena is in .bss) + stack; flash = code + constants; XIP = weights."""
    import json

    from elftools.elf.elffile import ELFFile

    sizes: dict[str, int] = {}
    with open(build / "fw" / "firmware.elf", "rb") as f:
        for section in ELFFile(f).iter_sections():
            sizes[section.name] = section["sh_size"]
    manifest = json.loads((build / "tinydeploy.json").read_text())
    from tinydeploy.target import load_target

    stack = int(load_target(manifest["target"]).section("memory").get("stack_bytes", 0))
    return {"sram": sizes.get(".data", 0) + sizes.get(".bss", 0) + stack, "arena": manifest["arena"]["bytes"],
            "flash": sum(sizes.get(s, 0) for s in (".vectors", ".text", ".rodata", ".data")),
            "xip": sizes.get(".td_weights", 0)}


def cycles_by_kind(report: dict) -> dict[str, int]:
    """Cycles per IR op kind (FullyConnectedS8, BatchMatMulS8, SoftmaxS8, AddS8, ...) over the inference."""
    kinds: dict[str, int] = {}
    for layer in report["layers"]:
        kinds[layer["op"]] = kinds.get(layer["op"], 0) + (layer["cycles"] or 0)
    return kinds


def arm_comparison(model: Path, target: str, cmsis_nn: Path, label: str) -> None:
    """The same generated firmware with tinydeploy's kernels and with Arm's, cycles per layer kind."""
    from tinydeploy.sim.firmware import simulate_build

    with tempfile.TemporaryDirectory() as tmp:
        ours = compile_and_simulate(model, target, Path(tmp) / "b")
        arm = simulate_build(Path(tmp) / "b", cmsis_nn=str(cmsis_nn)).report
    assert ours["bit_exact"] and arm["bit_exact"], "a firmware is not bit-exact"
    mine, theirs = cycles_by_kind(ours), cycles_by_kind(arm)
    print(f"{label} on {target}, same ISS, cycles per layer kind (tinydeploy's kernels vs Arm's CMSIS-NN, -Ofast):")
    for kind in sorted(mine, key=lambda k: -theirs.get(k, 0)):
        if mine[kind] or theirs.get(kind):
            ratio = theirs.get(kind, 0) / mine[kind] if mine[kind] else float("inf")
            print(f"  {kind:18s} tinydeploy {mine[kind]:>15,}  Arm {theirs.get(kind, 0):>15,}  Arm/tinydeploy "
                  f"{ratio:5.2f}")
    total_ours, total_arm = ours["cycles_inference"], arm["cycles_inference"]
    print(f"  {'inference':18s} tinydeploy {total_ours:>15,}  Arm {total_arm:>15,}  Arm/tinydeploy "
          f"{total_arm / total_ours:5.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="full MobileBERT model_qdq.onnx (default: zoo build)")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--cmsis-nn", type=Path, default=DEFAULT_CMSIS_NN, help="Arm's CMSIS-NN (Include/, Source/)")
    args = parser.parse_args()
    arm = args.cmsis_nn if (args.cmsis_nn / "Include" / "arm_nnfunctions.h").is_file() else None
    if arm is None:
        print(f"no CMSIS-NN at {args.cmsis_nn}: the comparison with Arm's kernels is skipped")
    else:
        arm_comparison(zoo_model("tiny"), "cortex-m4", arm, "tiny MobileBERT")
    ipm, layer = fc_instructions_per_mac(128, 512, 512)
    print(f"fully connected 128x512 -> 512 on cortex-m4: {layer['instructions']:,} instructions for "
          f"{layer['macs']:,} MACs = {ipm:.3f} instructions/MAC (goal <= {FC_GOAL}; SMLAD limit 0.5)")
    if args.skip_full:
        return 0
    model = args.model or zoo_model("full")
    with tempfile.TemporaryDirectory() as tmp:
        report = compile_and_simulate(model, "cortex-m7", Path(tmp) / "m7")
        mem = memory_figures(Path(tmp) / "m7")
    cycles = report["cycles_inference"]
    print(f"full MobileBERT seq 128 on cortex-m7: {cycles:,} cycles per inference ({cycles / 480e6:.1f} s at "
          f"480 MHz); bit-exact {report['bit_exact']}")
    print(f"memory: peak SRAM {mem['sram']:,} B (arena {mem['arena']:,} B + data + stack), internal flash "
          f"{mem['flash']:,} B, XIP flash (weights) {mem['xip']:,} B")
    if arm is not None:
        arm_comparison(model, "cortex-m7", arm, "full MobileBERT seq 128")
    return 0


if __name__ == "__main__":
    sys.exit(main())
