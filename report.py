"""`tinydeploy report BUILD -o report.html`: one self-contained HTML page about a compiled and simulated build.

Reads BUILD/tinydeploy.json (steps, tiling, arena plan, placement) and BUILD/report.json (`tinydeploy simulate`:
per-layer cycles, MACs, DMA bytes, accelerator busy cycles). Writes the page with the plots embedded (data URIs,
so the file can be mailed) and the same plots as PNGs beside it:
- per-layer table: op, engine, MACs, cycles, utilisation of the engine's peak, DMA bytes per memory-level pair;
- per-layer cycle bars, coloured by engine;
- roofline: achieved MAC/cycle against operational intensity (MACs per DMA byte), under the target's compute
  roofs (cores, accelerator) and bandwidth roofs (L2 and L3 streams);
- memory map: the L2 activation arena over time (each tensor's lifetime x its offset range) and the L1 bytes of
  every step's tiles.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .errors import TinyDeployError
from .target import load_target

ENGINE_COLOURS = {"cores": "#4C72B0", "accel": "#DD8452"}
#: modelled peak MAC/cycle of one core running the backend's best GEMM kernel (benchmarks: RV32IMC blocked GEMM
#: 2.58 instructions/MAC in bench_cluster.py; Cortex-M SMLAD fully-connected 1.84 in bench_cortexm.py)
CORE_MACS_PER_CYCLE = {"riscv": 1 / 2.58, "cmsis": 1 / 1.84}


def _load(build: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest_path, report_path = build / "tinydeploy.json", build / "report.json"
    if not manifest_path.is_file():
        raise TinyDeployError(f"{build} is not a compiled project (no tinydeploy.json); run tinydeploy compile")
    if not report_path.is_file():
        raise TinyDeployError(f"{build} has no report.json; run `tinydeploy simulate {build}` first")
    return json.loads(manifest_path.read_text()), json.loads(report_path.read_text())


def _peaks(target_name: str) -> dict[str, float]:
    target = load_target(target_name)
    cores = int(target.section("cluster").get("cores", 1))
    peaks = {"cores": cores * CORE_MACS_PER_CYCLE.get(target.backend, 1 / 2.58)}
    accel = target.section("accelerator")
    if accel:
        peaks["accel"] = float(int(accel.get("processing_elements", 16)) * int(accel.get("dot_width", 64)))
    return peaks


def _bandwidths(target_name: str) -> dict[str, float]:
    dma = load_target(target_name).section("dma")
    return {"L2 -> L1": float(dma.get("l2_to_l1_bytes_per_cycle", 8)),
            "L3 -> L2/L1": float(dma.get("l3_to_l2_bytes_per_cycle", 4))}


def _figure_cycles(layers: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.2), dpi=110)
    xs = list(range(len(layers)))
    colours = [ENGINE_COLOURS.get(layer["engine"], "#888888") for layer in layers]
    ax.bar(xs, [layer["cycles"] or 0 for layer in layers], color=colours, width=1.0)
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("cycles")
    ax.set_title("Cycles per layer")
    ax.set_yscale("log")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colour, label=engine) for engine, colour in ENGINE_COLOURS.items()],
              loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _figure_roofline(layers: list[dict[str, Any]], peaks: dict[str, float], bandwidths: dict[str, float],
                     path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    points = [(layer["macs"] / max(layer["bytes_dma"], 1), layer["macs"] / max(layer["cycles"] or 1, 1),
               layer["engine"]) for layer in layers if layer["macs"] and layer["cycles"]]
    intensities = np.logspace(-2, 4, 200)
    for name, bw in bandwidths.items():
        ax.plot(intensities, bw * intensities, "--", color="#777777", linewidth=1)
        ax.text(intensities[12], bw * intensities[12] * 1.3, f"{name}: {bw:g} B/cycle", fontsize=8, color="#555555")
    for engine, peak in peaks.items():
        ax.axhline(peak, color=ENGINE_COLOURS.get(engine, "#333333"), linewidth=1.5)
        label = f"{engine} peak {peak:,.0f} MAC/cycle" if peak >= 100 else f"{engine} peak {peak:.2g} MAC/cycle"
        ax.text(intensities[0] * 1.2, peak * 1.12, label, fontsize=8, color=ENGINE_COLOURS.get(engine, "#333333"))
    for engine in {p[2] for p in points}:
        mine = [p for p in points if p[2] == engine]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=14, color=ENGINE_COLOURS.get(engine, "#333333"),
                   label=f"{engine} layers", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(intensities[0], intensities[-1])
    ax.set_ylim(1e-2, max(peaks.values()) * 3)
    ax.set_xlabel("operational intensity (MACs per DMA byte)")
    ax.set_ylabel("achieved MAC/cycle")
    ax.set_title("Roofline")
    ax.grid(which="both", alpha=0.2)
    if points:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _figure_memory(manifest: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    arena = manifest["arena"]
    steps = len(manifest["steps"])
    tiling = manifest.get("tiling")
    if tiling:   # cluster: the arena in L2 above, the L1 tiles of every step below
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), dpi=110, height_ratios=[3, 1], sharex=True)
    else:
        fig, top = plt.subplots(figsize=(12, 5.5), dpi=110)
        bottom = top
    for i, buffer in enumerate(arena.get("buffers", [])):
        top.add_patch(Rectangle((buffer["first"], buffer["offset"] / 1024), buffer["last"] - buffer["first"] + 1,
                                buffer["bytes"] / 1024, facecolor=plt.cm.tab20(i % 20), edgecolor="none", alpha=0.85))
    top.set_xlim(0, max(steps, 1))
    top.set_ylim(0, max(arena["bytes"], 1) / 1024)
    top.set_ylabel("arena offset (KiB)")
    where = manifest.get("placement", {}).get("arena_region", "L2")
    top.set_title(f"Activation arena in {where}: {arena['bytes'] / 1024:.0f} KiB (lower bound "
                  f"{arena['lower_bound'] / 1024:.0f} KiB); each box is one tensor's lifetime")
    if tiling:
        by_step = {s["index"]: s["l1_bytes"] / 1024 for s in tiling["steps"]}
        xs = list(range(steps))
        bottom.step(xs, [by_step.get(i, 0) for i in xs], where="post", color="#4C72B0")
        bottom.axhline(tiling["l1_budget"] / 1024, color="#C44E52", linewidth=1)
        bottom.text(0, tiling["l1_budget"] / 1024 * 1.02, "L1 budget", fontsize=8, color="#C44E52")
        bottom.set_ylim(0, tiling["l1_budget"] / 1024 * 1.15)
        bottom.set_ylabel("L1 tiles (KiB)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(layers: list[dict[str, Any]], peaks: dict[str, float]) -> str:
    pairs = sorted({key for layer in layers for key in layer.get("dma", {})})
    head = "".join(f"<th>DMA {html.escape(p)} (B)</th>" for p in pairs)
    rows = []
    for layer in layers:
        cycles = layer["cycles"] or 0
        util = layer["macs"] / (peaks.get(layer["engine"], 1) * cycles) if cycles and layer["macs"] else None
        dma = "".join(f"<td>{layer.get('dma', {}).get(p, 0):,}</td>" for p in pairs)
        rows.append(f"<tr><td>{layer['index']}</td><td class='name'>{html.escape(layer['name'])}</td>"
                    f"<td>{html.escape(layer['op'])}</td><td>{layer['engine']}</td><td>{layer['macs']:,}</td>"
                    f"<td>{cycles:,}</td><td>{'' if util is None else f'{util:.1%}'}</td>{dma}</tr>")
    return (f"<table><thead><tr><th>#</th><th>layer</th><th>op</th><th>engine</th><th>MACs</th><th>cycles</th>"
            f"<th>utilisation</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{path.stem}' src='data:image/png;base64,{data}'>"


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{margin-bottom:4px}
.sub{color:#666;margin-bottom:18px}.kpi{display:inline-block;margin:0 18px 12px 0;padding:8px 12px;background:#f3f5f8;
border-radius:6px}.kpi b{display:block;font-size:20px}img{max-width:100%;margin:8px 0 20px}
table{border-collapse:collapse;font-size:12px}th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:right}
th{background:#f3f5f8;position:sticky;top:0}td.name{text-align:left;max-width:420px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}"""


