"""Integer kernels as tensor expressions, in the layouts the dot-product schedules tensorize.

All take 8-bit activations already padded (spatially, and along channels to a multiple of 4)
and int8 weights packed at compile time, and accumulate in int32. With L the instruction's
lanes (isa.py: 16 for VNNI, 8 for its 256-bit form, 4 for sdot):

  conv2d_nhwc_<isa>  out[n, h, w, o] = Σ_{r,s,c} x[n, h·sh + r·dh, w·sw + s·dw, g(o)·I + c] · wp[o/L, r, s, c/4, o%L, c%4]
                     with I input channels per group (padded to 4k), g(o) = o / O' the group of
                     output channel o, O' its output channels per group (padded to Lk)
  dense_<isa>        out[..., o]     = Σ_k a[..., k] · wp[o/L, k/4, o%L, k%4]
  depthwise_nhwc     out[n, h, w, c] = Σ_{r,s}   x[n, h·sh + r·dh, w·sw + s·dw, c] · wd[r, s, c]
  depthwise_nhwc_<isa>  the same over taps interleaved 4 by 4 (taps.py), for the lane-wise dot
                     product: out[n, h, w, c] = Σ_{r,g,k} t[n, h·sh + r·dh, w + g·step, c/L, c%L, k] · wt[r, g, c/L, c%L, k]

The packed weight `wp` puts L output channels × 4 reduction elements in consecutive bytes:
exactly one instruction's operand (`vpdpbusd`: 64 bytes, `sdot`: 16). Block names identify the
kernels and their instruction to the schedules. The conv and dense kernels also serve the bf16
strategy's `vdpbf16ps` (isa.BF16_DOT): bfloat16 activations and weights, 2 reduction elements
per lane (4 above becomes 2), float32 accumulators.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .isa import DotProduct
from .taps import phase_groups

DEPTHWISE_BLOCK = "depthwise_nhwc_int8"


def shape64(*dims: int) -> list:
    """A tensor shape with int64 dims, as Relax's own kernels have (FuseTIR requires them to agree)."""
    return [tirx.const(int(d), "int64") for d in dims]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_conv_weight(weight: np.ndarray, dp: DotProduct, groups: int = 1) -> np.ndarray:
    """OHWI int8 (bfloat16 for BF16_DOT) → [O'/L, H, W, I'/R, L, R] with O, I zero-padded to
    O' = Lk, I' = Rk (L = dp.lanes, R = dp.reduce: 4 for the int8 instructions).

    Grouped: each group's [O/groups, H, W, I] slice is packed alone; the groups' blocks follow
    each other along the first axis.
    """
    if groups > 1:
        return np.concatenate([pack_conv_weight(part, dp) for part in np.split(weight, groups, axis=0)])
    o, kh, kw, i = weight.shape
    lanes, reduce = dp.lanes, dp.reduce
    padded = np.zeros((round_up(o, lanes), kh, kw, round_up(i, reduce)), weight.dtype)
    padded[:o, :, :, :i] = weight
    blocks = padded.reshape(padded.shape[0] // lanes, lanes, kh, kw, padded.shape[3] // reduce, reduce)
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 4, 1, 5))


