"""The `tinydeploy` command line.

Exit codes: 0 success; 1 a check failed (e.g. outputs not bit-exact); 2 bad input or usage (the
message names the ONNX node/tensor and the reason; no traceback unless -v).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import TinyDeployError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _console():
    from rich.console import Console
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _say(msg: str) -> None:
    _console().print(f"[dim]·[/dim] {msg}")


@contextlib.contextmanager
def _stages(description: str):
    """A rich spinner whose text follows the current stage (yields say(msg)); each finished stage stays as a line."""
    console = _console()
    if not console.is_terminal:
        yield _say
        return
    with console.status(description) as status:
        def say(msg: str) -> None:
            _say(msg)
            status.update(f"{description}: {msg}")
        yield say


@contextlib.contextmanager
def _progress_bar(description: str):
    """A rich progress bar on a terminal (yields update(done, total, detail)); plain status lines otherwise."""
    console = _console()
    if not console.is_terminal:
        last = [0.0]

        def lines(done: int, total: int, detail: str) -> None:
            if time.perf_counter() - last[0] >= 5.0:
                last[0] = time.perf_counter()
                _say(f"{description}: {done}/{total} {detail}")
        yield lines
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None, detail="")

        def update(done: int, total: int, detail: str) -> None:
            bar.update(task, completed=done, total=total, detail=detail)
        yield update


# --- shared steps ------------------------------------------------------------------------------------------
def load_integer_graph(model: str, target: str, input_ranges: dict[str, tuple[int, int]] | None = None,
                       dump=None):
    """Import + integerize, with progress lines; returns (quantized graph, integer graph)."""
    from .frontend.onnx_loader import import_model
    from .passes.integerize import integerize

    t0 = time.perf_counter()
    graph = import_model(model, input_ranges=input_ranges)
    _say(f"imported {model} ({graph.meta['dialect']} dialect, {len(graph.nodes)} ops) "
         f"in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    int_graph = integerize(graph, target)
    _say(f"integerized for {target} ({len(int_graph.nodes)} integer ops) in {time.perf_counter() - t0:.1f}s")
    if dump is not None:
        dump("import", graph)
        dump("integerize", int_graph)
    return graph, int_graph


def select_inputs(data, names: list[str]) -> list[np.ndarray] | None:
    """Arrays for `names` from an .npz: by name, else positionally (Deeploy appends constant operands)."""
    if all(name in data.files for name in names):
        return [data[name] for name in names]
    if len(data.files) >= len(names):
        return [data[key] for key in data.files[:len(names)]]
    return None


def load_inputs(path: str | None, model: str, graph) -> dict[str, np.ndarray]:
    """Inputs from an .npz (by graph-input name, or positional arr_0...), else inputs.npz beside the model."""
    candidates = [Path(path)] if path else [Path(model).parent / "inputs.npz", Path(model) / "inputs.npz"]
    for candidate in candidates:
        if candidate.is_file():
            data = np.load(candidate)
            arrays = select_inputs(data, graph.inputs)
            if arrays is not None:
                return dict(zip(graph.inputs, arrays, strict=True))
            raise TinyDeployError(f"{candidate} holds {data.files}, the model needs inputs {graph.inputs}")
        if path:
            break
    if path:
        raise TinyDeployError(f"inputs file '{path}' does not exist")
    raise TinyDeployError("no inputs: pass --inputs FILE.npz (none found beside the model)")


def observed_input_ranges(model: str, inputs_path: str | None) -> dict[str, tuple[int, int]] | None:
    """Value ranges of the test inputs, which type a Deeploy-dialect model's inputs (as Deeploy's runner does)."""
    from .frontend.onnx_loader import detect_dialect, graph_input_shapes, load_onnx

    onnx_model = load_onnx(model)
    if detect_dialect(onnx_model) != "deeploy":
        return None
    names = list(graph_input_shapes(onnx_model))
    path = Path(inputs_path) if inputs_path else Path(model).parent / "inputs.npz"
    if not path.is_file():
        return None
    arrays = select_inputs(np.load(path), names)
    if arrays is None:
        return None
    return {n: (int(a.min()), int(a.max())) for n, a in zip(names, arrays, strict=True) if a.size}


def random_inputs(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs over each input's dtype range; indices feeding a Gather stay inside the gathered axis."""
    from .ir.graph import DTYPE_RANGES

    rng = np.random.default_rng(seed)
    result = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        lo, hi = DTYPE_RANGES[t.dtype]
        for node in graph.nodes:
            if node.op == "Gather" and len(node.inputs) > 1 and node.inputs[1] == name:
                data = graph.tensors[node.inputs[0]]
                lo, hi = 0, data.shape[node.attrs.get("axis", 0)] - 1
        result[name] = rng.integers(max(lo, -(2**31)), min(hi, 2**31 - 1) + 1, size=t.shape).astype(t.dtype)
    return result


