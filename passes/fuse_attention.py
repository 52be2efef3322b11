"""Map GEMMs and attention onto the ITA-like accelerator: MatMulInt -> Requant [-> stages] becomes ITAGemm.

The accelerator computes an int8 x int8 GEMM with an int32 bias, requantizes per output column (contract 1) into
int16 (a projection into a 16-bit residual stream: the job ends there) or int8, and can continue with a second
per-tensor Requant, a 256-entry LUT activation (GELU, tanh, ...) or the streaming ITA softmax (contract 4) before
writing int8 results. So every chain

    MatMulInt(int8, int8, B zero point 0; an A zero point folds into the bias when B is constant)
        -> Requant (per tensor or per output column)
        [-> Requant (per tensor)] [-> LUT | ITAPartialMax over the last axis]

whose intermediate tensors have a single consumer becomes one ITAGemm node. Multi-head attention needs nothing
special: the per-head Q/K/V projections, QK^T (+ softmax) and A.V are batched GEMMs in the integer graph, and
the output projection and feed-forward layers are plain GEMMs. What stays on the cores: NoNorm (Mul/Add),
residual adds, embeddings, layout ops.

ITAGemm is defined by composing the ops it replaces (ir/ops.py), so the fused graph's golden outputs equal the
unfused graph's bit for bit; a verifier runs after the pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import arith
from ..ir.graph import Graph, Node, Tensor
from ..ir.verify import verify
from ..target import AccelSpec, Target, load_target
from .fuse_elementwise import per_tensor_requant
from .layout import swap_last_axes_of_producer
from .tile import accel_job_problem


@dataclass
class FusionReport:
    fused: int = 0
    with_softmax: int = 0
    with_activation: int = 0
    with_epilogue: int = 0            # residual add / NoNorm stages fused
    b_transposed: int = 0             # B read transposed so its producing Transpose keeps the innermost axis
    skipped: dict[str, int] | None = None

    def summary(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted((self.skipped or {}).items()))
        text = (f"{self.fused} GEMMs on the accelerator ({self.with_softmax} with softmax, {self.with_activation} "
                f"with an activation, {self.with_epilogue} with residual/NoNorm stages)")
        return text + (f"; left on the cores: {skipped}" if skipped else "")


def has_accelerator(target: Target | str) -> bool:
    return load_target(target).section("accelerator").get("kind") == "ita"


def _column_vector(value, n: int) -> np.ndarray | None:
    """A requant parameter as one value per output column, or None when it varies along another axis."""
    arr = np.asarray(value, dtype=np.int64)
    if arr.size == 1:
        return np.full(n, int(arr.reshape(-1)[0]), dtype=np.int64)
    if arr.shape[-1] == n and arr.size == n:
        return arr.reshape(n)
    return None


#: the softmax unit's numerator register: L = n_levels / 2 - 1 <= 255 (the RTL's divider takes 16-bit numerators)
MAX_SOFTMAX_LEVELS = 512


def _why_not(graph: Graph, mm: Node) -> str | None:
    a, b = (graph.tensors[name] for name in mm.inputs[:2])
    if a.dtype not in ("int8", "uint8") or b.dtype != "int8":
        return "operands not int8 (A may be uint8: the accelerator's sign mode)"
    if mm.attrs.get("b_zero", 0):
        return "zero points"
    if mm.attrs.get("a_zero", 0) and not _foldable_weights(b):
        return "zero point of A with a B that is not a constant matrix"
    if mm.attrs.get("trans_a"):
        return "transposed A"
    if len(mm.inputs) > 2 and mm.inputs[2] and graph.tensors[mm.inputs[2]].dtype != "int32":
        return "bias not int32"
    return None


def _column_mask(graph: Graph, softmax: Node) -> bool:
    """The softmax's key mask is one value per column (per key): the accelerator reads it as a vector (mode bit 7,
    register v0)."""
    mask = graph.tensors[softmax.inputs[1]]
    return mask.size == mask.shape[-1] == graph.tensors[softmax.inputs[0]].shape[-1]


def _int8_mask(graph: Graph, mask: str, conversions: dict[str, Node]) -> str:
    """An int8 copy of a 0/1 key mask (the accelerator reads int8 vectors; the frontend's mask keeps its input's
    int64): one Requant (x * 1, clipped to 0..1) per mask, run once per inference on the cores."""
    if graph.tensors[mask].dtype == "int8":
        return mask
    if mask not in conversions:
        t = graph.tensors[mask]
        out = graph.unique_name(f"{mask}_int8")
        graph.add_tensor(Tensor(out, "int8", tuple(t.shape)))
        conversions[mask] = Node(f"{out}/requant", "Requant", [mask], [out],
                                 {"mul": 1, "shift": 0, "add": 0, "lo": 0, "hi": 1})
    return conversions[mask].outputs[0]


def _foldable_weights(b) -> bool:
    """A constant 2-D B (leading axes of size 1): A's zero point then folds into the bias as -a_zero * sum_k B."""
    return b.is_const and len(b.shape) >= 2 and int(np.prod(b.shape[:-2], dtype=np.int64)) == 1


