"""float32 convolutions and dense layers as FMA register-tile kernels, weights packed at compile time.

Runs on the Relax module before legalization, on CPU targets, after the model was made
channels-last (passes/layout.py). With L the float32 lanes of the target's vectors (16 on
AVX-512, 8 on AVX2, 4 on NEON, `float_lanes`), a call is replaced when its weight is a constant:

  conv2d NHWC/OHWI, groups = 1    → conv2d_nhwc_f32: out[n, h, w, o] =
                                     Σ_{r,s,c} x[n, h·sh + r·dh, w·sw + s·dw, c] · wp[o/L, r, s, c, o%L]
                                     weights packed [O'/L, KH, KW, I, L], O' = Lk (zero-padded)
  conv2d NHWC, depthwise          → depthwise_nhwc_f32: out[n, h, w, c] = Σ_{r,s} x[...] · wd[r, s, c]
  matmul [..., K] × [K, N]         → dense_f32: out[..., n] = Σ_k a[..., k] · wp[n/L, k, n%L],
                                     weights packed [N'/L, K, L]

so that the kernel's innermost step is one vector of L output channels times one broadcast
activation, a fused multiply-add (kernels/schedules.py tiles pixels × channel vectors in
registers). Spatial padding becomes an explicit pad before the kernel; padded output channels
are dropped by the kernel's last block. Grouped convolutions (other than depthwise), matmuls of
two activations and other dtypes are left to TVM's legalization.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.target import codegen

from ..passes.graph import Constant, const, constant_value, conv_channel_axis, op_name
from .compute import first_channels, round_up, shape64, windows
from .kernel_dispatch import KernelDispatch

LANES = (4, 8, 16)  # the vector widths kernels are packed for (float_lanes)
DEPTHWISE_BLOCK = "depthwise_nhwc_f32"


def conv_block(lanes: int) -> str:
    """The conv kernel's block name, which tells the default schedule its vector lanes."""
    return f"conv2d_nhwc_f32x{lanes}"


def dense_block(lanes: int) -> str:
    return f"dense_f32x{lanes}"


def float_lanes(target: tvm.target.Target) -> int | None:
    """float32 lanes of the target's widest vector registers; None for non-CPU targets."""
    if target.kind.name != "llvm":
        return None
    if str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return 4
    for feature, lanes in (("avx512f", 16), ("avx", 8)):
        if codegen.target_has_features(feature, target):
            return lanes
    return 4


def lanes_for(channels: int, lanes: int) -> int:
    """`lanes`, or the narrower vector (8, 4) whose lanes divide `channels` where `lanes` do not:
    computed exactly instead of padded and cut back (which moves the epilogue out of the tile)."""
    return next((n for n in (lanes, 8, 4) if n <= lanes and channels % n == 0), lanes)


def pack_conv_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """OHWI float32 → [O'/L, H, W, I, L], O zero-padded to O' = Lk."""
    o, kh, kw, i = weight.shape
    padded = np.zeros((round_up(o, lanes), kh, kw, i), np.float32)
    padded[:o] = weight
    return np.ascontiguousarray(padded.reshape(-1, lanes, kh, kw, i).transpose(0, 2, 3, 4, 1))


def pack_dense_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """[K, N] float32 → [N'/L, K, L], N zero-padded to N' = Lk."""
    k, n = weight.shape
    padded = np.zeros((k, round_up(n, lanes)), np.float32)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k, -1, lanes).transpose(1, 0, 2))


