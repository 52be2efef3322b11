"""`tinydeploy report BUILD -o report.html`: one self-contained HTML page about a compiled and simulated build.

Reads BUILD/tinydeploy.json (steps, tiling, arena plan, placement) and BUILD/report.json (`tinydeploy simulate`:
per-layer cycles, MACs, DMA bytes, accelerator busy cycles). Writes the page with the plots embedded (data URIs,
so the file can be mailed), the same plots as PNGs beside it and the page's figures as strict JSON
(`X_summary.json`):
- per-layer table: IR step beside the ONNX node it comes from, op, engine, MACs, cycles, utilisation of the
  engine's peak, DMA bytes per memory-level pair (targets with DMA);
- per-layer cycle bars, coloured by engine;
- roofline (targets with DMA): achieved MAC/cycle against operational intensity (MACs per DMA byte), under the
  target's compute roofs (cores, accelerator) and DMA bandwidth roofs;
- memory map: the activation arena over time (each tensor's lifetime x its offset range) and, on tiled targets,
  the L1 bytes of every step's tiles.

Every hardware figure on the page comes from the target file (targets/*.toml): the clock (`[clock] mhz`, see
`clock_of`; without one the page gives cycles only), the core count and ISA, the accelerator's array and the
DMA bandwidths. Nothing is shown for hardware the target does not have.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TinyDeployError
from .files import strict_json
from .sim.native import CoreTiming
from .target import DmaSpec, clock_of, load_target

ENGINE_COLOURS = {"cores": "#4C72B0", "accel": "#DD8452"}
ACCEL_ENGINES = {"model": "functional and timing model (sim/accel/model.py)",
                 "rtl": "Verilated RTL, each job checked against the model"}
DMA_ROOFS = ((("l2", "l1"), "L2 -> L1"), (("l3", "l1"), "L3 -> L2/L1"))


@dataclass
class Hardware:
    """What the target file says about the hardware the build ran on (nothing invented)."""

    target: str
    backend: str
    iss: str                      # which simulator produced the cycles
    time_model: str               # what one cycle is in that simulator
    clock_hz: float | None
    clock_source: str             # "[clock] mhz = 500 in targets/x.toml", or why there is none
    cores: int
    isa: str
    peaks: dict[str, float] = field(default_factory=dict)         # engine -> MAC/cycle
    peak_sources: dict[str, str] = field(default_factory=dict)    # engine -> how the peak was derived
    bandwidths: dict[str, float] = field(default_factory=dict)    # DMA roof name -> bytes/cycle ({}: no DMA)
    has_dma: bool = False
    has_accel: bool = False
    engine_labels: dict[str, str] = field(default_factory=dict)   # engine -> legend label
    l3: str = ""                                                  # the off-chip part ([l3])


def hardware(target_name: str, report: dict[str, Any]) -> Hardware:
    target = load_target(target_name)
    cluster, accel, dma, iss = (target.section(k) for k in ("cluster", "accelerator", "dma", "iss"))
    cores = int(cluster.get("cores", 1))
    isa = str(cluster.get("isa") or iss.get("cpu") or "")
    clock_hz, clock_source = clock_of(target)
    harts = len(report.get("instructions") or []) or cores
    core = target.section("core")
    timed = CoreTiming.from_section(core).enabled       # the ISS's own test of whether [core] adds cycles
    if target.backend == "cmsis":
        iss_name = f"tinydeploy's Cortex-M ISS (Unicorn M-class Thumb, {isa or 'Cortex-M'} model)"
        time_model = (f"{core.get('model', 'the [core]')} timing from its reference manual (loads/stores, LDM/STM, "
                      "branches, MLA, divide); no flash wait states" if timed
                      else "1 instruction = 1 cycle; no pipeline or memory wait states modelled")
    else:
        iss_name = f"tinydeploy's cluster ISS (Unicorn {isa.upper() or 'RV32'}, {harts} harts)"
        pipeline = (f"{core.get('model', 'the [core]').upper()} pipeline timing (load-use, branch, jump, mulh, div; "
                    "no L1 bank conflicts, L2 load latency or I-cache)" if timed else "1 instruction = 1 cycle")
        time_model = f"per hart {pipeline} plus the stalls on barriers and DMA" + \
            (" and the accelerator" if accel else "")
    hw = Hardware(target.name, target.backend, iss_name, time_model, clock_hz, clock_source, cores, isa,
                  has_dma=bool(dma), has_accel=bool(accel))
    noun = "core" if cores == 1 else "cores"
    per_core = cluster.get("peak_macs_per_cycle_per_core")
    if isinstance(per_core, int | float) and per_core > 0:
        hw.peaks["cores"] = cores * float(per_core)
        hw.peak_sources["cores"] = f"{cores * float(per_core):g} MAC/cycle = {cores} {noun} ([cluster] cores) x " \
            f"{per_core:g} MAC/cycle ([cluster] peak_macs_per_cycle_per_core)"
    shown = isa.upper() if isa.lower().startswith("rv") else isa.replace("cortex", "Cortex").replace("-m", "-M")
    hw.engine_labels["cores"] = noun + \
        (f" ({shown})" if cores == 1 else f" ({cores}x {shown})" if shown else "")
    if accel:
        pes, width = accel.get("processing_elements"), accel.get("dot_width")
        kind = str(accel.get("kind", "")).upper()
        if isinstance(pes, int) and isinstance(width, int):
            hw.peaks["accel"] = float(pes * width)
            hw.peak_sources["accel"] = f"{pes * width:,} MAC/cycle = {pes} processing elements x {width}-wide dot " \
                "products ([accelerator])"
            hw.engine_labels["accel"] = f"accelerator ({kind} {pes}x{width})".replace("( ", "(")
        else:
            hw.engine_labels["accel"] = f"accelerator ({kind})" if kind else "accelerator"
    if dma:
        spec = DmaSpec.from_target(target)
        for pair, name in DMA_ROOFS:
            hw.bandwidths[name] = round(spec.bandwidth[pair], 3)
        if spec.l3_part:
            hw.l3 = f"L3: {spec.l3_part}" + (f", {spec.l3_burst} cycles to the first word of a burst"
                                               if spec.l3_burst else "")
    return hw


def _load(build: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest_path, report_path = build / "tinydeploy.json", build / "report.json"
    if not manifest_path.is_file():
        raise TinyDeployError(f"{build} is not a compiled project (no tinydeploy.json); run tinydeploy compile")
    if not report_path.is_file():
        raise TinyDeployError(f"{build} has no report.json; run `tinydeploy simulate {build}` first")
    return json.loads(manifest_path.read_text()), json.loads(report_path.read_text())


def _layers(manifest: dict[str, Any], report: dict[str, Any]) -> list[dict[str, Any]]:
    """report.json's layers, each with `origin` (the ONNX node) taken from the manifest's step if missing."""
    steps = manifest.get("steps", [])
    layers = []
    for layer in report["layers"]:
        step = steps[layer["index"]] if 0 <= layer.get("index", -1) < len(steps) else {}
        layers.append({**layer, "origin": layer.get("origin") or step.get("origin") or ""})
    return layers


def _engines(layers: list[dict[str, Any]], hw: Hardware) -> list[str]:
    """The engines that appear in the data, cores first; the accelerator only on a target that has one."""
    present = {layer["engine"] for layer in layers}
    return [e for e in ENGINE_COLOURS if e in present and (e != "accel" or hw.has_accel)] + \
        sorted(e for e in present if e not in ENGINE_COLOURS)


def _figure_cycles(layers: list[dict[str, Any]], hw: Hardware, path: Path) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(12, 4.2), dpi=110, layout="constrained")
    xs = list(range(len(layers)))
    colours = [ENGINE_COLOURS.get(layer["engine"], "#888888") for layer in layers]
    heights = [layer["cycles"] or 0 for layer in layers]
    ax.bar(xs, heights, color=colours, width=0.9)
    idle = sorted({layer["op"] for layer, h in zip(layers, heights, strict=True) if h <= 0})
    count = sum(1 for h in heights if h <= 0)
    ax.set_xlabel("layer (execution order)" + (f"; {count} {'/'.join(idle)} layer{'s' if count > 1 else ''} "
                                                 f"take{'' if count > 1 else 's'} 0 cycles: no bar" if idle else ""))
    ax.set_ylabel("cycles (log)")
    ax.set_title("Cycles per layer")
    ax.set_yscale("log")
    positive = [h for h in heights if h > 0]
    if positive:
        ax.set_ylim(min(positive) / 1.5, max(positive) * 2.5)    # headroom above the tallest bar
    ax.set_xlim(-1, max(len(layers), 1))
    engines = _engines(layers, hw)
    labels = [hw.engine_labels.get(e, e) for e in engines]
    # outside the axes, right of the plot: it cannot cover a bar
    fig.legend(handles=[Patch(color=ENGINE_COLOURS.get(e, "#888888"), label=label)
                        for e, label in zip(engines, labels, strict=True)], loc="outside right upper", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    plt.close(fig)
    return {"legend": labels}


def _figure_roofline(layers: list[dict[str, Any]], hw: Hardware, path: Path) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110, layout="constrained")
    measured = [layer for layer in layers if layer["macs"] and layer["cycles"]]
    points = [(layer["macs"] / layer["bytes_dma"], layer["macs"] / layer["cycles"], layer["engine"])
              for layer in measured if layer["bytes_dma"]]
    resident = len(measured) - len(points)           # MAC layers that moved no DMA bytes: no intensity
    top_peak = max(hw.peaks.values(), default=None)
    xs_data = [p[0] for p in points]
    ridges = [peak / bw for peak in hw.peaks.values() for bw in hw.bandwidths.values() if bw]
    lo = min([*xs_data, *ridges, 1.0]) / 10
    hi = max([*xs_data, *ridges, 1.0]) * 10
    intensities = np.logspace(math.log10(lo), math.log10(hi), 200)
    legend = []
    for (name, bw), style in zip(hw.bandwidths.items(), ("--", ":", "-."), strict=False):
        roof = bw * intensities if top_peak is None else np.minimum(bw * intensities, top_peak)
        label = f"DMA {name}: {bw:g} B/cycle"
        ax.plot(intensities, roof, style, color="#666666", linewidth=1.2, label=label)
        legend.append(label)
    for engine, peak in hw.peaks.items():
        label = f"{hw.engine_labels.get(engine, engine)} peak {peak:,.0f} MAC/cycle" if peak >= 100 else \
            f"{hw.engine_labels.get(engine, engine)} peak {peak:.2g} MAC/cycle"
        ax.axhline(peak, color=ENGINE_COLOURS.get(engine, "#333333"), linewidth=1.5, label=label)
        legend.append(label)
    for engine in _engines(layers, hw):
        mine = [p for p in points if p[2] == engine]
        if mine:
            label = f"{hw.engine_labels.get(engine, engine)} layers"
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=16,
                       color=ENGINE_COLOURS.get(engine, "#333333"), label=label, zorder=3)
            legend.append(label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ys = [p[1] for p in points]
    ax.set_ylim(min([*ys, *(hw.peaks.values() or [1.0])]) / 10, max([*ys, *(hw.peaks.values() or [1.0])]) * 4)
    ax.set_xlabel("operational intensity (MACs per DMA byte)")
    ax.set_ylabel("achieved MAC/cycle")
    title = "Roofline"
    if resident:
        title += f" ({resident} layer{'s' if resident > 1 else ''} with MACs moved no DMA bytes: not plotted)"
    ax.set_title(title, fontsize=11)
    ax.grid(which="both", alpha=0.2)
    if legend:
        fig.legend(loc="outside right upper", fontsize=9)           # outside the axes: covers no point
    fig.savefig(path)
    plt.close(fig)
    return {"legend": legend, "points": len(points), "not_plotted_no_dma_bytes": resident}


def _figure_memory(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    arena = manifest["arena"]
    steps = len(manifest["steps"])
    tiling = manifest.get("tiling")
    staging = manifest.get("staging")
    if tiling and staging:   # the arena, the L2 ring staged weights pass through, the L1 tiles
        fig, (top, ring, bottom) = plt.subplots(3, 1, figsize=(12, 9), dpi=110, height_ratios=[3, 2, 1],
                                                sharex=True, layout="constrained")
    elif tiling:   # cluster: the arena in L2 above, the L1 tiles of every step below
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), dpi=110, height_ratios=[3, 1], sharex=True,
                                          layout="constrained")
    else:
        fig, top = plt.subplots(figsize=(12, 5.5), dpi=110, layout="constrained")
        bottom = top
    for i, buffer in enumerate(arena.get("buffers", [])):
        top.add_patch(Rectangle((buffer["first"], buffer["offset"] / 1024), buffer["last"] - buffer["first"] + 1,
                                buffer["bytes"] / 1024, facecolor=plt.cm.tab20(i % 20), edgecolor="none", alpha=0.85))
    top.set_xlim(0, max(steps, 1))
    top.set_ylim(0, max(arena["bytes"], 1) / 1024)
    top.set_ylabel("arena offset (KiB)")
    where = manifest.get("placement", {}).get("arena_region", "L2")
    top.set_title(f"Activation arena in {where}: {arena['bytes'] / 1024:.1f} KiB (lower bound "
                  f"{arena['lower_bound'] / 1024:.1f} KiB); each box is one tensor's lifetime", fontsize=11)
    info: dict[str, Any] = {"arena_bytes": arena["bytes"], "arena_region": where}
    if tiling and staging:
        _ring_panel(ring, staging)
        info["stage_ring_bytes"] = staging["bytes"]
    if tiling:
        budget = tiling["l1_budget"] / 1024
        by_step = {s["index"]: s["l1_bytes"] / 1024 for s in tiling["steps"]}
        peak = max(by_step.values(), default=0.0)
        xs = list(range(steps + 1))
        bottom.step(xs, [by_step.get(min(i, steps - 1), 0) for i in xs], where="post", color="#4C72B0")
        bottom.axhline(budget, color="#C44E52", linewidth=1)
        # the label sits above the line at the right end, in headroom no step can reach (tiles fit the budget)
        bottom.annotate(f"L1 budget {budget:.0f} KiB (tiles peak at {peak:.1f} KiB)", xy=(1.0, budget),
                        xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8,
                        color="#C44E52")
        bottom.set_ylim(0, budget * 1.35)
        bottom.set_ylabel("L1 tiles (KiB)")
        info["l1_budget_bytes"] = tiling["l1_budget"]
        info["l1_peak_bytes"] = max((s["l1_bytes"] for s in tiling["steps"]), default=0)
    bottom.set_xlabel("step")
    fig.savefig(path)
    plt.close(fig)
    return info


def _ring_panel(axes, staging: dict[str, Any]) -> None:
    """The L2 ring weights staged from L3 pass through (passes/stage.py): each constant from the step that starts
    its copy to its last reader, at its ring offset."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    for i, b in enumerate(staging["buffers"]):
        axes.add_patch(Rectangle((b["issue"], b["offset"] / 1024), b["last"] - b["issue"] + 1, b["bytes"] / 1024,
                                 facecolor=plt.cm.tab20(i % 20), edgecolor="none", alpha=0.85))
    axes.set_ylim(0, max(staging["capacity"], 1) / 1024)
    axes.set_ylabel("L2 ring offset (KiB)")
    axes.set_title(f"Weights staged L3 -> L2 by the I/O DMA: {staging['staged_bytes'] / 1e6:.1f} MB through a "
                   f"{staging['bytes'] / 1024:.0f} KiB ring; each box: copy started .. last reader", fontsize=11)