def _single_consumer(graph: Graph, consumers: dict[str, list[Node]], name: str) -> Node | None:
    users = consumers.get(name, [])
    if len(users) != 1 or name in graph.outputs:
        return None
    return users[0]


def _no_chain_reason(graph: Graph, consumers: dict[str, list[Node]], mm: Node) -> str:
    """Why a MatMul has no accelerator chain, in the words a user needs (the op that follows it)."""
    users = consumers.get(mm.outputs[0], [])
    if len(users) != 1:
        return f"its result has {len(users)} readers"
    if users[0].op == "RequantShift":
        return "followed by Deeploy's RequantShift (its multiplier and rounding are not the accelerator's requant)"
    if users[0].op == "Requant" and graph.tensors[users[0].outputs[0]].dtype not in OUTPUT_DTYPES:
        return (f"its requant writes {graph.tensors[users[0].outputs[0]].dtype} (the accelerator writes 8- or "
                "16-bit results)")
    return f"followed by {users[0].op}, not a Requant"


#: what the accelerator's stages write: 8-bit, or int16 (mode Y16) in a chain whose first requant writes int16
EIGHT_BIT = ("int8", "uint8")
OUTPUT_DTYPES = (*EIGHT_BIT, "int16")


def _next_stage(graph: Graph, consumers: dict[str, list[Node]], name: str,
                dtypes: tuple[str, ...] = EIGHT_BIT) -> Node | None:
    """The single reader of `name` when it could be an accelerator stage (it writes one of `dtypes`), else None."""
    node = _single_consumer(graph, consumers, name)
    return node if node is not None and graph.tensors[node.outputs[0]].dtype in dtypes else None


def _stage(node: Node) -> dict:
    return {"op": node.op, **node.attrs}


