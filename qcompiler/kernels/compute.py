"""Integer kernels as tensor expressions, in the layouts the x86 VNNI schedules tensorize.

All take uint8 activations already padded (spatially, and along channels to a multiple of 4)
and int8 weights packed at compile time, and accumulate in int32:

  conv2d_nhwc_vnni   out[n, h, w, o] = Σ_{r,s,c} x[n, h·sh + r·dh, w·sw + s·dw, g(o)·I + c] · wp[o/16, r, s, c/4, o%16, c%4]
                     with I input channels per group (padded to 4k), g(o) = o / O' the group of
                     output channel o, O' its output channels per group (padded to 16k)
  dense_vnni         out[m, o]       = Σ_k a[m, k] · wp[o/16, k/4, o%16, k%4]
  depthwise_nhwc     out[n, h, w, c] = Σ_{r,s}   x[n, h·sh + r·dh, w·sw + s·dw, c] · wd[r, s, c]

The packed weight `wp` puts 16 output channels × 4 reduction elements in 64 consecutive bytes:
exactly one `vpdpbusd` operand (see vnni.py). Block names identify the kernels to the schedules.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .vnni import LANES, REDUCE

CONV_BLOCK = "conv2d_nhwc_vnni"
DENSE_BLOCK = "dense_vnni"
DEPTHWISE_BLOCK = "depthwise_nhwc_int8"


def shape64(*dims: int) -> list:
    """A tensor shape with int64 dims, as Relax's own kernels have (FuseTIR requires them to agree)."""
    return [tirx.const(int(d), "int64") for d in dims]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_conv_weight(weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """OHWI int8 → [O'/16, H, W, I'/4, 16, 4] with O, I zero-padded to O' = 16k, I' = 4k.

    Grouped: each group's [O/groups, H, W, I] slice is packed alone; the groups' blocks follow
    each other along the first axis.
    """
    if groups > 1:
        return np.concatenate([pack_conv_weight(part) for part in np.split(weight, groups, axis=0)])
    o, kh, kw, i = weight.shape
    padded = np.zeros((round_up(o, LANES), kh, kw, round_up(i, REDUCE)), np.int8)
    padded[:o, :, :, :i] = weight
    blocks = padded.reshape(padded.shape[0] // LANES, LANES, kh, kw, padded.shape[3] // REDUCE, REDUCE)
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 4, 1, 5))


def pack_dense_weight(weight: np.ndarray) -> np.ndarray:
    """[K, N] int8 → [N'/16, K'/4, 16, 4], zero-padded to N' = 16k, K' = 4k."""
    k, n = weight.shape
    padded = np.zeros((round_up(k, REDUCE), round_up(n, LANES)), np.int8)
    padded[:k, :n] = weight
    blocks = padded.reshape(padded.shape[0] // REDUCE, REDUCE, padded.shape[1] // LANES, LANES)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def _first_channels(out: te.Tensor, channels: int, groups: int = 1) -> te.Tensor:
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


def _windows(size: int, kernel: int, stride: int, dilation: int) -> int:
    """How many positions a (dilated) kernel window takes along an already padded axis."""
    return (size - (kernel - 1) * dilation - 1) // stride + 1


def conv2d_nhwc_vnni(data: te.Tensor, packed: te.Tensor, strides, dilation, out_channels: int,
                     groups: int = 1) -> te.Tensor:
    n, height, width, channels = (int(d) for d in data.shape)
    out_blocks, kh, kw, _, _, _ = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = _windows(height, kh, sh, dh), _windows(width, kw, sw, dw)
    in_per_group, out_per_group = channels // groups, out_blocks * LANES // groups
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    c = te.reduce_axis((0, in_per_group), "c")

    def channel(o, c):
        return c if groups == 1 else o // out_per_group * in_per_group + c

    out = te.compute(
        shape64(n, out_h, out_w, out_blocks * LANES),
        lambda b, h, w, o: te.sum(
            data[b, h * sh + r * dh, w * sw + s * dw, channel(o, c)].astype("int32")
            * packed[o // LANES, r, s, c // REDUCE, o % LANES, c % REDUCE].astype("int32"),
            axis=[r, s, c]),
        name=CONV_BLOCK)
    return _first_channels(out, out_channels, groups)


def dense_vnni(data: te.Tensor, packed: te.Tensor, out_channels: int) -> te.Tensor:
    rows, depth = (int(d) for d in data.shape)
    out_blocks = int(packed.shape[0])
    k = te.reduce_axis((0, depth), "k")
    out = te.compute(
        shape64(rows, out_blocks * LANES),
        lambda m, o: te.sum(
            data[m, k].astype("int32") * packed[o // LANES, k // REDUCE, o % LANES, k % REDUCE].astype("int32"),
            axis=k),
        name=DENSE_BLOCK)
    return _first_channels(out, out_channels)


def depthwise_nhwc(data: te.Tensor, weight: te.Tensor, strides, dilation) -> te.Tensor:
    n, height, width, channels = (int(d) for d in data.shape)
    kh, kw, _ = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = _windows(height, kh, sh, dh), _windows(width, kw, sw, dw)
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    return te.compute(
        shape64(n, out_h, out_w, channels),
        lambda b, h, w, ch: te.sum(
            data[b, h * sh + r * dh, w * sw + s * dw, ch].astype("int32") * weight[r, s, ch].astype("int32"),
            axis=[r, s]),
        name=DEPTHWISE_BLOCK)
