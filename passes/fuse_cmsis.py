"""Map `MatMulInt -> RequantCMSIS` onto CMSIS-NN kernels: with constant weights onto the fully-connected kernel
(FullyConnectedS8), between two activations (attention) onto arm_batch_matmul_s8 (BatchMatMulS8); and int8
`Mul -> RequantCMSIS` onto arm_elementwise_mul_s8 (MulS8, TFLite's Mul is exactly that pair).

CMSIS-NN's `arm_fully_connected_per_channel_s8` takes int8 activations with an input offset, symmetric int8
weights in [out, in] layout, an int32 bias and a per-output-channel requantization (contract 2). The pass
transposes the weights at compile time when needed and folds the input offset into the bias (weights are
constants, so -a_zero * sum(w) is exact); FullyConnectedS8 is defined by composing the two ops it
replaces (ir/ops.py), so results are unchanged; a verifier runs after.
"""

from __future__ import annotations

import numpy as np

from ..ir import arith
from ..ir.graph import Graph, Node, Tensor
from ..ir.verify import verify
from .layout import swap_last_axes_of_producer


def _per_channel(value, n: int) -> np.ndarray | None:
    arr = np.asarray(value, dtype=np.int64)
    if arr.size == 1:
        return np.full(n, int(arr.reshape(-1)[0]), dtype=np.int64)
    return arr.reshape(n) if arr.size == n and arr.shape[-1] == n else None


def _fused(graph: Graph, mm: Node, requant: Node) -> Node | None:
    x, w = graph.tensors[mm.inputs[0]], graph.tensors[mm.inputs[1]]
    at = mm.attrs
    if (x.dtype != "int8" or w.dtype != "int8" or not w.is_const or len(w.shape) != 2 or at.get("b_zero", 0)
            or at.get("trans_a") or graph.tensors[requant.outputs[0]].dtype not in ("int8", "int16")):
        return None                     # int16: tinydeploy's td_fully_connected_s8_s16 (CMSIS-NN writes int8)
    weights = np.asarray(w.data) if at.get("trans_b") else np.asarray(w.data).T
    n = weights.shape[0]
    multiplier, shift = (_per_channel(requant.attrs[k], n) for k in ("multiplier", "shift"))
    if multiplier is None or shift is None or np.asarray(requant.attrs["zero_point"]).size != 1:
        return None
    bias = np.zeros(n, dtype=np.int64)
    if len(mm.inputs) > 2 and mm.inputs[2]:
        given = graph.tensors[mm.inputs[2]]
        if given.dtype != "int32" or given.size != n or not given.is_const:
            return None
        bias += np.asarray(given.data, dtype=np.int64).reshape(n)
    # the input offset folds into the bias, so the kernel multiplies raw int8 pairs (no offset additions in the
    # inner loop), as CMSIS-NN's kernel sums do
    bias = arith.bias_without_zero_point(bias, weights, int(at.get("a_zero", 0)), depth_axis=1)
    if bias is None:
        return None
    bias_name = graph.add_const(graph.unique_name(f"{mm.name}/bias_folded"), bias.astype(np.int32), "int32").name
    filter_name = graph.add_const(graph.unique_name(f"{w.name}/out_in"), np.ascontiguousarray(weights).astype(np.int8),
                                  "int8").name
    attrs = {"a_zero": 0, "multiplier": multiplier.astype(np.int32),
             "shift": shift.astype(np.int32), "zero_point": int(requant.attrs["zero_point"]),
             "lo": int(requant.attrs["lo"]), "hi": int(requant.attrs["hi"])}
    return Node(f"{mm.name}/fc", "FullyConnectedS8", [mm.inputs[0], filter_name, bias_name],
                list(requant.outputs), attrs, origin=mm.origin)