def fuse_chain(graph: Graph, consumers: dict[str, list[Node]], mm: Node,
               claimed: set[str] | None = None) -> list[Node] | None:
    """The nodes one ITAGemm replaces (MatMulInt first), never a node another chain already `claimed`."""
    claimed = claimed or set()
    requant = _next_stage(graph, consumers, mm.outputs[0], OUTPUT_DTYPES)
    if requant is None or requant.op != "Requant":
        return None
    chain = [mm, requant]
    if graph.tensors[requant.outputs[0]].dtype == "int16":     # a 16-bit result (mode Y16): only 16-bit
        nxt = _next_stage(graph, consumers, requant.outputs[0], ("int16",))  # AddRequant/MulRequant may follow
        return _binary_stages(graph, consumers, chain, nxt, claimed, wide=True)[0]
    nxt = _next_stage(graph, consumers, requant.outputs[0])
    if nxt is not None and nxt.op == "Requant" and per_tensor_requant(nxt):
        chain.append(nxt)
        nxt = _next_stage(graph, consumers, nxt.outputs[0])
    softmax = (nxt is not None and nxt.op == "ITAPartialMax" and nxt.attrs["n_levels"] <= MAX_SOFTMAX_LEVELS
               and (len(nxt.inputs) == 1 or _column_mask(graph, nxt)))
    if nxt is not None and (nxt.op == "LUT" or softmax):
        chain.append(nxt)
        nxt = _next_stage(graph, consumers, nxt.outputs[0])
        if chain[-1].op == "ITAPartialMax" and nxt is not None and nxt.op == "Requant" and per_tensor_requant(nxt):
            chain.append(nxt)                   # the requant after the softmax (A.V operand scale)
            nxt = _next_stage(graph, consumers, nxt.outputs[0])
    binary = 0
    if "ITAPartialMax" not in (n.op for n in chain):
        chain, nxt, binary = _binary_stages(graph, consumers, chain, nxt, claimed)
    if binary and nxt is not None and nxt.op == "LUT" and not any(n.op in ("LUT", "ITAPartialMax") for n in chain):
        chain.append(nxt)                       # an activation after a bias add (mode bit 8: LUT after the stages)
    return chain


#: residual adds and MobileBERT's NoNorm (x * gamma + beta) run in the accelerator's epilogue
BINARY_STAGES = ("AddRequant", "MulRequant")
MAX_BINARY_STAGES = 5          # the accelerator's stage table (sim/accel/model.py)
MAX_VECTORS = 4


def _row_constant(tensor) -> bool:
    """A constant whose rows (last axis) are all equal: a per-column vector in disguise (MobileBERT's
    token-type embeddings of an all-zero token_type_ids)."""
    if not tensor.is_const or not tensor.shape:
        return False
    rows = np.asarray(tensor.data).reshape(-1, tensor.shape[-1])
    return bool(np.all(rows == rows[0]))


def _binary_stages(graph: Graph, consumers: dict[str, list[Node]], chain: list[Node], nxt: Node | None,
                   claimed: set[str], wide: bool = False) -> tuple[list[Node], Node | None, int]:
    """`chain` extended by the AddRequant/MulRequant epilogue stages from `nxt` on (at most one tile operand and
    MAX_VECTORS vectors; `wide`: a 16-bit chain, its tile int16, mode bit 9): (chain, the node after them, how
    many were taken)."""
    out_shape = graph.tensors[chain[0].outputs[0]].shape
    matrices = vectors = binary = 0
    while (nxt is not None and nxt.op in BINARY_STAGES and binary < MAX_BINARY_STAGES and nxt.name not in claimed):
        operand = _binary_operand(graph, nxt, chain[-1].outputs[0], out_shape, wide)
        if operand is None or (operand == "matrix" and matrices) or (operand == "vector" and vectors == MAX_VECTORS):
            break
        matrices += operand == "matrix"
        vectors += operand == "vector"
        binary += 1
        chain.append(nxt)
        nxt = _next_stage(graph, consumers, nxt.outputs[0], ("int16",) if wide else EIGHT_BIT)
    return chain, nxt, binary


def _binary_operand(graph: Graph, node: Node, running: str, out_shape: tuple[int, ...],
                    wide: bool = False) -> str | None:
    """'matrix' (an int8 tile of the output's shape; int16 in a `wide` 16-bit chain) or 'vector' (an int8
    constant per output column) when `node` can be an epilogue stage of the accelerator, else None. Its
    parameters must be per tensor."""
    if node.inputs.count(running) != 1 or any(np.asarray(v).size != 1 for v in node.attrs.values()):
        return None
    other = graph.tensors[node.inputs[1 - node.inputs.index(running)]]
    if wide and other.dtype == "int16":
        return "matrix" if tuple(other.shape) == tuple(out_shape) and not other.is_const else None
    if other.dtype != "int8" or (wide and tuple(other.shape) == tuple(out_shape) and not other.is_const):
        return None
    if tuple(other.shape) == tuple(out_shape):
        return "vector" if _row_constant(other) else "matrix"
    if other.is_const and (other.size == 1 or (other.size == out_shape[-1] and other.shape[-1] == out_shape[-1])):
        return "vector"                        # a scalar becomes a constant vector
    return None


