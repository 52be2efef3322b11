"""Runs a generated project natively: builds it with the host C compiler through its own Makefile and runs the
harness, returning the packed outputs and (optionally) the per-node tensor trace."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TinyDeployError

SANITIZE_FLAGS = "-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
ZIG_SANITIZE_FLAGS = "-O1 -g -fsanitize=undefined -fsanitize-trap=undefined"


@dataclass
class HostRun:
    """What one native run produced."""

    returncode: int
    stdout: str
    stderr: str
    outputs: bytes
    trace: dict[int, bytes] = field(default_factory=dict)


def compiler_command(cc: str) -> tuple[str, bool]:
    """The make CC value for `gcc`, `clang` (system clang, else pip ziglang's clang) or an explicit path.

    Returns (command, is_zig)."""
    if cc == "clang" and shutil.which("clang") is None:
        return f"{sys.executable} -m ziglang cc", True
    if shutil.which(cc) is None and not Path(cc).is_file():
        raise TinyDeployError(f"C compiler '{cc}' not found (try --cc gcc or --cc clang)")
    return cc, False


#: records the make variables a build folder's objects were made with
BUILD_STAMP = ".tinydeploy-make"


def check_build_files(build_dir: Path, manifest: dict) -> None:
    """Every file compile wrote is still there (a missing weights.bin is named, not blamed on the linker)."""
    files, hashes = manifest.get("files", []), manifest.get("data_sha256", {})
    if not isinstance(files, list) or not isinstance(hashes, dict):
        raise TinyDeployError(f"{build_dir}/tinydeploy.json is damaged ('files' or 'data_sha256'); recompile")
    missing = [str(name) for name in files if not (build_dir / str(name)).is_file()]
    if missing:
        raise TinyDeployError(f"build folder {build_dir} lacks {', '.join(missing[:3])} (written by tinydeploy "
                              f"compile); recompile the build")
    for name, digest in hashes.items():
        path = build_dir / str(name)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise TinyDeployError(f"{path} differs from what tinydeploy compile wrote (sha256); recompile the build")


def run_make(build_dir: Path, out: str, variables: list[str], what: str) -> None:
    """Run the project's Makefile into build_dir/out with `variables` (VAR=value); failure names the first
    compiler error (the tail of the log with -v).

    Objects made with other variables (another compiler, other flags) are removed first, so a result never
    comes from a stale ELF."""
    folder, wanted = build_dir / out, "\n".join(variables) + "\n"
    stamp = folder / BUILD_STAMP
    if folder.exists() and not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(folder)
    make = ["make", "-s", "-C", str(build_dir), f"-j{os.cpu_count() or 1}", f"BUILD_DIR={out}", *variables]
    result = subprocess.run(make, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).strip().splitlines()
        first = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
        hint = ""
        if "will not fit in region 'L2'" in first and "l2_noinit" in first:
            hint = (" (the staging ring and the code do not fit L2 together: recompile with a smaller "
                    "--stage-bytes)")
        raise TinyDeployError(f"{what} failed: {first.strip()}{hint}", details="\n".join(lines[-25:]))
    stamp.write_text(wanted)


def build_host(build_dir: Path, cc: str = "gcc", sanitize: bool = False, trace: bool = False,
               extra_cflags: str = "") -> Path:
    """Build the harness with -Wall -Wextra -Werror into build_dir/host-<cc>[-san][-trace]; returns the executable."""
    command, is_zig = compiler_command(cc)
    flavour = Path(cc).name + ("-san" if sanitize else "") + ("-trace" if trace else "")
    out = f"host-{flavour}"
    flags = [extra_cflags]
    if trace:
        flags.append("-DTD_TRACE")
    variables = [f"CC={command}", f"EXTRA_CFLAGS={' '.join(f for f in flags if f)}"]
    if sanitize:
        variables.append(f"OPT={ZIG_SANITIZE_FLAGS if is_zig else SANITIZE_FLAGS}")
        variables.append(f"LDFLAGS={'' if is_zig else '-fsanitize=address,undefined'}")
    run_make(build_dir, out, variables, f"host build with {cc}")
    return build_dir / out / "network"


def run_host(executable: Path, work_dir: Path, trace: bool = False, repeat: int = 1, timeout: float = 1800,
             inputs: Path | None = None) -> HostRun:
    """Run the harness once (on the packed input buffer in `inputs`, else the golden input); reads back the packed
    outputs and the trace."""
    outputs_path = work_dir / "outputs.bin"
    trace_path = work_dir / "trace.bin"
    args = [str(executable), "--outputs", str(outputs_path), "--repeat", str(repeat)]
    if trace:
        args += ["--trace", str(trace_path)]
    if inputs is not None:
        args += ["--inputs", str(inputs)]
    outputs_path.unlink(missing_ok=True)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise TinyDeployError(f"{executable} did not finish within {timeout:.0f}s") from None
    if result.returncode not in (0, 1):
        tail = "\n".join(result.stderr.strip().splitlines()[-30:])
        first = next((line for line in tail.splitlines() if "ERROR" in line or "error" in line), "")
        raise TinyDeployError(f"{executable} crashed (exit {result.returncode}){': ' + first.strip() if first else ''}",
                              details=tail)
    outputs = outputs_path.read_bytes() if outputs_path.exists() else b""
    records = read_trace(trace_path) if trace else {}
    return HostRun(result.returncode, result.stdout, result.stderr, outputs, records)


def read_trace(path: Path) -> dict[int, bytes]:
    """Parse {int32 id, int32 nbytes, data} records (little endian)."""
    data = path.read_bytes()
    records, pos = {}, 0
    while pos + 8 <= len(data):
        tensor_id, nbytes = struct.unpack_from("<ii", data, pos)
        records[tensor_id] = data[pos + 8:pos + 8 + nbytes]
        pos += 8 + nbytes
    return records
