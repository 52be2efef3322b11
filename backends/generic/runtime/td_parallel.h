/*
 * Parallel execution model of the portable target: one core, so every kernel does all of its work.
 * Multi-core backends ship their own td_parallel.h (same macros) in place of this one.
 */
#ifndef TD_PARALLEL_H
#define TD_PARALLEL_H

#define TD_HART_ID 0
#define TD_NUM_CORES 1
#define TD_BARRIER() ((void)0)
#define TD_LAYER_BEGIN(index) ((void)0)
#define TD_LAYER_END(index) ((void)0)

#endif /* TD_PARALLEL_H */