# --- Deeploy's dialect: RequantShift and bias Adds as the accelerator's requant and bias ------------------
def requant_shift_as_requant(node: Node) -> dict | str:
    """The accelerator-requant (contract 1) attributes computing Deeploy's RequantShift (contract 3) exactly, or
    why none does. floor((mul x + add + 2^(s-1)) / 2^s) = floor(mul x / 2^s + add / 2^s + 1/2) needs an
    `add` that 2^s divides (s = 0: no rounding term in either); mul and add per tensor or per last axis."""
    at = node.attrs
    mul, add, shift = np.asarray(at["mul"], np.int64), np.asarray(at["add"], np.int64), int(at["log2d"])
    if any(v.size > 1 and v.size != v.shape[-1] for v in (mul, add)):
        return "RequantShift parameters vary along an axis other than the last"
    if np.any(add % (1 << shift)):
        return f"RequantShift add is not a multiple of its divisor 2^{shift} (the accelerator adds after the shift)"
    if np.abs(mul).max(initial=0) >= 2**31 or np.abs(add >> shift).max(initial=0) >= 2**31:
        return "RequantShift parameters beyond int32"
    return {"mul": mul.reshape(-1) if mul.size > 1 else int(mul.reshape(-1)[0]), "shift": shift,
            "add": (add >> shift).reshape(-1) if add.size > 1 else int((add >> shift).reshape(-1)[0]),
            "lo": int(at["lo"]), "hi": int(at["hi"])}


def _deeploy_requants(graph: Graph, skipped: dict[str, int]) -> int:
    """Rewrite every RequantShift that follows a GEMM (directly or after another requant of its chain) as the
    equal Requant, so GEMM chains of Deeploy-dialect models reach the accelerator; reasons for the others are
    counted in `skipped`. Returns how many were rewritten."""
    producers = graph.producers()
    chain_ops = ("MatMulInt", "Requant", "ITAPartialMax")
    count = 0
    for index, node in enumerate(graph.nodes):
        producer = producers.get(node.inputs[0]) if node.op == "RequantShift" else None
        if producer is None or producer.op not in chain_ops:
            continue
        attrs = requant_shift_as_requant(node)
        if isinstance(attrs, str):
            skipped[attrs] = skipped.get(attrs, 0) + 1
            continue
        graph.nodes[index] = Node(node.name, "Requant", list(node.inputs), list(node.outputs), attrs,
                                  origin=node.origin)
        producers[node.outputs[0]] = graph.nodes[index]
        count += 1
    return count


def _fold_bias_adds(graph: Graph) -> int:
    """MatMulInt -> Add(a constant vector over the output columns) -> ...: the vector becomes the GEMM's int32
    bias (Deeploy's linear layers spell the bias as an Add; the accelerator adds it before its requant). Also
    widens a constant bias of a narrower type to int32. Returns how many Adds were folded."""
    consumers = graph.consumers()
    dropped: set[str] = set()
    for mm in [n for n in graph.nodes if n.op == "MatMulInt"]:
        n = graph.tensors[mm.outputs[0]].shape[-1]
        if len(mm.inputs) > 2 and mm.inputs[2]:
            bias = graph.tensors[mm.inputs[2]]
            if bias.is_const and bias.dtype != "int32" and bias.size == n:
                mm.inputs[2] = graph.add_const(graph.unique_name(f"{bias.name}_int32"),
                                               np.asarray(bias.data).reshape(n).astype(np.int32), "int32").name
            continue
        users = consumers.get(mm.outputs[0], [])
        if len(users) != 1 or users[0].op != "Add" or mm.outputs[0] in graph.outputs or users[0].attrs:
            continue
        add = users[0]
        other = graph.tensors[add.inputs[1 - add.inputs.index(mm.outputs[0])]]
        if not other.is_const or other.size != n or other.shape[-1] != n:
            continue
        values = np.asarray(other.data, np.int64).reshape(n)
        if np.abs(values).max(initial=0) >= 2**31:
            continue
        bias = graph.add_const(graph.unique_name(f"{mm.name}/bias"), values.astype(np.int32), "int32")
        mm.inputs[2:] = [bias.name]
        out = graph.tensors[mm.outputs[0]]
        graph.tensors[add.outputs[0]] = Tensor(add.outputs[0], graph.tensors[add.outputs[0]].dtype, out.shape)
        mm.outputs[0] = add.outputs[0]
        dropped.add(add.name)
    graph.nodes = [n for n in graph.nodes if n.name not in dropped]
    graph.remove_unused()
    return len(dropped)


