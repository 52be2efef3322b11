"""Benchmark: the accelerator RTL (sim/accel/rtl/ita_tile.v) through Yosys — is it plausible hardware?

Runs Yosys's word-level synthesis (proc, flatten, opt, wreduce, alumacc, memory inference; no technology mapping)
and prints, per stage of the datapath (loader, array, epilogue, softmax, softmax tail, control, buffers):
word-level cells, multipliers, and the longest combinational path ending in that stage, counted in word-level
cells with the multipliers on it. Then every memory Yosys infers, with its read and write ports: the operand
buffers must come out as macros with one synchronous read port and one write port each.

Word-level depth is a proxy for timing (a 32x32 multiplier and an 8-bit mux each count one), not a static timing
analysis. The default configuration is reduced (4 PEs x 8 products, 512 B / 2 KiB / 512 B buffers, 64 columns) so
that Yosys finishes in minutes; `--full` synthesizes the 16 x 64 array with 8 / 64 / 8 KiB buffers (much longer).

usage: python benchmarks/synth_accel.py [--full] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "sim" / "accel" / "rtl" / "ita_tile.v"
REDUCED = {"PE": 4, "W": 8, "A_BYTES": 512, "B_BYTES": 2048, "Y_BYTES": 1024, "N_MAX": 32}
FULL = {"PE": 16, "W": 64, "A_BYTES": 8192, "B_BYTES": 65536, "Y_BYTES": 8192, "N_MAX": 512}
#: comment lines of ita_tile.v that open a stage (the first matching text on a line wins; later lines inherit it)
MARKERS = (("---- operand loader", "loader"), ("the LUT and the stage table are registers", "loader"),
           ("---- control state", "control"), ("---- operand macros", "array"), ("---- dot-product array", "array"),
           ("the per-column operands of a group", "epilogue"), ("---- epilogue pipeline", "epilogue"),
           ("---- streaming softmax", "softmax"), ("---- softmax tail", "softmax tail"),
           ("// softmax tail", "softmax tail"), ("the group leaving the epilogue pipeline", "softmax / outputs"),
           ("the array: multiply the chunk", "array"), ("the loader and the array's control", "control"),
           ("function [7:0] sm_out", "softmax tail"), ("module ita_banked", "buffers"))
SEQUENTIAL = ("dff", "$mem", "$dlatch", "$sr")
#: cells that multiply (alumacc turns $mul into $macc: a multiply-accumulate of one or more products)
MULTIPLIERS = ("$mul", "$macc")


def stage_of_lines(source: Path) -> list[str]:
    """The stage each line of the RTL belongs to (index = line number - 1)."""
    stages, current = [], "ports"
    for line in source.read_text().splitlines():
        for text, name in MARKERS:
            if text in line:
                current = name
                break
        stages.append(current)
    return stages


def with_defaults(parameters: dict[str, int], copy: Path) -> Path:
    """A copy of the RTL whose parameter defaults are `parameters` (Yosys 0.23's -chparam route trips an assertion
    on the parameterised buffer instances, and elaborating the full defaults first takes long)."""
    text = SOURCE.read_text()
    for name, value in parameters.items():
        text, count = re.subn(rf"(parameter {name} = )\d+", rf"\g<1>{value}", text, count=1)
        if not count:
            raise SystemExit(f"parameter {name} not found in {SOURCE}")
    copy.write_text(text)
    return copy


def run_yosys(parameters: dict[str, int], out_json: Path, log: Path) -> float:
    source = with_defaults(parameters, out_json.with_name(SOURCE.name))
    script = (f"read_verilog -sv {source}; hierarchy -top ita_tile; "
              f"synth -flatten -top ita_tile -run begin:fine; opt_clean -purge; stat; write_json {out_json}")
    t0 = time.perf_counter()
    subprocess.run(["yosys", "-q", "-l", str(log), "-p", script], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def line_of(cell: dict) -> int | None:
    """The first source line of a cell (Yosys's src attribute `file:line.col-line.col`, possibly several)."""
    src = cell.get("attributes", {}).get("src", "")
    for part in src.split("|"):
        if "ita_tile.v:" in part:
            return int(part.split("ita_tile.v:")[1].split(".")[0])
    return None


def analyse(netlist: dict, stages_by_line: list[str]) -> tuple[dict, list[dict]]:
    """Per stage: cells, multipliers, longest combinational path (cells, multipliers on it); and the memories."""
    module = netlist["modules"]["ita_tile"]
    cells = module["cells"]
    driver: dict[int, str] = {}
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) == "output":
                for bit in bits:
                    if isinstance(bit, int):
                        driver[bit] = name

    def sequential(cell: dict) -> bool:
        return any(token in cell["type"] for token in SEQUENTIAL)

    depth: dict[str, tuple[int, int]] = {}

    def visit(name: str) -> tuple[int, int]:
        """(cells, multipliers) on the longest combinational path ending at cell `name` (inclusive)."""
        stack = [(name, False)]
        while stack:
            current, expanded = stack.pop()
            if current in depth:
                continue
            cell = cells[current]
            inputs = {driver[b] for port, bits in cell["connections"].items()
                      if cell.get("port_directions", {}).get(port) == "input"
                      for b in bits if isinstance(b, int) and b in driver}
            inputs = [c for c in inputs if not sequential(cells[c])]
            if not expanded:
                stack.append((current, True))
                stack.extend((c, False) for c in inputs if c not in depth)
                continue
            best = max((depth[c] for c in inputs), default=(0, 0))
            depth[current] = (best[0] + 1, best[1] + (cell["type"] in MULTIPLIERS))
        return depth[name]

    report: dict[str, dict] = defaultdict(lambda: {"cells": 0, "multipliers": 0, "path_cells": 0,
                                                   "path_multipliers": 0})
    memories = []
    for name, cell in cells.items():
        line = line_of(cell)
        stage = stages_by_line[line - 1] if line else "other"
        entry = report[stage]
        entry["cells"] += 1
        entry["multipliers"] += cell["type"] in MULTIPLIERS
        if cell["type"].startswith("$mem"):
            p = cell["parameters"]
            memories.append({"name": name, "stage": stage, "words": int(p["SIZE"], 2), "width": int(p["WIDTH"], 2),
                             "read_ports": int(p["RD_PORTS"], 2), "write_ports": int(p["WR_PORTS"], 2),
                             "sync_reads": bin(int(p["RD_CLK_ENABLE"], 2)).count("1")})
        if sequential(cell):
            continue
        cells_on_path, muls_on_path = visit(name)
        if cells_on_path > entry["path_cells"]:
            entry.update(path_cells=cells_on_path, path_multipliers=muls_on_path)
    return dict(report), memories


