"""The `tinydeploy` command line.

Exit codes: 0 success; 1 a check failed (e.g. outputs not bit-exact); 2 bad input or usage (one line naming
the file, argument, ONNX node or tensor and the reason; the traceback only with -v); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import TinyDeployError
from .zoo.quantize import CALIBRATION_METHODS, RECIPES

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


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
def load_integer_graph(model: str, target: str, observed: dict | None = None, dump=None):
    """Import + integerize, with progress lines; returns (quantized graph, integer graph). `observed`: what the
    test inputs say about the model's inputs (observed_inputs)."""
    from .frontend.onnx_loader import import_model
    from .passes.integerize import integerize

    t0 = time.perf_counter()
    graph = import_model(model, **(observed or {}))
    for name, shape in graph.meta.get("bound_inputs", {}).items():
        _say(f"input {name}: symbolic dimensions sized from the test data, {shape}"
             + (" (empty: dropped)" if name in graph.meta.get("dropped_inputs", []) else ""))
    _say(f"imported {model} ({graph.meta['dialect']} dialect, {len(graph.nodes)} ops) "
         f"in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    int_graph = integerize(graph, target)
    _say(f"integerized for {target} ({len(int_graph.nodes)} integer ops) in {time.perf_counter() - t0:.1f}s")
    if dump is not None:
        dump("import", graph)
        dump("integerize", int_graph)
    return graph, int_graph


def default_inputs_path(model: str) -> Path | None:
    """inputs.npz beside the model (or inside a zoo folder), if there is one."""
    for candidate in (Path(model).parent / "inputs.npz", Path(model) / "inputs.npz"):
        if candidate.is_file():
            return candidate
    return None


def inputs_source(path: str | None, model: str) -> Path:
    """--inputs, else inputs.npz beside the model."""
    source = Path(path) if path else default_inputs_path(model)
    if source is None:
        raise TinyDeployError("no inputs: pass --inputs FILE.npz (none found beside the model)")
    return source


def load_inputs(path: str | None, model: str, graph) -> dict[str, np.ndarray]:
    """One sample of checked inputs from --inputs (by graph-input name), else inputs.npz beside the model."""
    from .frontend.inputs import load_inputs as read_samples

    return read_samples(inputs_source(path, model), graph)[0]


def observed_inputs(model: str, inputs_path: str | None) -> dict:
    """What the test inputs (--inputs, else inputs.npz beside the model) tell the import, as Deeploy's runner
    uses them: value ranges type a Deeploy-dialect model's inputs (`input_ranges`), and shapes size symbolic input
    dimensions (`input_shapes`). Empty when there are no inputs or nothing to learn."""
    from .frontend.inputs import observed_arrays, observed_ranges
    from .frontend.onnx_loader import detect_dialect, graph_input_shapes, load_onnx, symbolic_inputs

    onnx_model = load_onnx(model)
    deeploy, symbolic = detect_dialect(onnx_model) == "deeploy", symbolic_inputs(onnx_model)
    path = Path(inputs_path) if inputs_path else default_inputs_path(model)
    if path is None or not (deeploy or symbolic):
        return {}
    arrays = observed_arrays(path, list(graph_input_shapes(onnx_model, allow_symbolic=True)))
    observed: dict = {}
    if symbolic:
        observed["input_shapes"] = {k: tuple(v.shape) for k, v in arrays.items() if k in symbolic}
    if deeploy:
        observed["input_ranges"] = observed_ranges(arrays, str(path))
    return observed


# --- subcommands --------------------------------------------------------------------------------------------
def cmd_zoo(args: argparse.Namespace) -> int:
    if args.model == "hf" and args.path is None:
        raise TinyDeployError("zoo hf needs the path of a local Hugging Face model folder: zoo hf PATH -o DIR")
    if args.model != "hf" and args.path is not None:
        raise TinyDeployError(f"zoo {args.model} takes no PATH (only `zoo hf PATH` does)")
    if args.model in ("minilm", "bert", "hf"):
        return _zoo_encoder(args)
    from .files import staged_folder
    from .zoo.mobilebert import MobileBertSpec, build_mobilebert

    spec = MobileBertSpec.preset(args.size)
    spec.mask = args.mask
    for key in ("seq", "seed", "layers", "hidden", "bottleneck", "heads", "ffn_stack", "intermediate", "vocab",
                "embedding"):
        value = getattr(args, key)
        if value is not None:
            setattr(spec, key, value)
    problems = spec.problems()
    if problems:
        raise TinyDeployError("; ".join(problems))
    t0 = time.perf_counter()
    with staged_folder(args.output, ours=lambda d: (d / "spec.json").is_file(), what="zoo model (spec.json)",
                       force=args.force) as stage:
        with _stages("building, exporting and quantizing MobileBERT") as say:
            paths = build_mobilebert(stage, spec, progress=say)
    _say(f"MobileBERT ({args.size}: {spec.layers} layers, hidden {spec.hidden}, seq {spec.seq}) "
         f"written in {time.perf_counter() - t0:.0f}s")
    for kind, path in paths.items():
        print(f"{kind:7s} {Path(args.output) / Path(path).name}")
    return EXIT_OK


def _zoo_encoder(args: argparse.Namespace) -> int:
    """zoo minilm | bert | hf PATH: a BERT-family encoder with a real attention mask, quantized by a recipe."""
    from .files import staged_folder
    from .zoo import bert

    seq = args.seq if args.seq is not None else (128 if args.model != "bert" else bert.BertSpec.seq)
    if args.model != "bert" and not 1 <= seq <= bert.BertSpec.LIMITS["seq"]:     # bert: checked with its spec
        raise TinyDeployError(f"--seq {seq} is outside [1, {bert.BertSpec.LIMITS['seq']}]")
    if args.model == "bert":
        spec = bert.BertSpec(seq=seq)
        for key in ("layers", "hidden", "heads", "intermediate", "vocab", "seed", "activation", "opset"):
            if getattr(args, key) is not None:
                setattr(spec, key, getattr(args, key))
        problems = spec.problems()
        if problems:
            raise TinyDeployError("; ".join(problems))
    elif args.model == "minilm":
        bert.minilm_folder()                      # a missing extra is named before anything is written
    t0 = time.perf_counter()
    with staged_folder(args.output, ours=lambda d: (d / "spec.json").is_file(), what="zoo model (spec.json)",
                       force=args.force) as stage:
        with _stages(f"exporting and quantizing {args.model}") as say:
            if args.model == "minilm":
                paths = bert.build_minilm(stage, seq, args.recipe, args.calibration, progress=say)
            elif args.model == "hf":
                paths = bert.build_hf(args.path, stage, seq, args.recipe, args.calibration, progress=say)
            else:
                paths = bert.build_bert(stage, spec, args.recipe, args.calibration, progress=say)
    _say(f"{args.model} (seq {seq}, recipe {args.recipe}) written in {time.perf_counter() - t0:.0f}s")
    for kind, path in paths.items():
        print(f"{kind:7s} {Path(args.output) / Path(path).name}")
    return EXIT_OK


def cmd_quantize(args: argparse.Namespace) -> int:
    """quantize MODEL.onnx --calib CALIB.npz -o QDQ.onnx: onnxruntime static QDQ with a transformer recipe."""
    from .files import atomic_file, output_file
    from .frontend.inputs import read_npz
    from .frontend.onnx_loader import graph_input_shapes, load_onnx
    from .zoo.quantize import quantize_transformer

    output_file(args.output)
    shapes = graph_input_shapes(load_onnx(args.model))
    names = list(shapes)
    arrays = read_npz(Path(args.calib))
    missing = [n for n in names if n not in arrays]
    if missing:
        raise TinyDeployError(f"{args.calib} has no array '{missing[0]}' (the model's inputs: {', '.join(names)})")
    for name, shape in shapes.items():
        if arrays[name].ndim != len(shape) or arrays[name].shape[1:] != shape[1:] or not arrays[name].shape[0]:
            raise TinyDeployError(f"{args.calib} array '{name}' has shape {list(arrays[name].shape)}; calibration "
                                  f"samples are [N, {', '.join(map(str, shape[1:]))}] for the input {list(shape)}")
    counts = {arrays[n].shape[0] for n in names}
    if len(counts) != 1:
        raise TinyDeployError(f"{args.calib}: the arrays hold different sample counts; each is [N, ...input shape]")
    samples = [{n: np.asarray(arrays[n][i:i + 1]) for n in names} for i in range(counts.pop())]
    with atomic_file(args.output) as tmp, _stages(f"quantizing ({args.recipe}) on {len(samples)} samples"):
        info = quantize_transformer(args.model, tmp, samples, recipe=args.recipe, method=args.calibration)
    _say(f"{info['float_nodes']} nodes left in float for the integer softmax/LUT/LayerNorm")
    print(f"wrote {args.output}")
    return EXIT_OK


def dequantized_outputs(graph, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`<output>_real` = scale * (q - zero point) per graph output with quantization parameters (float32, as
    DequantizeLinear computes it), to compare with the float model."""
    from .ir.ops import dequantize

    return {f"{name}_real": dequantize(values[name], q.scale, q.zero_point, q.axis)
            for name in graph.outputs if (q := graph.tensors[name].quant) is not None and name in values}


def cmd_golden(args: argparse.Namespace) -> int:
    from .files import atomic_file, output_file
    from .frontend.inputs import load_batch
    from .ir.interpreter import cast_outputs, run_graph

    output_file(args.output)
    _, int_graph = load_integer_graph(args.model, args.target, observed_inputs(args.model, args.inputs))
    samples, stacked = load_batch(inputs_source(args.inputs, args.model), int_graph)
    t0 = time.perf_counter()
    runs = []
    for i, inputs in enumerate(samples):
        values = cast_outputs(int_graph, run_graph(int_graph, inputs, keep_all=args.all))
        if args.dequantize:
            values.update(dequantized_outputs(int_graph, values))
        runs.append(values)
        if len(samples) > 1:
            _say(f"sample {i + 1}/{len(samples)}")
    _say(f"golden run in {time.perf_counter() - t0:.2f}s")
    values = {name: np.stack([run[name] for run in runs]) for name in runs[0]} if stacked else runs[0]
    with atomic_file(args.output) as tmp, open(tmp, "wb") as f:
        np.savez(f, **values)
    for name in int_graph.outputs:
        v = values[name]
        print(f"{name}: {v.dtype}{list(v.shape)} min {v.min()} max {v.max()}")
    print(f"wrote {args.output} ({len(values)} tensors)")
    return EXIT_OK


def cmd_fidelity(args: argparse.Namespace) -> int:
    from .files import atomic_file, output_file, strict_json
    from .frontend.fidelity import fidelity_report, format_report

    if args.json:
        output_file(args.json, "--json")
    graph, int_graph = load_integer_graph(args.model, args.target)
    if graph.meta.get("dialect") != "qdq":
        raise TinyDeployError("fidelity compares with onnxruntime and needs a QDQ model")
    inputs = load_inputs(args.inputs, args.model, graph)
    report = fidelity_report(args.model, graph, int_graph, inputs)
    print(format_report(report))
    if args.json:
        with atomic_file(args.json, "--json") as tmp:
            tmp.write_text(strict_json(report))
        print(f"wrote {args.json}")
    return EXIT_OK


def is_build(folder: Path) -> bool:
    return (folder / "tinydeploy.json").is_file()


def cmd_compile(args: argparse.Namespace) -> int:
    from .backends import compile_graph
    from .files import staged_folder
    from .frontend.inputs import random_inputs
    from .ir.export import IrDumper
    from .target import load_target

    dump = IrDumper(args.dump_ir) if args.dump_ir else None
    observed = observed_inputs(args.model, args.inputs)
    with _stages(f"compiling for {args.target}"):
        _, int_graph = load_integer_graph(args.model, args.target, observed, dump)
    if args.inputs or default_inputs_path(args.model):
        inputs = load_inputs(args.inputs, args.model, int_graph)
    else:
        _say("no inputs.npz beside the model: golden vectors use seeded random inputs")
        inputs = random_inputs(int_graph)
    t0 = time.perf_counter()
    with staged_folder(args.output, ours=is_build, what="tinydeploy build (tinydeploy.json)", force=args.force) \
            as stage, _stages("fusing, tiling, lowering and writing C"):
        project = compile_graph(int_graph, args.target, stage, inputs, weights=args.weights,
                                model_path=args.model, dump=dump, stage_bytes=args.stage_bytes)
    _say(f"generated C in {time.perf_counter() - t0:.1f}s")
    plan = project.plan
    print(f"wrote {args.output}: {len(project.graph.nodes)} steps, {len(project.kernels)} kernel instances")
    for note in project.notes:
        print(f"  {note}")
    print(f"  {plan.summary()}")
    print(f"  weights {project.weights_bytes} B ({project.weights_format}); inputs "
          f"{sum(s.nbytes for s in project.inputs)} B; outputs {sum(s.nbytes for s in project.outputs)} B")
    staging = project.manifest.get("staging")
    if staging and staging["constants"]:
        print(f"  {staging['staged_bytes']} B of weights staged L3 -> L2 by the I/O DMA through a {staging['bytes']} B "
              f"ring ({staging['constants']} copies; --stage-bytes sets the ring's limit)")
    if dump is not None:
        print(f"  IR after every pass: {args.dump_ir}/NN_<pass>.txt and .onnx (domain ai.tinydeploy)")
    if load_target(args.target).backend in ("riscv", "cmsis"):
        print(f"next: tinydeploy simulate {args.output} && tinydeploy verify {args.output}")
    else:
        print(f"next: tinydeploy verify {args.output}   (or: make -C {args.output} run)")
    return EXIT_OK


def build_samples(build: str, inputs: str | None):
    """[None] for the compiled-in golden input, else one checked Sample per sample of the --inputs file."""
    from .verify import golden_samples, load_manifest

    if not inputs:
        return [None]
    samples = golden_samples(load_manifest(Path(build)), inputs)
    _say(f"{inputs}: {len(samples)} sample{'s' if len(samples) != 1 else ''}, golden outputs computed")
    return samples


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import MISMATCH_FILE, verify_build

    t0 = time.perf_counter()
    samples = build_samples(args.build, args.inputs)
    exact = True
    for number, sample in enumerate(samples):
        prefix = f"sample {number}: " if args.inputs else ""
        result = verify_build(args.build, layers=args.layers, sanitize=args.sanitize, cc=args.cc, say=_say,
                              sample=sample)
        for name, (total, wrong) in result.outputs.items():
            print(f"{prefix}output {name}: {total - wrong}/{total} elements bit-exact")
        if args.layers:
            print(f"{prefix}layers: {result.layers_checked} intermediate tensors compared")
        if result.first:
            print(f"{prefix}FIRST DIVERGENCE: {result.first.describe()}")
            if args.layers:
                print(f"both tensors written to {Path(args.build) / MISMATCH_FILE}")
        exact = exact and result.bit_exact
        if args.inputs:
            print(f"{prefix}{'BIT-EXACT' if result.bit_exact else 'MISMATCH'}")
    tail = f" ({len(samples)} samples)" if args.inputs else ""
    print(f"{'BIT-EXACT' if exact else 'MISMATCH'}{tail} ({time.perf_counter() - t0:.1f}s)")
    return EXIT_OK if exact else EXIT_CHECK_FAILED


def cmd_simulate(args: argparse.Namespace) -> int:
    from .sim.firmware import simulate_build

    samples = build_samples(args.build, args.inputs)
    runs = []
    for number, sample in enumerate(samples):
        with _progress_bar("simulating layers" + (f" (sample {number})" if args.inputs else "")) as update:
            sim = simulate_build(args.build, cc=args.cc, max_cycles=args.max_cycles, accel=args.accel,
                                 cmsis_nn=args.cmsis_nn, say=_say, sample=sample,
                                 progress=lambda done, total, cycles, rate: update(
                                     done, total, f"{cycles / 1e6:,.1f} M cycles, {rate / 1e6:.0f} M guest instr/s"))
        runs.append(sim)
        if args.inputs:
            print(f"sample {number}: {sim.report['cycles_inference']:,} cycles, "
                  f"{'BIT-EXACT' if sim.report['bit_exact'] else 'MISMATCH'}")
    if args.inputs:
        return _write_sample_runs(args, runs)
    report = runs[0].report
    print(report["console"].rstrip())
    if report["accel_busy_cycles"]:
        macs = sum(layer["macs"] for layer in report["layers"] if layer["engine"] == "accel")
        print(f"accelerator ({args.accel}): busy {report['accel_busy_cycles']:,} cycles, {macs:,} MACs "
              f"-> {macs / 1024 / max(report['accel_busy_cycles'], 1):.0%} utilisation while busy, "
              f"{macs / 1024 / report['cycles_inference']:.1%} end to end; "
              f"{report['accel_port_stall_cycles']:,} of them waiting for L1 banks the DMA held"
              + (f"; {report['accel_jobs_checked_against_rtl']} jobs ran on the RTL, each equal to the model"
                 if args.accel == "rtl" else ""))
    if report.get("io_dma_busy_cycles"):
        staged = sum(layer["dma"].get("l3->l2", 0) for layer in report["layers"])
        print(f"I/O DMA: {staged:,} B of weights staged L3 -> L2, the L3 link busy {report['io_dma_busy_cycles']:,} "
              f"cycles ({report['io_dma_busy_cycles'] / max(report['cycles_inference'], 1):.0%} of the inference)")
    per_s = report["guest_instructions_per_second"] / 1e6
    print(f"cycles {report['cycles_inference']:,} for the inference ({report['cycles_total']:,} with the "
          f"harness's self-check); guest instructions {report['guest_instructions']:,} "
          f"({per_s:.0f} M/s, {runs[0].wall_seconds:.1f} s); {len(report['layers'])} layers stamped")
    print(f"wrote {Path(args.build) / 'outputs.npz'} and {Path(args.build) / 'report.json'}")
    print("BIT-EXACT" if report["bit_exact"] else "MISMATCH (run tinydeploy verify --layers to localise)")
    return EXIT_OK if report["bit_exact"] else EXIT_CHECK_FAILED


def _write_sample_runs(args: argparse.Namespace, runs) -> int:
    """--inputs: BUILD/<stem>.outputs.npz (outputs stacked over samples) and BUILD/<stem>.report.json."""
    from .files import atomic_file, strict_json

    stem = Path(args.inputs).name.removesuffix(".npz")
    build = Path(args.build)
    outputs = {name: np.stack([run.outputs[name] for run in runs]) for name in runs[0].outputs}
    with atomic_file(build / f"{stem}.outputs.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **outputs)
    summary = {"inputs": str(args.inputs), "samples": [
        {"sample": i, "bit_exact": run.report["bit_exact"], "cycles_inference": run.report["cycles_inference"]}
        for i, run in enumerate(runs)]}
    with atomic_file(build / f"{stem}.report.json") as tmp:
        tmp.write_text(strict_json(summary))
    exact = sum(run.report["bit_exact"] for run in runs)
    cycles = sorted(run.report["cycles_inference"] for run in runs)
    print(f"wrote {build / (stem + '.outputs.npz')} and {build / (stem + '.report.json')}")
    print(f"{'BIT-EXACT' if exact == len(runs) else 'MISMATCH'}: {exact}/{len(runs)} samples bit-exact, one "
          f"firmware build; median {cycles[len(cycles) // 2]:,} cycles per inference")
    return EXIT_OK if exact == len(runs) else EXIT_CHECK_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    files = write_report(args.build, args.output)
    print(f"wrote {files[0]} (self-contained) and {', '.join(str(f.name) for f in files[1:])}")
    return EXIT_OK


def cmd_accel_check(args: argparse.Namespace) -> int:
    """Every stage of PyITA vector files on the accelerator model (or RTL): one line per stage."""
    from .sim.accel.check import accel_check

    exact = True
    for path in args.vectors:
        t0 = time.perf_counter()
        results, acc = accel_check(path, rtl=args.rtl)
        engine = "RTL (Verilator)" if args.rtl else "model"
        print(f"{path}: {len(results)} stages on the accelerator {engine}, {acc.jobs} jobs, {acc.cycles:,} "
              f"accelerator cycles ({time.perf_counter() - t0:.1f} s)")
        for result in results:
            print(f"  {result.line()}")
        exact = exact and all(not r.wrong for r in results)
    print("EXACT: every stage equals PyITA" if exact else "DIFFERENT: some stages differ from PyITA")
    return EXIT_OK if exact else EXIT_CHECK_FAILED


def cmd_targets(args: argparse.Namespace) -> int:
    from .target import available_targets, load_target

    targets = [load_target(name) for name in available_targets()]
    width = max(len(t.name) for t in targets)
    for t in targets:
        print(f"{t.name:{width}s} {t.backend:8s} requant={t.requant:5s} softmax={t.softmax:5s}  {t.description}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """zoo (tiny) -> integer model -> fidelity -> C project -> ISS (or host) -> bit-exact check -> report."""
    from .backends import compile_graph
    from .files import staged_folder
    from .frontend.fidelity import fidelity_report, format_report
    from .target import load_target
    from .verify import verify_build
    from .zoo.mobilebert import MobileBertSpec, build_mobilebert

    out = Path(args.output)
    model = out / "model_qdq.onnx"
    if out.exists() and not out.is_dir():
        raise TinyDeployError(f"-o {out}: is a file, not a folder")
    if not model.exists():
        if out.is_dir() and any(out.iterdir()) and not (out / "spec.json").is_file():
            raise TinyDeployError(f"-o {out}: folder is not empty and holds no demo; choose another folder")
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
    with staged_folder(build, ours=is_build, what="tinydeploy build (tinydeploy.json)") as stage:
        project = compile_graph(int_graph, backend_target, stage, inputs, model_path=str(model))
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
    "zoo": "tinydeploy zoo mobilebert -o models/tiny --size tiny\n  tinydeploy zoo minilm -o models/minilm --seq 128\n"
           "  tinydeploy zoo bert -o models/bert --layers 2 --hidden 128 --heads 4\n"
           "  tinydeploy zoo hf path/to/hf-folder -o models/mine",
    "quantize": "tinydeploy quantize model.onnx --calib calib.npz -o model_qdq.onnx --recipe int8",
    "golden": "tinydeploy golden models/tiny/model_qdq.onnx --target cluster8-ita -o out/golden.npz",
    "fidelity": "tinydeploy fidelity models/tiny/model_qdq.onnx --target cluster8-ita --json fid.json",
    "compile": "tinydeploy compile models/tiny/model_qdq.onnx --target generic -o build/tiny",
    "verify": "tinydeploy verify build/tiny --layers --sanitize",
    "simulate": "tinydeploy compile models/tiny/model_qdq.onnx --target cluster8 -o build/c8 && "
                "tinydeploy simulate build/c8",
    "report": "tinydeploy simulate build/ita && tinydeploy report build/ita -o out/report.html",
    "targets": "tinydeploy targets",
    "accel-check": "tinydeploy accel-check ../shared/conformance/ita/*.npz --rtl",
    "demo": "tinydeploy demo -o out/demo",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) like every other error of the CLI."""

    def error(self, message: str):
        _console().print(f"[bold red]error:[/bold red] {self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_BAD_INPUT)


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tinydeploy", description="Deploy 8-bit transformers to tiny RISC-V clusters and Cortex-M, bit-exact.",
        epilog="exit codes: 0 ok, 1 check failed, 2 bad input/usage, 130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and details")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=fn)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and details")
        return p

    p = add("zoo", cmd_zoo, "build a model (MobileBERT, the pretrained MiniLM, a local Hugging Face BERT, a "
                            "random BERT), export ONNX and quantize it (QDQ)")
    p.add_argument("model", choices=["mobilebert", "minilm", "bert", "hf"])
    p.add_argument("path", nargs="?", default=None, help="zoo hf: a local Hugging Face model folder")
    p.add_argument("--recipe", default="mixed", choices=RECIPES,
                   help="quantization recipe of minilm/bert/hf: mixed (int16 residual stream, the accurate one) or "
                        "int8 (every activation int8)")
    p.add_argument("--calibration", default="minmax", choices=CALIBRATION_METHODS,
                   help="onnxruntime calibration method (minilm, bert, hf)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty folder that is not "
                                                        "a zoo model")
    p.add_argument("--activation", choices=["gelu", "gelu_new"], default=None,
                   help="bert: GELU as transformers' gelu (Erf) or gelu_new (tanh approximation)")
    p.add_argument("--opset", type=int, default=None,
                   help="bert: ONNX opset of the export (14..20; before 17 LayerNorm is decomposed, 20 has Gelu)")
    p.add_argument("--mask", action="store_true", help="mobilebert: an attention_mask input (key padding) instead "
                                                       "of the all-ones mask inside the model")
    for flag, dest in (("--seq", "seq"), ("--seed", "seed"), ("--layers", "layers"), ("--hidden", "hidden"),
                       ("--bottleneck", "bottleneck"), ("--heads", "heads"), ("--ffn-stack", "ffn_stack"),
                       ("--intermediate", "intermediate"), ("--vocab", "vocab"), ("--embedding", "embedding")):
        p.add_argument(flag, dest=dest, type=int, default=None)

    p = add("quantize", cmd_quantize, "quantize a float transformer ONNX to QDQ (onnxruntime static, recipe)")
    p.add_argument("model", help="float ONNX file")
    p.add_argument("--calib", required=True, help=".npz with one [N, ...] array per model input (N samples)")
    p.add_argument("-o", "--output", required=True, help="the QDQ ONNX file to write")
    p.add_argument("--recipe", default="mixed", choices=RECIPES,
                   help="mixed: int16 residual stream, int8 GEMM operands; int8: every activation int8")
    p.add_argument("--calibration", default="minmax", choices=CALIBRATION_METHODS)

    for name, fn, text in (("golden", cmd_golden, "run the golden integer interpreter"),
                           ("fidelity", cmd_fidelity, "compare the integer model with onnxruntime (QDQ)")):
        p = add(name, fn, text)
        p.add_argument("model", help="ONNX file (QDQ or Deeploy integer dialect) or a zoo directory")
        p.add_argument("--target", default="cluster8-ita", help="target name (see `tinydeploy targets`)")
        p.add_argument("--inputs", help=".npz with the inputs (default: inputs.npz beside the model)"
                       + ("; arrays may carry a leading sample axis N, the outputs then do too" if name == "golden"
                          else ""))
        if name == "golden":
            p.add_argument("-o", "--output", required=True, help="output .npz (written under exactly this name)")
            p.add_argument("--all", action="store_true", help="also write every intermediate tensor")
            p.add_argument("--dequantize", action="store_true",
                           help="also write each output's real values (scale x (q - zero point)) as <name>_real")
        else:
            p.add_argument("--json", help="write the full report as JSON")

    p = add("compile", cmd_compile, "compile a model to a self-contained C project (network, kernels, weights, "
                                    "golden vectors, harness, Makefile/CMake)")
    p.add_argument("model", help="ONNX file (QDQ or Deeploy integer dialect)")
    p.add_argument("--target", default="generic", help="target name (see `tinydeploy targets`)")
    p.add_argument("-o", "--output", required=True, help="build directory to write (replaced as a whole when the "
                                                         "compile succeeds)")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty folder that is not "
                                                        "a tinydeploy build")
    p.add_argument("--inputs", help=".npz with the inputs for the golden vectors (default: inputs.npz beside "
                                    "the model, else seeded random)")
    p.add_argument("--weights", choices=["auto", "c", "incbin"], default="auto",
                   help="constants as C arrays or a binary blob (auto: C up to 2 MiB)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass as text and ONNX (custom domain "
                                                    "ai.tinydeploy, viewable in Netron)")
    p.add_argument("--stage-bytes", type=non_negative_int, metavar="N",
                   help="cluster targets with weights in L3: at most N bytes of L2 for the ring the I/O DMA stages "
                        "weights in (0: tiles read L3 directly; default: what the arena and the code leave)")

    p = add("verify", cmd_verify, "build a compiled project, run it, compare with the golden interpreter bit for "
                                  "bit (exit 1 on mismatch)")
    p.add_argument("build", help="directory written by `tinydeploy compile`")
    p.add_argument("--inputs", help=".npz with other inputs (arrays named after the model's inputs; a leading "
                                    "sample axis runs every sample); their golden outputs are computed")
    p.add_argument("--layers", action="store_true", help="compare every intermediate tensor, report the first "
                                                         "diverging layer and write mismatch.npz")
    p.add_argument("--sanitize", action="store_true", help="build with AddressSanitizer + UBSan")
    p.add_argument("--cc", default="gcc", help="host C compiler: gcc, clang (pip ziglang if no system clang), "
                                               "or a path")

    p = add("simulate", cmd_simulate, "cross-build a cluster project and run it in the cluster ISS (writes "
                                      "outputs.npz and report.json)")
    p.add_argument("build", help="directory written by `tinydeploy compile --target cluster8`")
    p.add_argument("--inputs", help=".npz with other inputs than the golden ones compiled in (arrays named after "
                                    "the model's inputs; a leading sample axis runs every sample): the same "
                                    "firmware runs them, without recompiling, and each is checked against its "
                                    "golden outputs (writes BUILD/<name>.outputs.npz and <name>.report.json)")
    p.add_argument("--cc", default=None, help="cross compiler: default pip ziglang's clang; or "
                                              "riscv64-unknown-elf-gcc")
    p.add_argument("--max-cycles", type=positive_int, default=None, help="cycle budget before the run is stopped")
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
    p = add("accel-check", cmd_accel_check, "run every stage of PyITA vector files (ITA's golden model) on the "
                                            "accelerator model or RTL; exit 0 only when every stage is exact")
    p.add_argument("vectors", nargs="+", help=".npz files written by PyITA (see shared/conformance/ita/README.md)")
    p.add_argument("--rtl", action="store_true", help="run the jobs on the Verilated RTL instead of the model")
    p = add("demo", cmd_demo, "tiny MobileBERT: zoo -> integer model -> fidelity -> C -> host run, bit-exact check")
    p.add_argument("-o", "--output", default="out/demo")
    p.add_argument("--target", default="cluster8-ita")
    return parser


def _error(message: str) -> None:
    _console().print(f"[bold red]error:[/bold red] {message}", markup=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.split()))


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure is one `error:` line and an exit code (tracebacks with -v)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    if not verbose:      # numpy/onnx warnings on odd values are noise for a user; -v shows them
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
    try:
        if getattr(args, "target", None):
            from .target import load_target

            load_target(args.target)          # an unknown target is refused before any work
        return args.func(args)
    except KeyboardInterrupt:
        _console().print("interrupted")
        return EXIT_INTERRUPTED
    except TinyDeployError as exc:
        if verbose:
            traceback.print_exc()
            if exc.details:
                print(exc.details, file=sys.stderr)
        _error(_escape(exc.one_line()))
        return EXIT_BAD_INPUT
    except MemoryError:
        if verbose:
            traceback.print_exc()
        _error(f"out of memory in tinydeploy {args.command} (the model or its arguments are too large for this "
               "machine)")
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback without -v
        if verbose:
            traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        _error(_escape(f"internal error in tinydeploy {args.command} ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''}{at}); the input may be malformed in "
                       "a way tinydeploy does not check yet; rerun with -v for the traceback and please report it"))
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