def write_report(build: str | Path, out: str | Path) -> list[Path]:
    """Write the HTML page and its PNGs; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    build, out = Path(build), Path(out)
    manifest, report = _load(build)
    layers = report["layers"]
    peaks, bandwidths = _peaks(manifest["target"]), _bandwidths(manifest["target"])
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    pngs = {name: Path(f"{stem}_{name}.png") for name in ("cycles", "roofline", "memory")}
    has_dma = bool(load_target(manifest["target"]).section("dma"))
    if not has_dma:       # a microcontroller reads its memories directly: no DMA traffic, no bandwidth roofs
        del pngs["roofline"]
    _figure_cycles(layers, pngs["cycles"])
    if has_dma:
        _figure_roofline(layers, peaks, bandwidths, pngs["roofline"])
    _figure_memory(manifest, pngs["memory"])
    cycles = report.get("cycles_inference", report["cycles_total"])
    macs = sum(layer["macs"] for layer in layers)
    accel_macs = sum(layer["macs"] for layer in layers if layer["engine"] == "accel")
    kpis = [("cycles per inference", f"{cycles:,}"), ("inferences/s at 500 MHz", f"{500e6 / cycles:.1f}"),
            ("MACs", f"{macs:,}"), ("MAC/cycle", f"{macs / cycles:.1f}"),
            ("bit-exact", "yes" if report["bit_exact"] else "NO"),
            ("DMA overlap", f"{report.get('dma_overlap', 0):.0%}")]
    if "accel" in peaks:
        kpis.append(("accelerator utilisation", f"{accel_macs / (peaks['accel'] * cycles):.1%} end to end"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tinydeploy report</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(Path(manifest.get('model') or 'model').name)} on {html.escape(manifest['target'])}</h1>
<div class="sub">{len(layers)} layers; weights {manifest['weights']['bytes']:,} B in
{manifest.get('placement', {}).get('weights_region', '?')}; arena {manifest['arena']['bytes']:,} B in
{manifest.get('placement', {}).get('arena_region', '?')}; simulated by tinydeploy's cluster ISS
(accelerator: {html.escape(report.get('accel_engine', 'model'))})</div>
{''.join(f'<div class="kpi">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in kpis)}
<h2>Cycles per layer</h2>{_image(pngs['cycles'])}
<h2>Roofline</h2>{_image(pngs['roofline']) if 'roofline' in pngs else
    '<p>No DMA on this target (the core reads its memories directly): no roofline.</p>'}
<h2>Memory</h2>{_image(pngs['memory'])}
<h2>Layers</h2>{_table(layers, peaks)}
</body></html>
"""
    out.write_text(page)
    return [out, *pngs.values()]
