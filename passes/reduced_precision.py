"""fp16 and bf16: convolutions and matmuls multiply half-width floats and accumulate in float32.

For every conv2d (groups = 1) and matmul with a constant float32 weight W and activation x:

  y = Σ h(x) · h(W)      h: rounding to float16 or bfloat16 (to nearest, ties to even);
                         products and sum in float32

W is stored in the half type (half the bytes of float32); x is rounded where it enters the
product (an astype that fuses into its producer's epilogue, so the kernel reads half the bytes).
Embedding tables (a Gather of rows of a constant) are stored in the half type and widened after
the gather. Everything else — normalizations, softmax, depthwise convolutions, residual adds,
activation functions, matmuls of two activations — stays float32, as automatic mixed precision
does: those are where half precision loses most and gains least.

How the products run is the target's business: on x86 with AVX-512 BF16, bf16 products on
`vdpbf16ps` (kernels/bf16.py); elsewhere the float32 kernels convert each half-width operand
next to its multiply-add (kernels/fp32.py). Numerics are the same up to float32 summation order
(`vdpbf16ps` also flushes denormals). fp16 refuses a weight beyond float16's range (±65504);
activations beyond it become ±inf, as on any fp16 hardware: pick bf16 (float32's range) then.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError

from .dynamic import DynamicStats
from .graph import CallRewriter, const, float32_constant, is_float32

HALF_TYPES = {"fp16": "float16", "bf16": "bfloat16"}
FLOAT16_MAX = 65504.0


def to_half(values: np.ndarray, dtype: str) -> np.ndarray:
    """`values` (float32) rounded to nearest even in `dtype` ("float16" or "bfloat16")."""
    import ml_dtypes  # TVM's own dependency: numpy's bfloat16

    return values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)


@relax.expr_functor.mutator
class _HalfPrecision(CallRewriter):
    HANDLERS = {"relax.matmul": "matmul", "relax.nn.conv2d": "conv2d", "relax.take": "take"}

    def __init__(self, mod: tvm.IRModule, dtype: str, min_size: int, names: Mapping):
        super().__init__(mod)
        self.mod_ = mod
        self.dtype = dtype
        self.min_size = min_size
        self.names = names
        self.stats = DynamicStats()
        self.out_of_range: list[str] = []  # raised after the rewrite (an error inside it would reach TVM's FFI)

    def half_weight(self, call, weight, kind: str) -> relax.Expr | None:
        """`weight` (a float32 constant of ≥ min_size elements of a float32 call) in the half type."""
        w = float32_constant(weight, self.min_size) if is_float32(call) else None
        if w is None:
            return None
        name = self.names.get(weight)
        peak = float(np.abs(w).max(initial=0.0))
        if self.dtype == "float16" and not peak <= FLOAT16_MAX:
            what = f"the weight of {kind} {name}" if name else f"a {kind}'s weight {list(w.shape)}"
            self.out_of_range.append(f"{what} has values up to {peak:.4g}")
            return None
        return const(to_half(w, self.dtype))

    def half_activation(self, data) -> relax.Expr | None:
        return self.builder_.emit(relax.op.astype(data, self.dtype)) if is_float32(data) else None

    def matmul(self, call) -> relax.Expr | None:
        data, weight = call.args
        w = self.half_weight(call, weight, "matmul")
        if w is None or len(weight.ty.shape.values) != 2:
            return None
        x = self.half_activation(data)
        if x is None:
            return None
        self.stats.layers.append(self.names.get(weight) or str(data))
        return relax.op.matmul(x, w, out_dtype="float32")

    def conv2d(self, call) -> relax.Expr | None:
        data, weight = call.args
        attrs = call.attrs
        if int(attrs.groups) != 1:
            return None  # depthwise and grouped: little arithmetic per byte, left float32
        w = self.half_weight(call, weight, "convolution")
        x = self.half_activation(data) if w is not None else None
        if x is None:
            return None
        self.stats.layers.append(self.names.get(weight) or str(data))
        return relax.op.nn.conv2d(x, w, strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
                                  groups=1, data_layout=attrs.data_layout, kernel_layout=attrs.kernel_layout,
                                  out_layout=attrs.out_layout, out_dtype="float32")

    def take(self, call) -> relax.Expr | None:
        """An embedding table (rows of a float32 constant [V, D], axis 0): stored half, widened after the gather."""
        table, indices = call.args
        if call.attrs.axis is None or int(call.attrs.axis) != 0 or len(table.ty.shape.values) != 2:
            return None
        rows = self.half_weight(call, table, "embedding table")
        if rows is None:
            return None
        self.stats.layers.append(self.names.get(table) or str(indices))
        return relax.op.astype(self.builder_.emit(relax.op.take(rows, indices, axis=0)), "float32")


def to_half_precision(mod: tvm.IRModule, strategy: str, min_size: int = 256, names: Mapping | None = None,
                      instead: str = "--quantize bf16") -> tuple[tvm.IRModule, DynamicStats]:
    """`mod` with the products of its convolutions and matmuls with constant float32 weights (≥
    `min_size` elements) on `strategy`'s half type ("fp16" or "bf16"), and its embedding tables
    stored in it; constants folded first. `names` (weight constant → layer name, e.g. its ONNX
    node) names the layers in the stats and errors. A float16 weight out of range is an error
    that proposes `instead`."""
    rewriter = _HalfPrecision(relax.transform.FoldConstant()(mod), HALF_TYPES[strategy], min_size, names or {})
    rewritten = rewriter.run()
    if rewriter.out_of_range:
        raise QCompilerError(f"{rewriter.out_of_range[0]}, beyond float16's range (±{FLOAT16_MAX:g}): "
                             f"use {instead}, which keeps float32's range")
    return relax.transform.DeadCodeElimination()(rewritten), rewriter.stats


def to_fp16(mod: tvm.IRModule) -> tuple[tvm.IRModule, DynamicStats]:
    return to_half_precision(mod, "fp16")


def to_bf16(mod: tvm.IRModule) -> tuple[tvm.IRModule, DynamicStats]:
    return to_half_precision(mod, "bf16")
