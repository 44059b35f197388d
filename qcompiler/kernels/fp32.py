"""float32 convolutions and dense layers as FMA register-tile kernels, weights packed at compile time.

Runs on the Relax module before legalization, on CPU targets, after the model was made
channels-last (passes/layout.py). With L the float32 lanes of the target's vectors (16 on
AVX-512, 8 on AVX2, 4 on NEON, `float_lanes`), a call is replaced when its weight is a constant:

  conv2d NHWC/OHWI, groups = 1    → conv2d_nhwc_f32: out[n, h, w, o] =
                                     Σ_{r,s,c} x[n, h·sh + r·dh, w·sw + s·dw, c] · wp[o/L, r, s, c, o%L]
                                     weights packed [O'/L, KH, KW, I, L], O' = Lk (zero-padded)
  conv2d NHWC, G groups of I → Co  → the same kernel (grouped_conv2d_nhwc_f32), when Co is a multiple
    (Co a multiple of 4)               of a vector: out[..., o] = Σ_{r,s,c<I} x[..., g(o)·I + c] · wp[...],
                                       g(o) = o / Co
  conv2d NHWC, depthwise          → depthwise_nhwc_f32: out[n, h, w, c] = Σ_{r,s} x[...] · wd[r, s, c]
  matmul [..., K] × [K, N]         → dense_f32: out[..., n] = Σ_k a[..., k] · wp[n/L, k, n%L],
                                     weights packed [N'/L, K, L]
  matmul [..., M, K] × [..., K, N] → batch_matmul_f32: out[..., m, n] = Σ_k a[..., m, k] · b[..., k, n],
    of two activations              batch axes broadcast; N zero-padded to a multiple of L; also
                                    in int32 (batch_matmul_i32: a quantized attention's operands,
                                    q − zero point, multiplied and accumulated in int32)
  conv2d_transpose NCHW / IOHW     → dense_f32 to columns [N, H, W, KH·KW·O] (weights [I, KH, KW, O]),
                                     then col2im_nhwc_f32 (see col2im_nhwc), in NHWC

Weights may be int8 (int8-weight-only), float16 or bfloat16 (fp16, bf16: passes/reduced_precision.py)
and activations float16 or bfloat16, each converted to float32 in the kernel (`widened`, `as_float`),

so that the kernel's innermost step is one vector of L output channels times one broadcast
activation, a fused multiply-add (kernels/schedules.py tiles pixels × channel vectors in
registers). Spatial padding becomes an explicit pad before the kernel, except in depthwise
convolutions, which test whether each tap lies inside their unpadded input (the padded copy, a
pass over memory as large as the layer's input, cost more than the test); padded output channels
are dropped by the kernel's last block. Grouped convolutions whose groups have a number of output
channels that is not a multiple of 4, grouped transposed convolutions and other dtypes are left to
TVM's legalization. A transposed
convolution arrives between two layout transforms (passes/layout.py); the pair
permute(permute(x, NHWC→NCHW), NCHW→NHWC) that its kernel leaves is cancelled here.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.target import codegen

from ..passes.graph import Constant, constant_value, conv_channel_axis, is_float32, op_name
from .compute import first_channels, round_up, shape64, windows
from .kernel_dispatch import ConvAttrs, KernelDispatch, depthwise_taps

LANES = (4, 8, 16)  # the vector widths kernels are packed for (float_lanes)
DEPTHWISE_BLOCK = "depthwise_nhwc_f32"
COL2IM_BLOCK = "col2im_nhwc_f32"
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def conv_block(lanes: int) -> str:
    """The conv kernel's block name, which tells the default schedule its vector lanes."""
    return f"conv2d_nhwc_f32x{lanes}"


def dense_block(lanes: int) -> str:
    return f"dense_f32x{lanes}"


BATCH_MATMUL_DTYPES = {"float32": "f32", "int32": "i32"}


