"""The Cortex-M instruction-set simulator: Unicorn in Thumb M-class mode (Cortex-M4/M7 model, DSP instructions
such as SMLAD execute), with tinydeploy's simulation device for putchar, exit, cycle counter, layer stamps and
the tensor trace (register offsets from the target file's [mmio]).

Time: the instructions the native block hook (sim/native) counts exactly, plus the core's pipeline cycles when the
target's [core] gives them (Cortex-M4: the TRM's load/store, LDM/STM, branch, MLA and divide timings; no flash
wait states). Faults stop the run
with pc, symbol and cause, as in the cluster ISS: bad address, illegal instruction, a HardFault taken by the
firmware (its handler exits with code 3), no exit within the cycle budget.
"""

from __future__ import annotations

import ctypes
import mmap
import time
from pathlib import Path

from ..errors import TinyDeployError
from ..target import Target, load_target
from .cluster import GuestFault, LayerStamp, SimResult, Symbols
from .interrupt import raise_if_interrupted
from .native import CoreTiming, attach_counter

REGIONS = ("flash", "xip", "sram")
CPUS = {"cortex-m4": "UC_CPU_ARM_CORTEX_M4", "cortex-m7": "UC_CPU_ARM_CORTEX_M7"}
HARDFAULT_EXIT = 3


