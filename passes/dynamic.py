"""int8-dynamic: matmuls with constant float weights on int8 weights and activations quantized at
run time, per row (a transformer's per token), with no calibration.

For y = x · W (x float32 [..., K], W a float32 constant [K, N]):

  weights, offline      s_w[n] = max_k |W[k, n]| / 127,   W_q = round(W / s_w) ∈ [−127, 127] (int8)
  activations, per run  lo = min(0, min_k x), hi = max(0, max_k x)  per row (over K)
                        s_x = (hi − lo) / 255 (1 where hi = lo),  r = 1 / s_x,  z = ⌊−lo · r + ½⌋
                        x_q = clip(⌊x · r + ½⌋ + z, 0, 255) (uint8)
  product               acc = Σ_k x_q · W_q  (int32; the int8 kernels: `vpdpbusd`, AMX, ...)
                        y ≈ s_x · s_w[n] · (acc − z · Σ_k W_q[k, n])   (the correction in int32)

Each row's range is its own, so a token with an outlier does not coarsen the others; ranges
include 0 so that zero is exact. The row reductions and the quantization are small kernels
before the product; the rescale fuses into the product's epilogue. Matmuls of two activations
(attention), convolutions and everything else stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .graph import CallRewriter, Constant, const, constant_value, is_float32
from .qconfig import quantize_weight as quantize_int8_weight
from .qconfig import weight_scales

UINT8_LEVELS = 255.0


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W_q int8 [K, N], s_w float32 [N]): symmetric per output column, s_w = max|W| / 127 (1
    for an all-zero column; a weight already on an int8 grid keeps it: qconfig.weight_scales)."""
    scale = weight_scales(w, axis=1)
    return quantize_int8_weight(w, scale, axis=1), scale.astype(np.float32)


def _round_half_up(value):
    """⌊v + ½⌋: vectorizes (`round`, half away from zero, becomes a libm call per element on x86)."""
    return relax.op.floor(relax.op.add(value, const(np.float32(0.5))))


@dataclass
class DynamicStats:
    """What the pass changed: matmuls on int8 and their multiply-accumulates, and the rest."""

    layers: list[str] = field(default_factory=list)
    int8_macs: int = 0
    float_macs: int = 0


@relax.expr_functor.mutator
class _DynamicQuantizer(CallRewriter):
    HANDLERS = {"relax.matmul": "matmul"}

    def __init__(self, mod: tvm.IRModule, min_depth: int):
        super().__init__(mod)
        self.mod_ = mod
        self.min_depth = min_depth
        self.stats = DynamicStats()
        self.rows_of: dict = {}  # activation → its quantized rows

    def emit(self, expr):
        return self.builder_.emit(expr)

    def quantized_rows(self, x) -> tuple:
        """(x_q, s_x, z) of activation `x`, made once per activation (Q, K and V projections share
        their input)."""
        key = x if isinstance(x, relax.Var) else None
        if key is not None and key in self.rows_of:
            return self.rows_of[key]
        lo = self.emit(relax.op.minimum(relax.op.min(x, axis=[-1], keepdims=True), const(np.float32(0))))
        hi = self.emit(relax.op.maximum(relax.op.max(x, axis=[-1], keepdims=True), const(np.float32(0))))
        span = self.emit(relax.op.divide(relax.op.subtract(hi, lo), const(np.float32(UINT8_LEVELS))))
        scale = self.emit(relax.op.where(relax.op.greater(span, const(np.float32(0))), span, const(np.float32(1))))
        inverse = self.emit(relax.op.divide(const(np.float32(1)), scale))
        zero_point = self.emit(_round_half_up(relax.op.multiply(relax.op.negative(lo), inverse)))
        levels = relax.op.add(_round_half_up(relax.op.multiply(x, inverse)), zero_point)
        quantized = (self.emit(relax.op.astype(relax.op.clip(levels, 0, 255), "uint8")), scale, zero_point)
        if key is not None:
            self.rows_of[key] = quantized
        return quantized

    def matmul(self, call) -> relax.Expr | None:
        x, weight = call.args
        rows = [int(d) for d in x.ty.shape.values] if isinstance(x.ty, relax.TensorType) else []
        if not (isinstance(weight, Constant) and is_float32(x) and is_float32(call) and len(rows) >= 2):
            if len(rows) >= 2:
                self.stats.float_macs += int(np.prod(rows)) * int(call.ty.shape.values[-1])
            return None
        w = constant_value(weight)
        if w.ndim != 2 or w.shape[0] < self.min_depth:
            return None
        columns = w.shape[1]
        w_q, w_scale = quantize_weight(w)
        self.stats.layers.append(str(call.args[0]))
        self.stats.int8_macs += int(np.prod(rows)) * columns
        x_q, scale, zero_point = self.quantized_rows(x)
        acc = self.emit(relax.op.matmul(x_q, const(w_q), out_dtype="int32"))
        correction = relax.op.multiply(relax.op.astype(zero_point, "int32"),
                                       const(w_q.astype(np.int32).sum(axis=0).astype(np.int32)))
        centered = self.emit(relax.op.subtract(acc, self.emit(correction)))
        return relax.op.multiply(relax.op.astype(centered, "float32"),
                                 relax.op.multiply(scale, const(w_scale)))


def quantize_dynamic(mod: tvm.IRModule, min_depth: int = 16) -> tuple[tvm.IRModule, DynamicStats]:
    """`mod` with every matmul of a float32 activation [..., K] by a constant float32 [K, N]
    (K ≥ `min_depth`) as above; constants are folded first (a transposed weight is a weight)."""
    folded = relax.transform.FoldConstant()(mod)
    quantizer = _DynamicQuantizer(folded, min_depth)
    rewritten = quantizer.run()
    return relax.transform.DeadCodeElimination()(rewritten), quantizer.stats
