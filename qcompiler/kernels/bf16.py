"""bfloat16 convolutions and matmuls on `vdpbf16ps` (dpbf16.py), for the bf16 strategy.

Runs on the Relax module before legalization, on x86 targets with AVX-512 BF16
(isa.bf16_dot_of), after the model was made channels-last. The bf16 strategy
(passes/reduced_precision.py) writes each product as bfloat16 operands with a float32 result;
a call is replaced when its operands are exactly that — a bfloat16 activation, a constant
bfloat16 weight, float32 out:

  conv2d NHWC/OHWI, groups = 1      → conv2d_nhwc_bf16: out[n, h, w, o] =
                                      Σ_{r,s,c} x[n, h·sh + r·dh, w·sw + s·dw, c] · wp[o/16, r, s, c/2, o%16, c%2]
  matmul [..., K] × constant [K, N] → dense_bf16: out[..., o] = Σ_k a[..., k] · wp[o/16, k/2, o%16, k%2]

with the int8 kernels' computes and schedules (compute.py, schedules.py: 16 output channels × 2
input channels per instruction, a tile of pixels in registers, the epilogue fused), accumulating
in float32. Spatial padding becomes an explicit pad, input channels are zero-padded to even and
output channels computed to a multiple of 16. Other calls with bfloat16 operands (and every one
on targets without AVX-512 BF16) go to the float32 kernels, which convert bfloat16 next to the
multiply-add (fp32.py): the same products, one FMA per product instead of one instruction per two.

With AMX-BF16 (isa.tile_engine_of(target, amx.BF16): Sapphire Rapids and newer, or the emulation),
matmuls and groups = 1 convolutions with ≥ 32 rows (output pixels), K ≥ 64 (KH·KW·C for a
convolution, over its windows unless 1×1 stride 1: im2col.py) and ≥ 64 output channels run on
`tdpbf16ps` tiles instead (amx.py; rows padded to 32, K to 32), as the int8 ones on `tdpbusd`.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from ..passes.graph import Constant, constant_value, conv_channel_axis, shape_of
from . import amx
from . import compute as kc
from .isa import DotProduct, bf16_dot_of, tile_engine_of
from .kernel_dispatch import ConvAttrs, KernelDispatch, Windows, conv_rows, tiles_worthwhile

BFLOAT16 = "bfloat16"


def _dtype(expr) -> str | None:
    return str(expr.ty.dtype) if isinstance(expr.ty, relax.TensorType) else None


@relax.expr_functor.mutator
class _BF16KernelDispatch(KernelDispatch):
    def __init__(self, mod: tvm.IRModule, dp: DotProduct, engine: amx.TileBackend | None = None):
        super().__init__(mod)
        self.mod_ = mod
        self.dp = dp
        self.engine = engine

    def tile_engine_worthwhile(self, rows: int, depth: int, out_channels: int) -> bool:
        return self.engine is not None and tiles_worthwhile(amx.BF16, rows, depth, out_channels)

    def dense_on_tiles(self, data, w: np.ndarray, windows: Windows | None = None) -> relax.Expr:
        return self.dense_tiles(data, w, self.dp, self.engine, amx.BF16, f"dense_bf16_{self.engine.name}", windows)

    def bf16_weight(self, call) -> np.ndarray | None:
        """The constant bfloat16 weight of a call with a bfloat16 activation and float32 result."""
        data, weight = call.args
        if not (_dtype(data) == BFLOAT16 and isinstance(weight, Constant) and _dtype(call) == "float32"):
            return None
        w = constant_value(weight)
        return w if str(w.dtype) == BFLOAT16 else None

    def conv2d(self, call) -> relax.Expr | None:
        w = self.bf16_weight(call)
        conv = ConvAttrs.of(call)
        if w is None or conv_channel_axis(call) != 3 or conv.groups != 1:
            return None
        data = call.args[0]
        out_channels, channels = w.shape[0], w.shape[3]
        if self.tile_engine_worthwhile(conv_rows(data, w, conv), w[0].size, out_channels):
            return self.conv_on_tiles(data, w, conv)
        data = self.pad(data, conv.nhwc_pads(-channels % self.dp.reduce))
        return self.kernel(
            "conv2d_nhwc_bf16",
            lambda x, wp: kc.conv2d_nhwc_packed(x, wp, self.dp, conv.strides, conv.dilation, out_channels),
            [data], [kc.pack_conv_weight(w, self.dp)])

    def matmul(self, call) -> relax.Expr | None:
        w = self.bf16_weight(call)
        data = call.args[0]
        if w is None or w.ndim != 2 or len(data.ty.shape.values) < 2:
            return None
        rank = len(data.ty.shape.values)
        if self.tile_engine_worthwhile(math.prod(shape_of(data)[:-1]), *w.shape):
            return self.dense_on_tiles(data, w)
        data = self.pad(data, [(0, 0)] * (rank - 1) + [(0, -w.shape[0] % self.dp.reduce)])
        return self.kernel("dense_bf16", lambda x, wp: kc.dense_packed(x, wp, self.dp, w.shape[1]), [data],
                           [kc.pack_dense_weight(w, self.dp)])


def dispatch_bf16_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its bfloat16 convolutions and matmuls on `vdpbf16ps` kernels, on targets with
    AVX-512 BF16 (otherwise `mod` itself)."""
    dp = bf16_dot_of(target)
    if dp is None:
        return mod
    engine = tile_engine_of(target, amx.BF16)
    return relax.transform.DeadCodeElimination()(_BF16KernelDispatch(mod, dp, engine).run())
