"""Fuse an elementwise Add or Mul with the Requant that consumes it (AddRequant, MulRequant).

On the cluster every op is a pass over L2 through DMA-fed L1 tiles; MobileBERT's NoNorm and residual adds are
Add/Mul -> Requant pairs, so fusing them halves the passes and never materialises the int32 intermediate.
The fused ops are defined by composition (ir/ops.py), so results are unchanged; a verifier runs after.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node, Tensor
from ..ir.verify import verify

FUSABLE = ("Add", "Mul")


def fuse_elementwise(graph: Graph) -> tuple[Graph, int]:
    """A new graph with every Add/Mul -> Requant pair (single consumer, not a graph output) fused; and the count."""
    graph = graph.copy()
    consumers = graph.consumers()
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()
    for node in graph.nodes:
        if node.op not in FUSABLE or node.outputs[0] in graph.outputs:
            continue
        users = consumers.get(node.outputs[0], [])
        if len(users) != 1 or users[0].op != "Requant":
            continue
        requant = users[0]
        clash = set(node.attrs) & set(requant.attrs)
        if clash:
            continue
        replaced[requant.name] = Node(f"{node.name}/requant", f"{node.op}Requant", list(node.inputs),
                                      list(requant.outputs), {**node.attrs, **requant.attrs}, origin=node.origin)
        dropped.add(node.name)
    graph.nodes = [replaced.get(n.name, n) for n in graph.nodes if n.name not in dropped]
    graph.remove_unused()
    verify(graph, integer_only=True)
    return graph, len(replaced)


def per_tensor_requant(requant: Node) -> bool:
    """A requant's multiplier, shift and offset are one value each for the whole tensor."""
    return all(np.asarray(requant.attrs[k]).size == 1 for k in ("mul", "shift", "add"))


def fuse_norm_copies(graph: Graph) -> tuple[Graph, int]:
    """A new graph where each ILayerNorm whose output a per-tensor Requant reads computes that Requant too
    (ILayerNormRequant, two outputs); and the count. A post-LN BERT's LayerNorm writes the int16 residual stream
    and the GEMMs read an int8 copy of it: one pass over the rows instead of two (MiniLM: 13 passes saved)."""
    graph = graph.copy()
    consumers = graph.consumers()
    fused: dict[str, Node] = {}
    dropped: set[str] = set()
    for node in graph.nodes:
        if node.op != "ILayerNorm":
            continue
        copy = next((u for u in consumers.get(node.outputs[0], []) if u.op == "Requant" and per_tensor_requant(u)),
                    None)
        if copy is None:
            continue
        at = copy.attrs
        attrs = {**node.attrs, "mul": int(np.asarray(at["mul"]).reshape(-1)[0]),
                 "shift": int(np.asarray(at["shift"]).reshape(-1)[0]),
                 "add": int(np.asarray(at["add"]).reshape(-1)[0]), "rq_lo": int(at["lo"]), "rq_hi": int(at["hi"])}
        fused[node.name] = Node(f"{node.name}/requant", "ILayerNormRequant", list(node.inputs),
                                [node.outputs[0], copy.outputs[0]], attrs, origin=node.origin)
        dropped.add(copy.name)
    graph.nodes = [fused.get(n.name, n) for n in graph.nodes if n.name not in dropped]
    graph.remove_unused()
    verify(graph, integer_only=True)
    return graph, len(fused)


LAYOUT_OPS = ("Reshape", "Transpose")
SCALAR_OPS = ("AddRequant", "MulRequant")


def _scalar_side(graph: Graph, node: Node) -> int | None:
    """Index of the input that is a one-element constant, when the op is elementwise with a scalar."""
    for position, name in enumerate(node.inputs):
        tensor = graph.tensors[name]
        if tensor.is_const and tensor.size == 1 and graph.tensors[node.inputs[1 - position]].size > 1:
            return position
    return None


def hoist_scalar_ops(graph: Graph) -> tuple[Graph, int]:
    """Move `AddRequant/MulRequant(x, scalar)` above the Reshape/Transpose chain that produced x.

    An elementwise op with a scalar commutes exactly with pure data movement; hoisted, it lands right after the
    op that computed x (MobileBERT: the 1/sqrt(d) scaling of Q and K after the head split, which then joins the
    projection's accelerator epilogue)."""
    graph = graph.copy()
    producers, consumers = graph.producers(), graph.consumers()
    moved = 0
    for node in list(graph.nodes):
        side = _scalar_side(graph, node) if node.op in SCALAR_OPS else None
        if side is None:
            continue
        layout, name = [], node.inputs[1 - side]
        while name in producers and producers[name].op in LAYOUT_OPS and len(consumers.get(name, [])) == 1 \
                and name not in graph.outputs:
            layout.append(producers[name])
            name = producers[name].inputs[0]
        if not layout or graph.tensors[name].dtype != graph.tensors[node.outputs[0]].dtype:
            continue
        layout.reverse()                               # first layout op first
        final = node.outputs[0]
        hoisted = graph.unique_name(f"{final}_before_layout")
        source = graph.tensors[name]
        graph.add_tensor(Tensor(hoisted, graph.tensors[final].dtype, source.shape))
        node.inputs[1 - side] = name
        node.outputs = [hoisted]
        layout[0].inputs[0] = hoisted
        old_last = layout[-1].outputs[0]
        layout[-1].outputs = [final]
        del graph.tensors[old_last]
        graph.nodes.remove(node)
        graph.nodes.insert(graph.nodes.index(layout[0]), node)
        producers, consumers = graph.producers(), graph.consumers()
        moved += 1
    verify(graph, integer_only=True)
    return graph, moved
