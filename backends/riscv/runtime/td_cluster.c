/* Cluster runtime: entry after crt0, console output, trace, the DMA tile loop. */
#include <stddef.h>
#include <stdint.h>

#include "td_dma.h"
#include "td_parallel.h"

int main(void);

/* Called by every hart once .bss is clear (hart 0 cleared it before arriving here). */
int td_start(void)
{
    td_barrier();
    return main();
}


/* --- tile loop (see td_dma.h) ------------------------------------------------------------------------ */
static uint32_t td_tile_pending[2]; /* DMA id completing each buffer parity's inputs (hart 0) */

static uint32_t td_tile_inputs(const td_xfer *x, int32_t n, int32_t t, int32_t first)
{
    uint32_t id = 0;
    for (int32_t i = 0; i < n; ++i) {
        if (x[i].is_output || (x[i].l2_step == 0 && !first)) {
            continue;
        }
        id = td_dma_2d(x[i].l1 + (t & 1) * x[i].l1_step, x[i].l2 + t * x[i].l2_step, x[i].row_bytes, x[i].rows,
                       x[i].stride, x[i].row_bytes);
    }
    return id;
}

static uint32_t td_tile_outputs(const td_xfer *x, int32_t n, int32_t t)
{
    uint32_t id = 0;
    for (int32_t i = 0; i < n; ++i) {
        if (x[i].is_output) {
            id = td_dma_2d(x[i].l2 + t * x[i].l2_step, x[i].l1 + (t & 1) * x[i].l1_step, x[i].row_bytes, x[i].rows,
                           x[i].row_bytes, x[i].stride);
        }
    }
    return id;
}

void td_tiles_begin(const td_xfer *x, int32_t n)
{
    if (td_hart_id() == 0) {
        td_tile_pending[0] = td_tile_inputs(x, n, 0, 1);
        td_tile_pending[1] = 0;
    }
}

void td_tile_ready(const td_xfer *x, int32_t n, int32_t t, int32_t tiles)
{
    if (t > 0) {
        td_barrier(); /* every hart is done with tile t-1: its output may be stored, its input buffers reused */
    }
    if (td_hart_id() == 0) {
        if (t > 0) {
            (void)td_tile_outputs(x, n, t - 1);
        }
        if (t + 1 < tiles) {
            td_tile_pending[(t + 1) & 1] = td_tile_inputs(x, n, t + 1, 0);
        }
        if (td_tile_pending[t & 1] != 0) {
            td_dma_wait(td_tile_pending[t & 1]);
        }
    }
    td_barrier();
}

void td_tiles_end(const td_xfer *x, int32_t n, int32_t tiles)
{
    td_barrier();
    if (td_hart_id() == 0) {
        uint32_t id = td_tile_outputs(x, n, tiles - 1);
        if (id != 0) {
            td_dma_wait(id);
        }
    }
}
