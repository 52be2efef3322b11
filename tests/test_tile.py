"""L1 tiling (passes/tile.py): feasible tiles fit the budget, weights stay resident, infeasible ops fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from tinydeploy.errors import TinyDeployError
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.passes.tile import Bandwidth, Operand, operand_tile, tile_node

BW = Bandwidth({"l1": 8, "l2": 8, "l3": 4}, 30)


def matmul_graph(m: int, k: int, n: int) -> tuple[Graph, Node, list[Operand]]:
    graph = Graph()
    graph.add_tensor(Tensor("a", "int8", (1, m, k)))
    graph.add_const("w", np.ones((k, n), dtype=np.int8), "int8")
    graph.add_tensor(Tensor("y", "int32", (1, m, n)))
    node = Node("mm", "MatMulInt", ["a", "w"], ["y"], {})
    graph.nodes.append(node)
    operands = [Operand("a", "in", (1, m, k), "int8"), Operand("w", "in", (k, n), "int8", "l3"),
                Operand("y", "out", (1, m, n), "int32")]
    return graph, node, operands


def test_slab_geometry_is_one_2d_transfer():
    """A slab along axis 1 of [4, 6, 5] int16: 4 rows of tile*5*2 bytes, 6*5*2 bytes apart."""
    tile = operand_tile(Operand("x", "in", (4, 6, 5), "int16"), 1, 2, 3)
    assert (tile.rows, tile.row_bytes, tile.stride, tile.step, tile.buffers) == (4, 20, 60, 20, 2)
    assert tile.tile_shape == (4, 2, 5)


def test_row_tiled_matmul_keeps_the_weights_resident_and_fits():
    graph, node, operands = matmul_graph(128, 512, 128)
    step = tile_node(graph, 0, node, operands, budget=160 * 1024, cores=8, bw=BW)
    assert step.l1_bytes <= 160 * 1024
    assert step.tiles > 1 and step.axis == 1                 # split along M
    weights = next(t for t in step.operands if t.operand.key == "w")
    assert weights.axis is None and weights.step == 0 and weights.buffers == 1
    a = next(t for t in step.operands if t.operand.key == "a")
    assert a.buffers == 2 and a.tile_shape == (1, step.tile, 512)
    offsets = sorted((t.l1_offset, t.l1_bytes) for t in step.operands)
    assert all(o1 + b1 <= o2 for (o1, b1), (o2, _) in zip(offsets, offsets[1:], strict=False))


def test_weights_too_large_for_l1_are_split_along_n():
    graph, node, operands = matmul_graph(128, 512, 512)      # 256 KiB of weights
    step = tile_node(graph, 0, node, operands, budget=200 * 1024, cores=8, bw=BW)
    assert step.axis == 2
    weights = next(t for t in step.operands if t.operand.key == "w")
    assert weights.axis == 1 and weights.rows == 512 and weights.stride == 512


def test_no_feasible_tiling_names_the_node():
    graph, node, operands = matmul_graph(128, 4096, 128)     # one row of A plus one column of W > budget
    with pytest.raises(TinyDeployError, match=r"mm.*no tiling of this MatMulInt fits L1"):
        tile_node(graph, 0, node, operands, budget=4 * 1024, cores=8, bw=BW)


def test_more_bandwidth_never_models_slower():
    graph, node, operands = matmul_graph(64, 256, 256)
    slow = tile_node(graph, 0, node, operands, budget=96 * 1024, cores=8, bw=Bandwidth({"l1": 1, "l2": 1, "l3": 1}, 30))
    fast = tile_node(graph, 0, node, operands, budget=96 * 1024, cores=8, bw=BW)
    assert fast.model["cycles"] <= slow.model["cycles"]
    assert slow.model["cycles"] >= slow.model["dma"] // 2


def test_packed_weights_move_as_one_row_per_tile_and_model_cheaper():
    """A constant only this step reads is stored tile after tile (backends/riscv pack_constants): a column slice
    of [512, 512] weights is one contiguous DMA row, not 512 short rows, so the same split models fewer cycles."""
    from tinydeploy.backends.riscv.tiled import pack_constants
    from tinydeploy.passes.tile import TilePlan

    graph, node, operands = matmul_graph(128, 512, 512)
    packed_ops = [*operands[:1], Operand("w", "in", (512, 512), "int8", "l3", packed=True), operands[2]]
    plain = tile_node(graph, 0, node, operands, budget=200 * 1024, cores=8, bw=BW)
    packed = tile_node(graph, 0, node, packed_ops, budget=200 * 1024, cores=8, bw=BW)
    weights = next(t for t in packed.operands if t.operand.key == "w")
    assert packed.axis == 2 and weights.rows == 1 and weights.row_bytes == weights.step == 512 * packed.tile
    assert packed.model["cycles"] < plain.model["cycles"]
    values = np.arange(512 * 512, dtype=np.int32).reshape(512, 512)
    stored = pack_constants({"w": values}, TilePlan({0: packed}, 200 * 1024, packed.l1_bytes), {})["w"]
    second = stored.reshape(-1)[weights.step:2 * weights.step].reshape(512, packed.tile)
    assert np.array_equal(second, values[:, packed.tile:2 * packed.tile])


def test_two_d_geometry_of_boxes():
    """Contiguous runs innermost, the rest one strided row dimension, or None when a 2-D DMA cannot do it."""
    from tinydeploy.passes.tile import two_d_geometry
    assert two_d_geometry((1, 128, 32), [16384, 128, 1]) == (128, 32, 128)      # a column slab
    assert two_d_geometry((4, 8), [8, 1]) == (1, 32, 32)                        # contiguous
    assert two_d_geometry((4, 2, 32), [32, 128, 1]) is None                     # two row strides


def test_a_transposed_view_is_tiled_one_head_per_2d_transfer():
    """Q heads [1, H, S, D] stored as [1, S, H, D]: a head is S rows of D bytes, H*D apart, heads D bytes apart;
    a tile of 2 heads is not one 2-D transfer."""
    view = Operand("q", "in", (1, 4, 128, 32), "int8", storage=((1, 128, 4, 32), (0, 2, 1, 3)))
    head = operand_tile(view, 1, 1, 4)
    assert (head.rows, head.row_bytes, head.stride, head.step, head.buffers) == (128, 32, 128, 32, 2)
    assert operand_tile(view, 1, 2, 2) is None
    assert operand_tile(view, None, 1, 1) is None
    rows = operand_tile(view, 2, 64, 2)                                        # all heads, half the rows: no
    assert rows is None


def test_a_gather_with_constant_indices_is_one_dma_row_per_index():
    """The pooler's first-token Gather: one 2-D transfer of the selected rows, no core loop, no table load."""
    from tinydeploy.backends.riscv.dma_copy import copy_plan
    graph = Graph()
    graph.add_tensor(Tensor("h", "int8", (1, 128, 512)))
    graph.add_const("i", np.array(3, dtype=np.int64), "int64")
    graph.add_tensor(Tensor("cls", "int8", (1, 512)))
    node = Node("g", "Gather", ["h", "i"], ["cls"], {"axis": 1})
    graph.nodes.append(node)
    plan = copy_plan(graph, node)
    assert plan is not None and not plan.fills
    (transfer,) = plan.transfers
    assert (transfer.source, transfer.src, transfer.dst, transfer.row_bytes, transfer.rows) == (0, 3 * 512, 0, 512, 1)
    graph.tensors["i"] = Tensor("i", "int64", (128,))                         # run-time indices: the kernel
    assert copy_plan(graph, node) is None