def group_macros(memories: list[dict]) -> dict[str, dict]:
    """Yosys memories grouped by macro (ita_banked writes each macro as 128 byte-lane memories, `...lane[j].even`);
    ports per lane as `xR (y sync) zW` — an SRAM macro is 1R (1 sync) 1W."""
    macros: dict[str, dict] = {}
    for mem in memories:
        name = re.sub(r"\.lane\[\d+\]\.(even|odd)$", r".\1", mem["name"])
        ports = f"{mem['read_ports']}R ({mem['sync_reads']} sync) {mem['write_ports']}W"
        macro = macros.setdefault(name, {"lanes": 0, "words": mem["words"], "width": mem["width"], "ports": set(),
                                         "stage": mem["stage"]})
        macro["lanes"] += 1
        macro["ports"].add(ports)
    for macro in macros.values():
        macro["ports"] = ", ".join(sorted(macro["ports"]))
    return macros


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full 16 x 64 configuration (slow)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if shutil.which("yosys") is None:
        print("yosys is not installed (apt-get install -y yosys)", file=sys.stderr)
        return 2
    parameters = FULL if args.full else REDUCED
    with tempfile.TemporaryDirectory() as tmp:
        netlist_path = Path(tmp) / "ita_tile.json"
        seconds = run_yosys(parameters, netlist_path, Path(tmp) / "yosys.log")
        netlist = json.loads(netlist_path.read_text())
    version = subprocess.run(["yosys", "-V"], capture_output=True, text=True).stdout.strip()
    report, memories = analyse(netlist, stage_of_lines(SOURCE))
    print(f"{version}: ita_tile.v with {parameters}, word-level synthesis in {seconds:.0f} s")
    print(f"{'stage':<20}{'cells':>8}{'multipliers':>13}{'longest path: cells':>22}{'multipliers on it':>19}")
    for stage, entry in sorted(report.items(), key=lambda item: -item[1]["cells"]):
        print(f"{stage:<20}{entry['cells']:>8,}{entry['multipliers']:>13,}{entry['path_cells']:>22,}"
              f"{entry['path_multipliers']:>19,}")
    macros = group_macros(memories)
    print(f"memories: {len(memories)} Yosys memories, grouped into {len(macros)} macros (a macro's 128 byte lanes "
          f"share its address):")
    for name, macro in sorted(macros.items()):
        print(f"  {name:<34} {macro['lanes']:>4} lanes x {macro['words']:>4} rows x {macro['width']} bits; ports per "
              f"lane {macro['ports']}  [{macro['stage']}]")
    if args.json:
        args.json.write_text(json.dumps({"parameters": parameters, "yosys": version, "seconds": seconds,
                                         "stages": report, "macros": macros}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
