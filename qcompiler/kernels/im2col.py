"""A convolution's windows as the rows of a padded matrix (im2col), for the tile engine.

A k×k convolution over a (spatially padded) NHWC tensor is a matrix product of its windows,

    cols[(n·OH + y)·OW + x, (r·KW + s)·C + c] = data[n, y·sh + r·dh, x·sw + s·dw, c]

by the OHWI weight reshaped to [KH·KW·C, O]. The tile engine (amx.py) reads that matrix with
its rows padded to a multiple of a block and K to whole tile rows. Written as one TE compute
and a pad, each element's indices are divisions and remainders of (m, k), which TVM cannot
vectorize: 11 µs for MTCNN's 81 × 252 bytes on one Zen 4 core, twice the VNNI convolution it
replaces. Channels-last windows are contiguous runs instead: with dilation 1 a window row is
KW·C consecutive elements of an input row. `im2col_kernel` writes each matrix row as KH such
copies (KH·KW of C bytes when dilated), then zeros for the K padding; the padded rows are zeros.
LLVM turns the runs into vector copies.
"""

from __future__ import annotations

import math

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .compute import round_up, windows

PARALLEL_BYTES = 1 << 16  # matrices smaller than this are written by one thread: a pool launch costs more


def im2col_kernel(in_shape: tuple[int, int, int, int], dtype: str, kh: int, kw: int, strides, dilation,
                  row_multiple: int, depth_multiple: int) -> tirx.PrimFunc:
    """data [N, H, W, C] (already padded) → cols [M', K']: M = N·OH·OW rows rounded up to
    `row_multiple`, K = KH·KW·C rounded up to `depth_multiple`, the windows as above and zeros
    elsewhere."""
    batch, height, width, channels = in_shape
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = windows(height, kh, sh, dh), windows(width, kw, sw, dw)
    rows, depth = batch * out_h * out_w, kh * kw * channels
    padded_rows, padded_depth = round_up(rows, row_multiple), round_up(depth, depth_multiple)
    run = kw * channels if dw == 1 else channels  # elements copied in one run
    runs = kh if dw == 1 else kh * kw
    in_size, out_size = math.prod(in_shape), padded_rows * padded_depth
    pixel_rows = batch * out_h  # one task per output row of pixels
    loop = T.parallel if out_size * tvm.DataType(dtype).bits // 8 >= PARALLEL_BYTES else T.serial
    zero = T.Cast(dtype, 0)

    @T.prim_func(private=True, s_tir=True)
    def kernel(source: T.Buffer(in_shape, dtype), cols: T.Buffer((padded_rows, padded_depth), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):  # TVM's Relax passes expect a root block
            flat_data = T.decl_buffer((in_size,), dtype, data=source.data)
            flat_out = T.decl_buffer((out_size,), dtype, data=cols.data)
            for task in loop(pixel_rows):
                for x in range(out_w):
                    for i, j in T.grid(runs, run):
                        flat_out[(task * out_w + x) * padded_depth + i * run + j] = flat_data[
                            ((task // out_h * height + task % out_h * sh + i // (runs // kh) * dh) * width
                             + x * sw + i % (runs // kh) * dw) * channels + j]
                    for j in range(padded_depth - depth):
                        flat_out[(task * out_w + x) * padded_depth + depth + j] = zero
            for j in range((padded_rows - rows) * padded_depth):
                flat_out[rows * padded_depth + j] = zero

    return kernel
