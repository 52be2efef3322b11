// One OpenHW CV32E40P core (RV32IMC, COREV_PULP=0, FPU=0) in a single-core tinydeploy cluster platform: the RTL
// half of the core-timing calibration (sim/core_rtl.py, benchmarks/bench_core_rtl.py). The core's RTL comes from
// its own repository (not part of tinydeploy); this testbench is tinydeploy's.
//
// The memories (L1 / L2 / L3 / event) and the MMIO device live in C++ (tb_cluster.cpp, memory map from the
// target's generated td_platform.h) behind DPI calls, so the DMA engine can copy between any of them. Bus
// protocol: zero wait states, gnt = req in the same cycle, rvalid/rdata registered (next cycle), as the core's
// example testbench RAM without its random stalls.
//
// The testbench also counts the core's performance events (the same pulses that feed minstret and
// the mhpmcounters, counted here so they work although crt0 leaves mcountinhibit set) and hands
// them to the MMIO model, which snapshots them at the layer_begin / layer_end writes.
module tb_cluster (
    input  logic        clk_i,
    input  logic        rst_ni,
    input  logic [31:0] boot_addr_i,
    output logic        done_o,
    output logic [63:0] cycles_o,
    output logic [63:0] instret_o
);
  import "DPI-C" function int unsigned tb_fetch(input int unsigned addr, input int unsigned mepc,
                                                input int unsigned mcause);
  import "DPI-C" function int unsigned tb_load(input int unsigned addr, input int unsigned pc,
                                               input longint unsigned cycles);
  import "DPI-C" function void tb_store(input int unsigned addr, input int unsigned be,
                                        input int unsigned wdata, input int unsigned pc,
                                        input longint unsigned cycles);
  import "DPI-C" function void tb_counters(input longint unsigned instret, input longint unsigned ld_stall,
                                           input longint unsigned jr_stall, input longint unsigned imiss,
                                           input longint unsigned branch, input longint unsigned branch_taken,
                                           input longint unsigned jump, input longint unsigned load,
                                           input longint unsigned store);
  import "DPI-C" function bit tb_done();
  import "DPI-C" function bit tb_trace_on();  // +trace: always; +trace_layer=N: while layer N is open

  logic        instr_req, instr_gnt, instr_rvalid;
  logic [31:0] instr_addr, instr_rdata;
  logic data_req, data_gnt, data_rvalid, data_we;
  logic [3:0] data_be;
  logic [31:0] data_addr, data_wdata, data_rdata;

  cv32e40p_core #(
      .COREV_PULP      (0),
      .COREV_CLUSTER   (0),
      .FPU             (0),
      .FPU_ADDMUL_LAT  (0),
      .FPU_OTHERS_LAT  (0),
      .ZFINX           (0),
      .NUM_MHPMCOUNTERS(1)
  ) core_i (
      .clk_i              (clk_i),
      .rst_ni             (rst_ni),
      .pulp_clock_en_i    (1'b1),
      .scan_cg_en_i       (1'b0),
      .boot_addr_i        (boot_addr_i),
      .mtvec_addr_i       (32'h0000_0000),   // no trap handler in the firmware: a trap fetches 0x0 -> error
      .dm_halt_addr_i     (32'h1A11_0800),
      .hart_id_i          (32'h0),
      .dm_exception_addr_i(32'h1A11_0808),
      .instr_req_o        (instr_req),
      .instr_gnt_i        (instr_gnt),
      .instr_rvalid_i     (instr_rvalid),
      .instr_addr_o       (instr_addr),
      .instr_rdata_i      (instr_rdata),
      .data_req_o         (data_req),
      .data_gnt_i         (data_gnt),
      .data_rvalid_i      (data_rvalid),
      .data_we_o          (data_we),
      .data_be_o          (data_be),
      .data_addr_o        (data_addr),
      .data_wdata_o       (data_wdata),
      .data_rdata_i       (data_rdata),
      .apu_busy_o         (),
      .apu_req_o          (),
      .apu_gnt_i          (1'b0),
      .apu_operands_o     (),
      .apu_op_o           (),
      .apu_flags_o        (),
      .apu_rvalid_i       (1'b0),
      .apu_result_i       (32'h0),
      .apu_flags_i        ('0),
      .irq_i              (32'h0),
      .irq_ack_o          (),
      .irq_id_o           (),
      .debug_req_i        (1'b0),
      .debug_havereset_o  (),
      .debug_running_o    (),
      .debug_halted_o     (),
      .fetch_enable_i     (1'b1),
      .core_sleep_o       ()
  );

  assign instr_gnt = instr_req;
  assign data_gnt  = data_req;

  // cycle counter since reset release (what the MMIO "cycles" register returns) and event counters
  logic [63:0] cycles_q, instret_q, ld_stall_q, jr_stall_q, imiss_q, branch_q, br_taken_q, jump_q,
      load_q, store_q;
  assign cycles_o  = cycles_q;
  assign instret_o = instret_q;

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      instr_rvalid <= 1'b0;
      data_rvalid  <= 1'b0;
      instr_rdata  <= '0;
      data_rdata   <= '0;
      cycles_q     <= '0;
      instret_q    <= '0;
      ld_stall_q   <= '0;
      jr_stall_q   <= '0;
      imiss_q      <= '0;
      branch_q     <= '0;
      br_taken_q   <= '0;
      jump_q       <= '0;
      load_q       <= '0;
      store_q      <= '0;
      done_o       <= 1'b0;
    end else begin
      cycles_q     <= cycles_q + 1;
      instret_q    <= instret_q + {63'b0, core_i.mhpmevent_minstret};
      ld_stall_q   <= ld_stall_q + {63'b0, core_i.mhpmevent_ld_stall};
      jr_stall_q   <= jr_stall_q + {63'b0, core_i.mhpmevent_jr_stall};
      imiss_q      <= imiss_q + {63'b0, core_i.mhpmevent_imiss};
      branch_q     <= branch_q + {63'b0, core_i.mhpmevent_branch};
      br_taken_q   <= br_taken_q + {63'b0, core_i.mhpmevent_branch_taken};
      jump_q       <= jump_q + {63'b0, core_i.mhpmevent_jump};
      load_q       <= load_q + {63'b0, core_i.mhpmevent_load};
      store_q      <= store_q + {63'b0, core_i.mhpmevent_store};
      instr_rvalid <= instr_req;
      data_rvalid  <= data_req;
      // fetch before the data access: a same-cycle fetch of a word being stored sees the old value,
      // like a non-blocking RAM
      if (instr_req)
        instr_rdata <= tb_fetch(instr_addr, core_i.cs_registers_i.mepc_q,
                                {26'b0, core_i.cs_registers_i.mcause_q});
      if (data_req) begin
        if (data_we) begin
          // the counters only matter for the layer stamps (stores to MMIO; the C++ side knows the map)
          tb_counters(instret_q, ld_stall_q, jr_stall_q, imiss_q, branch_q, br_taken_q, jump_q, load_q,
                      store_q);
          tb_store(data_addr, {28'b0, data_be}, data_wdata, core_i.pc_ex, cycles_q);
        end else begin
          data_rdata <= tb_load(data_addr, core_i.pc_ex, cycles_q);
        end
      end
      done_o <= tb_done();
    end
  end

  // Optional issue trace (+trace, or +trace_layer=N for one layer):
  //   TRACE <cycle> <pc> <instr (decompressed)> <c if RVC>
  bit trace_en;
  initial trace_en = $test$plusargs("trace") || $test$plusargs("trace_layer=");
  always_ff @(posedge clk_i) begin
    if (trace_en && rst_ni && core_i.id_stage_i.id_valid_o && core_i.id_stage_i.is_decoding_o && tb_trace_on())
      $display("TRACE %0d %08x %08x %s", cycles_q, core_i.id_stage_i.pc_id_i,
               core_i.id_stage_i.instr, core_i.id_stage_i.is_compressed_i ? "c" : "");
  end
endmodule