def batch_matmul_block(lanes: int, dtype: str = "float32") -> str:
    return f"batch_matmul_{BATCH_MATMUL_DTYPES[dtype]}x{lanes}"


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
    """OHWI float32 (or int8: int8-weight-only) → [O'/L, H, W, I, L], O zero-padded to O' = Lk."""
    o, kh, kw, i = weight.shape
    padded = np.zeros((round_up(o, lanes), kh, kw, i), weight.dtype)
    padded[:o] = weight
    return np.ascontiguousarray(padded.reshape(-1, lanes, kh, kw, i).transpose(0, 2, 3, 4, 1))


def pack_dense_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """[K, N] float32 (or int8: int8-weight-only) → [N'/L, K, L], N zero-padded to N' = Lk."""
    k, n = weight.shape
    padded = np.zeros((k, round_up(n, lanes)), weight.dtype)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k, -1, lanes).transpose(1, 0, 2))


# What the kernels take besides float32, converted next to the multiply-add that uses them:
# weights int8 (int8-weight-only), float16 or bfloat16 (the fp16 and bf16 strategies, whose
# activations arrive in those types too: passes/reduced_precision.py)
WEIGHT_DTYPES = ("float32", "int8", "float16", "bfloat16")
ACTIVATION_DTYPES = ("float32", "float16", "bfloat16")


def as_float(value):
    """A weight or activation element as float32 (see WEIGHT_DTYPES), converted in the kernel's
    inner loop."""
    return value if value.dtype == "float32" else value.astype("float32")


WIDENED_WEIGHT = "widened_weight"


def widened(packed: te.Tensor) -> te.Tensor:
    """A packed weight as float32: an int8, float16 or bfloat16 one through a stage of its own,
    which the default schedule computes per channel tile (schedules._fma_tiles: a panel converted
    once and read by every row tile) instead of converting each weight vector per row tile."""
    if packed.dtype == "float32":
        return packed
    return te.compute(packed.shape, lambda *index: packed(*index).astype("float32"), name=WIDENED_WEIGHT)


def _float_activation(expr) -> bool:
    return isinstance(expr.ty, relax.TensorType) and str(expr.ty.dtype) in ACTIVATION_DTYPES


def _packable_weight(weight) -> np.ndarray:
    """A constant weight in a dtype the kernels take (WEIGHT_DTYPES; any other float as float32)."""
    w = constant_value(weight)
    return w if str(w.dtype) in WEIGHT_DTYPES else w.astype(np.float32)


