"""Depthwise convolution taps interleaved for the lane-wise dot product (`vpdpbusd`).

A depthwise convolution sums, per channel c, taps x[h·sh + r, w·sw + s, c] · wd[r, s, c]. There
is no reduction over channels, so the broadcast dot product of the other convolutions does not
apply; the lane-wise one does (dot_intrinsic.py): lane c multiplies 4 bytes of its own with 4
weights of its own. With the 4 bytes = 4 horizontal taps of channel c, one `vpdpbusd` does 4
taps of 16 channels, where 32-bit multiplies do one.

`tap_interleave_kernel` writes those 4-byte groups once per input row, for every position a
group can start at (q·sw, with q counting output columns plus the later groups' offsets):

    taps[n, h, q, b, i, k] = x[n, h, min(q·sw + k·dw, W − 1), b·L + i]      (int8 x: x + 128)

for the L = 16 (in VNNI's 256-bit form 8) channels i of channel block b, 4 taps k. x is the
convolution's padded input: the kernel reads the unpadded one and writes the pad value where
x's row or column is border, so a border pad costs no pass of its own (rapidocr's MobileNetV3
classifier: 0.333 → 0.305 ms at 2 threads, 0.379 → 0.366 ms at 1). Then, with G = ⌈kw / 4⌉
groups of 4 taps (the last padded with zero weights) and step = 4·dw / sw,

    out[n, h, w, c] = Σ_{r<kh, g<G, k<4} taps[n, h·sh + r·dh, w + g·step, c / L, c % L, k] · wt[r, g, c / L, c % L, k]

(compute.depthwise_nhwc_lanewise). Positions past the last column are clamped: they meet zero
weights. A last block of fewer than L channels is read from channel C − L on and shifted into
place; its extra lanes hold other channels' bytes, which meet zero weights too, and the kernel
drops those channels. Each 4 × 16-byte group is one shuffle of four loads.

For a stride-1 kernel the sliding layout writes every input byte 4 times. The aligned layout
writes it once: only the groups starting at multiples of 4 (the same kernel with stride 4, for
M = aligned_positions groups), and output column w = 4m + j reads groups m + g with weights
shifted by its phase j,

    out[n, h, w, c] = Σ_{r, g<G', k<4} taps[n, h·sh + r·dh, w // 4 + g, c / L, c % L, k] · wt[w % 4, r, g, c / L, c % L, k]

wt[j, r, g, ·, ·, k] = w[r, 4g + k − j] (zero outside the kernel; compute.depthwise_nhwc_phased).
Every phase runs G' = ⌈(kw + 3) / 4⌉ groups: as many as the sliding layout's ⌈kw / 4⌉ when
kw ≡ 1 (mod 4), as for MobileNetV3's 5×5 kernels, where each group is then read by 4 neighbouring
outputs from L1 instead of once from L2 (rapidocr's MobileNetV3 classifier: 0.314 → 0.269 ms at 1
thread, 0.275 → 0.246 ms at 2; its 200-channel taps kernel 7.9 → 1.6 µs, the convolution 17.3 →
14.1 µs). A 3×3 kernel runs twice the dot products, yet writing a quarter of the taps still
wins: the classifier 0.244 → 0.238 ms at 1 thread, PP-LCNet 1.227 → 1.181 ms. Stride-1 kernels
take the aligned layout (`phased`), others the sliding one.

Both kernels split their work between threads by columns (positions q here, output column tiles
in the convolution's schedule), so each thread mostly reads back taps it wrote itself. Split by
rows instead, rapidocr's MobileNetV3 classifier ran 18% slower at 2 threads (0.487 against
0.414 ms), slower than with 32-bit multiplies (0.431); at 1 thread the taps take it from 0.469
to 0.435 ms (Zen 4).
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

from ..fusion import OPAQUE
from .dot_intrinsic import REDUCE


def tap_groups(kernel_w: int) -> int:
    """Groups of REDUCE horizontal taps a kernel row is split into (the last zero-padded)."""
    return -(-kernel_w // REDUCE)


def group_step(stride_w: int, dilation_w: int) -> int:
    """How many positions q apart consecutive tap groups start."""
    return REDUCE * dilation_w // stride_w


def phased(kernel_w: int, stride_w: int, dilation_w: int) -> bool:
    """Whether the convolution reads aligned taps: kernels of stride and dilation 1 (and width > 1)."""
    return stride_w == dilation_w == 1 and kernel_w > 1


def phase_groups(kernel_w: int) -> int:
    """Aligned groups that cover a kernel row starting at any phase j < 4: ⌈(kw + 3) / 4⌉."""
    return -(-(kernel_w + REDUCE - 1) // REDUCE)


def aligned_positions(out_w: int, kernel_w: int) -> int:
    """Aligned groups M of an input row that `out_w` output columns of a stride-1 kernel read."""
    return (out_w - 1) // REDUCE + phase_groups(kernel_w)


def interleaves(channels: int, stride_w: int, dilation_w: int, lanes: int) -> bool:
    """Whether the interleaved layout applies: at least one full channel block, and tap groups
    starting at whole positions (stride 1, 2 or 4 for undilated kernels)."""
    return channels >= lanes and REDUCE * dilation_w % stride_w == 0


def interleaved_shape(shape: tuple[int, int, int, int], kernel_w: int, stride_w: int, dilation_w: int,
                      out_w: int, lanes: int) -> tuple[int, ...]:
    """[N, H, Q, ⌈C/L⌉, L, 4]: the taps of an [N, H, W, C] input for `out_w` output columns."""
    n, height, _, channels = shape
    positions = out_w + (tap_groups(kernel_w) - 1) * group_step(stride_w, dilation_w)
    return (n, height, positions, -(-channels // lanes), lanes, REDUCE)


def tap_interleave_kernel(shape: tuple[int, int, int, int], dtype: str, kernel_w: int, stride_w: int,
                          dilation_w: int, out_w: int, lanes: int, parallel_bytes: int,
                          pads: tuple[int, int, int, int] = (0, 0, 0, 0), pad_value: int = 0) -> tirx.PrimFunc:
    """The kernel `x [N, H, W, C] (dtype) → taps [N, H + top + bottom, Q, ⌈C/L⌉, L, 4] uint8`
    above, for a convolution of `out_w` output columns over x padded by `pads` (top, left,
    bottom, right) with `pad_value`; its positions run in parallel if it writes at least
    `parallel_bytes`."""
    n, in_height, in_width, channels = shape
    top, left, bottom, right = pads
    height, width = in_height + top + bottom, in_width + left + right
    out_shape = interleaved_shape((n, height, width, channels), kernel_w, stride_w, dilation_w, out_w, lanes)
    positions, blocks = out_shape[2], out_shape[3]
    shift = blocks * lanes - channels  # the last block's first `shift` lanes come from the block before
    vector = lanes * REDUCE
    in_order = [lanes * k + i for i in range(lanes) for k in range(REDUCE)]
    last_order = [lanes * k + min(i + shift, lanes - 1) for i in range(lanes) for k in range(REDUCE)]
    columns = T.parallel if math.prod(out_shape) >= parallel_bytes else T.serial

    def tap(x, row, column, first_channel):
        """`lanes` channels of the padded input at (row, column) from `first_channel`."""
        if not any(pads):
            return x[row // height, row % height, column, T.ramp(first_channel, 1, lanes)]
        h, w = row % height - top, column - left
        inner = x[row // height, T.max(T.min(h, in_height - 1), 0), T.max(T.min(w, in_width - 1), 0),
                  T.ramp(first_channel, 1, lanes)]
        border = T.Broadcast(tirx.const(pad_value, dtype), lanes)
        return T.if_then_else(tirx.all(0 <= h, h < in_height, 0 <= w, w < in_width), inner, border)

    def group(x, row, q, first_channel, order):
        """The 4 taps of `lanes` channels from `first_channel` at position q, interleaved."""
        taps = [tap(x, row, T.min(q * stride_w + k * dilation_w, width - 1), first_channel) for k in range(REDUCE)]
        interleaved = T.reinterpret(f"uint8x{vector}", T.Shuffle(taps, order))
        if dtype == "int8":  # x + 128 as uint8: the top bit flipped
            return interleaved ^ T.Broadcast(T.uint8(128), vector)
        return interleaved

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer(shape, dtype), taps: T.Buffer(out_shape, "uint8")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
        with T.sblock("root"):  # TVM's Relax passes expect a root block
            flat = T.decl_buffer((math.prod(out_shape),), "uint8", data=taps.data)
            for q in columns(positions):
                for row in range(n * height):
                    for b in range(blocks - 1):
                        flat[T.ramp(((row * positions + q) * blocks + b) * vector, 1, vector)] = \
                            group(x, row, q, b * lanes, in_order)
                    flat[T.ramp(((row * positions + q) * blocks + blocks - 1) * vector, 1, vector)] = \
                        group(x, row, q, channels - lanes, last_order)

    return kernel
