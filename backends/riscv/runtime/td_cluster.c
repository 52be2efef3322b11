/* Cluster runtime: entry after crt0, console output, trace, the DMA tile loop. */
#include <stddef.h>
#include <stdint.h>

#include "td_accel.h"
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
static uint32_t td_tile_stored[2];  /* DMA id completing the store out of each parity's output buffers */
static const td_xfer *td_next;      /* the next step's operands this step loads during its last tile (hart 0) */
static int32_t td_next_n;
static uint32_t td_prefetch_id;     /* DMA id completing that prefetch */
#ifdef TD_REG_IO_DMA_START
static uint32_t td_next_staged;     /* I/O DMA id with which the next step's staged weights have arrived (hart 0) */
static const uint32_t *td_staged_ids;    /* this step's staged weights: the I/O transfer ids (td_tiles_staged) */
static const uint16_t *td_staged_slot;   /* and, per tile, the slot of the last transfer its loads read */

/* Before tile t's loads: wait for the staged chunks they read. */
static inline void td_tile_staged_wait(int32_t t)
{
    if (td_staged_slot != NULL && td_staged_slot[t] != TD_STAGED_NONE) {
        td_io_dma_wait(td_staged_ids[td_staged_slot[t]]);
    }
}
#define TD_TILE_STAGED_WAIT(t) td_tile_staged_wait(t)
#else
#define TD_TILE_STAGED_WAIT(t) ((void)(t))
#endif

