"""`tinydeploy report` tells the truth for every target; report and fidelity JSON are strict; labels cover no data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_cluster import compile_for
from tinydeploy import report as report_mod
from tinydeploy.report import clock_of, write_report
from tinydeploy.sim.firmware import simulate_build
from tinydeploy.target import Target, load_target


def strict_loads(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def page_text(path) -> str:
    """The HTML without the embedded PNGs (base64 could spell any word)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", path.read_text())


def simulated(tiny_zoo, tmp_path_factory, target):
    out = tmp_path_factory.mktemp(f"report_{target}")
    compile_for(tiny_zoo / "model_qdq.onnx", out, target=target)
    assert simulate_build(out).report["bit_exact"]
    return out


@pytest.fixture(scope="module")
def m4_build(tiny_zoo, tmp_path_factory):
    return simulated(tiny_zoo, tmp_path_factory, "cortex-m4")


@pytest.fixture(scope="module")
def ita_build(tiny_zoo, tmp_path_factory):
    return simulated(tiny_zoo, tmp_path_factory, "cluster8-ita")


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure write_report saves, kept for geometry checks."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_cortex_m4_report_names_only_hardware_it_has(m4_build, tmp_path):
    files = write_report(m4_build, tmp_path / "m4.html")
    page = page_text(tmp_path / "m4.html")
    assert "Cortex-M ISS (Unicorn M-class Thumb, cortex-m4 model)" in page
    assert "cluster ISS" not in page and "harts" not in page
    assert "DMA" not in page and "roofline" not in page.lower()            # no DMA on a microcontroller
    assert "accel" not in page.lower()                                     # no accelerator either
    assert "500 MHz" not in page
    clock_hz, _ = clock_of(load_target("cortex-m4"))
    if clock_hz is None:
        assert "cycles only (the target file names no clock)" in page and "MHz" not in page
    else:
        assert f"inferences/s at {clock_hz / 1e6:g} MHz" in page
    # ONNX node names beside the IR steps
    assert "<th class='name'>ONNX node</th>" in page
    assert "/inner/mobilebert/embeddings/word_embeddings/Gather" in page and ">Gather_1<" in page
    summary = strict_loads((tmp_path / "m4_summary.json").read_text())
    assert [f.name for f in files] == ["m4.html", "m4_cycles.png", "m4_memory.png", "m4_summary.json"]
    assert summary["figures"]["cycles"]["legend"] == ["core (Cortex-M4)"]
    assert set(summary["figures"]) == {"cycles", "memory"}
    assert summary["peaks_macs_per_cycle"] == {"cores": 2.0} and summary["dma_bandwidths_bytes_per_cycle"] == {}
    fc = [layer for layer in summary["layers"] if layer["op"] == "FullyConnectedS8"]
    assert fc and all(0 < layer["utilisation"] <= 1 for layer in fc)      # of the SMLAD peak: never above 100%
    assert all("dma" not in layer for layer in summary["layers"])
    assert all(layer["onnx_node"].startswith("/inner/") for layer in summary["layers"][:5])
    strict_loads((m4_build / "report.json").read_text())


def test_cluster8_ita_report_shows_cluster_dma_and_accelerator(ita_build, tmp_path):
    write_report(ita_build, tmp_path / "ita.html")
    page = page_text(tmp_path / "ita.html")
    assert "cluster ISS (Unicorn RV32IMC, 8 harts)" in page and "Cortex-M" not in page
    assert "DMA overlap" in page and "<th>DMA l2-&gt;l1 (B)</th>" in page and "<h2>Roofline</h2>" in page
    assert "accelerator utilisation" in page
    assert "1,024 MAC/cycle = 16 processing elements x 64-wide dot products" in page
    summary = strict_loads((tmp_path / "ita_summary.json").read_text())
    assert summary["figures"]["cycles"]["legend"] == ["cores (8x RV32IMC)", "accelerator (ITA 16x64)"]
    roof = summary["figures"]["roofline"]["legend"]
    assert "accelerator (ITA 16x64) peak 1,024 MAC/cycle" in roof and "cores (8x RV32IMC) peak 4 MAC/cycle" in roof
    assert "DMA L2 -> L1: 8 B/cycle" in roof and "accelerator (ITA 16x64) layers" in roof
    assert summary["peaks_macs_per_cycle"] == {"cores": 4.0, "accel": 1024.0}
    gemms = [layer for layer in summary["layers"] if layer["op"] == "ITAGemm"]
    assert gemms and all(layer["engine"] == "accel" and layer["onnx_node"] for layer in gemms)
    assert (tmp_path / "ita_roofline.png").stat().st_size > 0
    strict_loads((ita_build / "report.json").read_text())


def test_clock_and_peaks_come_from_the_target_file(m4_build, tmp_path, monkeypatch):
    assert clock_of(Target("t", "", "cmsis", "cmsis", "cmsis", {"clock": {"mhz": 168}}))[0] == 168e6
    assert clock_of(Target("t", "", "cmsis", "cmsis", "cmsis", {})) == (None, "the target file names no clock")
    m4 = load_target("cortex-m4")
    raw = {**m4.raw, "clock": {"mhz": 168}, "cluster": {**m4.raw["cluster"], "peak_macs_per_cycle_per_core": 1.5}}
    monkeypatch.setattr(report_mod, "load_target",
                        lambda name: Target(m4.name, m4.description, m4.backend, m4.requant, m4.softmax, raw))
    write_report(m4_build, tmp_path / "m4.html")
    page = page_text(tmp_path / "m4.html")
    cycles = json.loads((m4_build / "report.json").read_text())["cycles_inference"]
    assert f"inferences/s at 168 MHz<b>{168e6 / cycles:,.1f}</b>" in page and "cycles only" not in page
    summary = strict_loads((tmp_path / "m4_summary.json").read_text())
    assert summary["clock_hz"] == 168e6 and summary["peaks_macs_per_cycle"] == {"cores": 1.5}