def _two_matmuls(first_out_level: str):
    """Steps 0 and 1 on one tile each: a 4 x 16 x 16 matmul, then 4 x 16 x 1024 whose 16 KiB of weights live in L3;
    and the DMA cycles of those weights."""
    from tinydeploy.passes.tile import TilePlan, choose_tiling, tile_candidates

    graph, node, operands = matmul_graph(4, 16, 16)
    graph.add_const("w2", np.ones((16, 1024), dtype=np.int8), "int8")
    second = Node("mm2", "MatMulInt", ["a", "w2"], ["y2"], {})
    graph.add_tensor(Tensor("y2", "int32", (1, 4, 1024)))
    graph.nodes.append(second)
    first_ops = [operands[0], operands[1], Operand("y", "out", (1, 4, 16), "int32", first_out_level)]
    second_ops = [operands[0], Operand("w2", "in", (16, 1024), "int8", "l3"),
                  Operand("y2", "out", (1, 4, 1024), "int32")]
    whole = [c for c in tile_candidates(graph, 1, second, second_ops, cores=8, bw=BW) if c.tiles == 1]
    steps = {0: tile_node(graph, 0, node, first_ops, budget=64 * 1024, cores=8, bw=BW),
             1: choose_tiling(whole, 64 * 1024)}
    return TilePlan(steps, 64 * 1024, 0), BW.cycles("l3", 16 * 1024)


@pytest.mark.parametrize("first_out_level", ["l2", "l1"])
def test_prefetched_loads_are_waited_for_where_the_dma_queue_puts_them(first_out_level):
    """The DMA engine is one queue (sim/cluster.py). Step 0 issues step 1's weight load during its last tile: the
    part its compute does not hide is waited for by step 0 when it closes with a store (queued behind the load),
    by step 1 when step 0's output stays in L1; step 1 no longer pays for the load itself either way."""
    from tinydeploy.passes.tile import prefetch_across_steps

    plan, load = _two_matmuls(first_out_level)
    before, after = plan.steps[0].model["cycles"], plan.steps[1].model["cycles"]
    exposed = max(0, load - plan.steps[0].model["compute"])
    assert exposed > 0                                    # from L3, it outlasts the small first matmul
    prefetch_across_steps(plan, [(0, 1, ["w2"])], {0: 64 * 1024, 1: 64 * 1024}, BW)
    assert plan.steps[1].prefetched == ("w2",)
    if first_out_level == "l2":
        assert plan.steps[0].model["cycles"] == before + exposed
        assert plan.steps[1].model["cycles"] == after - load
    else:
        assert plan.steps[0].model["cycles"] == before
        assert plan.steps[1].model["cycles"] == after - load + exposed


def test_the_ir_says_which_ops_are_elementwise_and_the_cluster_kernel_takes_exactly_those():
    """The tiler splits an elementwise op along any axis from the IR's op definition; the backend's strided
    elementwise kernel covers the same set (one fact, one place: ir/ops.py)."""
    from tinydeploy.backends.lowering import ELEMENTWISE
    from tinydeploy.ir.ops import OPS

    assert {name for name, definition in OPS.items() if definition.elementwise} == set(ELEMENTWISE)
