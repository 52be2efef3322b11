"""Which kernel a node runs on the cluster, where both the tiler's cost model (passes/tile.py) and the backend
(backends/lowering.py) need the answer: one rule, decided here, read by both (data flows passes -> backends)."""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node, Tensor

#: the 32-bit LayerNorm kernel's preconditions: |weight| below 2^15, |bias| at most 2^30, at most 2^16 columns
NARROW_LAYERNORM_WEIGHT, NARROW_LAYERNORM_BIAS, NARROW_LAYERNORM_COLS = 2**15, 2**30, 2**16


def layernorm_fits_int32(graph: Graph, node: Node) -> bool:
    """Whether an integer LayerNorm runs on the 32-bit kernel (norm.c.j2, about 5x faster on RV32 cores than the
    64-bit one): an 8/16-bit input (|x - mean| < 2^16, row sum in int32 for up to 2^16 columns), |w| < 2^15 (so
    (x - mean) * w fits int32) and |bias| <= 2^30 (the quotient is below 2 sqrt(cols) |w| < 2^24, so quotient +
    bias fits too)."""
    if node.op not in ("ILayerNorm", "ILayerNormRequant"):
        return False
    x = graph.tensors[node.inputs[0]]
    weight, bias = (graph.tensors[name].data for name in node.inputs[1:3])
    if x.dtype not in ("int8", "uint8", "int16") or weight is None or bias is None:
        return False
    return (x.shape[-1] <= NARROW_LAYERNORM_COLS
            and int(np.abs(weight.astype(np.int64)).max(initial=0)) < NARROW_LAYERNORM_WEIGHT
            and int(np.abs(bias.astype(np.int64)).max(initial=0)) <= NARROW_LAYERNORM_BIAS)


def blocked_matmul_operands(graph: Graph, node: Node) -> bool:
    """The operands the cluster's register-blocked GEMM takes (matmul_blocked.c.j2): int8 x int8 -> int32 without
    zero points (lower_matmul also needs an int32 accumulator and operands read row by row)."""
    a, b, out = (graph.tensors[name].dtype for name in (node.inputs[0], node.inputs[1], node.outputs[0]))
    return (a == b == "int8" and out == "int32" and not node.attrs.get("a_zero", 0)
            and not node.attrs.get("b_zero", 0))


#: the patch kernel's int16 patch per core holds at most this many values (channels x taps)
MAX_PATCH_DEPTH = 4096


def patch_depth(x: Tensor, weights: Tensor) -> int:
    """Values in one output pixel's receptive field of a one-group convolution: channels x taps."""
    return int(x.shape[1]) * int(np.prod(weights.shape[2:], dtype=np.int64))


def conv_by_patches(node: Node, x: Tensor, weights: Tensor, out: Tensor) -> bool:
    """Whether a ConvInt runs as gathered patches (td_conv_*_patches): one group, 8-bit input (x - x_zero fits
    int16), 8-bit weights, an int32 result, and a patch that fits MAX_PATCH_DEPTH."""
    return (int(node.attrs.get("group", 1)) == 1 and x.dtype in ("int8", "uint8") and weights.dtype == "int8"
            and out.dtype == "int32" and patch_depth(x, weights) <= MAX_PATCH_DEPTH)
