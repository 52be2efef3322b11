"""The `tinydeploy` command line.

Exit codes: 0 success; 1 a check failed (e.g. outputs not bit-exact); 2 bad input or usage (the
message names the ONNX node/tensor and the reason; no traceback unless -v).
"""

from __future__ import annotations

import argparse
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
    return Console(stderr=True, highlight=False)


def _say(msg: str) -> None:
    _console().print(f"[dim]·[/dim] {msg}")


# --- shared steps ------------------------------------------------------------------------------------------
def load_integer_graph(model: str, target: str):
    """Import + integerize, with progress lines; returns (quantized graph, integer graph)."""
    from .frontend.onnx_loader import import_model
    from .passes.integerize import integerize

    t0 = time.perf_counter()
    graph = import_model(model)
    _say(f"imported {model} ({graph.meta['dialect']} dialect, {len(graph.nodes)} ops) "
         f"in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    int_graph = integerize(graph, target)
    _say(f"integerized for {target} ({len(int_graph.nodes)} integer ops) in {time.perf_counter() - t0:.1f}s")
    return graph, int_graph


def load_inputs(path: str | None, model: str, graph) -> dict[str, np.ndarray]:
    """Inputs from an .npz (by graph-input name, or positional arr_0...), else inputs.npz beside the model."""
    candidates = [Path(path)] if path else [Path(model).parent / "inputs.npz", Path(model) / "inputs.npz"]
    for candidate in candidates:
        if candidate.is_file():
            data = np.load(candidate)
            if all(name in data.files for name in graph.inputs):
                return {name: data[name] for name in graph.inputs}
            if len(data.files) == len(graph.inputs):
                return {name: data[key] for name, key in zip(graph.inputs, data.files, strict=True)}
            raise TinyDeployError(f"{candidate} holds {data.files}, the model needs inputs {graph.inputs}")
        if path:
            break
    if path:
        raise TinyDeployError(f"inputs file '{path}' does not exist")
    raise TinyDeployError("no inputs: pass --inputs FILE.npz (none found beside the model)")


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
    paths = build_mobilebert(args.output, spec, progress=_say)
    _say(f"MobileBERT ({args.size}: {spec.layers} layers, hidden {spec.hidden}, seq {spec.seq}) "
         f"written in {time.perf_counter() - t0:.0f}s")
    for kind, path in paths.items():
        print(f"{kind:7s} {path}")
    return EXIT_OK


def cmd_golden(args: argparse.Namespace) -> int:
    from .ir.interpreter import cast_outputs, run_graph

    _, int_graph = load_integer_graph(args.model, args.target)
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


def cmd_targets(args: argparse.Namespace) -> int:
    from .target import available_targets, load_target

    for name in available_targets():
        t = load_target(name)
        print(f"{t.name:14s} {t.backend:8s} requant={t.requant:5s} softmax={t.softmax:5s}  {t.description}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """zoo (tiny) -> import -> integerize -> golden -> fidelity; later stages arrive with their backends."""
    from .frontend.fidelity import fidelity_report, format_report
    from .ir.interpreter import run_graph
    from .zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = Path(args.output)
    model = out / "model_qdq.onnx"
    if not model.exists():
        build_mobilebert(out, MobileBertSpec.preset("tiny"), progress=_say)
    graph, int_graph = load_integer_graph(str(model), args.target)
    inputs = load_inputs(None, str(model), graph)
    outputs = run_graph(int_graph, inputs)
    for name, value in outputs.items():
        print(f"golden {name}: {list(value.shape)} {value.ravel()[:8].tolist()}...")
    print(format_report(fidelity_report(model, graph, int_graph, inputs)))
    print("demo stops after the golden run: code generation and the ISS arrive with the backend issues")
    return EXIT_OK


# --- parser -------------------------------------------------------------------------------------------------
EXAMPLES = {
    "zoo": "tinydeploy zoo mobilebert -o models/tiny --size tiny",
    "golden": "tinydeploy golden models/tiny/model_qdq.onnx --target cluster8-ita -o out/golden.npz",
    "fidelity": "tinydeploy fidelity models/tiny/model_qdq.onnx --target cluster8-ita --json fid.json",
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

    add("targets", cmd_targets, "list the known targets")
    p = add("demo", cmd_demo, "zoo -> integer model -> golden run -> fidelity on tiny MobileBERT")
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
