"""Benchmark: Deeploy's whole test suite (DeeployTest/Tests at commit bf64cfae) through tinydeploy.

For every case with data: float cases (Kernels/FP32, Kernels/BF16, and any model the frontend calls float) must be
refused with exit 2; integer cases must equal Deeploy's golden outputs in the golden interpreter and be bit-exact
on every target (generic host C, cluster8, cluster8-ita, cortex-m4 — cortex-m7 where the activations exceed the
M4's 256 KiB SRAM). Prints one line per case, cycles per target, the cost model's predicted vs measured cycles per
tiled step on the cluster targets (share within 30%, over the suite and full MobileBERT from the zoo on cluster8 and
cluster8-ita), ICCT_ITA's cluster8 / cluster8-ita ratio (goal >= 3x), and totals.

    .venv/bin/python benchmarks/bench_deeploy_suite.py --deeploy PATH [--commit bf64cfae] [--only PATTERN]
        [--targets generic,cluster8,cluster8-ita,cortex-m] [--json OUT] [--skip-mobilebert]

PATH: a Deeploy checkout, or a bare clone (files are then read with `git show COMMIT:...`). Without --deeploy the
cases of ../shared/conformance/deeploy and deeploy-suite run. Timing model: the ISS's (DESIGN.md; issue 19 lists
what it leaves out).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "conformance"
TESTS = "DeeployTest/Tests"
FILES = ("network.onnx", "inputs.npz", "outputs.npz")
TARGETS = ("generic", "cluster8", "cluster8-ita", "cortex-m")
#: the cost model's promise (issue 18): >= 90% of steps predicted within 30% of measured cycles
COST_TOLERANCE, COST_SHARE_GOAL, ICCT_GOAL = 0.30, 0.90, 3.0
#: MLPerf Tiny v0.5 reference submission, NUCLEO-L4R5ZI (Cortex-M4F, 120 MHz, TFLM 2.3.1 + CMSIS-NN): median
#: latency in ms (mlcommons/tiny_results_v0.5 closed/reference/results/Nucleo-L4R5ZI/<bm>/performance/results.txt)
PUBLISHED_M4_MS = {"Models_MLPerf_AnomalyDetection": 10.052, "Models_MLPerf_ImageClassification": 704.23,
                   "Models_MLPerf_KeywordSpotting": 181.92, "Models_MLPerf_VisualWakeWords": 600.60}
PUBLISHED_M4_MHZ = 120


def case_name(path: str) -> str:
    """DeeployTest/Tests/Kernels/Integer/Conv/DW_2D -> Conv_DW_2D (the folder names of ../shared)."""
    rel = path.removeprefix(TESTS + "/").removeprefix("Kernels/Integer/").removeprefix("Kernels/")
    return rel.replace("/", "_")


def export_cases(deeploy: Path, commit: str, out: Path, pattern: str = "*") -> list[tuple[str, Path, bool]]:
    """(name, folder, float case?) for every DeeployTest case with a network and data whose name matches
    `pattern`, copied into `out` (a file the clone does not hold — a large Git LFS object — stays empty)."""
    git = ["git", f"--git-dir={deeploy / '.git'}" if (deeploy / ".git").exists() else f"--git-dir={deeploy}"]
    listing = subprocess.run([*git, "ls-tree", "-r", "--name-only", commit, TESTS], capture_output=True,
                             text=True, check=True).stdout.split()
    cases = []
    for folder in sorted({p.rsplit("/", 1)[0] for p in listing if p.endswith("/network.onnx")}):
        if not all(f"{folder}/{f}" in listing for f in FILES):
            continue
        name = case_name(folder)
        if not fnmatch.fnmatch(name, pattern):
            continue
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            blob = subprocess.run([*git, "show", f"{commit}:{folder}/{f}"], capture_output=True).stdout
            (target / f).write_bytes(blob)
        cases.append((name, target, "/FP32/" in folder or "/BF16/" in folder))
    return cases


def shared_cases() -> list[tuple[str, Path, bool]]:
    return [(p.name, p, False) for d in ("deeploy", "deeploy-suite") if (SHARED / d).is_dir()
            for p in sorted((SHARED / d).iterdir()) if p.is_dir()]


def golden(folder: Path) -> tuple[str, str]:
    """('exact' | 'MISMATCH' | 'float' | 'refused' | 'no data', detail) of the golden interpreter on one case."""
    from tinydeploy.cli import observed_inputs
    from tinydeploy.errors import TinyDeployError
    from tinydeploy.frontend.inputs import load_inputs
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.ir.interpreter import run_graph
    from tinydeploy.passes.integerize import integerize

    model = folder / "network.onnx"
    if any((folder / f).stat().st_size == 0 for f in FILES):
        return "no data", "empty file in this snapshot (Git LFS object not stored)"
    try:
        graph = integerize(import_model(model, **observed_inputs(str(model), None)), "generic")
        results = run_graph(graph, load_inputs(folder / "inputs.npz", graph)[0])
    except TinyDeployError as exc:
        text = str(exc).splitlines()[0]
        floaty = ("float", "fractional", "non-integer")
        return ("float" if any(w in text for w in floaty) else "refused"), text
    expected = np.load(folder / "outputs.npz")
    same = all(np.array_equal(results[o].reshape(expected[k].shape), expected[k].astype(np.int64))
               for o, k in zip(graph.outputs, expected.files, strict=True))
    return ("exact", "") if same else ("MISMATCH", "golden differs from Deeploy's outputs")


def cli_exit_code(folder: Path) -> int:
    """Exit code of `tinydeploy golden` on the case (a float case must give 2)."""
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run([str(Path(sys.executable).parent / "tinydeploy"), "golden", str(folder / "network.onnx"),
                               "--inputs", str(folder / "inputs.npz"), "-o", str(Path(tmp) / "g.npz")],
                              capture_output=True, cwd=tmp).returncode


def run_target(folder: Path, target: str, out: Path) -> dict:
    """Compile + run one case on one target: bit_exact, cycles, and (cluster) per-step predicted vs measured."""
    from tinydeploy.backends import compile_graph
    from tinydeploy.cli import load_inputs, observed_inputs
    from tinydeploy.errors import TinyDeployError
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.passes.integerize import integerize
    from tinydeploy.sim.firmware import simulate_build
    from tinydeploy.verify import verify_build

    model = folder / "network.onnx"
    tried = ("cortex-m4", "cortex-m7") if target == "cortex-m" else (target,)
    for name in tried:
        try:
            graph = integerize(import_model(model, **observed_inputs(str(model), None)), name)
            compile_graph(graph, name, out / name, load_inputs(None, str(model), graph), model_path=str(model))
            if name == "generic":
                exact, report = verify_build(out / name).bit_exact, {}
            else:
                report = simulate_build(out / name).report
                exact = bool(report["bit_exact"])
        except TinyDeployError as exc:
            if name != tried[-1] and ("too large" in str(exc) or "do not fit" in str(exc)):
                continue
            return {"target": name, "status": "refused", "detail": str(exc).splitlines()[0]}
        entry = {"target": name, "status": "exact" if exact else "MISMATCH", "cycles": report.get("cycles_inference")}
        if report and name.startswith("cluster"):
            entry["steps"] = predicted_vs_measured(out / name, report)
        return entry
    return {"target": target, "status": "refused", "detail": "fits no Cortex-M target"}


def predicted_vs_measured(build: Path, report: dict) -> list[tuple[str, int, int, dict]]:
    """(op, predicted, measured, details) cycles of every tiled step the ISS stamped; details: the model's
    compute and DMA parts, the tile count, MACs and the step's node name (for calibrating the cost model)."""
    manifest = json.loads((build / "tinydeploy.json").read_text())
    steps = {s["index"]: s for s in manifest.get("tiling", {}).get("steps", [])}
    found = []
    for layer in report.get("layers", []):
        step = steps.get(layer["index"])
        if step is None or layer["cycles"] <= 0:
            continue
        details = {"compute": step["model"]["compute"], "dma": step["model"]["dma"], "tiles": step["tiles"],
                   "macs": layer.get("macs", 0), "node": step["node"]}
        found.append((layer["op"], int(step["model"]["cycles"]), int(layer["cycles"]), details))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deeploy", type=Path, help="Deeploy checkout or bare clone (default: ../shared cases)")
    parser.add_argument("--commit", default="bf64cfaec26ed81091f40efa391b52021a8b5205")
    parser.add_argument("--only", default="*", help="fnmatch pattern on case names")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-mobilebert", action="store_true", help="leave MobileBERT out of the cost model tally")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = (export_cases(args.deeploy, args.commit, Path(tmp) / "cases", args.only) if args.deeploy
                 else shared_cases())
        for name, folder, float_case in cases:
            if not fnmatch.fnmatch(name, args.only):
                continue
            t0 = time.perf_counter()
            status, detail = golden(folder)
            entry: dict = {"golden": status, "detail": detail, "float_case": float_case}
            if status == "float" or float_case:
                entry["exit_code"] = cli_exit_code(folder)
            elif status == "exact":
                entry["targets"] = {t: run_target(folder, t, Path(tmp) / "builds" / name) for t in targets}
            results[name] = entry
            print(format_case(name, entry, time.perf_counter() - t0), flush=True)
        if not args.skip_mobilebert:
            results["MobileBERT (zoo full)"] = mobilebert_steps([t for t in targets if t.startswith("cluster")],
                                                                Path(tmp) / "mobilebert")
    summarize(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def mobilebert_steps(targets: list[str], out: Path) -> dict:
    """Full MobileBERT (zoo, seq 128) on the cluster targets: cycles and the cost model's steps (not a Deeploy case;
    its steps count in the cost model tally)."""
    from bench_cluster import compile_and_simulate
    from bench_compile import zoo_model

    model, entry = zoo_model("full"), {"targets": {}, "zoo": True}
    for target in targets:
        t0 = time.perf_counter()
        report = compile_and_simulate(model, target, out / target)
        entry["targets"][target] = {"target": target, "status": "exact" if report["bit_exact"] else "MISMATCH",
                                    "cycles": report["cycles_inference"],
                                    "steps": predicted_vs_measured(out / target, report)}
        one = {"golden": "exact", "targets": {target: entry["targets"][target]}}
        print(format_case(f"MobileBERT full on {target}", one, time.perf_counter() - t0), flush=True)
    return entry


def format_case(name: str, entry: dict, seconds: float) -> str:
    if "exit_code" in entry:
        return f"{name:48s} float case: exit {entry['exit_code']} ({entry['detail'][:70]})"
    if entry["golden"] != "exact":
        return f"{name:48s} golden {entry['golden']}: {entry['detail'][:90]}"
    cells = []
    for t in entry["targets"].values():
        cycles = f" {t['cycles']:,}" if t.get("cycles") else ""
        cells.append(f"{t['target']} {t['status']}{cycles}")
    return f"{name:48s} " + "; ".join(cells) + f"  ({seconds:.0f} s)"


def summarize(results: dict[str, dict]) -> None:
    integer = {n: e for n, e in results.items() if "targets" in e and not e.get("zoo")}
    all_exact = [n for n, e in integer.items() if all(t["status"] == "exact" for t in e["targets"].values())]
    floats = {n: e for n, e in results.items() if "exit_code" in e}
    refused_ok = sum(e["exit_code"] == 2 for e in floats.values())
    other = {n: e["golden"] for n, e in results.items() if "targets" not in e and "exit_code" not in e}
    print(f"\ninteger cases bit-exact on every target: {len(all_exact)} of {len(integer)}; float cases refused "
          f"with exit 2: {refused_ok} of {len(floats)}; not run: {other or 'none'}")
    steps = [s for e in results.values() for t in e.get("targets", {}).values() for s in t.get("steps", [])]
    if steps:
        within = sum(abs(p - m) <= COST_TOLERANCE * m for _, p, m, _ in steps)
        print(f"cost model: {within} of {len(steps)} cluster steps within {COST_TOLERANCE:.0%} of measured "
              f"({within / len(steps):.0%}; goal >= {COST_SHARE_GOAL:.0%})")
        worst: dict[str, list[float]] = {}
        for op, p, m, _ in steps:
            worst.setdefault(op, []).append(p / m)
        for op, ratios in sorted(worst.items(), key=lambda kv: -max(abs(r - 1) for r in kv[1]))[:6]:
            print(f"  {op:16s} predicted/measured median {np.median(ratios):.2f} (range {min(ratios):.2f}.."
                  f"{max(ratios):.2f}, {len(ratios)} steps)")
    for name, ms in PUBLISHED_M4_MS.items():
        targets = results.get(name, {}).get("targets", {})
        if targets:
            ours = ", ".join(f"{t['target']} {t['cycles']:,}" for t in targets.values() if t.get("cycles"))
            print(f"{name}: {ours} cycles; published Cortex-M4 reference {ms} ms = "
                  f"{ms * PUBLISHED_M4_MHZ * 1000:,.0f} cycles at {PUBLISHED_M4_MHZ} MHz (silicon, wall clock)")
    for name in ("Models_ICCT_ITA", "Models_CCT_Int_ICCT_ITA"):
        targets = results.get(name, {}).get("targets", {})
        if targets.get("cluster8", {}).get("cycles") and targets.get("cluster8-ita", {}).get("cycles"):
            ratio = targets["cluster8"]["cycles"] / targets["cluster8-ita"]["cycles"]
            print(f"{name}: cluster8 {targets['cluster8']['cycles']:,} / cluster8-ita "
                  f"{targets['cluster8-ita']['cycles']:,} cycles = {ratio:.2f}x (goal >= {ICCT_GOAL:.0f}x)")


if __name__ == "__main__":
    sys.exit(main())