class CortexMISS:
    """Load an ELF into the MCU's memories and run it to the exit write."""

    def __init__(self, target: Target | str, elf_path: str | Path) -> None:
        from unicorn import UC_ARCH_ARM, UC_HOOK_MEM_INVALID, UC_MODE_MCLASS, UC_MODE_THUMB, UC_PROT_ALL, Uc, arm_const

        self.target = load_target(target)
        memory, mmio, iss = (self.target.section(k) for k in ("memory", "mmio", "iss"))
        if not mmio or "sram_base" not in memory:
            raise TinyDeployError(f"target '{self.target.name}' has no MCU memory map / [mmio]; not a Cortex-M target")
        self.elf_path = Path(elf_path)
        self.symbols = Symbols(self.elf_path)
        self.quantum = int(iss.get("slice_instructions", 10_000_000))
        self.max_cycles = int(iss.get("max_cycles", 40_000_000_000))
        self.registers = {v: k for k, v in mmio.items() if k not in ("base", "size")}
        self.uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        cpu = CPUS.get(iss.get("cpu", "cortex-m4"))
        if cpu is None:
            raise TinyDeployError(f"target '{self.target.name}': unknown [iss] cpu '{iss.get('cpu')}'")
        self.uc.ctl_set_cpu_model(getattr(arm_const, cpu))
        self._buffers: dict[str, tuple[int, int, mmap.mmap, int]] = {}
        for name in REGIONS:
            base, size = memory[f"{name}_base"], memory[f"{name}_bytes"]
            buf = mmap.mmap(-1, size)
            ptr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            self._buffers[name] = (base, size, buf, ptr)
            self.uc.mem_map_ptr(base, size, UC_PROT_ALL, ptr)
        self.uc.mmio_map(mmio["base"], mmio["size"], self._mmio_read, None, self._mmio_write, None)
        self._bad_access: int | None = None
        self.uc.hook_add(UC_HOOK_MEM_INVALID, self._invalid_access)
        self.counter = attach_counter(self.uc, [(b, s, p) for b, s, _, p in self._buffers.values()], self.quantum,
                                      isa=1, timing=CoreTiming.from_section(self.target.section("core")))
        self._load_elf()
        flash = memory["flash_base"]
        self.sp = int.from_bytes(self.read(flash, 4), "little")
        self.pc = int.from_bytes(self.read(flash + 4, 4), "little") & ~1
        self.uc.reg_write(arm_const.UC_ARM_REG_SP, self.sp)
        self.finished, self.exit_code = False, 0
        self.console: list[str] = []
        self.layers: list[LayerStamp] = []
        self.open_layer: LayerStamp | None = None
        self.trace_regs = {"trace_ptr": 0, "trace_bytes": 0}
        self.trace: dict[int, bytes] = {}
        self.accel_jobs_checked = 0
        self.accel_port_stall = 0

    # -- memory --------------------------------------------------------------------------------------------
    def _region(self, address: int, size: int):
        for base, rsize, buf, _ in self._buffers.values():
            if base <= address and address + size <= base + rsize:
                return memoryview(buf), address - base
        raise TinyDeployError(f"access of {size} bytes at unmapped 0x{address:08x}")

    def read(self, address: int, size: int) -> bytes:
        view, offset = self._region(address, size)
        return bytes(view[offset:offset + size])

    def write(self, address: int, data: bytes) -> None:
        view, offset = self._region(address, len(data))
        view[offset:offset + len(data)] = data

    def _load_elf(self) -> None:
        from elftools.elf.elffile import ELFFile

        with open(self.elf_path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_ARM":
                raise TinyDeployError(f"{self.elf_path} is not an ARM ELF")
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    try:
                        self.write(seg["p_paddr"], seg.data())
                    except TinyDeployError:
                        raise TinyDeployError(f"ELF segment at 0x{seg['p_paddr']:08x} ({seg['p_filesz']} B) does "
                                              f"not fit {self.target.name}'s memories") from None

    def _invalid_access(self, uc, access, address, size, value, user_data) -> bool:
        self._bad_access = address
        return False

    # -- simulation device ---------------------------------------------------------------------------------
    def _mmio_read(self, uc, offset: int, size: int, user_data) -> int:
        return self.counter.cycles & 0xFFFFFFFF if self.registers.get(offset) == "cycles" else 0

    def _mmio_write(self, uc, offset: int, size: int, value: int, user_data) -> None:
        name = self.registers.get(offset)
        if name == "exit":
            self.finished = True
            self.exit_code = value - (1 << 32) if value & 0x80000000 else value
            uc.emu_stop()
        elif name == "putchar":
            self.console.append(chr(value & 0xFF))
        elif name in self.trace_regs:
            self.trace_regs[name] = value
        elif name == "trace_id":
            self.trace[value] = self.read(self.trace_regs["trace_ptr"], self.trace_regs["trace_bytes"])
        elif name == "layer_begin":
            self.open_layer = LayerStamp(value, self.counter.cycles)
            self.open_layer.instructions = -self.counter.instructions
            self.layers.append(self.open_layer)
        elif name == "layer_end" and self.open_layer is not None:
            self.open_layer.end = self.counter.cycles
            self.open_layer.instructions += self.counter.instructions
            self.open_layer = None

    def _fault(self, cause: str, pc: int) -> None:
        raise GuestFault(cause, 0, pc, self.symbols.lookup(pc))

    # -- run ----------------------------------------------------------------------------------------------
    def run(self, max_cycles: int | None = None, progress=None) -> SimResult:
        from unicorn import (
            UC_ERR_FETCH_UNMAPPED,
            UC_ERR_INSN_INVALID,
            UC_ERR_READ_UNMAPPED,
            UC_ERR_WRITE_UNMAPPED,
            UcError,
        )
        from unicorn.arm_const import UC_ARM_REG_PC

        budget = max_cycles or self.max_cycles
        reported = time.perf_counter()
        while not self.finished:
            raise_if_interrupted()
            self.counter.limit = self.counter.instructions + self.quantum
            try:
                self.uc.emu_start(self.pc | 1, 0)
            except UcError as error:
                pc = self.uc.reg_read(UC_ARM_REG_PC)
                bad = f" 0x{self._bad_access:08x}" if self._bad_access is not None else ""
                causes = {UC_ERR_READ_UNMAPPED: f"load from unmapped address{bad}",
                          UC_ERR_WRITE_UNMAPPED: f"store to unmapped address{bad}",
                          UC_ERR_FETCH_UNMAPPED: f"instruction fetch from unmapped address{bad}",
                          UC_ERR_INSN_INVALID: "illegal instruction"}
                self._fault(causes.get(error.errno, str(error)), pc)
            self.pc = self.uc.reg_read(UC_ARM_REG_PC)
            if self.finished and self.exit_code == HARDFAULT_EXIT and "td_fault" in self.symbols.by_name:
                self._fault("HardFault taken by the firmware", self.pc)
            if not self.finished and self.counter.cycles > budget:
                self._fault(f"no exit within {budget} cycles", self.pc)
            if progress is not None and time.perf_counter() - reported >= 0.5:
                reported = time.perf_counter()
                progress(self.counter.cycles, self.counter.instructions, len(self.layers))
        cycles, instructions = self.counter.cycles, self.counter.instructions
        return SimResult(self.exit_code, cycles, [instructions], "".join(self.console), self.layers, 0, [0], 0,
                         instructions)
