"""Fuse an elementwise Add or Mul with the Requant that consumes it (AddRequant, MulRequant).

On the cluster every op is a pass over L2 through DMA-fed L1 tiles; MobileBERT's NoNorm and residual adds are
Add/Mul -> Requant pairs, so fusing them halves the passes and never materialises the int32 intermediate.
The fused ops are defined by composition (ir/ops.py), so results are unchanged; a verifier runs after.
"""

from __future__ import annotations

from ..ir.graph import Graph, Node
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