def conv2d_nhwc(data: te.Tensor, packed: te.Tensor, strides, dilation, out_channels: int) -> te.Tensor:
    n, height, width, channels = (int(d) for d in data.shape)
    blocks, kh, kw, _, lanes = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    c = te.reduce_axis((0, channels), "c")
    out = te.compute(
        shape64(n, windows(height, kh, sh, dh), windows(width, kw, sw, dw), blocks * lanes),
        lambda b, h, w, o: te.sum(data[b, h * sh + r * dh, w * sw + s * dw, c] * packed[o // lanes, r, s, c, o % lanes],
                                  axis=[r, s, c]),
        name=conv_block(lanes))
    return first_channels(out, out_channels)


def depthwise_nhwc(data: te.Tensor, weight: te.Tensor, strides, dilation) -> te.Tensor:
    n, height, width, channels = (int(d) for d in data.shape)
    kh, kw, _ = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    return te.compute(
        shape64(n, windows(height, kh, sh, dh), windows(width, kw, sw, dw), channels),
        lambda b, h, w, ch: te.sum(data[b, h * sh + r * dh, w * sw + s * dw, ch] * weight[r, s, ch], axis=[r, s]),
        name=DEPTHWISE_BLOCK)


def dense(data: te.Tensor, packed: te.Tensor, out_channels: int) -> te.Tensor:
    *rows, depth = (int(d) for d in data.shape)
    blocks, _, lanes = (int(d) for d in packed.shape)
    k = te.reduce_axis((0, depth), "k")
    out = te.compute(
        shape64(*rows, blocks * lanes),
        lambda *index: te.sum(data[(*index[:-1], k)] * packed[index[-1] // lanes, k, index[-1] % lanes], axis=k),
        name=dense_block(lanes))
    return first_channels(out, out_channels)


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _is_float32(expr) -> bool:
    return isinstance(expr.ty, relax.TensorType) and str(expr.ty.dtype) == "float32"


@relax.expr_functor.mutator
class _FloatKernelDispatch(KernelDispatch):
    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.mod_ = mod
        self.lanes = lanes

    def kernel(self, name: str, compute, data, arrays: list) -> relax.Expr:
        """call_tir of `compute` over the Relax tensor `data` and constant `arrays`."""
        holders = [te.placeholder(shape64(*_shape(data)), "float32", "in0")]
        holders += [te.placeholder(shape64(*a.shape), "float32", f"w{i}") for i, a in enumerate(arrays)]
        out = compute(*holders)
        gvar = self.builder_.add_func(te.create_prim_func([*holders, out]).without_attr("global_symbol"), name)
        out_ty = relax.TensorType([int(d) for d in out.shape], "float32")
        return relax.call_tir(gvar, [data, *[const(a) for a in arrays]], out_ty)

    def conv2d(self, call) -> relax.Expr | None:
        attrs = call.attrs
        data, weight = call.args
        if not (conv_channel_axis(call) == 3 and _is_float32(data) and isinstance(weight, Constant)
                and str(attrs.out_dtype) in ("float32", "", "None", "void")):
            return None
        w = constant_value(weight).astype(np.float32)
        out_channels, _, _, in_per_group = w.shape
        channels = _shape(data)[3]
        groups = int(attrs.groups)
        top, left, bottom, right = (int(p) for p in attrs.padding)
        strides = [int(s) for s in attrs.strides]
        dilation = [int(d) for d in attrs.dilation]
        if groups == 1 and in_per_group == channels:
            padded = self.pad(data, top, left, bottom, right)
            return self.kernel("conv2d_nhwc_f32", lambda x, wp: conv2d_nhwc(x, wp, strides, dilation, out_channels), padded,
                               [pack_conv_weight(w, lanes_for(out_channels, self.lanes))])
        if groups == channels == out_channels and in_per_group == 1:
            padded = self.pad(data, top, left, bottom, right)
            taps = np.ascontiguousarray(w[:, :, :, 0].transpose(1, 2, 0))
            return self.kernel("depthwise_nhwc_f32", lambda x, wd: depthwise_nhwc(x, wd, strides, dilation), padded, [taps])
        return None

    def pad(self, data, top: int, left: int, bottom: int, right: int):
        if not (top or left or bottom or right):
            return data
        return self.builder_.emit(relax.op.nn.pad(data, [0, 0, top, bottom, left, right, 0, 0], pad_value=0.0))

    def matmul(self, call) -> relax.Expr | None:
        data, weight = call.args
        if not (_is_float32(data) and isinstance(weight, Constant) and str(call.attrs.out_dtype) in ("float32", "", "None", "void")
                and len(_shape(data)) >= 2):
            return None
        w = constant_value(weight)
        if w.ndim != 2 or w.dtype != np.float32:
            return None
        return self.kernel("dense_f32", lambda x, wp: dense(x, wp, w.shape[1]), data, [pack_dense_weight(w, lanes_for(w.shape[1], self.lanes))])



def dispatch_float_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its float32 convolutions and constant-weight matmuls on FMA kernels, on CPU
    targets (otherwise `mod` itself)."""
    lanes = float_lanes(target)
    if lanes is None:
        return mod
    return _FloatKernelDispatch(mod, lanes).run()
