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


def _scalar_chain_graph(last_dtype: str) -> Graph:
    """int8 -> Add(centre by 5) -> int16 -> RequantCMSIS -> last_dtype, as a Div by a constant lowers."""
    from tinydeploy.ir.arith import cmsis_requant_params

    g = Graph(name="scalar_chain")
    g.add_tensor(Tensor("x", "int8", (2, 8)))
    g.add_const("zero", np.zeros((), np.int8), "int8")
    g.add_tensor(Tensor("centred", "int16", (2, 8)))
    g.add_tensor(Tensor("y", last_dtype, (2, 8)))
    (mult,), (shift,) = cmsis_requant_params(0.37)
    lo, hi = (-128, 127) if last_dtype == "int8" else (-32768, 32767)
    g.nodes += [Node("centre", "Add", ["x", "zero"], ["centred"], {"a_zero": 5}),
                Node("rq", "RequantCMSIS", ["centred"], ["y"], {"multiplier": int(mult), "shift": int(shift),
                                                                "zero_point": -3, "lo": lo, "hi": hi})]
    g.inputs, g.outputs = ["x"], ["y"]
    return g


def test_scalar_chain_from_int8_to_int8_becomes_one_lut():
    from tinydeploy.passes.fold_constants import fold_chains_into_luts

    graph = _scalar_chain_graph("int8")
    folded, count = fold_chains_into_luts(graph)
    assert count == 1 and [n.op for n in folded.nodes] == ["LUT"]
    x = {"x": np.arange(-128, 128, 16, dtype=np.int8).reshape(2, 8)}
    assert np.array_equal(run_graph(graph, x)["y"], run_graph(folded, x)["y"])
    # the table is the chain on all 256 inputs: y = round(0.37 (x - 5)) - 3, e.g. x = 5 -> -3, x = 127 -> 42
    table = folded.nodes[0].attrs["table"]
    assert table[5 + 128] == -3 and table[127 + 128] == 42


def test_scalar_chain_ending_wider_than_8_bits_is_left_alone():
    from tinydeploy.passes.fold_constants import fold_chains_into_luts

    folded, count = fold_chains_into_luts(_scalar_chain_graph("int16"))
    assert count == 0 and [n.op for n in folded.nodes] == ["Add", "RequantCMSIS"]