def fuse_attention(graph: Graph, target: Target | str) -> tuple[Graph, FusionReport]:
    """A new graph with every eligible GEMM chain replaced by ITAGemm (see the module docstring)."""
    report = FusionReport(skipped={})
    if not has_accelerator(target):
        return graph, report
    accel = AccelSpec.from_section(load_target(target).section("accelerator"))
    graph = graph.copy()
    _fold_bias_adds(graph)
    _deeploy_requants(graph, report.skipped)
    report.b_transposed = _b_as_transposed(graph)
    consumers = graph.consumers()
    replaced: dict[str, Node] = {}       # first node of a chain -> its ITAGemm
    dropped: set[str] = set()
    conversions: dict[str, Node] = {}    # key mask -> the node making its int8 copy
    for mm in [n for n in graph.nodes if n.op == "MatMulInt"]:
        reason = _why_not(graph, mm)
        chain = None if reason else fuse_chain(graph, consumers, mm, dropped)
        if chain is None:
            reason = reason or _no_chain_reason(graph, consumers, mm)
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
            continue
        fused = _fused_node(graph, chain, conversions)
        reason = fused if isinstance(fused, str) else _job_problem(graph, fused, accel)
        if reason:
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
            continue
        replaced[chain[-1].name] = fused
        dropped.update(n.name for n in chain)
        report.fused += 1
        report.with_softmax += any(n.op == "ITAPartialMax" for n in chain)
        report.with_activation += any(n.op == "LUT" for n in chain)
        report.with_epilogue += any(n.op in BINARY_STAGES for n in chain)
    nodes = [conversions[name] for name in graph.inputs if name in conversions]
    for node in graph.nodes:   # a fused node takes the place of its chain's last node: every input exists there
        if node.name in replaced:
            nodes.append(replaced[node.name])
        elif node.name not in dropped:
            nodes.append(node)
            nodes.extend(conversions[name] for name in node.outputs if name in conversions)
    graph.nodes = nodes
    graph.remove_unused()
    verify(graph, integer_only=True)
    return graph, report


def _b_as_transposed(graph: Graph) -> int:
    """QK^T reads K through a Transpose that moves the innermost axis (cores only: not a 2-D DMA). Re-permuting
    that Transpose to also swap the last two axes keeps the innermost axis in place (a DMA transpose) and the
    accelerator reads B transposed (mode bit 0): same bits, no core work. Returns how many were rewritten."""
    producers, consumers = graph.producers(), graph.consumers()
    count = 0
    for mm in graph.nodes:
        if mm.op != "MatMulInt" or mm.attrs.get("trans_b"):
            continue
        producer = producers.get(mm.inputs[1])
        if producer is None or producer.op != "Transpose":
            continue
        perm = list(producer.attrs["perm"])
        if perm[-1] == len(perm) - 1 or perm[-2] != len(perm) - 1:
            continue                          # already DMA-friendly, or swapping would not make it so
        if swap_last_axes_of_producer(graph, mm.inputs[1], producers, consumers):
            mm.attrs = {**mm.attrs, "trans_b": 1}
            count += 1
    return count