def conv2d_nhwc(data: te.Tensor, packed: te.Tensor, strides, dilation, out_channels: int,
                groups: int = 1) -> te.Tensor:
    """The conv of `data` (NHWC, padded) with `packed` (pack_conv_weight). With `groups` > 1,
    each group's output channels are whole vectors: vector block j reads the input channels of
    group j // (blocks / groups), I of them (packed's fourth axis) from channel group · I."""
    n, height, width, _ = (int(d) for d in data.shape)
    blocks, kh, kw, group_channels, lanes = (int(d) for d in packed.shape)
    blocks_per_group = blocks // groups
    (sh, sw), (dh, dw) = strides, dilation
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    c = te.reduce_axis((0, group_channels), "c")

    def channel(o):
        return c if groups == 1 else (o // lanes) // blocks_per_group * group_channels + c

    packed = widened(packed)
    out = te.compute(
        shape64(n, windows(height, kh, sh, dh), windows(width, kw, sw, dw), blocks * lanes),
        lambda b, h, w, o: te.sum(as_float(data[b, h * sh + r * dh, w * sw + s * dw, channel(o)])
                                  * packed[o // lanes, r, s, c, o % lanes], axis=[r, s, c]),
        name=conv_block(lanes))
    return first_channels(out, out_channels)


def depthwise_nhwc(data: te.Tensor, weight: te.Tensor, strides, dilation, padding=(0, 0, 0, 0)) -> te.Tensor:
    """out[n, h, w, c] = Σ_{r,s} x[n, h·sh + r·dh − top, w·sw + s·dw − left, c] · wd[r, s, c], x
    zero outside the input: the kernel reads the padding (top, left, bottom, right) instead of a
    padded copy of its input."""
    n, height, width, channels = (int(d) for d in data.shape)
    kh, kw, _ = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")

    def tap(b, h, w, ch):
        y, x = h * sh + r * dh - top, w * sw + s * dw - left
        value = as_float(data[b, y, x, ch])
        if not any(padding):
            return value
        return tirx.if_then_else(tirx.all(y >= 0, y < height, x >= 0, x < width), value, tirx.const(0, "float32"))

    return te.compute(
        shape64(n, windows(height + top + bottom, kh, sh, dh), windows(width + left + right, kw, sw, dw), channels),
        lambda b, h, w, ch: te.sum(tap(b, h, w, ch) * as_float(weight[r, s, ch]), axis=[r, s]),
        name=DEPTHWISE_BLOCK)


def dense(data: te.Tensor, packed: te.Tensor, out_channels: int) -> te.Tensor:
    *rows, depth = (int(d) for d in data.shape)
    blocks, _, lanes = (int(d) for d in packed.shape)
    k = te.reduce_axis((0, depth), "k")
    packed = widened(packed)
    out = te.compute(
        shape64(*rows, blocks * lanes),
        lambda *index: te.sum(as_float(data[(*index[:-1], k)]) * packed[index[-1] // lanes, k, index[-1] % lanes],
                              axis=k),
        name=dense_block(lanes))
    return first_channels(out, out_channels)


def batch_matmul(a: te.Tensor, b: te.Tensor, lanes: int, out_columns: int) -> te.Tensor:
    """out[..., m, n] = Σ_k a[..., m, k] · b[..., k, n] over the batch axes of a and b broadcast as
    numpy does; b's column count is a multiple of `lanes` (zero-padded), the result has
    `out_columns` of them."""
    *a_batch, rows, depth = (int(d) for d in a.shape)
    *b_batch, _, columns = (int(d) for d in b.shape)
    batch = [int(d) for d in np.broadcast_shapes(tuple(a_batch), tuple(b_batch))]

    def at(operand_batch: list[int], index) -> list:
        skip = len(batch) - len(operand_batch)
        return [0 if d == 1 else index[skip + i] for i, d in enumerate(operand_batch)]

    k = te.reduce_axis((0, depth), "k")
    out = te.compute(
        shape64(*batch, rows, columns),
        lambda *i: te.sum(a[(*at(a_batch, i), i[-2], k)] * b[(*at(b_batch, i), k, i[-1])], axis=k),
        name=batch_matmul_block(lanes, str(a.dtype)))
    return first_channels(out, out_columns)


def _taps(out_index, size: int, kernel: int, stride: int, dilation: int, pad: int) -> list[tuple]:
    """The (kernel tap, input index, valid) pairs that reach output index `out_index` of a
    transposed convolution along one axis: out_index + pad = input·stride + tap·dilation. With
    dilation 1 these are tap = (out_index + pad) mod stride + t·stride, t < ⌈kernel / stride⌉;
    otherwise every tap, valid where the stride divides. Indices are clamped into range so that
    an invalid pair reads nothing outside the tensor."""
    full = out_index + pad
    pairs = []
    if dilation == 1:
        for t in range(-(-kernel // stride)):
            tap = tirx.floormod(full, stride) + t * stride
            source = tirx.floordiv(full, stride) - t
            pairs.append((tap, source, tirx.all(tap < kernel, source >= 0, source < size)))
    else:
        for tap in range(kernel):
            shifted = full - tap * dilation
            source = tirx.floordiv(shifted, stride)
            pairs.append((tap, source, tirx.all(shifted >= 0, tirx.floormod(shifted, stride) == 0, source < size)))
    return [(tirx.min(tap, kernel - 1), tirx.max(tirx.min(source, size - 1), 0), valid) for tap, source, valid in pairs]


def col2im_nhwc(cols: te.Tensor, out_shape, kernel, strides, dilation, padding) -> te.Tensor:
    """The transposed convolution's output from its columns cols[n, h, w, (r·KW + s)·O + o] =
    Σ_c x[n, h, w, c] · w[c, r, s, o]:
    out[n, y, x, o] = Σ cols[n, h, w, (r·KW + s)·O + o] over y + pt = h·sh + r·dh, x + pl = w·sw + s·dw."""
    _, height, width, _ = (int(d) for d in cols.shape)
    (kh, kw), (sh, sw), (dh, dw), (top, left) = kernel, strides, dilation, padding
    channels = int(out_shape[3])

    def value(b, y, x, o):
        total = tirx.const(0.0, "float32")
        for r, h, valid_h in _taps(y, height, kh, sh, dh, top):
            for s, w, valid_w in _taps(x, width, kw, sw, dw, left):
                read = cols[b, h, w, (r * kw + s) * channels + o]
                total = total + tirx.if_then_else(tirx.all(valid_h, valid_w), read, tirx.const(0.0, "float32"))
        return total

    return te.compute(shape64(*out_shape), value, name=COL2IM_BLOCK)


def _float_out(call) -> bool:
    """The call's out_dtype is float32 or left to its inputs."""
    return str(call.attrs.out_dtype) in ("float32", "", "None", "void")


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


@relax.expr_functor.mutator
class _FloatKernelDispatch(KernelDispatch):
    HANDLERS = {**KernelDispatch.HANDLERS, "relax.nn.conv2d_transpose": "conv2d_transpose",
                "relax.permute_dims": "cancel_inverse_permute"}

    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.mod_ = mod
        self.lanes = lanes

    def _bound_permute(self, expr, axes: tuple) -> relax.Expr | None:
        """x where `expr` is a variable bound to permute_dims(x, axes), else None."""
        if not isinstance(expr, relax.Var):
            return None
        value = self.lookup_binding(expr)
        if isinstance(value, relax.Call) and op_name(value) == "relax.permute_dims" and value.attrs.axes is not None \
                and tuple(int(a) for a in value.attrs.axes) == axes:
            return value.args[0]
        return None

    def cancel_inverse_permute(self, call) -> relax.Expr | None:
        """permute(permute(x, NHWC→NCHW), NCHW→NHWC) → x."""
        if call.attrs.axes is None or tuple(int(a) for a in call.attrs.axes) != TO_NHWC:
            return None
        return self._bound_permute(call.args[0], TO_NCHW)

    def nhwc(self, data) -> relax.Expr:
        """The NCHW tensor `data` channels-last, reusing the tensor it was transposed from."""
        source = self._bound_permute(data, TO_NCHW)
        return source if source is not None else self.builder_.emit(relax.op.permute_dims(data, list(TO_NHWC)))

    def conv2d_transpose(self, call) -> relax.Expr | None:
        attrs = call.attrs
        data, weight = call.args
        if not (str(attrs.data_layout) == "NCHW" and str(attrs.kernel_layout) == "IOHW" and str(attrs.out_layout) == "NCHW"
                and int(attrs.groups) == 1 and is_float32(data) and isinstance(weight, Constant) and is_float32(call)):
            return None
        w = constant_value(weight).astype(np.float32)  # [I, O, KH, KW]
        channels, out_channels, kh, kw = w.shape
        columns = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(channels, kh * kw * out_channels)
        packed = pack_dense_weight(columns, lanes_for(columns.shape[1], self.lanes))
        cols = self.builder_.emit(self.kernel("dense_f32", lambda x, wp: dense(x, wp, columns.shape[1]),
                                              self.nhwc(data), [packed]))
        n, _, height, width = _shape(call)
        conv = ConvAttrs.of(call)
        out = self.builder_.emit(self.kernel(
            "col2im_nhwc_f32",
            lambda c: col2im_nhwc(c, (n, height, width, out_channels), (kh, kw), conv.strides, conv.dilation,
                                  conv.padding[:2]),
            cols))
        return relax.op.permute_dims(out, list(TO_NCHW))

    def conv2d(self, call) -> relax.Expr | None:
        data, weight = call.args
        if not (conv_channel_axis(call) == 3 and _float_activation(data) and isinstance(weight, Constant)
                and _float_out(call)):
            return None
        w = _packable_weight(weight)
        data = self.float32_activation(data)
        out_channels, _, _, in_per_group = w.shape
        channels = _shape(data)[3]
        conv = ConvAttrs.of(call)
        strides, dilation = conv.strides, conv.dilation
        if conv.groups == 1 and in_per_group == channels:
            padded = self.pad(data, conv.nhwc_pads())
            return self.kernel("conv2d_nhwc_f32", lambda x, wp: conv2d_nhwc(x, wp, strides, dilation, out_channels), padded,
                               [pack_conv_weight(w, lanes_for(out_channels, self.lanes))])
        if conv.groups == channels == out_channels and in_per_group == 1:
            return self.kernel("depthwise_nhwc_f32",
                               lambda x, wd: depthwise_nhwc(x, wd, strides, dilation, conv.padding), data,
                               [depthwise_taps(w)])
        groups = conv.groups
        per_group = out_channels // groups
        lanes = lanes_for(per_group, self.lanes)
        if groups > 1 and channels == groups * in_per_group and per_group * groups == out_channels \
                and per_group % lanes == 0:
            padded = self.pad(data, conv.nhwc_pads())
            return self.kernel("grouped_conv2d_nhwc_f32",
                               lambda x, wp: conv2d_nhwc(x, wp, strides, dilation, out_channels, groups), padded,
                               [pack_conv_weight(w, lanes)])
        return None

    def float32_activation(self, data) -> relax.Expr:
        """A float16 activation as float32, before the kernel: one vectorized pass (fused with
        the rounding that made it, in its producer), so that the kernel's inner loop converts
        only its weights, which it reuses, not each activation. Not bfloat16: TVM computes
        bfloat16 in float32 (BF16ComputeLegalize), so a fused round trip would skip the rounding;
        the kernel converts those activations itself."""
        if str(data.ty.dtype) != "float16":
            return data
        return self.builder_.emit(relax.op.astype(data, "float32"))

    def matmul(self, call) -> relax.Expr | None:
        data, weight = call.args
        if not isinstance(weight, Constant):
            return self.batch_matmul(call)
        if not (_float_activation(data) and _float_out(call) and len(_shape(data)) >= 2):
            return None
        w = _packable_weight(weight)
        if w.ndim != 2:
            return None
        data = self.float32_activation(data)
        return self.kernel("dense_f32", lambda x, wp: dense(x, wp, w.shape[1]), data, [pack_dense_weight(w, lanes_for(w.shape[1], self.lanes))])

    def batch_matmul(self, call) -> relax.Expr | None:
        """A matmul of two float32 (or two int32) activations (attention's QKᵀ and PV), both of rank >= 2."""
        a, b = call.args
        dtypes = {str(x.ty.dtype) if isinstance(x.ty, relax.TensorType) else None for x in (a, b, call)}
        if not (len(dtypes) == 1 and dtypes <= set(BATCH_MATMUL_DTYPES) and len(_shape(a)) >= 2 and len(_shape(b)) >= 2):
            return None
        dtype = dtypes.pop()
        columns = _shape(b)[-1]
        lanes = lanes_for(columns, self.lanes)
        if columns % lanes:
            rank = len(_shape(b))
            b = self.builder_.emit(relax.op.nn.pad(b, [0, 0] * (rank - 1) + [0, round_up(columns, lanes) - columns],
                                                   pad_value=0))
        return self.kernel(f"batch_matmul_{BATCH_MATMUL_DTYPES[dtype]}", lambda x, y: batch_matmul(x, y, lanes, columns),
                           [a, b])



def dispatch_float_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its float32 convolutions and constant-weight matmuls on FMA kernels, on CPU
    targets (otherwise `mod` itself)."""
    lanes = float_lanes(target)
    if lanes is None:
        return mod
    return relax.transform.DeadCodeElimination()(_FloatKernelDispatch(mod, lanes).run())