def pack_dense_weight(weight: np.ndarray, dp: DotProduct, n_multiple: int | None = None,
                      k_multiple: int | None = None) -> np.ndarray:
    """[K, N] int8 (or bfloat16) → [N'/L, K'/R, L, R], zero-padded to N' (a multiple of
    `n_multiple`, default L = dp.lanes) and K' (of `k_multiple`, default R = dp.reduce)."""
    k, n = weight.shape
    lanes, reduce = dp.lanes, dp.reduce
    padded = np.zeros((round_up(k, k_multiple or reduce), round_up(n, n_multiple or lanes)), weight.dtype)
    padded[:k, :n] = weight
    blocks = padded.reshape(padded.shape[0] // reduce, reduce, padded.shape[1] // lanes, lanes)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def pack_depthwise_weight(taps: np.ndarray, lanes: int, reduce: int) -> np.ndarray:
    """[kh, kw, C] int8 → [kh, G, C'/L, L, 4]: wt[r, g, b, i, k] = taps[r, 4g + k, bL + i], zero
    where 4g + k ≥ kw or bL + i ≥ C (G = ⌈kw/4⌉ groups of 4 horizontal taps, C' = Lk)."""
    kh, kw, channels = taps.shape
    padded = np.zeros((kh, round_up(kw, reduce), round_up(channels, lanes)), np.int8)
    padded[:, :kw, :channels] = taps
    groups = padded.reshape(kh, padded.shape[1] // reduce, reduce, padded.shape[2] // lanes, lanes)
    return np.ascontiguousarray(groups.transpose(0, 1, 3, 4, 2))


def pack_depthwise_weight_phased(taps: np.ndarray, lanes: int, reduce: int) -> np.ndarray:
    """[kh, kw, C] int8 → [4, kh, G', C'/L, L, 4]: wt[j, r, g, b, i, k] = taps[r, 4g + k − j, bL + i],
    zero where 4g + k − j is outside [0, kw) or bL + i ≥ C (G' = ⌈(kw + 3)/4⌉; taps.py's aligned layout)."""
    kh, kw, channels = taps.shape
    groups = phase_groups(kw)
    phases = np.zeros((reduce, kh, groups * reduce, round_up(channels, lanes)), np.int8)
    for j in range(reduce):
        phases[j, :, j:j + kw, :channels] = taps
    blocks = phases.reshape(reduce, kh, groups, reduce, phases.shape[3] // lanes, lanes)
    return np.ascontiguousarray(blocks.transpose(0, 1, 2, 4, 5, 3))


def first_channels(out: te.Tensor, channels: int, groups: int = 1) -> te.Tensor:
    """`out` without the zero-padded channels: of `groups` equal blocks along its last axis, the
    first `channels / groups` of each."""
    shape = [int(d) for d in out.shape]
    if shape[-1] == channels:
        return out
    kept, block = channels // groups, shape[-1] // groups

    def select(*index):
        *outer, o = index
        return out[(*outer, o // kept * block + o % kept)] if groups > 1 else out[index]

    return te.compute(shape64(*shape[:-1], channels), select, name=out.op.name + "_channels")


def _product(a, b, dp: DotProduct):
    """a · b in the instruction's accumulator type (int32; float32 for bfloat16). Without a dot-product instruction the bytes are multiplied as int16
    (|a · b| ≤ 255 · 128 fits) and widened, which LLVM maps to widening multiply-accumulates
    (`smlal`) instead of 32-bit multiplies of widened bytes."""
    if dp.accumulator != "int32":
        return a.astype(dp.accumulator) * b.astype(dp.accumulator)
    if dp.register is None:
        return (a.astype("int16") * b.astype("int16")).astype("int32")
    return a.astype("int32") * b.astype("int32")


def windows(size: int, kernel: int, stride: int, dilation: int) -> int:
    """How many positions a (dilated) kernel window takes along an already padded axis."""
    return (size - (kernel - 1) * dilation - 1) // stride + 1


def conv2d_nhwc_packed(data: te.Tensor, packed: te.Tensor, dp: DotProduct, strides, dilation,
                       out_channels: int, groups: int = 1) -> te.Tensor:
    n, height, width, channels = (int(d) for d in data.shape)
    out_blocks, kh, kw, _, _, _ = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = windows(height, kh, sh, dh), windows(width, kw, sw, dw)
    lanes, reduce = dp.lanes, dp.reduce
    in_per_group, out_per_group = channels // groups, out_blocks * lanes // groups
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    c = te.reduce_axis((0, in_per_group), "c")

    def channel(o, c):
        return c if groups == 1 else o // out_per_group * in_per_group + c

    out = te.compute(
        shape64(n, out_h, out_w, out_blocks * lanes),
        lambda b, h, w, o: te.sum(
            _product(data[b, h * sh + r * dh, w * sw + s * dw, channel(o, c)],
                     packed[o // lanes, r, s, c // reduce, o % lanes, c % reduce], dp),
            axis=[r, s, c]),
        name=dp.conv_block())
    return first_channels(out, out_channels, groups)


def dense_packed(data: te.Tensor, packed: te.Tensor, dp: DotProduct, out_channels: int) -> te.Tensor:
    """Over rows of any rank (a transformer's [batch, tokens, K] activations): out[..., o]."""
    *rows, depth = (int(d) for d in data.shape)
    out_blocks = int(packed.shape[0])
    lanes, reduce = dp.lanes, dp.reduce
    k = te.reduce_axis((0, depth), "k")
    out = te.compute(
        shape64(*rows, out_blocks * lanes),
        lambda *index: te.sum(
            _product(data[(*index[:-1], k)], packed[index[-1] // lanes, k // reduce, index[-1] % lanes, k % reduce], dp),
            axis=k),
        name=dp.dense_block())
    return first_channels(out, out_channels)


def pack_activation_operand(b: te.Tensor, dp: DotProduct, columns: int) -> te.Tensor:
    """An int8 activation [..., K, N] (K a multiple of 4) packed at run time as dense weights are
    at compile time: [..., N'/L, K/4, L, 4], zero where n ≥ N (N' = `columns`, L = dp.lanes)."""
    *batch, depth, width = (int(d) for d in b.shape)
    lanes, reduce = dp.lanes, dp.reduce
    return te.compute(
        shape64(*batch, columns // lanes, depth // reduce, lanes, reduce),
        lambda *i: te.if_then_else(i[-4] * lanes + i[-2] < width,
                                   b[(*i[:-4], i[-3] * reduce + i[-1], tirx.min(i[-4] * lanes + i[-2], width - 1))],
                                   tirx.const(0, "int8")),
        name="pack_activation_operand")


def batch_dense_packed(data: te.Tensor, packed: te.Tensor, dp: DotProduct, out_channels: int) -> te.Tensor:
    """out[..., m, o] = Σ_k data[..., m, k] · packed[..., o / L, k / 4, o % L, k % 4]: a matmul of
    two activations, the second packed per batch (pack_activation_operand); the block is a dense
    block (the same default schedule), its batch axes outer loops."""
    *batch, rows, depth = (int(d) for d in data.shape)
    lanes, reduce = dp.lanes, dp.reduce
    k = te.reduce_axis((0, depth), "k")
    out = te.compute(
        shape64(*batch, rows, int(packed.shape[-4]) * lanes),
        lambda *i: te.sum(_product(data[(*i[:-1], k)], packed[(*i[:-2], i[-1] // lanes, k // reduce, i[-1] % lanes,
                                                                k % reduce)], dp), axis=k),
        name=dp.dense_block())
    return first_channels(out, out_channels)


def dense_matrix_tiles(data: te.Tensor, packed: te.Tensor, name: str, leading: list[int], out_channels: int,
                       accumulator: str = "int32") -> te.Tensor:
    """Dense over a padded matrix for a tile engine (amx.py): data [M', K'] × packed
    [N'/16, K'/r, 16, r] → [M', N'] in `accumulator` (block `name`), then its first
    M = Π `leading` rows and `out_channels` columns, in the shape [*leading, out_channels] (row m
    = the leading index in C order)."""
    padded_rows, depth = (int(d) for d in data.shape)
    lanes, reduce = int(packed.shape[2]), int(packed.shape[3])
    k = te.reduce_axis((0, depth), "k")
    out = te.compute(
        shape64(padded_rows, int(packed.shape[0]) * lanes),
        lambda m, o: te.sum(data[m, k].astype(accumulator) * packed[o // lanes, k // reduce, o % lanes, k % reduce]
                            .astype(accumulator), axis=k),
        name=name)
    if [int(d) for d in out.shape] == [*leading, out_channels]:
        return out

    def kept(*index):
        *outer, o = index
        row = outer[0]
        for axis, extent in zip(outer[1:], leading[1:]):
            row = row * extent + axis
        return out[row, o]

    return te.compute(shape64(*leading, out_channels), kept, name=name + "_kept")


def depthwise_nhwc(data: te.Tensor, weight: te.Tensor, strides, dilation) -> te.Tensor:
    n, height, width, channels = (int(d) for d in data.shape)
    kh, kw, _ = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = windows(height, kh, sh, dh), windows(width, kw, sw, dw)
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    return te.compute(
        shape64(n, out_h, out_w, channels),
        lambda b, h, w, ch: te.sum(
            data[b, h * sh + r * dh, w * sw + s * dw, ch].astype("int32") * weight[r, s, ch].astype("int32"),
            axis=[r, s]),
        name=DEPTHWISE_BLOCK)


def _depthwise_over_taps(taps: te.Tensor, dp: DotProduct, stride_h: int, dilation_h: int, out_w: int,
                         kh: int, groups: int, channels: int, group_at, weight) -> te.Tensor:
    """Σ_{r<kh, g<groups, k<4} taps[n, h·sh + r·dh, group_at(w, g), c/L, c%L, k] · weight(w, r, g, c/L, c%L, k)
    over taps [N, H, Q, C'/L, L, 4] (taps.py), without the padded channels."""
    n, height, _, blocks, lanes, reduce = (int(d) for d in taps.shape)
    r = te.reduce_axis((0, kh), "r")
    g = te.reduce_axis((0, groups), "g")
    k = te.reduce_axis((0, reduce), "k")
    out = te.compute(
        shape64(n, windows(height, kh, stride_h, dilation_h), out_w, blocks * lanes),
        lambda b, h, w, c: te.sum(
            taps[b, h * stride_h + r * dilation_h, group_at(w, g), c // lanes, c % lanes, k].astype("int32")
            * weight(w, r, g, c // lanes, c % lanes, k).astype("int32"),
            axis=[r, g, k]),
        name=dp.depthwise_block())
    return first_channels(out, channels)


def depthwise_nhwc_lanewise(taps: te.Tensor, packed: te.Tensor, dp: DotProduct, stride_h: int, dilation_h: int,
                            step: int, channels: int) -> te.Tensor:
    """The depthwise convolution over interleaved taps [N, H, Q, C'/L, L, 4] (taps.py) and
    weights packed by `pack_depthwise_weight`; `step` positions between tap groups."""
    kh, groups = (int(d) for d in packed.shape[:2])
    out_w = int(taps.shape[2]) - (groups - 1) * step
    return _depthwise_over_taps(taps, dp, stride_h, dilation_h, out_w, kh, groups, channels,
                                lambda w, g: w + g * step, lambda w, *index: packed[index])


def depthwise_nhwc_phased(taps: te.Tensor, packed: te.Tensor, dp: DotProduct, stride_h: int, dilation_h: int,
                          out_w: int, channels: int) -> te.Tensor:
    """The stride-1 depthwise convolution over aligned taps [N, H, M, C'/L, L, 4] (taps.py) and
    weights packed by `pack_depthwise_weight_phased`: output column w reads groups w // 4 + g
    with the weights of its phase w % 4."""
    phases, kh, groups = (int(d) for d in packed.shape[:3])
    return _depthwise_over_taps(taps, dp, stride_h, dilation_h, out_w, kh, groups, channels,
                                lambda w, g: w // phases + g, lambda w, *index: packed[(w % phases, *index)])