# --- subcommands --------------------------------------------------------------------------------------------
def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo.mobilebert import MobileBertSpec, build_mobilebert

    spec = MobileBertSpec.preset(args.size)
    for key in ("seq", "seed", "layers", "hidden", "bottleneck", "heads", "ffn_stack", "intermediate", "vocab",
                "embedding"):
        value = getattr(args, key)
        if value is not None:
            setattr(spec, key, value)
    if spec.hidden % spec.heads or spec.bottleneck % spec.heads:
        raise TinyDeployError(f"--heads {spec.heads} must divide --hidden and --bottleneck")
    t0 = time.perf_counter()
    with _stages("building, exporting and quantizing MobileBERT") as say:
        paths = build_mobilebert(args.output, spec, progress=say)
    _say(f"MobileBERT ({args.size}: {spec.layers} layers, hidden {spec.hidden}, seq {spec.seq}) "
         f"written in {time.perf_counter() - t0:.0f}s")
    for kind, path in paths.items():
        print(f"{kind:7s} {path}")
    return EXIT_OK


def cmd_golden(args: argparse.Namespace) -> int:
    from .ir.interpreter import cast_outputs, run_graph

    _, int_graph = load_integer_graph(args.model, args.target, observed_input_ranges(args.model, args.inputs))
    inputs = load_inputs(args.inputs, args.model, int_graph)
    t0 = time.perf_counter()
    values = run_graph(int_graph, inputs, keep_all=args.all)
    _say(f"golden run in {time.perf_counter() - t0:.2f}s")
    values = cast_outputs(int_graph, values)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, **values)
    for name in int_graph.outputs:
        v = values[name]
        print(f"{name}: {v.dtype}{list(v.shape)} min {v.min()} max {v.max()}")
    print(f"wrote {args.output} ({len(values)} tensors)")
    return EXIT_OK


