"""The cluster instruction-set simulator: N RV32IMC harts on Unicorn over one shared memory.

Each hart is its own Unicorn engine; all engines map the same host buffers for L1, L2, L3 and the event page,
so a store by one hart is seen by every other. Harts run round robin in slices of about `slice_instructions`
instructions, cut at block boundaries by a native block hook (sim/native) that also counts every hart's
retired instructions exactly; every run is deterministic. Time: each hart has its own clock, one instruction =
one cycle plus the cycles it stalls. Synchronisation blocks instead of spinning: a hart arriving at the
barrier stops until every core has arrived (all leave at the latest arrival + `barrier_cycles`), and a hart
waiting for a DMA transfer stalls until its completion time, so cycle counts do not depend on slice length.

Devices (addresses and register offsets from the target file, [mmio] and [event]):
- exit / putchar / hart id / cycle counter;
- a hardware barrier over all cores: a hart writes `barrier_arrive` (and then re-checks
  `event.barrier_generation`, which the ISS increments once every core has arrived);
- a DMA engine (1-D or 2-D copies between any mapped memories): one transfer at a time, each costs the
  setup latency, a burst cost per row, plus bytes / bandwidth of the slower level; the copy itself
  happens when the transfer completes, so firmware that reads a destination before waiting gets stale
  data, as on silicon.
  `dma_wait` (write a transfer id) stalls the hart until that transfer is done; completion is also published
  in `event.dma_done`. Stalled cycles count as exposed DMA time (the report's DMA overlap);
- an I/O DMA engine, when the target maps its registers (`io_dma_*`): the SoC's L3 <-> L2 engine (PULP's uDMA
  in front of the HyperBus), 1-D copies with a queue and ids of its own (`io_dma_wait`, `event.io_dma_done`),
  so weights stream from L3 into L2 while the cluster DMA moves tiles. The L3 link is one: a transfer that
  touches L3, on either engine, starts only when the previous one has left it;
- per-layer stamps (`layer_begin`/`layer_end`): cycles and DMA bytes per layer.

Faults stop the run with the hart id, PC, symbol and cause: bad address, illegal instruction, a barrier
nobody can complete (deadlock), no exit within the cycle budget.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TinyDeployError
from ..target import LEVELS, AccelSpec, DmaSpec, Target, load_target
from .accel.model import (
    JOB_REGISTERS,
    MODE_KEEP_B,
    MODE_TRANS_B,
    Job,
    cycles_of,
    l1_bytes,
    load_beats,
    operand_rows,
    operand_spans,
    pitch,
    row_bytes,
    run_job,
    y_bytes,
)
from .interrupt import raise_if_interrupted
from .native import NO_BLOCK, CoreTiming, HartCounter, attach_counter


class GuestFault(TinyDeployError):
    """The simulated firmware did something the hardware cannot do."""

    def __init__(self, cause: str, hart: int, pc: int, symbol: str) -> None:
        super().__init__(f"hart {hart} at pc 0x{pc:08x} ({symbol}): {cause}")
        self.cause, self.hart, self.pc, self.symbol = cause, hart, pc, symbol


@dataclass(frozen=True)
class ClusterSpec:
    """Everything the ISS needs from the target file."""

    cores: int
    regions: dict[str, tuple[int, int]]          # name -> (base, bytes)
    mmio_base: int
    mmio_size: int
    registers: dict[str, int]                     # register name -> offset
    event_base: int
    event_size: int
    events: dict[str, int]
    dma: DmaSpec                                  # the DMA engine and memory levels (incl. the L3 part)
    barrier_cycles: int
    slice_instructions: int
    max_cycles: int
    accel: AccelSpec | None = None
    timing: CoreTiming | None = None              # the core's pipeline ([core]); None: one instruction per cycle

    @property
    def has_accel(self) -> bool:
        return self.accel is not None and "accel_start" in self.registers

    @classmethod
    def from_target(cls, target: Target | str) -> ClusterSpec:
        target = load_target(target)
        mem, mmio, event = (target.section(k) for k in ("memory", "mmio", "event"))
        if not mmio or not event:
            raise TinyDeployError(f"target '{target.name}' has no [mmio]/[event] map; it is not a cluster target")
        iss = target.section("iss")
        registers = {k: v for k, v in mmio.items() if k not in ("base", "size")}
        events = {k: v for k, v in event.items() if k not in ("base", "size")}
        cluster = target.section("cluster")
        return cls(int(cluster["cores"]),
                   {lvl: (mem[f"{lvl}_base"], mem[f"{lvl}_bytes"]) for lvl in LEVELS},
                   mmio["base"], mmio["size"], registers, event["base"], event["size"], events,
                   DmaSpec.from_target(target), int(cluster.get("barrier_cycles", 8)),
                   int(iss.get("slice_instructions", 100_000)),
                   int(iss.get("max_cycles", 20_000_000_000)),
                   AccelSpec.from_section(target.section("accelerator")) if target.section("accelerator") else None,
                   CoreTiming.from_section(target.section("core")))


@dataclass
class DmaTransfer:
    id: int
    src: int
    dst: int
    row_bytes: int
    rows: int
    src_stride: int
    dst_stride: int
    done_at: int
    layer: int


@dataclass
class LayerStamp:
    index: int
    begin: int
    end: int = -1
    dma_bytes: dict[str, int] = field(default_factory=dict)
    dma_busy: int = 0                 # cycles the DMA engine worked for this layer
    io_busy: int = 0                  # cycles the I/O DMA worked on transfers started in this layer
    dma_stall: int = 0                # cycles hart 0 waited for DMA in this layer (exposed DMA time)
    accel_busy: int = 0               # cycles the accelerator worked for this layer
    accel_macs: int = 0
    accel_l1_bytes: int = 0           # L1 bytes the accelerator's jobs read and wrote (operands, tables, outputs)
    instructions: int = 0             # retired by all harts between the stamps


@dataclass
class SimResult:
    exit_code: int
    cycles: int
    instructions: list[int]
    console: str
    layers: list[LayerStamp]
    dma_busy_cycles: int
    dma_stall_cycles: list[int]
    accel_busy_cycles: int
    guest_instructions: int
    io_dma_busy_cycles: int = 0


@dataclass
class _Hart:
    id: int
    uc: Any
    pc: int
    counter: HartCounter
    running: bool = True
    waiting: bool = False            # stopped at the barrier
    stall: int = 0                   # cycles spent waiting (barrier, DMA)
    dma_stall: int = 0               # of which waiting for DMA
    arrival: int = 0                 # clock when it arrived at the barrier
    mmio_stop: bool = False          # the slice ended in an MMIO callback (at the store)

    @property
    def clock(self) -> int:
        return self.counter.cycles + self.stall

    @property
    def instructions(self) -> int:
        return self.counter.instructions


class Symbols:
    """Address -> function name from the ELF symbol table."""

    def __init__(self, elf_path: Path) -> None:
        from elftools.elf.elffile import ELFFile

        entries = []
        self.by_name: dict[str, int] = {}
        with open(elf_path, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            for sym in symtab.iter_symbols() if symtab else []:
                if not sym.name or not sym["st_value"]:
                    continue
                self.by_name[sym.name] = sym["st_value"]
                if sym["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE"):
                    entries.append((sym["st_value"], max(sym["st_size"], 1), sym.name))
        entries.sort()
        self.addresses = [e[0] for e in entries]
        self.entries = entries

    def lookup(self, pc: int) -> str:
        i = bisect.bisect_right(self.addresses, pc) - 1
        if i < 0:
            return "?"
        addr, _, name = self.entries[i]
        return f"{name}+0x{pc - addr:x}"


class ClusterISS:
    """Load an ELF into the cluster and run it to the exit of hart 0."""

    def __init__(self, spec: ClusterSpec, elf_path: str | Path, *, slice_instructions: int | None = None,
                 accel: str = "model") -> None:
        from unicorn import UC_ARCH_RISCV, UC_MODE_RISCV32

        self.spec = spec
        self.elf_path = Path(elf_path)
        self.symbols = Symbols(self.elf_path)
        self.quantum = slice_instructions or spec.slice_instructions
        self._buffers: dict[str, tuple[int, int, mmap.mmap, int]] = {}
        for name, (base, size) in {**spec.regions, "event": (spec.event_base, spec.event_size)}.items():
            buf = mmap.mmap(-1, size)
            self._buffers[name] = (base, size, buf, ctypes.addressof(ctypes.c_char.from_buffer(buf)))
        entry = self._load_elf()
        from unicorn import Uc

        code = [(base, size, ptr) for name, (base, size, _, ptr) in self._buffers.items() if name in LEVELS]
        self.harts: list[_Hart] = []
        for hart_id in range(spec.cores):
            uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV32)
            self._map(uc, hart_id)
            self.harts.append(_Hart(hart_id, uc, entry, attach_counter(uc, code, self.quantum,
                                                                                 timing=spec.timing)))
        self.time = 0
        self.finished = False
        self.exit_code = 0
        self.console: list[str] = []
        self.barrier_arrived: set[int] = set()
        self.barrier_since = 0
        self.dma_queue: list[DmaTransfer] = []
        self.dma_regs = {"dma_src": 0, "dma_dst": 0, "dma_bytes": 0, "dma_rows": 1, "dma_src_stride": 0,
                         "dma_dst_stride": 0}
        self.dma_next_id = 1
        self.dma_done_at: dict[int, int] = {}
        self.dma_free_at = 0
        self.dma_busy = 0
        self.l3_free_at = 0                  # the L3 link: one transfer at a time, from either engine
        self.io_regs = {"io_dma_src": 0, "io_dma_dst": 0, "io_dma_bytes": 0}
        self.io_queue: list[DmaTransfer] = []
        self.io_next_id = 1
        self.io_done_at: dict[int, int] = {}
        self.io_free_at = 0
        self.io_busy = 0
        #: recent DMA transfers as (start, end, bytes per cycle on L1's side): the accelerator's port shares L1's
        #: banks with them (_port_contention)
        self.dma_l1_traffic: deque[tuple[int, int, float]] = deque(maxlen=64)
        self.accel_port_stall = 0
        self._kept_operands: tuple | None = None
        self.layers: list[LayerStamp] = []
        self.open_layer: LayerStamp | None = None
        self._bad_access: tuple[int, int] | None = None
        self._pending_fault: GuestFault | None = None
        self.trace_regs = {"trace_ptr": 0, "trace_bytes": 0}
        self.trace: dict[int, bytes] = {}
        self._register_names = {v: k for k, v in spec.registers.items()}
        self.accel_regs = dict.fromkeys(JOB_REGISTERS, 0)
        self.accel_queue: list[Job] = []
        self.accel_next_id = 1
        self.accel_free_at = 0
        self.accel_busy = 0
        self.accel_done_at: dict[int, int] = {}
        if accel not in ("model", "rtl"):
            raise TinyDeployError(f"--accel must be model or rtl (got '{accel}')")
        self.accel_engine = accel
        self._rtl = None
        self.accel_jobs_checked = 0

    # -- memory --------------------------------------------------------------------------------------------
    def _map(self, uc, hart_id: int) -> None:
        from unicorn import UC_HOOK_MEM_INVALID, UC_PROT_ALL
        from unicorn.riscv_const import UC_RISCV_REG_A0

        for base, size, _, ptr in self._buffers.values():
            uc.mem_map_ptr(base, size, UC_PROT_ALL, ptr)
        uc.mmio_map(self.spec.mmio_base, self.spec.mmio_size, self._mmio_read, hart_id, self._mmio_write, hart_id)
        uc.hook_add(UC_HOOK_MEM_INVALID, self._invalid_access)
        uc.reg_write(UC_RISCV_REG_A0, hart_id)

    def _stop(self, hart: _Hart) -> None:
        """End this hart's slice at the MMIO store being executed (it blocks or exits).

        Unicorn stops *at* the store (its pc is not advanced) after the callback ran; _run_slice resumes after
        it and un-counts the rest of the block, which will be counted again when it runs."""
        hart.counter.limit = 0
        hart.mmio_stop = True
        hart.uc.emu_stop()

    def _invalid_access(self, uc, access, address, size, value, user_data) -> bool:
        self._bad_access = (address, size)
        return False

    def region_of(self, address: int, size: int = 1) -> tuple[str, memoryview, int] | None:
        for name, (base, rsize, buf, _) in self._buffers.items():
            if base <= address and address + size <= base + rsize:
                return name, memoryview(buf), address - base
        return None

    def write(self, address: int, data: bytes) -> None:
        found = self.region_of(address, len(data))
        if found is None:
            raise TinyDeployError(f"write of {len(data)} bytes to unmapped 0x{address:08x}")
        _, view, offset = found
        view[offset:offset + len(data)] = data

    def read(self, address: int, size: int) -> bytes:
        found = self.region_of(address, size)
        if found is None:
            raise TinyDeployError(f"read of {size} bytes from unmapped 0x{address:08x}")
        _, view, offset = found
        return bytes(view[offset:offset + size])

    def _load_elf(self) -> int:
        from elftools.elf.elffile import ELFFile

        with open(self.elf_path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_RISCV" or elf.elfclass != 32:
                raise TinyDeployError(f"{self.elf_path} is not an RV32 ELF")
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                    continue
                data = seg.data()
                if self.region_of(seg["p_paddr"], seg["p_memsz"]) is None:
                    raise TinyDeployError(f"ELF segment at 0x{seg['p_paddr']:08x} ({seg['p_memsz']} B) does not fit "
                                          f"the target's memories")
                self.write(seg["p_paddr"], data + bytes(seg["p_memsz"] - len(data)))
            return elf.header["e_entry"]

    def _event_write(self, name: str, value: int) -> None:
        self.write(self.spec.event_base + self.spec.events[name], (value & 0xFFFFFFFF).to_bytes(4, "little"))

    # -- MMIO ---------------------------------------------------------------------------------------------
    def _mmio_read(self, uc, offset: int, size: int, hart_id: int) -> int:
        name = self._register_names.get(offset)
        if name == "cycles":
            return self.harts[hart_id].clock & 0xFFFFFFFF
        if name == "hart_id":
            return hart_id
        if name == "num_cores":
            return self.spec.cores
        if name == "dma_start":
            return (self.dma_next_id - 1) & 0xFFFFFFFF
        if name == "io_dma_start":
            return (self.io_next_id - 1) & 0xFFFFFFFF
        if name == "accel_start":
            return (self.accel_next_id - 1) & 0xFFFFFFFF
        return 0

    def _mmio_write(self, uc, offset: int, size: int, value: int, hart_id: int) -> None:
        name = self._register_names.get(offset)
        if name == "exit":
            self._exit(uc, hart_id, value)
        elif name == "putchar":
            self.console.append(chr(value & 0xFF))
        elif name == "barrier_arrive":
            self._barrier_arrive(hart_id)
        elif name in self.dma_regs:
            self.dma_regs[name] = value
        elif name == "dma_start":
            self._dma_start(hart_id)
        elif name == "dma_wait":
            self._dma_wait(hart_id, value)
        elif name in self.io_regs:
            self.io_regs[name] = value
        elif name == "io_dma_start":
            self._io_dma_start(hart_id)
        elif name == "io_dma_wait":
            self._io_dma_wait(hart_id, value)
        elif name == "accel_start":
            self._accel_start(hart_id)
        elif name == "accel_wait":
            self._accel_wait(hart_id, value)
        elif name is not None and name.startswith("accel_"):
            self.accel_regs[name[len("accel_"):]] = value
        elif name in ("trace_ptr", "trace_bytes"):
            self.trace_regs[name] = value
        elif name == "trace_id":
            self.trace[value] = self.read(self.trace_regs["trace_ptr"], self.trace_regs["trace_bytes"])
        elif name == "layer_begin":
            self.open_layer = LayerStamp(value, self.harts[hart_id].clock)
            self.open_layer.instructions = -self._all_instructions()
            self.layers.append(self.open_layer)
        elif name == "layer_end" and self.open_layer is not None:
            self.open_layer.end = self.harts[hart_id].clock
            self.open_layer.instructions += self._all_instructions()
            self.open_layer = None

    def _all_instructions(self) -> int:
        """Instructions retired by every hart (exact at layer stamps: the other harts wait at a barrier)."""
        return sum(h.instructions for h in self.harts)

    def _exit(self, uc, hart_id: int, code: int) -> None:
        hart = self.harts[hart_id]
        hart.running = False
        if hart_id == 0:
            self.finished = True
            self.exit_code = code - (1 << 32) if code & 0x80000000 else code
        self._stop(hart)

    def _barrier_arrive(self, hart_id: int) -> None:
        """Stop the arriving hart; when the last core arrives, every hart leaves at the latest arrival."""
        hart = self.harts[hart_id]
        hart.arrival = hart.clock
        if not self.barrier_arrived:
            self.barrier_since = hart.arrival
        self.barrier_arrived.add(hart_id)
        if len(self.barrier_arrived) < self.spec.cores:  # the team is every core, as on the cluster
            hart.waiting = True
            self._stop(hart)
            return
        release = max(self.harts[i].arrival for i in self.barrier_arrived) + self.spec.barrier_cycles
        for i in self.barrier_arrived:
            member = self.harts[i]
            member.stall += release - member.clock
            member.waiting = False
        self.barrier_arrived.clear()
        generation = int.from_bytes(self.read(self.spec.event_base + self.spec.events["barrier_generation"], 4),
                                    "little")
        self._event_write("barrier_generation", generation + 1)

    def _dma_start(self, hart_id: int) -> None:
        r = self.dma_regs
        rows = max(r["dma_rows"], 1)
        span_src = (rows - 1) * r["dma_src_stride"] + r["dma_bytes"]
        span_dst = (rows - 1) * r["dma_dst_stride"] + r["dma_bytes"]
        src, dst = self.region_of(r["dma_src"], span_src), self.region_of(r["dma_dst"], span_dst)
        if src is None or dst is None or src[0] == "event" or dst[0] == "event":
            bad = r["dma_src"] if src is None else r["dma_dst"]
            self._callback_fault(self.harts[hart_id], f"DMA transfer touches unmapped memory at 0x{bad:08x} "
                                                      f"({rows} x {r['dma_bytes']} B)")
            return
        total = rows * r["dma_bytes"]
        duration = self.spec.dma.cycles(src[0], dst[0], total, rows)
        start = max(self.harts[hart_id].clock, self.dma_free_at)
        if "l3" in (src[0], dst[0]):
            start = max(start, self.l3_free_at)
            self.l3_free_at = start + duration
        self.dma_free_at = start + duration
        self.dma_busy += duration
        self.dma_done_at[self.dma_next_id] = self.dma_free_at
        if "l1" in (src[0], dst[0]) and duration:
            self.dma_l1_traffic.append((start, self.dma_free_at, total / duration))
        transfer = DmaTransfer(self.dma_next_id, r["dma_src"], r["dma_dst"], r["dma_bytes"], rows,
                               r["dma_src_stride"], r["dma_dst_stride"], self.dma_free_at,
                               self.open_layer.index if self.open_layer else -1)
        self.dma_next_id += 1
        self.dma_queue.append(transfer)
        self._count_transfer(src[0], dst[0], total)
        if self.open_layer is not None:
            self.open_layer.dma_busy += duration

    def _dma_wait(self, hart_id: int, transfer: int) -> None:
        """Stall the hart until `transfer` has completed (transfers complete in order)."""
        self._wait_transfer(hart_id, transfer, "DMA", self.dma_next_id, self.dma_done_at, self._complete_dma)

    def _wait_transfer(self, hart_id: int, transfer: int, engine: str, next_id: int, done_at: dict[int, int],
                       complete) -> None:
        """Stall the hart until `transfer` of `engine` is done (`complete` performs the copies due by then); the
        stall counts as exposed DMA time."""
        hart = self.harts[hart_id]
        if not 0 < transfer < next_id:
            self._callback_fault(hart, f"waits for {engine} transfer {transfer}, but only {next_id - 1} were started")
            return
        when = done_at[transfer]
        complete(when)
        if when > hart.clock:
            waited = when - hart.clock
            hart.stall += waited
            hart.dma_stall += waited
            if self.open_layer is not None and hart_id == 0:
                self.open_layer.dma_stall += waited

    def _count_transfer(self, src: str, dst: str, nbytes: int) -> None:
        """Account `nbytes` moved src -> dst (either engine) to the open layer."""
        if self.open_layer is not None:
            key = f"{src}->{dst}"
            self.open_layer.dma_bytes[key] = self.open_layer.dma_bytes.get(key, 0) + nbytes

    def _io_dma_start(self, hart_id: int) -> None:
        """Queue a 1-D L3 <-> L2 copy on the I/O DMA: it starts when the engine and the L3 link are free."""
        r = self.io_regs
        nbytes = r["io_dma_bytes"]
        src, dst = self.region_of(r["io_dma_src"], nbytes), self.region_of(r["io_dma_dst"], nbytes)
        if src is None or dst is None or {src[0], dst[0]} != {"l2", "l3"}:
            self._callback_fault(self.harts[hart_id], f"the I/O DMA moves L3 <-> L2 only: 0x{r['io_dma_src']:08x} "
                                                      f"-> 0x{r['io_dma_dst']:08x} ({nbytes} B)")
            return
        duration = self.spec.dma.cycles(src[0], dst[0], nbytes, 1)
        start = max(self.harts[hart_id].clock, self.io_free_at, self.l3_free_at)
        self.io_free_at = self.l3_free_at = start + duration
        self.io_busy += duration
        self.io_done_at[self.io_next_id] = self.io_free_at
        self.io_queue.append(DmaTransfer(self.io_next_id, r["io_dma_src"], r["io_dma_dst"], nbytes, 1, nbytes,
                                         nbytes, self.io_free_at, self.open_layer.index if self.open_layer else -1))
        self.io_next_id += 1
        self._count_transfer(src[0], dst[0], nbytes)
        if self.open_layer is not None:
            self.open_layer.io_busy += duration

    def _io_dma_wait(self, hart_id: int, transfer: int) -> None:
        """Stall the hart until I/O DMA transfer `transfer` has completed (they complete in order)."""
        self._wait_transfer(hart_id, transfer, "I/O DMA", self.io_next_id, self.io_done_at, self._complete_io)

    def _complete_io(self, now: int) -> None:
        """Perform every queued I/O DMA copy that has completed by cycle `now`."""
        while self.io_queue and self.io_queue[0].done_at <= now:
            t = self.io_queue.pop(0)
            self.write(t.dst, self.read(t.src, t.row_bytes))
            self._event_write("io_dma_done", t.id)

    # -- accelerator ----------------------------------------------------------------------------------------
    def _accel_start(self, hart_id: int) -> None:
        """Snapshot the registers into a job: operands are read now, the result lands at completion."""
        hart = self.harts[hart_id]
        regs = dict(self.accel_regs)
        l1_base, l1_size = self.spec.regions["l1"]
        spans = operand_spans(regs)
        for operand, (address, nbytes) in spans.items():
            if not (l1_base <= address and address + nbytes <= l1_base + l1_size):
                self._callback_fault(hart, f"accelerator operand {operand} at 0x{address:08x} ({nbytes} B) is not "
                                           f"in L1")
                return
        problem = self.spec.accel.job_problem(regs["m"], regs["k"], regs["n"], y_bytes(regs),
                                              bool(regs["mode"] & MODE_TRANS_B))
        if problem:
            self._callback_fault(hart, f"accelerator job {regs['m']}x{regs['k']}x{regs['n']} does not fit: {problem}")
            return
        kept = self._check_kept_operands(regs, spans)
        if kept:
            self._callback_fault(hart, f"accelerator job {self.accel_next_id} keeps B, bias and rq (mode bit 10) "
                                       f"but {kept}")
            return
        job = Job(self.accel_next_id, regs, layer=self.open_layer.index if self.open_layer else -1)
        try:
            job.result = run_job(job, self.read)
        except (ValueError, KeyError, IndexError, OverflowError, TinyDeployError) as exc:
            self._callback_fault(hart, f"accelerator job {job.id} has an invalid configuration ({exc})")
            return
        rows = operand_rows(regs)
        beats = load_beats(regs, self.spec.accel.port_bytes, rows)
        job.cycles = cycles_of(regs, self.spec.accel, beats)
        if self.accel_engine == "rtl" and not self._rtl_job(hart, job):
            return
        begin = max(hart.clock, self.accel_free_at)
        stall = self._port_contention(begin, beats)
        self.accel_port_stall += stall
        job.cycles += stall
        job.done_at = begin + job.cycles
        self.accel_free_at = job.done_at
        self.accel_busy += job.cycles
        self.accel_done_at[job.id] = job.done_at
        self.accel_next_id += 1
        self.accel_queue.append(job)
        if self.open_layer is not None:
            self.open_layer.accel_busy += job.cycles
            self.open_layer.accel_macs += job.macs
            self.open_layer.accel_l1_bytes += l1_bytes(regs, rows)

    def _check_kept_operands(self, regs: dict[str, int], spans: dict[str, tuple[int, int]]) -> str | None:
        """A job with MODE_KEEP_B computes with the B, bias and rq its predecessor loaded: they must be the same
        operands, unchanged in L1 (else the hardware would compute with stale buffers). Returns what differs."""
        kept = {name: (spans[name][0], self.read(*spans[name])) for name in ("b", "bias", "rq")}
        shape = (regs["k"], regs["n"], regs["mode"] & MODE_TRANS_B)
        previous, self._kept_operands = self._kept_operands, (shape, kept)
        if not regs["mode"] & MODE_KEEP_B:
            return None
        if previous is None or previous[0] != shape:
            return "the previous job has another B shape"
        changed = [name for name in kept if previous[1][name] != kept[name]]
        return f"{', '.join(changed)} changed since it" if changed else None

    def _port_contention(self, begin: int, beats: int) -> int:
        """Cycles the job's loader loses to the DMA: L1's banks serve both, the DMA first, so while a transfer
        moves r bytes per cycle into or out of L1 the loader's port carries port_bytes - r (a fluid share of the
        banks; the RTL testbench has no DMA, so its cycles are the job's without this)."""
        spec = self.spec.accel
        lo = begin + spec.setup_cycles
        hi = lo + beats
        taken = sum(max(0, min(end, hi) - max(start, lo)) * rate for start, end, rate in self.dma_l1_traffic)
        return int(-(-taken // spec.port_bytes))

    def _rtl_job(self, hart: _Hart, job: Job) -> bool:
        """Run the job on the Verilated RTL: its output and cycle count are used; any difference from the model
        stops the run (every accelerator job of a simulation is then an RTL-vs-model check)."""
        if self._rtl is None:
            from .accel.rtl import RtlAccelerator

            self._rtl = RtlAccelerator(self.spec.accel)
        result, cycles = self._rtl.run(job, self.read)
        r = job.regs
        if result != job.result or cycles != job.cycles:
            diff = next((i for i, (a, b) in enumerate(zip(result, job.result, strict=True)) if a != b), None)
            self._callback_fault(hart, f"accelerator RTL and model differ on job {job.id} ({r['m']}x{r['k']}x{r['n']}, "
                                       f"mode {r['mode']}): first output byte {diff}, cycles {cycles} vs {job.cycles}")
            return False
        job.result, job.cycles = result, cycles
        self.accel_jobs_checked += 1
        return True

    def _accel_wait(self, hart_id: int, job_id: int) -> None:
        hart = self.harts[hart_id]
        if not 0 < job_id < self.accel_next_id:
            self._callback_fault(hart, f"waits for accelerator job {job_id}, but only {self.accel_next_id - 1} "
                                       f"were started")
            return
        done_at = self.accel_done_at[job_id]
        self._complete_accel(done_at)
        if done_at > hart.clock:
            hart.stall += done_at - hart.clock

    def _complete_accel(self, now: int) -> None:
        while self.accel_queue and self.accel_queue[0].done_at <= now:
            job = self.accel_queue.pop(0)
            m, row, row_pitch = job.regs["m"], row_bytes(job.regs, "y"), pitch(job.regs, "y")
            if row_pitch == row:
                self.write(job.regs["y"], job.result)
            else:                              # a column tile of a larger tensor: rows `pitch` bytes apart
                for i in range(m):
                    self.write(job.regs["y"] + i * row_pitch, job.result[i * row:(i + 1) * row])

    def _complete_dma(self, now: int) -> None:
        """Perform (copy) every queued transfer that has completed by cycle `now`."""
        if self.io_queue:                      # in completion order: a tile may read what the I/O DMA staged
            self._complete_io(now)
        while self.dma_queue and self.dma_queue[0].done_at <= now:
            t = self.dma_queue.pop(0)
            src, dst = self.region_of(t.src, (t.rows - 1) * t.src_stride + t.row_bytes), \
                self.region_of(t.dst, (t.rows - 1) * t.dst_stride + t.row_bytes)
            if src is not None and dst is not None and t.src_stride == t.row_bytes == t.dst_stride:
                (_, sview, soff), (_, dview, doff) = src, dst
                dview[doff:doff + t.rows * t.row_bytes] = sview[soff:soff + t.rows * t.row_bytes]
            else:
                for row in range(t.rows):
                    self.write(t.dst + row * t.dst_stride, self.read(t.src + row * t.src_stride, t.row_bytes))
            self._event_write("dma_done", t.id)

    # -- faults -------------------------------------------------------------------------------------------
    def _fault(self, hart: _Hart, cause: str, pc: int | None = None) -> None:
        from unicorn.riscv_const import UC_RISCV_REG_PC

        pc = hart.uc.reg_read(UC_RISCV_REG_PC) if pc is None else pc
        raise GuestFault(cause, hart.id, pc, self.symbols.lookup(pc))

    def _callback_fault(self, hart: _Hart, cause: str) -> None:
        """A fault detected in an MMIO callback: Unicorn swallows exceptions there, so stop the hart and raise
        after emu_start returns (in _run_slice)."""
        from unicorn.riscv_const import UC_RISCV_REG_PC

        pc = hart.uc.reg_read(UC_RISCV_REG_PC)
        self._pending_fault = GuestFault(cause, hart.id, pc, self.symbols.lookup(pc))
        self._stop(hart)

    def _decode_error(self, hart: _Hart, error) -> None:
        from unicorn import (
            UC_ERR_EXCEPTION,
            UC_ERR_FETCH_UNMAPPED,
            UC_ERR_INSN_INVALID,
            UC_ERR_READ_UNMAPPED,
            UC_ERR_WRITE_UNMAPPED,
        )

        bad = f" 0x{self._bad_access[0]:08x}" if self._bad_access else ""
        causes = {UC_ERR_READ_UNMAPPED: f"load from unmapped address{bad}",
                  UC_ERR_WRITE_UNMAPPED: f"store to unmapped address{bad}",
                  UC_ERR_FETCH_UNMAPPED: f"instruction fetch from unmapped address{bad}",
                  UC_ERR_INSN_INVALID: "illegal instruction",
                  UC_ERR_EXCEPTION: "illegal instruction or unhandled exception"}
        self._fault(hart, causes.get(error.errno, str(error)))

    def _check_barrier(self) -> None:
        """A barrier that can never complete: an arrived hart waits for one that exited, or waits too long."""
        if not self.barrier_arrived:
            return
        missing = [h for h in self.harts if h.id not in self.barrier_arrived]
        exited = [h for h in missing if not h.running]
        if exited or self.time - self.barrier_since > self.spec.max_cycles // 10:
            waiting = sorted(self.barrier_arrived)
            culprit = exited[0] if exited else missing[0]
            why = "has exited" if exited else f"has not arrived after {self.time - self.barrier_since} cycles"
            self._fault(self.harts[waiting[0]], f"deadlock at the barrier: harts {waiting} wait, hart {culprit.id} "
                                                f"{why} (its pc: {self.symbols.lookup(culprit.pc)})")

    # -- run ----------------------------------------------------------------------------------------------
    def run(self, max_cycles: int | None = None, progress=None) -> SimResult:
        from unicorn import UcError
        from unicorn.riscv_const import UC_RISCV_REG_PC

        budget = max_cycles or self.spec.max_cycles
        reported = time.perf_counter()
        while not self.finished:
            raise_if_interrupted()
            for hart in self.harts:
                if not hart.running or hart.waiting:
                    continue
                self._run_slice(hart, UcError, UC_RISCV_REG_PC)
                if self.finished:
                    break
            active = [h.clock for h in self.harts if h.running and not h.waiting]
            self.time = max([h.clock for h in self.harts if h.running] or [self.time])
            if self.io_queue and active:        # before the cluster DMA: its transfers may read what these wrote
                self._complete_io(min(active))
            if self.dma_queue and active:
                self._complete_dma(min(active))
            if self.accel_queue and active:
                self._complete_accel(min(active))
            self._check_barrier()
            if not self.finished and self.time > budget:
                h0 = self.harts[0]
                self._fault(h0, f"no exit within {budget} cycles", pc=h0.pc)
            if progress is not None and time.perf_counter() - reported >= 0.5:
                reported = time.perf_counter()
                progress(self.time, self._all_instructions(), len(self.layers))
        self._complete_io(self.io_free_at)
        self._complete_dma(self.dma_free_at)
        self._complete_accel(self.accel_free_at)
        h0 = self.harts[0]
        return SimResult(self.exit_code, h0.clock, [h.instructions for h in self.harts], "".join(self.console),
                         self.layers, self.dma_busy, [h.dma_stall for h in self.harts], self.accel_busy,
                         sum(h.instructions for h in self.harts), self.io_busy)

    def _run_slice(self, hart: _Hart, uc_error: type, pc_register: int) -> None:
        """Run one hart for about one quantum (to a block boundary, or until it blocks or exits)."""
        counter = hart.counter
        counter.limit = counter.instructions + self.quantum
        counter.stop_block = NO_BLOCK
        self._bad_access = None
        hart.mmio_stop = False
        try:
            hart.uc.emu_start(hart.pc, 0)
        except uc_error as error:
            self._decode_error(hart, error)
        raise_if_interrupted()
        if self._pending_fault is not None:
            raise self._pending_fault
        hart.pc = hart.uc.reg_read(pc_register)
        if hart.mmio_stop:
            hart.pc += self._instruction_length(hart.pc)
            counter.uncount(hart.pc, counter.last_block + counter.last_size)

    def _instruction_length(self, address: int) -> int:
        return 4 if self.read(address, 1)[0] & 3 == 3 else 2