def _job_problem(graph: Graph, node: Node, accel: AccelSpec) -> str | None:
    """Why no tiling can run `node` as accelerator jobs (one row of A and Y, and B for the narrowest column tile
    the tiler may take: all of n with the softmax, whose rows stay whole), or None."""
    shape = graph.tensors[node.outputs[0]].shape
    n = shape[-1] if any(s["op"] == "ITAPartialMax" for s in node.attrs["stages"]) else 1
    problem = accel_job_problem(graph, node, (*shape[:-1], n), accel)
    return f"the accelerator's job memories: {problem}" if problem else None


def _fused_node(graph: Graph, chain: list[Node], conversions: dict[str, Node]) -> Node | str:
    """The ITAGemm computing `chain`, or the reason it cannot (`conversions`: int8 copies of key masks, added)."""
    mm, requant, *rest = chain
    out = graph.tensors[mm.outputs[0]]
    n = out.shape[-1]
    vectors = [_column_vector(requant.attrs[k], n) for k in ("mul", "shift", "add")]
    if any(v is None for v in vectors):
        return "requant varies along rows"
    rq = graph.add_const(graph.unique_name(f"{mm.name}/rq"), np.stack(vectors).astype(np.int32), "int32")
    if len(mm.inputs) > 2 and mm.inputs[2]:
        bias = mm.inputs[2]
        if graph.tensors[bias].shape[-1] != n or graph.tensors[bias].size != n:
            return "bias is not one value per output column"
    else:
        bias = graph.add_const(graph.unique_name(f"{mm.name}/bias"), np.zeros(n, dtype=np.int32), "int32").name
    if mm.attrs.get("a_zero", 0):
        folded = None
        if graph.tensors[bias].is_const:
            weights = np.asarray(graph.tensors[mm.inputs[1]].data)
            folded = arith.bias_without_zero_point(np.asarray(graph.tensors[bias].data).reshape(n),
                                                   weights.reshape(weights.shape[-2:]), mm.attrs["a_zero"],
                                                   depth_axis=1 if mm.attrs.get("trans_b") else 0)
        if folded is None:
            return "zero point of A does not fold into an int32 bias"
        bias = graph.add_const(graph.unique_name(f"{mm.name}/bias_a_zero"), folded.astype(np.int32), "int32").name
    inputs = [mm.inputs[0], mm.inputs[1], bias, rq.name]
    stages, running = [], requant.outputs[0]
    for node in rest:
        stage = _stage(node)
        if node.op == "ITAPartialMax" and len(node.inputs) > 1:      # the key mask: the vector at v0
            inputs.append(_int8_mask(graph, node.inputs[1], conversions))
            stage.update(operand=len(inputs) - 1, chain=0)
        if node.op in BINARY_STAGES:
            side = node.inputs.index(running)
            other = graph.tensors[node.inputs[1 - side]]
            if other.size == 1 and n > 1:        # the accelerator reads vectors: broadcast the scalar
                other = graph.add_const(graph.unique_name(f"{other.name}/x{n}"),
                                        np.full(n, other.data.reshape(-1)[0], dtype=other.data.dtype), other.dtype)
            elif other.size > n and _row_constant(other):   # identical rows: read one row as the vector
                other = graph.add_const(graph.unique_name(f"{other.name}/row"),
                                        np.asarray(other.data).reshape(-1, n)[0].copy(), other.dtype)
            inputs.append(other.name)
            stage.update(operand=len(inputs) - 1, chain=side)
        stages.append(stage)
        running = node.outputs[0]
    attrs = {"trans_b": int(mm.attrs.get("trans_b", 0)), "lo": int(requant.attrs["lo"]),
             "hi": int(requant.attrs["hi"]), "stages": stages}
    if graph.tensors[mm.inputs[0]].dtype == "uint8":      # ITA's A.V reads the softmax probabilities unsigned
        attrs["a_unsigned"] = 1
    return Node(f"{mm.name}/ita", "ITAGemm", inputs, [chain[-1].outputs[0]], attrs, origin=mm.origin)
