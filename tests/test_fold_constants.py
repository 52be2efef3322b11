"""passes/fold_constants.py: elementwise ops computed into the constant table a Gather reads."""

import numpy as np
from tinydeploy.frontend.onnx_loader import import_model
from tinydeploy.ir.graph import Graph, Node, Tensor
from tinydeploy.ir.interpreter import run_graph
from tinydeploy.passes.fold_constants import fold_into_gather_tables
from tinydeploy.passes.integerize import integerize


def _embedding_graph(extra_reader: bool) -> Graph:
    """Gather -> Slice, Pad (fill 3) -> Concat -> Requant, as MobileBERT's trigram embedding."""
    g = Graph(name="trigram")
    g.add_tensor(Tensor("ids", "int32", (1, 6)))
    g.add_const("table", np.arange(-40, 40, dtype=np.int8).reshape(20, 4), "int8")
    for name, shape in (("emb", (1, 6, 4)), ("shifted", (1, 5, 4)), ("padded", (1, 6, 4)), ("cat", (1, 6, 8)),
                        ("y", (1, 6, 8))):
        g.add_tensor(Tensor(name, "int8", shape))
    g.nodes += [Node("gather", "Gather", ["table", "ids"], ["emb"], {"axis": 0}),
                Node("slice", "Slice", ["emb"], ["shifted"], {"starts": [1], "ends": [6], "axes": [1], "steps": [1]}),
                Node("pad", "Pad", ["shifted"], ["padded"], {"pads": [0, 0, 0, 0, 1, 0], "value": 3}),
                Node("concat", "Concat", ["padded", "emb"], ["cat"], {"axis": 2}),
                Node("rq", "Requant", ["cat"], ["y"], {"mul": 3, "shift": 2, "add": -5, "lo": -128, "hi": 127})]
    g.inputs, g.outputs = ["ids"], ["y"]
    if extra_reader:                                   # the raw embedding is also a network output
        g.outputs.append("emb")
    return g


def test_requant_after_layout_ops_folds_into_the_table():
    graph = _embedding_graph(extra_reader=False)
    folded, count = fold_into_gather_tables(graph)
    assert count == 1 and [n.op for n in folded.nodes] == ["Gather", "Slice", "Pad", "Concat"]
    pad = next(n for n in folded.nodes if n.op == "Pad")
    assert pad.attrs["value"] == (3 * 3 + 2) // 4 - 5     # requant of the fill: floor(9/4 + 1/2) - 5 = -3
    ids = {"ids": np.array([[0, 5, 19, 7, 7, 1]], dtype=np.int32)}
    assert np.array_equal(run_graph(graph, ids)["y"], run_graph(folded, ids)["y"])


def test_no_fold_when_an_intermediate_tensor_is_read_elsewhere():
    graph = _embedding_graph(extra_reader=True)
    folded, count = fold_into_gather_tables(graph)
    assert count == 0 and "Requant" in [n.op for n in folded.nodes]


def test_mobilebert_embedding_requant_is_folded(tiny_zoo):
    graph = integerize(import_model(tiny_zoo / "model_qdq.onnx"), "cluster8")
    folded, count = fold_into_gather_tables(graph)
    assert count == 1 and len(folded.nodes) == len(graph.nodes) - 1
    inputs = {k: v for k, v in np.load(tiny_zoo / "inputs.npz").items() if k in graph.inputs}
    before, after = run_graph(graph, inputs), run_graph(folded, inputs)
    assert all(np.array_equal(before[name], after[name]) for name in graph.outputs)
