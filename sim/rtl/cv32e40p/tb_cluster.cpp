// C++ side of the single-core cluster testbench (tb_cluster.sv): memories, MMIO device, DMA, ELF loader, clock.
//
// The platform is the target's, from the td_platform.h tinydeploy generates for the firmware (the same file the
// ISS reads: L1/L2/L3 bases and sizes, MMIO and event registers); the build (sim/core_rtl.py) puts that header on
// the include path. The core runs alone: the barrier opens at once, a DMA transfer is copied synchronously at
// dma_start (no DMA timing: the calibration compares the cores' cycles).
//
// usage: Vtb_cluster firmware.elf [+load=0xADDR:file.bin ...] [+dump=0xADDR:BYTES:file.bin ...] [+max_cycles=N]
//                                 [+console=FILE] [+trace | +trace_layer=N]
//   +load    write a raw file's bytes at ADDR after the ELF is loaded (repeatable)
//   +dump    write BYTES bytes of memory at ADDR to a file when the run ends (repeatable)
//   +console write the firmware's putchar output to FILE instead of stdout
//   +trace   TRACE <cycle> <pc> <instr> [c] per instruction leaving ID; +trace_layer=N: only between layer N's
//            layer_begin and layer_end stores
// Prints (stdout): console, then one line per layer
//   LAYER <index> <begin_cycle> <end_cycle> instr=.. ld_stall=.. jr_stall=.. imiss=.. branch=.. br_taken=..
//         jump=.. load=.. store=.. dma_bytes=.. dma_transfers=..
// (counter deltas between the layer_begin and layer_end stores), then TOTAL and EXIT lines.
// Exit status: 0 firmware exit code 0, 1 non-zero exit code, 2 testbench error (bad access, trap), 3 timeout.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <vector>
#include <string>
#include <fstream>
#include "Vtb_cluster.h"
#include "Vtb_cluster__Dpi.h"
#include "svdpi.h"
#include "td_platform.h"
#include "verilated.h"