def test_labels_do_not_cover_data(ita_build, tmp_path, figures):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    write_report(ita_build, tmp_path / "ita.html")
    assert len(figures) == 3
    for fig in figures:
        FigureCanvasAgg(fig).draw()                  # the figures were closed: give them a canvas again
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        for legend in fig.legends:          # legends sit outside every axes, inside the image
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
        for ax in fig.axes:
            assert ax.get_legend() is None
    cycles_ax = figures[0].axes[0]
    tallest = max(bar.get_height() for bar in cycles_ax.patches)
    assert cycles_ax.get_ylim()[1] >= 2 * tallest                        # headroom above the tallest bar
    l1_ax = figures[2].axes[1]
    (label,) = [t for t in l1_ax.texts if t.get_text().startswith("L1 budget")]
    budget = l1_ax.lines[-1].get_ydata()[0]
    line_y = l1_ax.transData.transform((0, budget))[1]
    box = label.get_window_extent(figures[2].canvas.get_renderer())
    assert box.y0 > line_y                                               # above its line, not on it
    assert box.y1 < l1_ax.get_window_extent().y1                         # and inside the axes
    steps = l1_ax.lines[0].get_ydata()
    assert np.max(steps) <= budget                                       # no step reaches the label


def test_fidelity_json_is_strict_and_its_text_explains_the_figures(tiny_zoo):
    from tinydeploy.frontend.fidelity import fidelity_report, format_report
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.passes.integerize import integerize

    quant = import_model(tiny_zoo / "model_qdq.onnx")
    inputs = {"input_ids": np.load(tiny_zoo / "inputs.npz")["input_ids"]}
    report = fidelity_report(tiny_zoo / "model_qdq.onnx", quant, integerize(quant, "cluster8-ita"), inputs)
    strict_loads(json.dumps(report))                                     # what cli.py writes for --json
    assert all(a["identical"] is None for a in report["end_to_end"])     # no int reference there: null, not NaN
    text = format_report(report)
    assert "agreement = share of a tensor's elements within 1 LSB" in text and "onnxruntime" in text
    logits = next(a for a in report["end_to_end"] if a["name"] == "logits")
    assert logits["elements"] == 2
    assert re.search(r"logits: cosine [0-9.]+, max \|diff\| [0-9.]+ LSB, [0-2] of 2 elements within 1 LSB", text)
    assert f"of {report['linear_ops_elements']:,} elements within 1 LSB" in text
    empty = format_report({**report, "end_to_end": [], "isolated_ops": [], "worst_ops": [],
                           "linear_ops_within_1lsb": None, "linear_ops_elements": 0})
    assert "n/a of 0 elements" in empty


def test_energy_per_inference_from_the_target_events(ita_build, m4_build, tmp_path):
    """sim/energy.py: each layer's energy is its instructions, accelerator MACs, the L1 bytes its jobs touch,
    DMA bytes (at source and destination) and leakage priced by the target's [energy] figures; the totals are
    their sum, GOp/J is 2 x MACs over it; the HTML page shows them. A target without [energy] (cortex-m4) reports
    none."""
    from tinydeploy.sim.energy import EnergyModel

    report = json.loads((ita_build / "report.json").read_text())
    model = EnergyModel.from_target("cluster8-ita")
    gemm = next(layer for layer in report["layers"] if layer["op"] == "ITAGemm" and layer["dma"])
    parts = model.layer_pj(gemm)
    moved = sum(n * (model.byte_pj[p.split("->")[0]] + model.byte_pj[p.split("->")[1]] + model.dma_byte_pj)
                for p, n in gemm["dma"].items())
    assert parts["accelerator"] == gemm["accel_macs"] * 0.118 > 0
    assert gemm["accel_l1_bytes"] > 0                                   # the operands its jobs read
    moved += gemm["accel_l1_bytes"] * model.byte_pj["l1"]
    assert parts["on-chip data movement"] + parts["off-chip memory"] == pytest.approx(moved)
    assert parts["cores"] == gemm["instructions"] * 5.5
    assert gemm["energy_nj"] == pytest.approx(sum(parts.values()) / 1e3, abs=1e-3)
    energy = report["energy"]
    total_mj = sum(layer["energy_nj"] for layer in report["layers"]) / 1e6
    rounding_mj = len(report["layers"]) * 0.0005 / 1e6           # each layer's energy_nj is rounded to 0.001 nJ
    assert energy["mj_per_inference"] == pytest.approx(total_mj, rel=1e-6, abs=rounding_mj)
    assert energy["mj_per_inference"] == pytest.approx(sum(energy["breakdown_mj"].values()))
    macs = sum(layer["macs"] for layer in report["layers"])
    assert energy["gop_per_j"] == pytest.approx(2 * macs / (energy["mj_per_inference"] * 1e-3) / 1e9)
    seconds = report["cycles_inference"] / 500e6
    assert energy["average_power_mw"] == pytest.approx(energy["mj_per_inference"] / seconds)
    write_report(ita_build, tmp_path / "e.html")
    page = page_text(tmp_path / "e.html")
    assert "energy per inference" in page and "GOp/J" in page and "pJ/accelerator MAC" in page
    assert "<th>energy (nJ)</th><th>GOp/J</th>" in page
    summary = strict_loads((tmp_path / "e_summary.json").read_text())
    assert summary["energy"]["mj_per_inference"] == energy["mj_per_inference"]
    assert [layer["energy_nj"] for layer in summary["layers"]] == [layer["energy_nj"] for layer in report["layers"]]
    assert "energy" not in json.loads((m4_build / "report.json").read_text())