def _utilisation(layer: dict[str, Any], hw: Hardware) -> float | None:
    peak = hw.peaks.get(layer["engine"])
    return layer["macs"] / (peak * layer["cycles"]) if peak and layer["cycles"] and layer["macs"] else None


def _staging_line(manifest: dict[str, Any]) -> str:
    staging = manifest.get("staging")
    if not staging or not staging.get("constants"):
        return ""
    return html.escape(f"; {staging['staged_bytes']:,} B of weights staged L3 -> L2 through a {staging['bytes']:,} "
                       f"B ring ({staging['transfers']:,} I/O DMA transfers)")


def _table(layers: list[dict[str, Any]], hw: Hardware) -> str:
    pairs = sorted({key for layer in layers for key in layer.get("dma", {})}) if hw.has_dma else []
    head = "".join(f"<th>DMA {html.escape(p)} (B)</th>" for p in pairs)
    energy = any("energy_nj" in layer for layer in layers)       # sim/energy.py, when the target has [energy]
    head += "<th>energy (nJ)</th><th>GOp/J</th>" if energy else ""
    rows = []
    def engine_shown(engine: str) -> str:
        return "core" if engine == "cores" and hw.cores == 1 else engine

    for layer in layers:
        cycles = layer["cycles"]
        util = _utilisation(layer, hw)
        dma = "".join(f"<td>{layer.get('dma', {}).get(p, 0):,}</td>" for p in pairs)
        if energy:
            gop = layer.get("gop_per_j")
            dma += f"<td>{layer.get('energy_nj', 0):,.1f}</td><td>{'' if not gop else f'{gop:,.0f}'}</td>"
        origin = layer.get("origin", "")
        rows.append(f"<tr><td>{layer['index']}</td><td class='name' title='{html.escape(layer['name'])}'>"
                    f"{html.escape(layer['name'])}</td><td class='name' title='{html.escape(origin)}'>"
                    f"{html.escape(origin)}</td><td class='op'>{html.escape(layer['op'])}</td>"
                    f"<td class='op'>{html.escape(engine_shown(layer['engine']))}</td><td>{layer['macs']:,}</td>"
                    f"<td>{'' if cycles is None else f'{cycles:,}'}</td>"
                    f"<td>{'' if util is None else f'{util:.1%}'}</td>{dma}</tr>")
    return (f"<table><thead><tr><th>#</th><th class='name'>IR step</th><th class='name'>ONNX node</th>"
            f"<th class='op'>op</th><th class='op'>engine</th><th>MACs</th><th>cycles</th>"
            f"<th>utilisation</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{margin-bottom:4px}
.sub{color:#555;margin-bottom:6px;max-width:1300px}.kpi{display:inline-block;vertical-align:top;margin:0 18px 12px 0;
padding:8px 12px;background:#f3f5f8;border-radius:6px}.kpi b{display:block;font-size:20px}
.kpi b.note{font-size:13px;font-weight:normal;color:#555;max-width:260px}img{max-width:100%;margin:8px 0 20px}
table{border-collapse:collapse;font-size:12px}th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:right}
th{background:#f3f5f8;position:sticky;top:0}td.name,th.name{text-align:left;max-width:380px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}td.op,th.op{text-align:left}ul.hw{margin:4px 0 16px;color:#444}"""


def _kpis(layers: list[dict[str, Any]], report: dict[str, Any], hw: Hardware) -> list[tuple[str, str, bool]]:
    """(label, value, value is a note) for the boxes at the top of the page."""
    cycles = max(report.get("cycles_inference") or report["cycles_total"], 1)
    macs = sum(layer["macs"] for layer in layers)
    kpis = [("cycles per inference", f"{cycles:,}", False)]
    if hw.clock_hz:
        mhz = hw.clock_hz / 1e6
        kpis += [(f"inferences/s at {mhz:g} MHz", f"{hw.clock_hz / cycles:,.1f}", False),
                 (f"latency at {mhz:g} MHz", f"{cycles / hw.clock_hz * 1e3:,.3f} ms", False)]
    else:
        kpis.append(("inferences/s", "cycles only (the target file names no clock)", True))
    kpis += [("MACs", f"{macs:,}", False), ("MAC/cycle", f"{macs / cycles:.2f}", False),
             ("bit-exact", "yes" if report["bit_exact"] else "NO", False)]
    energy = report.get("energy")
    if energy:                                  # sim/energy.py: the target's per-event energy figures
        kpis += [("energy per inference", f"{energy['mj_per_inference']:.3f} mJ", False),
                 ("average power", f"{energy['average_power_mw']:.1f} mW", False),
                 ("efficiency", f"{energy['gop_per_j']:,.0f} GOp/J", False)]
    if hw.has_dma:
        overlap = report.get("dma_overlap")
        kpis.append(("DMA overlap", "n/a" if overlap is None else f"{overlap:.0%}", False))
        if report.get("io_dma_busy_cycles"):
            kpis.append(("L3 link busy (I/O DMA staging weights)", f"{report['io_dma_busy_cycles'] / cycles:.0%}",
                         False))
    if hw.has_accel and "accel" in hw.peaks:
        accel_macs = sum(layer["macs"] for layer in layers if layer["engine"] == "accel")
        kpis.append(("accelerator utilisation", f"{accel_macs / (hw.peaks['accel'] * cycles):.1%} end to end",
                     False))
    elif "cores" in hw.peaks:
        core_macs = sum(layer["macs"] for layer in layers if layer["engine"] == "cores")
        kpis.append((f"{'core' if hw.cores == 1 else 'cores'} utilisation",
                     f"{core_macs / (hw.peaks['cores'] * cycles):.1%} end to end", False))
    return kpis


def write_report(build: str | Path, out: str | Path) -> list[Path]:
    """Write the HTML page, its PNGs and its figures as strict JSON; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    build, out = Path(build), Path(out)
    manifest, report = _load(build)
    layers = _layers(manifest, report)
    hw = hardware(manifest["target"], report)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    names = ("cycles", "roofline", "memory") if hw.has_dma else ("cycles", "memory")
    pngs = {name: Path(f"{stem}_{name}.png") for name in names}
    figures = {"cycles": _figure_cycles(layers, hw, pngs["cycles"])}
    if hw.has_dma:
        figures["roofline"] = _figure_roofline(layers, hw, pngs["roofline"])
    figures["memory"] = _figure_memory(manifest, pngs["memory"])
    kpis = _kpis(layers, report, hw)

    facts = [f"simulated by {hw.iss}; {hw.time_model}",
             f"clock: {f'{hw.clock_hz / 1e6:g} MHz ({hw.clock_source})' if hw.clock_hz else hw.clock_source}"]
    facts += [f"{hw.engine_labels.get(e, e)} peak: {src}" for e, src in hw.peak_sources.items()]
    if report.get("energy"):
        facts.append("energy: " + report["energy"]["model"])
    if hw.bandwidths:
        facts.append("DMA bandwidth: " + ", ".join(f"{n} {bw:g} B/cycle" for n, bw in hw.bandwidths.items()))
    if hw.l3:
        facts.append(hw.l3)
    if hw.has_accel:
        engine = report.get("accel_engine", "model")
        facts.append("accelerator jobs: " + ACCEL_ENGINES.get(engine, str(engine)))
    roofline = f"<h2>Roofline</h2>{_image(pngs['roofline'], 'roofline: ' + '; '.join(figures['roofline']['legend']))}" \
        if "roofline" in pngs else ""
    placement = manifest.get("placement", {})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tinydeploy report</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(Path(manifest.get('model') or 'model').name)} on {html.escape(manifest['target'])}</h1>
<div class="sub">{len(layers)} layers; weights {manifest['weights']['bytes']:,} B in
{html.escape(str(placement.get('weights_region', '?')))}; arena {manifest['arena']['bytes']:,} B in
{html.escape(str(placement.get('arena_region', '?')))}{_staging_line(manifest)}</div>
<ul class="hw">{''.join(f'<li>{html.escape(f)}</li>' for f in facts)}</ul>
{''.join(f'<div class="kpi">{html.escape(k)}<b{" class=note" if note else ""}>{html.escape(v)}</b></div>'
         for k, v, note in kpis)}
<h2>Cycles per layer</h2>{_image(pngs['cycles'], 'cycles per layer; legend: ' + ', '.join(figures['cycles']['legend']))}
{roofline}
<h2>Memory</h2>{_image(pngs['memory'], 'memory map')}
<h2>Layers</h2>{_table(layers, hw)}
</body></html>
"""
    out.write_text(page)
    summary = {
        "target": hw.target, "backend": hw.backend, "iss": hw.iss, "time_model": hw.time_model,
        "clock_hz": hw.clock_hz, "clock_source": hw.clock_source, "peaks_macs_per_cycle": hw.peaks,
        "peak_sources": hw.peak_sources, "dma_bandwidths_bytes_per_cycle": hw.bandwidths,
        "kpis": {k: v for k, v, _ in kpis}, "figures": figures,
        "layers": [{"index": layer["index"], "name": layer["name"], "onnx_node": layer["origin"], "op": layer["op"],
                    "engine": layer["engine"], "macs": layer["macs"], "cycles": layer["cycles"],
                    "utilisation": _utilisation(layer, hw),
                    **({"dma": layer.get("dma", {})} if hw.has_dma else {}),
                    **({"energy_nj": layer["energy_nj"], "gop_per_j": layer.get("gop_per_j")}
                       if "energy_nj" in layer else {})} for layer in layers],
        **({"energy": report["energy"]} if report.get("energy") else {}),
    }
    json_path = Path(f"{stem}_summary.json")      # not {stem}.json: -o BUILD/report.html must keep report.json
    json_path.write_text(strict_json(summary))
    return [out, *pngs.values(), json_path]