def cmd_fidelity(args: argparse.Namespace) -> int:
    from .frontend.fidelity import fidelity_report, format_report

    graph, int_graph = load_integer_graph(args.model, args.target)
    if graph.meta.get("dialect") != "qdq":
        raise TinyDeployError("fidelity compares with onnxruntime and needs a QDQ model")
    inputs = load_inputs(args.inputs, args.model, graph)
    report = fidelity_report(args.model, graph, int_graph, inputs)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    from .backends import compile_graph
    from .ir.export import IrDumper
    from .target import load_target

    dump = IrDumper(args.dump_ir) if args.dump_ir else None
    ranges = observed_input_ranges(args.model, args.inputs)
    with _stages(f"compiling for {args.target}"):
        _, int_graph = load_integer_graph(args.model, args.target, ranges, dump)
    try:
        inputs = load_inputs(args.inputs, args.model, int_graph)
    except TinyDeployError:
        if args.inputs:
            raise
        _say("no inputs.npz beside the model: golden vectors use seeded random inputs")
        inputs = random_inputs(int_graph)
    t0 = time.perf_counter()
    with _stages("fusing, tiling, lowering and writing C"):
        project = compile_graph(int_graph, args.target, args.output, inputs, weights=args.weights,
                                model_path=args.model, dump=dump)
    _say(f"generated C in {time.perf_counter() - t0:.1f}s")
    plan = project.plan
    print(f"wrote {args.output}: {len(project.graph.nodes)} steps, {len(project.kernels)} kernel instances")
    for note in project.notes:
        print(f"  {note}")
    print(f"  {plan.summary()}")
    print(f"  weights {project.weights_bytes} B ({project.weights_format}); inputs "
          f"{sum(s.nbytes for s in project.inputs)} B; outputs {sum(s.nbytes for s in project.outputs)} B")
    if dump is not None:
        print(f"  IR after every pass: {args.dump_ir}/NN_<pass>.txt and .onnx (domain ai.tinydeploy)")
    if load_target(args.target).backend in ("riscv", "cmsis"):
        print(f"next: tinydeploy simulate {args.output} && tinydeploy verify {args.output}")
    else:
        print(f"next: tinydeploy verify {args.output}   (or: make -C {args.output} run)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import MISMATCH_FILE, verify_build

    t0 = time.perf_counter()
    result = verify_build(args.build, layers=args.layers, sanitize=args.sanitize, cc=args.cc, say=_say)
    for name, (total, wrong) in result.outputs.items():
        print(f"output {name}: {total - wrong}/{total} elements bit-exact")
    if args.layers:
        print(f"layers: {result.layers_checked} intermediate tensors compared")
    if result.first:
        print(f"FIRST DIVERGENCE: {result.first.describe()}")
        if args.layers:
            print(f"both tensors written to {Path(args.build) / MISMATCH_FILE}")
    verdict = "BIT-EXACT" if result.bit_exact else "MISMATCH"
    print(f"{verdict} ({time.perf_counter() - t0:.1f}s)")
    return EXIT_OK if result.bit_exact else EXIT_CHECK_FAILED


def cmd_simulate(args: argparse.Namespace) -> int:
    from .sim.firmware import simulate_build

    if args.inputs:
        raise TinyDeployError("--inputs: the firmware runs the golden input compiled into it; recompile with "
                              "`tinydeploy compile --inputs FILE` to simulate other inputs")
    with _progress_bar("simulating layers") as update:
        sim = simulate_build(args.build, cc=args.cc, max_cycles=args.max_cycles, accel=args.accel,
                             cmsis_nn=args.cmsis_nn, say=_say,
                             progress=lambda done, total, cycles, rate: update(
                                 done, total, f"{cycles / 1e6:,.1f} M cycles, {rate / 1e6:.0f} M guest instr/s"))
    report = sim.report
    print(report["console"].rstrip())
    if report["accel_busy_cycles"]:
        macs = sum(layer["macs"] for layer in report["layers"] if layer["engine"] == "accel")
        print(f"accelerator ({args.accel}): busy {report['accel_busy_cycles']:,} cycles, {macs:,} MACs "
              f"-> {macs / 1024 / max(report['accel_busy_cycles'], 1):.0%} utilisation while busy, "
              f"{macs / 1024 / report['cycles_inference']:.1%} end to end"
              + (f"; {report['accel_jobs_checked_against_rtl']} jobs ran on the RTL, each equal to the model"
                 if args.accel == "rtl" else ""))
    per_s = report["guest_instructions_per_second"] / 1e6
    print(f"cycles {report['cycles_inference']:,} for the inference ({report['cycles_total']:,} with the "
          f"harness's self-check); guest instructions {report['guest_instructions']:,} "
          f"({per_s:.0f} M/s, {sim.wall_seconds:.1f} s); {len(report['layers'])} layers stamped")
    print(f"wrote {Path(args.build) / 'outputs.npz'} and {Path(args.build) / 'report.json'}")
    print("BIT-EXACT" if report["bit_exact"] else "MISMATCH (run tinydeploy verify --layers to localise)")
    return EXIT_OK if report["bit_exact"] else EXIT_CHECK_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    files = write_report(args.build, args.output)
    print(f"wrote {files[0]} (self-contained) and {', '.join(str(f.name) for f in files[1:])}")
    return EXIT_OK


def cmd_targets(args: argparse.Namespace) -> int:
    from .target import available_targets, load_target

    for name in available_targets():
        t = load_target(name)
        print(f"{t.name:14s} {t.backend:8s} requant={t.requant:5s} softmax={t.softmax:5s}  {t.description}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """zoo (tiny) -> integer model -> fidelity -> C project -> ISS (or host) -> bit-exact check -> report."""
    from .backends import compile_graph
    from .frontend.fidelity import fidelity_report, format_report
    from .target import load_target
    from .verify import verify_build
    from .zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = Path(args.output)
    model = out / "model_qdq.onnx"
    if not model.exists():
        build_mobilebert(out, MobileBertSpec.preset("tiny"), progress=_say)
    graph, int_graph = load_integer_graph(str(model), args.target)
    inputs = load_inputs(None, str(model), graph)
    print(format_report(fidelity_report(model, graph, int_graph, inputs)))
    backend = load_target(args.target).backend
    backend_target = args.target if backend in ("generic", "riscv", "cmsis") else "generic"
    if backend_target != args.target:
        _say(f"the {backend} backend is not implemented yet: generating portable C with {args.target}'s "
             f"arithmetic and running it on this host")
    build = out / "build"
    project = compile_graph(int_graph, backend_target, build, inputs, model_path=str(model))
    print(f"C project: {build} ({len(project.kernels)} kernels; {project.plan.summary()})")
    if load_target(backend_target).backend in ("riscv", "cmsis"):
        from .sim.firmware import simulate_build

        sim = simulate_build(build, say=_say)
        print(sim.result.console.rstrip())
        print(f"ISS ({backend_target}, {len(sim.result.instructions)} harts): {sim.report['cycles_inference']:,} "
              f"cycles per inference, {sim.report['guest_instructions_per_second'] / 1e6:.0f} M guest "
              f"instructions/s")
    result = verify_build(build, layers=True, say=_say)
    for name, (total, wrong) in result.outputs.items():
        print(f"output {name}: {total - wrong}/{total} elements bit-exact")
    print(f"{result.layers_checked} intermediate tensors compared: "
          f"{'BIT-EXACT' if result.bit_exact else 'MISMATCH: ' + result.first.describe()}")
    if load_target(backend_target).backend in ("riscv", "cmsis"):
        from .report import write_report

        page = write_report(build, out / "report.html")[0]
        print(f"report: {page} (open it in a browser; PNGs beside it)")
    return EXIT_OK if result.bit_exact else EXIT_CHECK_FAILED


# --- parser -------------------------------------------------------------------------------------------------
EXAMPLES = {
    "zoo": "tinydeploy zoo mobilebert -o models/tiny --size tiny",
    "golden": "tinydeploy golden models/tiny/model_qdq.onnx --target cluster8-ita -o out/golden.npz",
    "fidelity": "tinydeploy fidelity models/tiny/model_qdq.onnx --target cluster8-ita --json fid.json",
    "compile": "tinydeploy compile models/tiny/model_qdq.onnx --target generic -o build/tiny",
    "verify": "tinydeploy verify build/tiny --layers --sanitize",
    "simulate": "tinydeploy compile models/tiny/model_qdq.onnx --target cluster8 -o build/c8 && "
                "tinydeploy simulate build/c8",
    "report": "tinydeploy simulate build/ita && tinydeploy report build/ita -o out/report.html",
    "targets": "tinydeploy targets",
    "demo": "tinydeploy demo -o out/demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinydeploy", description="Deploy 8-bit transformers to tiny RISC-V clusters and Cortex-M, bit-exact.",
        epilog="exit codes: 0 ok, 1 check failed, 2 bad input/usage")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and details")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=fn)
        return p

    p = add("zoo", cmd_zoo, "build a seeded MobileBERT, export ONNX and quantize it (QDQ, int8)")
    p.add_argument("model", choices=["mobilebert"])
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    for flag, dest in (("--seq", "seq"), ("--seed", "seed"), ("--layers", "layers"), ("--hidden", "hidden"),
                       ("--bottleneck", "bottleneck"), ("--heads", "heads"), ("--ffn-stack", "ffn_stack"),
                       ("--intermediate", "intermediate"), ("--vocab", "vocab"), ("--embedding", "embedding")):
        p.add_argument(flag, dest=dest, type=int, default=None)

    for name, fn, text in (("golden", cmd_golden, "run the golden integer interpreter"),
                           ("fidelity", cmd_fidelity, "compare the integer model with onnxruntime (QDQ)")):
        p = add(name, fn, text)
        p.add_argument("model", help="ONNX file (QDQ or Deeploy integer dialect) or a zoo directory")
        p.add_argument("--target", default="cluster8-ita", help="target name (see `tinydeploy targets`)")
        p.add_argument("--inputs", help=".npz with the inputs (default: inputs.npz beside the model)")
        if name == "golden":
            p.add_argument("-o", "--output", required=True, help="output .npz")
            p.add_argument("--all", action="store_true", help="also write every intermediate tensor")
        else:
            p.add_argument("--json", help="write the full report as JSON")

    p = add("compile", cmd_compile, "compile a model to a self-contained C project (network, kernels, weights, "
                                    "golden vectors, harness, Makefile/CMake)")
    p.add_argument("model", help="ONNX file (QDQ or Deeploy integer dialect)")
    p.add_argument("--target", default="generic", help="target name (see `tinydeploy targets`)")
    p.add_argument("-o", "--output", required=True, help="build directory to write")
    p.add_argument("--inputs", help=".npz with the inputs for the golden vectors (default: inputs.npz beside "
                                    "the model, else seeded random)")
    p.add_argument("--weights", choices=["auto", "c", "incbin"], default="auto",
                   help="constants as C arrays or a binary blob (auto: C up to 2 MiB)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass as text and ONNX (custom domain "
                                                    "ai.tinydeploy, viewable in Netron)")

    p = add("verify", cmd_verify, "build a compiled project, run it, compare with the golden interpreter bit for "
                                  "bit (exit 1 on mismatch)")
    p.add_argument("build", help="directory written by `tinydeploy compile`")
    p.add_argument("--layers", action="store_true", help="compare every intermediate tensor, report the first "
                                                         "diverging layer and write mismatch.npz")
    p.add_argument("--sanitize", action="store_true", help="build with AddressSanitizer + UBSan")
    p.add_argument("--cc", default="gcc", help="host C compiler: gcc, clang (pip ziglang if no system clang), "
                                               "or a path")

    p = add("simulate", cmd_simulate, "cross-build a cluster project and run it in the cluster ISS (writes "
                                      "outputs.npz and report.json)")
    p.add_argument("build", help="directory written by `tinydeploy compile --target cluster8`")
    p.add_argument("--inputs", help="(not yet) other inputs than the golden ones compiled in")
    p.add_argument("--cc", default=None, help="cross compiler: default pip ziglang's clang; or "
                                              "riscv64-unknown-elf-gcc")
    p.add_argument("--max-cycles", type=int, default=None, help="cycle budget before the run is stopped")
    p.add_argument("--cmsis-nn", metavar="PATH", help="Cortex-M: build the kernels from a CMSIS-NN checkout "
                                                      "instead of tinydeploy's implementations of its API")
    p.add_argument("--accel", default="model", choices=["model", "rtl"],
                   help="accelerator engine: functional+timing model (default) or the Verilated RTL (each job "
                        "is also checked against the model)")

    p = add("report", cmd_report, "one HTML page for a simulated build: per-layer table, cycle bars, roofline, "
                                  "memory map (PNGs beside it)")
    p.add_argument("build", help="directory written by `tinydeploy compile` and run by `tinydeploy simulate`")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (PNGs go beside it)")
    add("targets", cmd_targets, "list the known targets")
    p = add("demo", cmd_demo, "tiny MobileBERT: zoo -> integer model -> fidelity -> C -> host run, bit-exact check")
    p.add_argument("-o", "--output", default="out/demo")
    p.add_argument("--target", default="cluster8-ita")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TinyDeployError as exc:
        if args.verbose:
            raise
        _console().print(f"[bold red]error:[/bold red] {exc.one_line()}")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