namespace {

struct Region {
  const char* name;
  uint32_t base, size;
  uint8_t* mem;
};

Region g_regions[] = {
    {"L1", TD_L1_BASE, TD_L1_BYTES, nullptr},
    {"L2", TD_L2_BASE, TD_L2_BYTES, nullptr},
    {"L3", TD_L3_BASE, TD_L3_BYTES, nullptr},
    {"event", TD_EVENT_BASE, TD_EVENT_BYTES, nullptr},
};
constexpr uint32_t MMIO_BASE = TD_MMIO_BASE, MMIO_SIZE = TD_MMIO_BYTES;
constexpr uint32_t EVENT_BASE = TD_EVENT_BASE;
enum : uint32_t {
  R_EXIT = TD_REG_EXIT, R_PUTCHAR = TD_REG_PUTCHAR, R_CYCLES = TD_REG_CYCLES, R_HART_ID = TD_REG_HART_ID,
  R_NUM_CORES = TD_REG_NUM_CORES, R_BARRIER_ARRIVE = TD_REG_BARRIER_ARRIVE, R_DMA_SRC = TD_REG_DMA_SRC,
  R_DMA_DST = TD_REG_DMA_DST, R_DMA_BYTES = TD_REG_DMA_BYTES, R_DMA_ROWS = TD_REG_DMA_ROWS,
  R_DMA_SRC_STRIDE = TD_REG_DMA_SRC_STRIDE, R_DMA_DST_STRIDE = TD_REG_DMA_DST_STRIDE,
  R_DMA_START = TD_REG_DMA_START, R_DMA_WAIT = TD_REG_DMA_WAIT, R_LAYER_BEGIN = TD_REG_LAYER_BEGIN,
  R_LAYER_END = TD_REG_LAYER_END, R_TRACE_PTR = TD_REG_TRACE_PTR, R_TRACE_BYTES = TD_REG_TRACE_BYTES,
  R_TRACE_ID = TD_REG_TRACE_ID,
};
static_assert(TD_NUM_CORES_CONST == 1, "the RTL testbench runs one core: build the firmware for cluster1");

bool g_done = false;
uint32_t g_exit_code = 0;
int g_status = 0;  // 0 = exit register written, 2 = testbench error
FILE* g_console = stdout;
int g_last_char = '\n';

uint32_t dma_src, dma_dst, dma_bytes, dma_rows, dma_src_stride, dma_dst_stride, dma_last_id;
uint64_t dma_total_bytes, dma_count;

constexpr int NCNT = 9;  // instret ld_stall jr_stall imiss branch branch_taken jump load store
const char* CNT_NAMES[NCNT] = {"instr", "ld_stall", "jr_stall", "imiss", "branch",
                               "br_taken", "jump", "load", "store"};
uint64_t g_cnt[NCNT];
struct Layer {
  uint32_t index;
  uint64_t begin, end;
  uint64_t cbegin[NCNT], cend[NCNT];
  uint64_t dma_bytes;
  uint32_t dma_count;
  bool closed;
};
std::vector<Layer> g_layers;
bool g_trace_all = false;
int64_t g_trace_layer = -1;  // +trace_layer=N
bool g_layer_open = false;

void fail(const char* what, uint32_t addr, uint32_t pc, uint64_t cycles) {
  if (g_done) return;
  fflush(g_console);
  printf("ERROR: %s at address 0x%08x, pc 0x%08x, cycle %llu\n", what, addr, pc, (unsigned long long)cycles);
  g_done = true;
  g_status = 2;
  g_exit_code = 0xdead0001u;
}

inline uint8_t* host_ptr(uint32_t addr, uint32_t len) {
  for (auto& r : g_regions)
    if (addr >= r.base && (uint64_t)addr - r.base + len <= r.size) return r.mem + (addr - r.base);
  return nullptr;
}

inline uint8_t* word_ptr(uint32_t addr) {  // addr word-aligned
  uint32_t o;
  for (auto& r : g_regions)
    if ((o = addr - r.base) < r.size) return r.mem + o;
  return nullptr;
}

uint32_t& event_word(uint32_t off) { return *reinterpret_cast<uint32_t*>(g_regions[3].mem + off); }

void dma_run(uint32_t pc, uint64_t cycles) {
  for (uint32_t r = 0; r < dma_rows; r++) {
    uint32_t s = dma_src + r * dma_src_stride, d = dma_dst + r * dma_dst_stride;
    uint8_t* sp = host_ptr(s, dma_bytes);
    uint8_t* dp = host_ptr(d, dma_bytes);
    if (!sp) { fail("DMA source row outside memory", s, pc, cycles); return; }
    if (!dp) { fail("DMA destination row outside memory", d, pc, cycles); return; }
    memmove(dp, sp, dma_bytes);
  }
  dma_last_id++;
  event_word(TD_EVENT_DMA_DONE) = dma_last_id;
  uint64_t n = (uint64_t)dma_bytes * dma_rows;
  dma_total_bytes += n;
  dma_count++;
  if (!g_layers.empty() && !g_layers.back().closed) {
    g_layers.back().dma_bytes += n;
    g_layers.back().dma_count++;
  }
}

void mmio_store(uint32_t off, uint32_t v, uint32_t pc, uint64_t cycles) {
  switch (off) {
    case R_EXIT: g_exit_code = v; g_done = true; break;
    case R_PUTCHAR: g_last_char = (int)(v & 0xff); fputc(g_last_char, g_console); break;
    case R_BARRIER_ARRIVE: event_word(TD_EVENT_BARRIER_GENERATION) += 1; break;  // one core: the barrier opens at once
    case R_DMA_SRC: dma_src = v; break;
    case R_DMA_DST: dma_dst = v; break;
    case R_DMA_BYTES: dma_bytes = v; break;
    case R_DMA_ROWS: dma_rows = v; break;
    case R_DMA_SRC_STRIDE: dma_src_stride = v; break;
    case R_DMA_DST_STRIDE: dma_dst_stride = v; break;
    case R_DMA_START: dma_run(pc, cycles); break;
    case R_DMA_WAIT: break;  // transfers complete synchronously at dma_start
    case R_LAYER_BEGIN: {
      Layer l{};
      l.index = v;
      l.begin = cycles;
      memcpy(l.cbegin, g_cnt, sizeof g_cnt);
      g_layers.push_back(l);
      g_layer_open = (int64_t)v == g_trace_layer;
      break;
    }
    case R_LAYER_END: {
      for (auto it = g_layers.rbegin(); it != g_layers.rend(); ++it)
        if (it->index == v && !it->closed) {
          it->end = cycles;
          memcpy(it->cend, g_cnt, sizeof g_cnt);
          it->closed = true;
          if ((int64_t)v == g_trace_layer) g_layer_open = false;
          return;
        }
      fail("layer_end without a matching layer_begin", MMIO_BASE + off, pc, cycles);
      break;
    }
    case R_TRACE_PTR: case R_TRACE_BYTES: case R_TRACE_ID: break;
    default: fail("store to unknown MMIO register", MMIO_BASE + off, pc, cycles);
  }
}

}  // namespace