def _batch_operand(graph: Graph, mm: Node, producers: dict[str, Node], consumers: dict[str, list[Node]],
                   new_nodes: list[tuple[str, Node]]) -> str:
    """The rhs in CMSIS-NN's transposed [.., N, K] layout: as is (trans_b), by re-permuting the Transpose that
    produced it, or through a new Transpose inserted before the matmul."""
    rhs = mm.inputs[1]
    if mm.attrs.get("trans_b"):
        return rhs
    if swap_last_axes_of_producer(graph, rhs, producers, consumers):
        return rhs
    t = graph.tensors[rhs]
    name = graph.unique_name(f"{rhs}/transposed")
    graph.add_tensor(Tensor(name, t.dtype, (*t.shape[:-2], t.shape[-1], t.shape[-2])))
    perm = list(range(len(t.shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    new_nodes.append((mm.name, Node(f"{mm.name}/rhs_transpose", "Transpose", [rhs], [name], {"perm": perm},
                                    origin=mm.origin)))
    return name


def _batched(graph: Graph, mm: Node, requant: Node, producers, consumers, new_nodes) -> Node | None:
    a, b = graph.tensors[mm.inputs[0]], graph.tensors[mm.inputs[1]]
    at, rq = mm.attrs, requant.attrs
    if (a.dtype != "int8" or b.dtype != "int8" or a.is_const or b.is_const or at.get("trans_a")
            or graph.tensors[requant.outputs[0]].dtype != "int8" or len(mm.inputs) > 2
            or not 3 <= len(a.shape) <= 4 or len(a.shape) != len(b.shape)
            or any(np.asarray(rq[k]).size != 1 for k in ("multiplier", "shift", "zero_point"))):
        return None
    rhs = _batch_operand(graph, mm, producers, consumers, new_nodes)
    attrs = {"a_zero": int(at.get("a_zero", 0)), "b_zero": int(at.get("b_zero", 0)),
             "multiplier": int(np.asarray(rq["multiplier"]).reshape(-1)[0]),
             "shift": int(np.asarray(rq["shift"]).reshape(-1)[0]), "zero_point": int(rq["zero_point"]),
             "lo": int(rq["lo"]), "hi": int(rq["hi"])}
    return Node(f"{mm.name}/bmm", "BatchMatMulS8", [mm.inputs[0], rhs], list(requant.outputs), attrs,
                origin=mm.origin)


def _mul_s8(graph: Graph, mul: Node, requant: Node) -> Node | None:
    """Mul -> RequantCMSIS of int8 operands with per-tensor parameters: arm_elementwise_mul_s8 (MulS8)."""
    rq = requant.attrs
    if (any(graph.tensors[name].dtype != "int8" for name in [*mul.inputs, *requant.outputs])
            or any(np.asarray(rq[k]).size != 1 for k in ("multiplier", "shift", "zero_point"))):
        return None
    attrs = {"a_zero": int(mul.attrs.get("a_zero", 0)), "b_zero": int(mul.attrs.get("b_zero", 0)),
             **{k: int(np.asarray(rq[k]).reshape(-1)[0]) for k in ("multiplier", "shift", "zero_point", "lo", "hi")}}
    return Node(f"{mul.name}/mul_s8", "MulS8", list(mul.inputs), list(requant.outputs), attrs, origin=mul.origin)


def fuse_fully_connected(graph: Graph) -> tuple[Graph, int]:
    """A new graph where every eligible MatMulInt -> RequantCMSIS pair is one FullyConnectedS8 or BatchMatMulS8
    (the count is returned) and every int8 Mul -> RequantCMSIS pair one MulS8."""
    graph = graph.copy()
    consumers, producers = graph.consumers(), graph.producers()
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()
    inserted: list[tuple[str, Node]] = []      # (matmul name, Transpose to run before it)
    for mm in [n for n in graph.nodes if n.op in ("MatMulInt", "Mul")]:
        users = consumers.get(mm.outputs[0], [])
        if len(users) != 1 or users[0].op != "RequantCMSIS" or mm.outputs[0] in graph.outputs:
            continue
        if mm.op == "Mul":
            fused = _mul_s8(graph, mm, users[0])
        else:
            fused = _fused(graph, mm, users[0]) or _batched(graph, mm, users[0], producers, consumers, inserted)
        if fused is not None:
            replaced[users[0].name] = fused
            dropped.add(mm.name)
    before = {name: node for name, node in inserted}
    nodes = []
    for n in graph.nodes:
        if n.name in before:
            nodes.append(before[n.name])
        if n.name not in dropped:
            nodes.append(replaced.get(n.name, n))
    graph.nodes = nodes
    graph.remove_unused()
    verify(graph, integer_only=True)
    return graph, sum(n.op in ("FullyConnectedS8", "BatchMatMulS8") for n in replaced.values())
