// ITA-like accelerator datapath for one job (one tile): Y[m, n] = epilogue(requant(A[m, k] x B + bias)).
//
// Synthesizable Verilog-2005, simulated with Verilator through pyverilator (sim/accel/rtl.py); Yosys reports its
// cells, memories and logic depth per stage (benchmarks/synth_accel.py).
//  - loader: the accelerator is an L1 master. It streams the job's operands from L1 into its buffers through a
//    port of 32 word lanes (128 B per cycle, one beat = 32 consecutive words; a row of `len` bytes at address x
//    takes ceil((x mod 4 + len) / 128) beats): A, then B stored row by row (the rows of B [k, n], or of B^T
//    [n, k] with mode bit 0), bias, rq, LUT, stage table, R row by row, V0..V3. The array starts when the last
//    beat has landed (no double buffering: a job's loading does not overlap the previous job's compute);
//  - buffers: A, B and R are SRAM macros (ita_banked, below: even and odd 128-byte rows in two macros, so one
//    row per macro and cycle serves any 128 contiguous bytes). B is spread over W banks, stored row r in bank
//    r mod W, so one cycle's B chunk is one row per bank: without mode bit 0 bank kk holds k position c*W + kk,
//    with it the PE columns of a group sit in PE different banks. Reads are registered (one cycle). bias, rq,
//    the LUT, V0..V3 and the stage table are register files;
//  - dot-product array: PE lanes, each reducing W int8 products per cycle (PE x W MACs per cycle), int32
//    accumulators, on the chunk read the cycle before;
//  - epilogue pipeline (14 stages, one group of PE lanes each, at most one multiplier or two side by side per
//    lane and stage): requant per column (contract 1), second per-tensor requant (mode bit 1), LUT (bit 2), up
//    to 5 AddRequant/MulRequant stages (residual add, NoNorm) of two steps each with the residual tile R or a
//    per-column vector V0..V3 (parameters from a 12-word-per-stage table), LUT after the stages (bit 8).
//    Results are int8, or int16 with mode bit 6, written to L1 through the port (up to 32 bytes a cycle, Y rows
//    y_pitch apart);
//  - streaming softmax (bit 3, contract 4; bit 4 requantizes its output) on the groups leaving the pipeline: per
//    block of PE columns a running max and a denominator renormalised when the max grows; a softmax tail then
//    runs a radix-4 restoring divider (2 quotient bits per cycle) and a normalisation pass over the row, on its
//    own copy of the row (two row buffers), while the array computes the next rows. A finished row that finds
//    the tail busy holds the array and the pipeline until the tail takes it.
// `cycles` counts from start to done. Cycle count per job, with L beats in all, G = ceil(n / PE),
// C = ceil(k / W), P = G*C + 1 (a row on the array), T = 8 + G (a row in the softmax tail), E = 14:
//   1 + L + 1 + 1 + E + m * P                          without the softmax
//   1 + L + 1 + 1 + E + P + T + (m - 1) * max(P, T)    with it (row i's tail overlaps row i+1 on the array)
// which target.py (job_cycles, the cost model's and the ISS's one timing description) mirrors.
// Index expressions are wider than the memories they address (parameterised sizes): WIDTH is expected.
/* verilator lint_off WIDTH */
module ita_tile #(
    parameter PE = 16,
    parameter W = 64,
    parameter A_BYTES = 8192,
    parameter B_BYTES = 65536,
    parameter Y_BYTES = 8192,
    parameter N_MAX = 512
) (
    input  wire        clk,
    input  wire        rst,
    // job registers (held while busy)
    input  wire [10:0] mode,         // bit 5: A unsigned (ITA's sign mode: A.V reads uint8 probabilities),
                                     // bit 6: Y int16 (two bytes per element, little endian; no softmax),
                                     // bit 7: softmax key mask, the int8 vector V0 (0 = masked column),
                                     // bit 8: the LUT runs after the stages (GELU after a bias-add stage),
                                     // bit 9: the residual tile R is int16 (two bytes per element),
                                     // bit 10: B, bias and rq are the previous job's (still in the buffers:
                                     // the loader skips them; the driver sets it for a matrix's later row jobs)
    input  wire [15:0] m,
    input  wire [15:0] k,
    input  wire [15:0] n,
    input  wire [31:0] rq_clip,      // lo (int16) | hi << 16
    input  wire [31:0] rq2_mul,
    input  wire [31:0] rq2_shift,
    input  wire [31:0] rq2_add,
    input  wire [31:0] rq2_clip,
    input  wire [31:0] lut_min,
    input  wire [31:0] sm_levels,
    input  wire [31:0] sm_offset,
    input  wire [31:0] sm_clip,
    input  wire [2:0]  sm_bits,      // softmax input steps per octave: 2^sm_bits (1..5; ITA: 5)
    input  wire [2:0]  stage_count,
    input  wire [31:0] rq3_mul,
    input  wire [31:0] rq3_shift,
    input  wire [31:0] rq3_add,
    input  wire [31:0] rq3_clip,
    // L1 addresses of the operands (held while busy; see targets/cluster8-ita.toml [mmio])
    input  wire [31:0] a_addr,
    input  wire [31:0] b_addr,
    input  wire [31:0] bias_addr,
    input  wire [31:0] rq_addr,
    input  wire [31:0] lut_addr,
    input  wire [31:0] stg_addr,
    input  wire [31:0] r_addr,
    input  wire [31:0] v0_addr,
    input  wire [31:0] v1_addr,
    input  wire [31:0] v2_addr,
    input  wire [31:0] v3_addr,
    input  wire [31:0] y_addr,
    input  wire [31:0] y_pitch,      // bytes between rows of Y (0: rows packed)
    input  wire [31:0] r_pitch,      // the same for R
    // L1 port: 32 word lanes, 128 B per cycle. A read beat fetches 32 consecutive words (word-aligned byte address
    // l1_rd_addr); its data is on l1_rd_data in the cycle after the request. A write puts up to 32 bytes at any
    // byte address (l1_wr_be: which of l1_wr_data's bytes), one per cycle.
    output reg          l1_rd_req,
    output reg  [31:0]  l1_rd_addr,
    input  wire [1023:0] l1_rd_data,
    output reg          l1_wr_en,
    output reg  [31:0]  l1_wr_addr,
    output reg  [16*PE-1:0] l1_wr_data,
    output reg  [2*PE-1:0]  l1_wr_be,
    // control
    input  wire        start,
    output reg         busy,
    output reg         done,
    output reg  [31:0] cycles
);
    localparam S_IDLE = 3'd0, S_MAC = 3'd1, S_DRAIN = 3'd2, S_FLUSH = 3'd4, S_LOAD = 3'd5, S_LWAIT = 3'd6;
    localparam T_IDLE = 2'd0, T_DIV = 2'd1, T_NORM = 2'd2;

    // operand buffers, filled by the loader before the array starts: A, B, R, bias, the rq rows and V0..V3 are SRAM
    // macros (ita_banked: two macros of 128-byte rows, one row read and one row written per macro and cycle); the
    // LUT (16 lookups a cycle) and the stage table are registers.
    localparam NB = W;                  // B banks: B's stored row r (a row of B, or of B^T with mode bit 0) lives
                                        // in bank r mod NB at byte (r / NB) * row length
    reg [2047:0] lut;                   // the activation table, 256 bytes
    reg [1919:0] stg;                   // stage table: 5 stages x 12 words
    reg signed [15:0] row [0:2*N_MAX-1]; // epilogue outputs of a row (softmax input): the array's and the tail's

    wire [31:0] y_row = mode[6] ? 2 * n : n;               // bytes of a row of Y and of R
    wire [31:0] r_row = mode[9] ? 2 * n : n;
    wire [31:0] y_step = (y_pitch != 0) ? y_pitch : y_row;

    // ---- operand loader -------------------------------------------------------------------------------
    // Segments in order, absent ones skipped: 0 A, 1 B, 2 bias, 3 rq (3 rows of n words), 4 LUT, 5 stage table,
    // 6 R (m rows, r_pitch apart), 7..10 V0..V3. Each row of `len` bytes at `address` takes
    // ceil((address mod 4 + len) / 128) beats; the array starts one cycle after the last beat.
    localparam NSEG = 11;
    wire [15:0] b_rows = mode[0] ? n : k;          // B's stored rows and their length
    wire [15:0] b_len = mode[0] ? k : n;
    reg        seg_on     [0:NSEG-1];
    reg [31:0] seg_addr   [0:NSEG-1];
    reg [31:0] seg_len    [0:NSEG-1];
    reg [15:0] seg_rows   [0:NSEG-1];
    reg [31:0] seg_pitch  [0:NSEG-1];
    reg [31:0] seg_dest   [0:NSEG-1];   // buffer byte offset of the first row
    reg [31:0] seg_dstride[0:NSEG-1];   // buffer bytes between rows
    integer sg;
    always @(*) begin
        for (sg = 0; sg < NSEG; sg = sg + 1) begin
            seg_on[sg] = 1'b0; seg_addr[sg] = 32'd0; seg_len[sg] = 32'd0; seg_rows[sg] = 16'd1; seg_pitch[sg] = 32'd0;
            seg_dest[sg] = 32'd0; seg_dstride[sg] = 32'd0;
        end
        seg_on[0] = 1'b1; seg_addr[0] = a_addr;    seg_len[0] = m * k;
        seg_on[1] = !mode[10]; seg_addr[1] = b_addr;    seg_len[1] = b_len; seg_rows[1] = b_rows; seg_pitch[1] = b_len;
        seg_on[2] = !mode[10]; seg_addr[2] = bias_addr; seg_len[2] = 4 * n;
        seg_on[3] = !mode[10]; seg_addr[3] = rq_addr;   seg_len[3] = 4 * n; seg_rows[3] = 3; seg_pitch[3] = 4 * n;
        seg_dstride[3] = 4 * N_MAX;      // row j of rq goes to macro j (its offset / (4 * N_MAX))
        seg_on[4] = mode[2];            seg_addr[4] = lut_addr; seg_len[4] = 256;
        seg_on[5] = stage_count != 0;   seg_addr[5] = stg_addr; seg_len[5] = 48 * stage_count;
        seg_on[6] = stage_count != 0 && r_addr != 0;
        seg_addr[6] = r_addr; seg_len[6] = r_row; seg_rows[6] = m;
        seg_pitch[6] = (r_pitch != 0) ? r_pitch : r_row; seg_dstride[6] = r_row;
        seg_on[7] = (stage_count != 0 || mode[7]) && v0_addr != 0;  seg_addr[7] = v0_addr;
        seg_on[8] = stage_count != 0 && v1_addr != 0;                seg_addr[8] = v1_addr;
        seg_on[9] = stage_count != 0 && v2_addr != 0;                seg_addr[9] = v2_addr;
        seg_on[10] = stage_count != 0 && v3_addr != 0;               seg_addr[10] = v3_addr;
        for (sg = 7; sg < NSEG; sg = sg + 1) seg_len[sg] = n;
    end

    reg [3:0]  lseg, next_seg;          // the segment being loaded, the next present one (NSEG: none)
    reg [15:0] lrow, lbeat;
    wire [31:0] cur_addr = seg_addr[lseg] + lrow * seg_pitch[lseg];
    wire [31:0] cur_beats = ((cur_addr & 32'd3) + seg_len[lseg] + 32'd127) >> 7;
    wire [31:0] cur_win = (cur_addr & ~32'd3) + (lbeat << 7);
    always @(*) begin
        next_seg = NSEG;
        for (sg = NSEG - 1; sg >= 0; sg = sg - 1)
            if (sg > lseg && seg_on[sg]) next_seg = sg;
    end
    // the beat requested in the previous cycle, whose data is on l1_rd_data now
    reg        rsp_valid;
    reg [3:0]  rsp_seg;
    reg [31:0] rsp_win, rsp_lo, rsp_len, rsp_dest;
    reg [15:0] rsp_bank;
    // the beat's bytes that belong to the row, moved to the bottom: `got` of them, for buffer offset got_at
    wire [31:0] got_first = (rsp_win > rsp_lo) ? rsp_win : rsp_lo;
    wire [31:0] got_end = (rsp_win + 128 < rsp_lo + rsp_len) ? rsp_win + 128 : rsp_lo + rsp_len;
    wire [7:0]  got = got_end - got_first;
    wire [31:0] got_at = rsp_dest + got_first - rsp_lo;
    wire [1023:0] got_data = l1_rd_data >> (8 * (got_first - rsp_win));
    // the LUT and the stage table are registers: a beat's bytes land at their offset
    wire [2047:0] got_mask = ((2048'd1 << (8 * got)) - 2048'd1) << (8 * got_at);
    wire [2047:0] got_wide = {1024'd0, got_data} << (8 * got_at);
    always @(posedge clk) begin
        if (rsp_valid && rsp_seg == 4'd4) lut <= (lut & ~got_mask) | (got_wide & got_mask);
        if (rsp_valid && rsp_seg == 4'd5) stg <= (stg & ~got_mask[1919:0]) | (got_wide[1919:0] & got_mask[1919:0]);
    end

    // ---- control state --------------------------------------------------------------------------------
    reg [2:0]  state;
    reg [15:0] i, g, c;              // row, column group, k chunk the array reads this cycle
    wire [15:0] groups = (n + PE - 1) / PE;
    wire [15:0] chunks = (k + W - 1) / W;
    wire hold;                       // the array and the epilogue wait (a softmax row awaits the tail)
    reg        f_v;                  // the chunk read last cycle, multiplied this cycle
    reg [15:0] f_i, f_g, f_c;
    reg signed [31:0] acc [0:PE-1];
    reg signed [31:0] res [0:PE-1];  // finished dot products of group res_g of row res_i, entering the epilogue
    reg        res_valid;
    reg [15:0] res_g, res_i;

    // ---- operand macros ---------------------------------------------------------------------------------
    // A: chunk c of row i (W bytes at i * k + c * W). B, bank b: without mode bit 0 stored row c * W + b (k
    // position), PE bytes from column g * PE; with it the bank holding column g * PE + p, W bytes from c * W.
    wire [1023:0] a_q;
    wire [1023:0] b_q [0:NB-1];
    wire          load_a = rsp_valid && rsp_seg == 4'd0 && got != 0;
    ita_banked #(.BYTES(A_BYTES)) a_buf (.clk(clk), .we(load_a), .waddr(got_at), .wlen(got), .wdata(got_data),
                                         .re(!hold), .raddr(i * k + c * W), .rdata(a_q));
    genvar gb;
    generate
        for (gb = 0; gb < NB; gb = gb + 1) begin : b_bank
            // with mode bit 0, the column of group g this bank holds (if any) is g * PE + ((gb - g * PE) mod NB)
            wire [15:0] lane = (gb - g * PE) % NB;
            wire [31:0] col = g * PE + lane;
            wire [31:0] at = mode[0] ? (col / NB) * k + c * W : c * n + g * PE;
            ita_banked #(.BYTES(B_BYTES / NB)) bank (
                .clk(clk), .we(rsp_valid && rsp_seg == 4'd1 && rsp_bank == gb && got != 0), .waddr(got_at),
                .wlen(got), .wdata(got_data), .re(!hold), .raddr(at), .rdata(b_q[gb]));
        end
    endgenerate

    // ---- dot-product array: PE lanes x W int8 products on the chunk read last cycle ---------------------
    reg signed [31:0] partial [0:PE-1];
    integer p, kk;
    reg [31:0] col, kpos;
    reg [7:0]  av, bv;
    always @(*) begin
        for (p = 0; p < PE; p = p + 1) begin
            partial[p] = 32'sd0;
            col = f_g * PE + p;
            for (kk = 0; kk < W; kk = kk + 1) begin
                kpos = f_c * W + kk;
                av = a_q[8 * kk +: 8];
                bv = mode[0] ? b_q[(f_g * PE + p) % NB][8 * kk +: 8] : b_q[kk][8 * p +: 8];
                if (kpos < k && col < n)
                    partial[p] = partial[p] + $signed({{24{av[7] & ~mode[5]}}, av}) * $signed({{24{bv[7]}}, bv});
            end
        end
    end

    // the per-column operands of a group (bias, rq rows, V0..V3) and the residual tile's group: read as the
    // array finishes the group, they enter the epilogue with it
    wire [1023:0] r_q, bias_q, v_q [0:3], rq_q [0:2];
    wire [1:0] r_elem = mode[9] ? 2'd2 : 2'd1;
    wire       beat_in = rsp_valid && got != 0;
    ita_banked #(.BYTES(Y_BYTES)) r_buf (.clk(clk), .we(beat_in && rsp_seg == 4'd6), .waddr(got_at), .wlen(got),
                                         .wdata(got_data), .re(!hold), .raddr((f_i * n + f_g * PE) * r_elem),
                                         .rdata(r_q));
    ita_banked #(.BYTES(4 * N_MAX)) bias_buf (.clk(clk), .we(beat_in && rsp_seg == 4'd2), .waddr(got_at),
                                              .wlen(got), .wdata(got_data), .re(!hold), .raddr(f_g * PE * 4),
                                              .rdata(bias_q));
    genvar gt;
    generate
        for (gt = 0; gt < 3; gt = gt + 1) begin : rq_row
            ita_banked #(.BYTES(4 * N_MAX)) buffer (
                .clk(clk), .we(beat_in && rsp_seg == 4'd3 && got_at / (4 * N_MAX) == gt),
                .waddr(got_at % (4 * N_MAX)), .wlen(got), .wdata(got_data), .re(!hold), .raddr(f_g * PE * 4),
                .rdata(rq_q[gt]));
        end
        for (gt = 0; gt < 4; gt = gt + 1) begin : vector
            ita_banked #(.BYTES(N_MAX)) buffer (.clk(clk), .we(beat_in && rsp_seg == 7 + gt), .waddr(got_at),
                                                .wlen(got), .wdata(got_data), .re(!hold), .raddr(f_g * PE),
                                                .rdata(v_q[gt]));
        end
    endgenerate

    // ---- epilogue pipeline ----------------------------------------------------------------------------
    // EPI stages, one group of PE lanes per stage, at most one multiplier (or two side by side) per lane and stage:
    //   0 bias + requant (per column) | 1 second requant | 2 LUT | 3 + 2s, 4 + 2s: stage s's product(s), then its
    //   requant (s = 0..4) | 13 LUT after the stages.
    // A stage a job does not use passes its value on, so every group takes EPI cycles from the array to the
    // outputs. The residual R, the vectors V0..V3 and the key mask are read once, as the group enters, and
    // travel with it.
    localparam EPI = 14;
    function signed [63:0] requant;   // contract 1 with clip
        input signed [63:0] x;
        input signed [31:0] mul, shift, add;
        input signed [15:0] lo, hi;
        reg signed [63:0] t, half;
        begin
            half = (shift > 0) ? (64'sd1 <<< (shift - 1)) : 64'sd0;
            t = (x * mul + ($signed({{32{add[31]}}, add}) <<< shift) + half) >>> shift;
            requant = (t < lo) ? lo : ((t > hi) ? hi : t);
        end
    endfunction

    function signed [63:0] lut_of;     // the activation table at x
        input signed [63:0] x;
        reg [7:0] v;
        begin
            v = lut[8 * (x[7:0] - lut_min[7:0]) +: 8];
            lut_of = $signed({{56{v[7]}}, v});
        end
    endfunction

    reg               pv    [0:EPI-1];          // stage holds a group
    reg               plast [0:EPI-1];          // ... the last group of its row
    reg [15:0]        pi    [0:EPI-1];          // its row and column group
    reg [15:0]        pg    [0:EPI-1];
    reg signed [63:0] pe    [0:EPI*PE-1];       // running value per lane
    reg signed [63:0] px    [0:EPI*PE-1];       // a stage's product, for its requant
    reg signed [15:0] pr    [0:EPI*PE-1];       // residual R per lane
    reg signed [7:0]  pvec  [0:4*EPI*PE-1];     // V0..V3 per lane: [(stage * 4 + j) * PE + lane]
    reg               pkeep [0:EPI*PE-1];       // softmax key mask per lane

    // side operand of epilogue stage `st` for lane q of the group in pipeline stage `ps`
    function signed [63:0] side;
        input integer ps, st, q;
        begin
            if (stg[32 * (st * 12 + 1) +: 32] == 0) side = pr[ps * PE + q];
            else side = pvec[(ps * 4 + stg[32 * (st * 12 + 1) +: 32] - 1) * PE + q];
        end
    endfunction

    reg signed [63:0] t0, t1;
    integer q, ps, st;
    always @(posedge clk) begin
        if (rst) begin
            for (ps = 0; ps < EPI; ps = ps + 1) pv[ps] <= 1'b0;
        end else if (!hold) begin
            // stage 0: the array's finished group enters
            pv[0] <= res_valid; plast[0] <= res_g == groups - 1; pi[0] <= res_i; pg[0] <= res_g;
            for (q = 0; q < PE; q = q + 1) begin
                pe[q] <= requant($signed(res[q]) + $signed(bias_q[32 * q +: 32]), rq_q[0][32 * q +: 32],
                                 rq_q[1][32 * q +: 32], rq_q[2][32 * q +: 32], rq_clip[15:0], rq_clip[31:16]);
                pr[q] <= mode[9] ? r_q[16 * q +: 16] : {{8{r_q[8 * q + 7]}}, r_q[8 * q +: 8]};
                pvec[q] <= v_q[0][8 * q +: 8];
                pvec[PE + q] <= v_q[1][8 * q +: 8];
                pvec[2 * PE + q] <= v_q[2][8 * q +: 8];
                pvec[3 * PE + q] <= v_q[3][8 * q +: 8];
                pkeep[q] <= !mode[7] || v_q[0][8 * q +: 8] != 8'd0;
            end
            for (ps = 1; ps < EPI; ps = ps + 1) begin
                pv[ps] <= pv[ps - 1]; plast[ps] <= plast[ps - 1]; pi[ps] <= pi[ps - 1]; pg[ps] <= pg[ps - 1];
                for (q = 0; q < PE; q = q + 1) begin
                    pr[ps * PE + q] <= pr[(ps - 1) * PE + q];
                    pkeep[ps * PE + q] <= pkeep[(ps - 1) * PE + q];
                    for (st = 0; st < 4; st = st + 1)
                        pvec[(ps * 4 + st) * PE + q] <= pvec[((ps - 1) * 4 + st) * PE + q];
                    pe[ps * PE + q] <= pe[(ps - 1) * PE + q];            // a stage not used passes the value on
                    px[ps * PE + q] <= px[(ps - 1) * PE + q];
                end
            end
            for (q = 0; q < PE; q = q + 1) begin
                if (mode[1])
                    pe[PE + q] <= requant(pe[q], rq2_mul, rq2_shift, rq2_add, rq2_clip[15:0], rq2_clip[31:16]);
                if (mode[2] && !mode[8])
                    pe[2 * PE + q] <= lut_of(pe[PE + q]);
                for (st = 0; st < 5; st = st + 1) begin
                    if (st < stage_count) begin
                        ps = 2 + 2 * st;                                  // the stage holding the input
                        t0 = (stg[32 * (st * 12 + 2) +: 32] == 0) ? pe[ps * PE + q] : side(ps, st, q);
                        t1 = (stg[32 * (st * 12 + 2) +: 32] == 0) ? side(ps, st, q) : pe[ps * PE + q];
                        if (stg[32 * (st * 12) +: 32] == 1)   // AddRequant: (t0 - za) * mul_a + (t1 - zb) * mul_b
                            px[(ps + 1) * PE + q] <= (t0 - $signed(stg[32 * (st * 12 + 5) +: 32])) * $signed(stg[32 * (st * 12 + 3) +: 32])
                                                   + (t1 - $signed(stg[32 * (st * 12 + 6) +: 32])) * $signed(stg[32 * (st * 12 + 4) +: 32]);
                        else                     // MulRequant: (t0 - za) * (t1 - zb)
                            px[(ps + 1) * PE + q] <= (t0 - $signed(stg[32 * (st * 12 + 5) +: 32])) * (t1 - $signed(stg[32 * (st * 12 + 6) +: 32]));
                        pe[(ps + 2) * PE + q] <= requant(px[(ps + 1) * PE + q], stg[32 * (st * 12 + 7) +: 32], stg[32 * (st * 12 + 8) +: 32],
                                                         stg[32 * (st * 12 + 9) +: 32], stg[32 * (st * 12 + 10) +: 16],
                                                         stg[32 * (st * 12 + 11) +: 16]);
                    end
                end
                if (mode[2] && mode[8])
                    pe[(EPI - 1) * PE + q] <= lut_of(pe[(EPI - 2) * PE + q]);
            end
        end
    end

    // the group leaving the pipeline: its outputs (int16 lanes)
    wire               xv = pv[EPI - 1];
    wire               xlast = plast[EPI - 1];
    wire [15:0]        xi = pi[EPI - 1];
    wire [15:0]        xg = pg[EPI - 1];
    wire signed [15:0] epi [0:PE-1];
    wire               xkeep [0:PE-1];
    genvar gq;
    generate
        for (gq = 0; gq < PE; gq = gq + 1) begin : exit_lane
            assign epi[gq] = pe[(EPI - 1) * PE + gq][15:0];
            assign xkeep[gq] = pkeep[(EPI - 1) * PE + gq];
        end
    endgenerate

    // ---- streaming softmax: block max, renormalised denominator (on the groups leaving the pipeline) ------
    function [6:0] ita_shift;          // min((d + 2^(b-1)) >> b, 63) for a non-negative difference d
        input [15:0] d;
        reg [16:0] sh;
        begin
            sh = ({1'b0, d} + (17'd1 << (sm_bits - 1))) >> sm_bits;
            ita_shift = (sh > 63) ? 7'd63 : sh[6:0];
        end
    endfunction

    reg signed [15:0] gmax;            // running max of the row
    reg [31:0] denom;
    reg signed [15:0] bmax, new_max;
    reg [31:0] contrib;
    integer r;
    always @(*) begin
        bmax = -16'sd32768;                // no kept column in the block: it sets no max
        for (r = 0; r < PE; r = r + 1)
            if (xkeep[r] && epi[r] > bmax) bmax = epi[r];
        new_max = (bmax > gmax) ? bmax : gmax;
        contrib = 32'd0;
        for (r = 0; r < PE; r = r + 1)
            if (xkeep[r]) contrib = contrib + (32'd256 >> ita_shift(new_max - epi[r]));
    end
    wire [31:0] next_denom = ((bmax > gmax) ? (denom >> ita_shift(bmax - gmax)) : denom) + contrib;

    // ---- softmax tail: divider and normalisation of row t_i (buffer t_buf) ------------------------------
    reg [1:0]  tstate;
    reg [15:0] t_i, t_g;
    reg        t_buf, m_buf;           // row buffer of the tail's row / of the row being accumulated
    reg        pend;                   // a finished row waits for the tail (the pipeline holds meanwhile)
    reg [15:0] pend_i;
    reg signed [15:0] t_max;
    reg [31:0] t_denom;
    reg [33:0] rem;
    reg [31:0] quot, numer;
    reg [3:0]  dstep;
    reg        rowkeep [0:2*N_MAX-1];  // key mask of the row buffers' columns
    integer t;
    wire [31:0] inv_num = ((sm_levels >> 1) - 1) * 256;
    wire        tail_free = (tstate == T_IDLE) || (tstate == T_NORM && t_g == groups - 1);
    assign hold = pend;
    // radix-4 restoring division step: two numerator bits in, one quotient digit out
    wire [33:0] r4 = {rem[31:0], numer[15:14]};
    wire [33:0] d1 = {2'b00, t_denom};
    wire [33:0] d2 = {1'b0, t_denom, 1'b0};
    wire [33:0] d3 = d1 + d2;

    always @(posedge clk) begin
        if (rst) begin
            state <= S_IDLE; tstate <= T_IDLE; busy <= 1'b0; done <= 1'b0; res_valid <= 1'b0; cycles <= 32'd0;
            rsp_valid <= 1'b0; l1_rd_req <= 1'b0; l1_wr_en <= 1'b0; pend <= 1'b0; f_v <= 1'b0;
        end else begin
            if (busy) cycles <= cycles + 1;
            l1_wr_en <= 1'b0; l1_rd_req <= 1'b0; rsp_valid <= 1'b0;
            // softmax tail
            case (tstate)
                T_DIV: begin
                    if (r4 >= d3) begin rem <= r4 - d3; quot <= {quot[29:0], 2'd3}; end
                    else if (r4 >= d2) begin rem <= r4 - d2; quot <= {quot[29:0], 2'd2}; end
                    else if (r4 >= d1) begin rem <= r4 - d1; quot <= {quot[29:0], 2'd1}; end
                    else begin rem <= r4; quot <= {quot[29:0], 2'd0}; end
                    numer <= {numer[29:0], 2'b00};
                    dstep <= dstep + 1;
                    if (dstep == 4'd7) begin tstate <= T_NORM; t_g <= 0; end
                end
                T_NORM: begin    // out = clip((inverse >> ita_shift(max - x)) + offset)
                    l1_wr_en <= 1'b1;
                    l1_wr_addr <= y_addr + t_i * y_step + t_g * PE;
                    for (t = 0; t < PE; t = t + 1) begin
                        l1_wr_data[8 * t +: 8] <= sm_out(quot, t_max, row[t_buf * N_MAX + t_g * PE + t],
                                                         rowkeep[t_buf * N_MAX + t_g * PE + t]);
                        l1_wr_data[8 * (PE + t) +: 8] <= 8'd0;
                        l1_wr_be[t] <= t_g * PE + t < n;
                        l1_wr_be[PE + t] <= 1'b0;
                    end
                    if (t_g == groups - 1) begin
                        tstate <= T_IDLE;
                        if (t_i == m - 1) begin state <= S_IDLE; busy <= 1'b0; done <= 1'b1; end
                    end else begin
                        t_g <= t_g + 1;
                    end
                end
                default: ;
            endcase
            // the group leaving the epilogue pipeline (after the tail: a hand-over wins over the tail going idle)
            if (pend) begin                 // a row waits for the tail: hand it over once the tail is free
                if (tail_free) begin
                    tstate <= T_DIV; dstep <= 4'd0; rem <= 34'd0; quot <= 32'd0; numer <= inv_num;
                    t_i <= pend_i; t_buf <= m_buf; t_max <= gmax; t_denom <= denom;
                    m_buf <= ~m_buf; gmax <= -16'sd128; denom <= 32'd0; pend <= 1'b0;
                end
            end else if (xv && mode[3]) begin
                for (t = 0; t < PE; t = t + 1) begin
                    if (xg * PE + t < n) begin
                        row[m_buf * N_MAX + xg * PE + t] <= epi[t];
                        rowkeep[m_buf * N_MAX + xg * PE + t] <= xkeep[t];
                    end
                end
                gmax <= new_max;
                denom <= next_denom;
                if (xlast) begin
                    if (tail_free) begin     // hand the row to the tail
                        tstate <= T_DIV; dstep <= 4'd0; rem <= 34'd0; quot <= 32'd0; numer <= inv_num;
                        t_i <= xi; t_buf <= m_buf; t_max <= new_max; t_denom <= next_denom;
                        m_buf <= ~m_buf; gmax <= -16'sd128; denom <= 32'd0;
                    end else begin
                        pend <= 1'b1; pend_i <= xi;
                    end
                end
            end else if (xv) begin           // the group's outputs go straight to L1
                l1_wr_en <= 1'b1;
                l1_wr_addr <= y_addr + xi * y_step + xg * PE * (mode[6] ? 2 : 1);
                for (t = 0; t < PE; t = t + 1) begin
                    if (mode[6]) begin
                        l1_wr_data[16 * t +: 16] <= epi[t];
                        l1_wr_be[2 * t +: 2] <= (xg * PE + t < n) ? 2'b11 : 2'b00;
                    end else begin
                        l1_wr_data[8 * t +: 8] <= epi[t][7:0];
                        l1_wr_data[8 * (PE + t) +: 8] <= 8'd0;
                        l1_wr_be[t] <= xg * PE + t < n;
                        l1_wr_be[PE + t] <= 1'b0;
                    end
                end
                if (xlast && xi == m - 1) begin state <= S_IDLE; busy <= 1'b0; done <= 1'b1; end
            end
            // the array: multiply the chunk read last cycle
            if (!hold) begin
                res_valid <= 1'b0;
                if (f_v) begin
                    for (t = 0; t < PE; t = t + 1)
                        acc[t] <= (f_c == 0) ? partial[t] : acc[t] + partial[t];
                    if (f_c == chunks - 1) begin
                        for (t = 0; t < PE; t = t + 1)
                            res[t] <= (f_c == 0) ? partial[t] : acc[t] + partial[t];
                        res_valid <= 1'b1; res_g <= f_g; res_i <= f_i;
                    end
                end
            end
            // the loader and the array's control
            case (state)
                S_IDLE: begin
                    done <= 1'b0;
                    if (start) begin
                        busy <= 1'b1; cycles <= 32'd1; state <= S_LOAD; lseg <= 4'd0; lrow <= 16'd0; lbeat <= 16'd0;
                    end
                end
                S_LOAD: begin            // one beat per cycle
                    l1_rd_req <= 1'b1; l1_rd_addr <= cur_win;
                    rsp_valid <= 1'b1; rsp_seg <= lseg; rsp_win <= cur_win; rsp_lo <= cur_addr;
                    rsp_len <= seg_len[lseg]; rsp_bank <= lrow % NB;
                    rsp_dest <= (lseg == 4'd1) ? (lrow / NB) * b_len : seg_dest[lseg] + lrow * seg_dstride[lseg];
                    if (lbeat + 1 < cur_beats) lbeat <= lbeat + 1;
                    else begin
                        lbeat <= 16'd0;
                        if (lrow + 1 < seg_rows[lseg]) lrow <= lrow + 1;
                        else begin
                            lrow <= 16'd0; lseg <= next_seg;
                            if (next_seg == NSEG) state <= S_LWAIT;
                        end
                    end
                end
                S_LWAIT: begin           // the last beat's data lands in the buffers
                    state <= S_MAC; f_v <= 1'b0;
                    i <= 0; g <= 0; c <= 0; gmax <= -16'sd128; denom <= 32'd0; m_buf <= 1'b0;
                end
                S_MAC: if (!hold) begin      // read chunk c of group g of row i
                    f_v <= 1'b1; f_i <= i; f_g <= g; f_c <= c;
                    if (c == chunks - 1) begin
                        c <= 0;
                        if (g == groups - 1) state <= S_DRAIN;
                        else g <= g + 1;
                    end else begin
                        c <= c + 1;
                    end
                end
                S_DRAIN: if (!hold) begin    // a bubble between rows
                    f_v <= 1'b0; g <= 0;
                    if (i == m - 1) state <= S_FLUSH;
                    else begin i <= i + 1; state <= S_MAC; end
                end
                S_FLUSH: if (!hold) f_v <= 1'b0;   // the array, the epilogue (and the tail) finish the last rows
                default: state <= S_IDLE;
            endcase
        end
    end

    function [7:0] sm_out;   // clip((inverse >> ita_shift(max - x)) + offset), then the optional requant (bit 4);
        input [31:0] inverse;    // a masked column's probability is 0
        input signed [15:0] mx, x;
        input kept;
        reg signed [31:0] v;
        reg signed [63:0] w;
        reg signed [15:0] lo, hi;
        begin
            lo = sm_clip[15:0]; hi = sm_clip[31:16];
            v = (kept ? $signed(inverse >> ita_shift(mx - x)) : 32'sd0) + $signed(sm_offset);
            v = (v < lo) ? lo : ((v > hi) ? hi : v);
            w = mode[4] ? requant(v, rq3_mul, rq3_shift, rq3_add, rq3_clip[15:0], rq3_clip[31:16]) : v;
            sm_out = w[7:0];
        end
    endfunction
endmodule

// A buffer of BYTES bytes as two SRAM macros of 128-byte rows, even rows in one and odd rows in the other, so that
// any 128 contiguous bytes sit in at most one row of each. Per cycle: one write of `wlen` contiguous bytes at byte
// `waddr` (each macro writes one row, with byte enables) and one read of the 128 bytes at `raddr` (each macro reads
// one row; `rdata` is valid in the next cycle and held while `re` is low).
module ita_banked #(
    parameter BYTES = 8192
) (
    input  wire          clk,
    input  wire          we,
    input  wire [31:0]   waddr,
    input  wire [7:0]    wlen,
    input  wire [1023:0] wdata,
    input  wire          re,
    input  wire [31:0]   raddr,
    output wire [1023:0] rdata
);
    localparam ROWS = (BYTES + 255) / 256;     // rows per macro
    wire [1023:0] q_even, q_odd;
    reg [6:0]    r_shift;
    reg          r_odd_first;

    wire [31:0]   w_row = waddr >> 7;            // the first row written; the next one may get the rest
    wire [2047:0] w_cat = {1024'd0, wdata} << (8 * waddr[6:0]);
    wire [255:0]  w_be = ((256'd1 << wlen) - 256'd1) << waddr[6:0];
    wire [1023:0] even_d = w_row[0] ? w_cat[2047:1024] : w_cat[1023:0];
    wire [127:0]  even_be = w_row[0] ? w_be[255:128] : w_be[127:0];
    wire [1023:0] odd_d = w_row[0] ? w_cat[1023:0] : w_cat[2047:1024];
    wire [127:0]  odd_be = w_row[0] ? w_be[127:0] : w_be[255:128];
    wire [31:0]   r_row = raddr >> 7;
    // each macro as 128 byte lanes (a byte-write SRAM): lane j of a row is byte j
    genvar gl;
    generate
        for (gl = 0; gl < 128; gl = gl + 1) begin : lane
            reg [7:0] even [0:ROWS-1];
            reg [7:0] odd  [0:ROWS-1];
            reg [7:0] q_e, q_o;
            always @(posedge clk) begin
                if (we && even_be[gl]) even[(w_row + 1) >> 1] <= even_d[8 * gl +: 8];
                if (we && odd_be[gl]) odd[w_row >> 1] <= odd_d[8 * gl +: 8];
                if (re) begin
                    q_e <= even[(r_row + 1) >> 1];
                    q_o <= odd[r_row >> 1];
                end
            end
            assign q_even[8 * gl +: 8] = q_e;
            assign q_odd[8 * gl +: 8] = q_o;
        end
    endgenerate
    always @(posedge clk) begin
        if (re) begin
            r_shift <= raddr[6:0];
            r_odd_first <= r_row[0];
        end
    end
    wire [2047:0] r_cat = r_odd_first ? {q_even, q_odd} : {q_odd, q_even};
    assign rdata = r_cat >> (8 * r_shift);
endmodule