extern "C" {

unsigned int tb_fetch(unsigned int addr, unsigned int mepc, unsigned int mcause) {
  uint8_t* p = word_ptr(addr & ~3u);
  if (!p) {
    if (!g_done) {
      fflush(g_console);
      printf("ERROR: instruction fetch from unmapped address 0x%08x (mepc 0x%08x mcause 0x%x: "
             "a trap jumps to mtvec = 0)\n", addr, mepc, mcause);
      g_done = true;
      g_status = 2;
      g_exit_code = 0xdead0002u;
    }
    return 0;
  }
  uint32_t w;
  memcpy(&w, p, 4);
  return w;
}

unsigned int tb_load(unsigned int addr, unsigned int pc, unsigned long long cycles) {
  uint32_t a = addr & ~3u;
  if (uint8_t* p = word_ptr(a)) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
  }
  if (a - MMIO_BASE < MMIO_SIZE) {
    switch (a - MMIO_BASE) {
      case R_CYCLES: return (uint32_t)cycles;
      case R_HART_ID: return 0;
      case R_NUM_CORES: return 1;
      case R_DMA_START: return dma_last_id;
      default: fail("load from unknown MMIO register", addr, pc, cycles); return 0;
    }
  }
  fail("load from unmapped address", addr, pc, cycles);
  return 0;
}

void tb_store(unsigned int addr, unsigned int be, unsigned int wdata, unsigned int pc,
              unsigned long long cycles) {
  uint32_t a = addr & ~3u;
  if (uint8_t* p = word_ptr(a)) {
    for (int b = 0; b < 4; b++)
      if (be & (1u << b)) p[b] = (uint8_t)(wdata >> (8 * b));
    return;
  }
  if (a - MMIO_BASE < MMIO_SIZE) {
    if (be != 0xF) { fail("sub-word store to MMIO", addr, pc, cycles); return; }
    mmio_store(a - MMIO_BASE, wdata, pc, cycles);
    return;
  }
  fail("store to unmapped address", addr, pc, cycles);
}

void tb_counters(unsigned long long instret, unsigned long long ld_stall, unsigned long long jr_stall,
                 unsigned long long imiss, unsigned long long branch, unsigned long long branch_taken,
                 unsigned long long jump, unsigned long long load, unsigned long long store) {
  uint64_t v[NCNT] = {instret, ld_stall, jr_stall, imiss, branch, branch_taken, jump, load, store};
  memcpy(g_cnt, v, sizeof v);
}

svBit tb_done() { return g_done; }
svBit tb_trace_on() { return g_trace_all || g_layer_open; }

}  // extern "C"

