"""Small exact layout rewrites shared by the fusion passes."""

from __future__ import annotations

from ..ir.graph import Graph, Node


def swap_last_axes_of_producer(graph: Graph, name: str, producers: dict[str, Node],
                               consumers: dict[str, list[Node]]) -> bool:
    """If `name` comes from a Transpose only one node reads, make that Transpose also swap the last two axes
    (perm[-2:] exchanged, the tensor's shape updated) and return True: the reader then takes it transposed.

    Used to hand a matmul its B in [.., N, K] (trans_b) layout without a separate transpose."""
    producer = producers.get(name)
    if producer is None or producer.op != "Transpose" or len(consumers.get(name, [])) != 1 or name in graph.outputs:
        return False
    perm = list(producer.attrs["perm"])
    perm[-2], perm[-1] = perm[-1], perm[-2]
    producer.attrs = {**producer.attrs, "perm": perm}
    t = graph.tensors[name]
    t.shape = (*t.shape[:-2], t.shape[-1], t.shape[-2])
    return True