static uint32_t td_tile_inputs(const td_xfer *x, int32_t n, int32_t t, int32_t first)
{
    uint32_t id = 0;
    for (int32_t i = 0; i < n; ++i) {
        if (x[i].is_output == TD_XFER_OUT || (x[i].l2_step == 0 && !first) ||
            (first && x[i].is_output == TD_XFER_PREFETCHED)) {
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
        if (x[i].is_output == TD_XFER_OUT) {
            id = td_dma_2d(x[i].l2 + t * x[i].l2_step, x[i].l1 + (t & 1) * x[i].l1_step, x[i].row_bytes, x[i].rows,
                           x[i].row_bytes, x[i].stride);
        }
    }
    return id;
}

/* Tile t's inputs have arrived and tile t-2's store out of the same buffers is done (ids complete in order). */
static void td_tile_wait(int32_t t)
{
    uint32_t id = td_tile_pending[t & 1] > td_tile_stored[t & 1] ? td_tile_pending[t & 1] : td_tile_stored[t & 1];
    if (id != 0) {
        td_dma_wait(id);
    }
    td_tile_pending[t & 1] = 0;
    td_tile_stored[t & 1] = 0;
}

/* Start tile 0's loads (resident operands too, but not what the previous step prefetched) and reset the loop. */
static inline void td_tile_first(const td_xfer *x, int32_t n)
{
    TD_TILE_STAGED_WAIT(0);
    uint32_t id = td_tile_inputs(x, n, 0, 1);
    td_tile_pending[0] = id > td_prefetch_id ? id : td_prefetch_id; /* ids complete in order */
    td_tile_pending[1] = 0;
    td_tile_stored[0] = td_tile_stored[1] = 0;
    td_prefetch_id = 0;
}

/* Start tile t+1's loads; during the last tile, the next step's first tile (into L1 this step does not use). */
static inline void td_tile_refill(const td_xfer *x, int32_t n, int32_t t, int32_t tiles)
{
    if (t + 1 < tiles) {
        TD_TILE_STAGED_WAIT(t + 1);
        td_tile_pending[(t + 1) & 1] = td_tile_inputs(x, n, t + 1, 0);
    } else if (td_next != NULL) {
#ifdef TD_REG_IO_DMA_START
        if (td_next_staged != 0) {         /* the prefetch may read weights the I/O DMA is still staging */
            td_io_dma_wait(td_next_staged);
            td_next_staged = 0;
        }
#endif
        td_prefetch_id = td_tile_inputs(td_next, td_next_n, 0, 1);
        td_next = NULL;
    }
}

#ifdef TD_REG_IO_DMA_START
void td_tiles_next_staged(uint32_t io_id)
{
    if (td_hart_id() == 0) {
        td_next_staged = io_id;
    }
}

void td_tiles_staged(const uint32_t *ids, const uint16_t *slot_per_tile)
{
    if (td_hart_id() == 0) {
        td_staged_ids = ids;
        td_staged_slot = slot_per_tile;
    }
}
#endif

/* The step is over: its staged-weight table no longer applies. */
static inline void td_tiles_staged_clear(void)
{
#ifdef TD_REG_IO_DMA_START
    td_staged_slot = NULL;
#endif
}

void td_tiles_next(const td_xfer *next, int32_t n)
{
    if (td_hart_id() == 0) {
        td_next = next;
        td_next_n = n;
    }
}

void td_tiles_begin(const td_xfer *x, int32_t n)
{
    if (td_hart_id() == 0) {
        td_tile_first(x, n);
    }
}

void td_tile_ready(const td_xfer *x, int32_t n, int32_t t, int32_t tiles)
{
    if (t > 0) {
        td_barrier(); /* every hart is done with tile t-1: its output may be stored, its input buffers reused */
    }
    if (td_hart_id() == 0) {
        if (t > 0) {
            td_tile_stored[(t - 1) & 1] = td_tile_outputs(x, n, t - 1);
        }
        td_tile_refill(x, n, t, tiles);
        td_tile_wait(t);
    }
    td_barrier();
}

/* Store the last tile and wait until it is in L2/L3. */
static void td_tile_store_last(const td_xfer *x, int32_t n, int32_t tiles)
{
    uint32_t id = td_tile_outputs(x, n, tiles - 1);
    if (id != 0) {
        td_dma_wait(id);
    }
}

void td_tiles_end(const td_xfer *x, int32_t n, int32_t tiles)
{
    td_barrier();
    if (td_hart_id() == 0) {
        td_tile_store_last(x, n, tiles);
        td_tiles_staged_clear();
    }
}

#ifdef TD_REG_ACCEL_START
/* --- accelerator tile loop (see td_dma.h): hart 0 only, refill before or after queueing a job ----------- */
static const td_xfer *td_accel_x;  /* the step's operand table, tile count and loop order (td_accel_tiles_begin) */
static int32_t td_accel_n, td_accel_tiles, td_accel_refill_first;
static uint32_t td_accel_previous; /* the job of tile t-1, still running while tile t's job is queued */

void td_accel_tiles_begin(const td_xfer *x, int32_t n, int32_t tiles, int32_t refill_first)
{
    td_tile_first(x, n);
    td_accel_x = x;
    td_accel_n = n;
    td_accel_tiles = tiles;
    td_accel_refill_first = refill_first;
    td_accel_previous = 0;
}

/* Wait for job t-1, store its tile, refill its buffers with tile t+1's inputs. */
static void td_accel_finish_previous(int32_t t)
{
    if (t > 0) {
        td_accel_wait(td_accel_previous);
        td_tile_stored[(t - 1) & 1] = td_tile_outputs(td_accel_x, td_accel_n, t - 1);
    }
    td_tile_refill(td_accel_x, td_accel_n, t, td_accel_tiles);
}

void td_accel_tile_ready(int32_t t)
{
    if (td_accel_refill_first) {
        td_accel_finish_previous(t); /* DMA bound: tile t+1's loads queue behind tile t's, the DMA never idles */
    }
    td_tile_wait(t);
}

void td_accel_tile_queued(int32_t t, uint32_t job)
{
    if (!td_accel_refill_first) {
        td_accel_finish_previous(t); /* compute bound: job t is queued before job t-1 ends */
    }
    td_accel_previous = job;
}

void td_accel_tiles_end(void)
{
    td_accel_wait(td_accel_previous);
    td_tile_store_last(td_accel_x, td_accel_n, td_accel_tiles);
    td_tiles_staged_clear();
}
#endif /* TD_REG_ACCEL_START */