static std::vector<uint8_t> slurp(const char* fn) {
  std::ifstream f(fn, std::ios::binary);
  if (!f) { fprintf(stderr, "cannot open %s\n", fn); exit(2); }
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

template <class T> static T rd(const std::vector<uint8_t>& b, size_t off) {
  T v; memcpy(&v, &b[off], sizeof(T)); return v;
}

static void write_bytes(uint32_t addr, const uint8_t* data, uint32_t n, const char* what) {
  uint8_t* p = host_ptr(addr, n);
  if (!p) {
    fprintf(stderr, "%s: 0x%08x + %u bytes is not inside one memory (L1/L2/L3/event)\n", what, addr, n);
    exit(2);
  }
  memcpy(p, data, n);
}

int main(int argc, char** argv) {
  Verilated::commandArgs(argc, argv);
  const char* elf = nullptr;
  uint64_t max_cycles = 2000000000ULL;
  std::vector<std::pair<uint32_t, std::string>> loads;
  struct Dump { uint32_t addr, bytes; std::string file; };
  std::vector<Dump> dumps;
  for (int i = 1; i < argc; i++) {
    if (!strncmp(argv[i], "+max_cycles=", 12)) max_cycles = strtoull(argv[i] + 12, nullptr, 0);
    else if (!strncmp(argv[i], "+load=", 6)) {
      char* colon = strchr(argv[i] + 6, ':');
      if (!colon) { fprintf(stderr, "+load=0xADDR:file expected, got %s\n", argv[i]); return 2; }
      loads.emplace_back((uint32_t)strtoul(argv[i] + 6, nullptr, 0), std::string(colon + 1));
    } else if (!strncmp(argv[i], "+dump=", 6)) {  // +dump=0xADDR:BYTES:file (memory at the end of the run)
      char* end1;
      uint32_t a = (uint32_t)strtoul(argv[i] + 6, &end1, 0);
      char* end2;
      uint32_t n = (*end1 == ':') ? (uint32_t)strtoul(end1 + 1, &end2, 0) : 0;
      if (*end1 != ':' || *end2 != ':') { fprintf(stderr, "+dump=0xADDR:BYTES:file expected, got %s\n", argv[i]); return 2; }
      dumps.push_back({a, n, std::string(end2 + 1)});
    } else if (!strcmp(argv[i], "+trace")) {
      g_trace_all = true;
    } else if (!strncmp(argv[i], "+trace_layer=", 13)) {
      g_trace_layer = strtoll(argv[i] + 13, nullptr, 0);
    } else if (!strncmp(argv[i], "+console=", 9)) {
      g_console = fopen(argv[i] + 9, "w");
      if (!g_console) { fprintf(stderr, "cannot write %s\n", argv[i] + 9); return 2; }
    } else if (argv[i][0] != '+' && argv[i][0] != '-') elf = argv[i];
  }
  if (!elf) {
    fprintf(stderr, "usage: %s firmware.elf [+load=0xADDR:file.bin ...] [+max_cycles=N] [+console=FILE] [+trace]\n",
            argv[0]);
    return 2;
  }
  // calloc: the OS hands out zero pages lazily, so the 64 MiB L3 costs only what is touched
  for (auto& r : g_regions) r.mem = static_cast<uint8_t*>(calloc(r.size, 1));

  auto* top = new Vtb_cluster;
  svSetScope(svGetScopeFromName("TOP.tb_cluster"));

  auto b = slurp(elf);
  if (b.size() < 52 || memcmp(&b[0], "\x7f" "ELF", 4) || b[4] != 1) { fprintf(stderr, "not ELF32\n"); return 2; }
  uint32_t entry = rd<uint32_t>(b, 24), phoff = rd<uint32_t>(b, 28);
  uint16_t phentsize = rd<uint16_t>(b, 42), phnum = rd<uint16_t>(b, 44);
  for (int i = 0; i < phnum; i++) {
    size_t ph = phoff + (size_t)i * phentsize;
    uint32_t type = rd<uint32_t>(b, ph), off = rd<uint32_t>(b, ph + 4), paddr = rd<uint32_t>(b, ph + 12);
    uint32_t filesz = rd<uint32_t>(b, ph + 16);
    if (type != 1 || filesz == 0) continue;  // PT_LOAD; memsz beyond filesz stays zero (calloc)
    write_bytes(paddr, &b[off], filesz, "ELF segment");
  }
  for (auto& l : loads) {
    auto data = slurp(l.second.c_str());
    write_bytes(l.first, data.data(), (uint32_t)data.size(), ("+load " + l.second).c_str());
    printf("LOAD 0x%08x %zu bytes from %s\n", l.first, data.size(), l.second.c_str());
  }

  top->boot_addr_i = entry;
  top->clk_i = 0;
  top->rst_ni = 0;
  top->eval();
  for (int i = 0; i < 10; i++) { top->clk_i = 1; top->eval(); top->clk_i = 0; top->eval(); }
  top->rst_ni = 1;
  top->eval();
  uint64_t cyc = 0;
  while (!g_done && cyc < max_cycles && !Verilated::gotFinish()) {
    top->clk_i = 1; top->eval();
    top->clk_i = 0; top->eval();
    cyc++;
  }
  fflush(g_console);
  if (g_console != stdout) fclose(g_console);
  else if (g_last_char != '\n') printf("\n");  // console output may not end with a newline
  for (auto& l : g_layers) {
    if (!l.closed) { printf("LAYER %u %llu -1 (no layer_end)\n", l.index, (unsigned long long)l.begin); continue; }
    printf("LAYER %u %llu %llu", l.index, (unsigned long long)l.begin, (unsigned long long)l.end);
    for (int k = 0; k < NCNT; k++) printf(" %s=%llu", CNT_NAMES[k], (unsigned long long)(l.cend[k] - l.cbegin[k]));
    printf(" dma_bytes=%llu dma_transfers=%u\n", (unsigned long long)l.dma_bytes, l.dma_count);
  }
  for (auto& d : dumps) {
    uint8_t* p = host_ptr(d.addr, d.bytes);
    FILE* f = p ? fopen(d.file.c_str(), "wb") : nullptr;
    if (!f) { fprintf(stderr, "+dump 0x%08x %u bytes to %s failed\n", d.addr, d.bytes, d.file.c_str()); continue; }
    fwrite(p, 1, d.bytes, f);
    fclose(f);
  }
  int rc;
  if (!g_done) {
    printf("TIMEOUT after %llu cycles\n", (unsigned long long)cyc);
    rc = 3;
  } else {
    printf("TOTAL cycles=%llu instr=%llu dma_transfers=%llu dma_bytes=%llu\n", (unsigned long long)cyc,
           (unsigned long long)top->instret_o, (unsigned long long)dma_count,
           (unsigned long long)dma_total_bytes);
    printf("EXIT code=%u cycles_from_reset=%llu%s\n", g_exit_code, (unsigned long long)cyc,
           g_status ? " (testbench error)" : "");
    rc = g_status ? 2 : (g_exit_code ? 1 : 0);
  }
  top->final();
  delete top;
  return rc;
}
