"""int8-weight-only: constant weights of matmuls, convolutions and embedding tables stored as int8,
computed in float.

  W_q = round(W / s) ∈ [−127, 127] (int8),   s[o] = max |W[..., o]| / 127 per output channel
  y = (x ⊛ float(W_q)) · s[o]

The product takes the int8 weight as it is (a float32 × int8 matmul or conv2d with float32
output); the CPU float kernels (kernels/fp32.py) pack it as int8 and convert each weight vector
next to the multiply-add that uses it, so the artifact holds a quarter of the weight bytes and
no float copy of them. The per-channel scale is the kernel's epilogue. Activations stay float32:
no calibration, and the accuracy cost is the weights' rounding only. An embedding table (a
Gather of rows of a constant) keeps int8 rows with a scale each, converted after the gather.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .dynamic import DynamicStats, quantize_weight
from .graph import CONV_LAYOUTS, CallRewriter, const, float32_constant, is_float32

MIN_SIZE = 256  # smaller constants stay float32


@relax.expr_functor.mutator
class _WeightOnly(CallRewriter):
    HANDLERS = {"relax.matmul": "matmul", "relax.nn.conv2d": "conv2d", "relax.take": "take"}

    def __init__(self, mod: tvm.IRModule, min_size: int):
        super().__init__(mod)
        self.mod_ = mod
        self.min_size = min_size
        self.stats = DynamicStats()

    def float_weight(self, call) -> np.ndarray | None:
        data, weight = call.args
        if not (is_float32(data) and is_float32(call)):
            return None
        return float32_constant(weight, self.min_size)

    def matmul(self, call) -> relax.Expr | None:
        w = self.float_weight(call)
        if w is None or w.ndim != 2:
            return None
        w_q, scale = quantize_weight(w)
        self.stats.layers.append(str(call.args[0]))
        product = self.builder_.emit(relax.op.matmul(call.args[0], const(w_q), out_dtype="float32"))
        return relax.op.multiply(product, const(scale))

    def conv2d(self, call) -> relax.Expr | None:
        w = self.float_weight(call)
        attrs = call.attrs
        layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
        if w is None or layouts not in CONV_LAYOUTS:
            return None
        out_axis = attrs.kernel_layout.index("O")
        columns = np.moveaxis(w, out_axis, -1).reshape(-1, w.shape[out_axis])
        w_q, scale = quantize_weight(columns)
        w_q = np.moveaxis(w_q.reshape(*np.moveaxis(w, out_axis, -1).shape), -1, out_axis)
        self.stats.layers.append(str(call.args[0]))
        product = self.builder_.emit(relax.op.nn.conv2d(
            call.args[0], const(np.ascontiguousarray(w_q)), strides=attrs.strides, padding=attrs.padding,
            dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout, out_dtype="float32"))
        shape = [1, 1, 1, 1]
        shape[CONV_LAYOUTS[layouts]] = scale.size
        return relax.op.multiply(product, const(scale.reshape(shape)))

    def take(self, call) -> relax.Expr | None:
        """An embedding table (rows gathered from a float32 constant [V, D]): int8 rows, each with
        its own scale, gathered together and converted after the gather."""
        t = embedding_table(call, self.min_size)
        if t is None:
            return None
        rows_q, scale = int8_rows(t)
        indices = call.args[1]
        self.stats.layers.append(str(indices))
        rows = self.builder_.emit(relax.op.astype(relax.op.take(const(rows_q), indices, axis=0), "float32"))
        scales = self.builder_.emit(relax.op.take(const(scale.reshape(-1, 1)), indices, axis=0))
        return relax.op.multiply(rows, scales)


def embedding_table(call, min_size: int = MIN_SIZE) -> np.ndarray | None:
    """The table [V, D] of a float32 gather of rows (`take`, axis 0) from a float32 constant of at
    least `min_size` elements, else None: what these passes store as int8 rows."""
    if not (is_float32(call) and call.attrs.axis is not None and int(call.attrs.axis) == 0):
        return None
    table = float32_constant(call.args[0], min_size)
    return table if table is not None and table.ndim == 2 else None


def int8_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 rows [V, D], float32 scale per row [V]): table ≈ rows · scale[:, None]."""
    rows_q, scale = quantize_weight(table.T)  # a row of the table is a column here
    return np.ascontiguousarray(rows_q.T), scale


def quantize_weights_only(mod: tvm.IRModule, min_size: int = MIN_SIZE) -> tuple[tvm.IRModule, DynamicStats]:
    """`mod` with the float32 constant weights (≥ `min_size` elements) of its matmuls and
    convolutions as int8 with a per-channel scale; constants folded first."""
    rewriter = _WeightOnly(relax.transform.FoldConstant()(mod), min_size)
    return relax.transform.DeadCodeElimination()(rewriter.run()), rewriter.stats


@relax.expr_functor.mutator
class _EmbeddingTables(_WeightOnly._cls):
    HANDLERS = {"relax.take": "take"}


def quantize_embedding_tables(mod: tvm.IRModule, min_size: int = MIN_SIZE) -> tuple[tvm.IRModule, int]:
    """`mod` with the float32 embedding tables (≥ `min_size` elements) that its gathers read
    stored as int8 rows with a scale each, as above, and how many. For the int8 strategies, whose
    passes put matmuls and convolutions on int8 and leave gathers in float: a transformer's token
    table is most of its weights (MiniLM: 47 of 58 MB in float32)."""
    rewriter = _EmbeddingTables(mod, min_size)
    return relax.transform.DeadCodeElimination()(rewriter.run()), len(rewriter.stats.layers)
