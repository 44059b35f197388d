"""Constant padding of channels-last feature maps as row copies.

Before a depthwise convolution, int8 networks pad their [N, H, W, C] input with the zero point.
Legalized, the pad is one loop nest that tests, for each pixel, whether it lies inside:

    out[n, h, w, c] = inside(h, w) ? data[n, h − top, w − left, c] : fill

With a few channels per pixel (8 bytes in MobileNetV3's early layers), the test and the index
arithmetic per pixel cost more than the copy. Channels-last rows are contiguous, so
`row_pad_kernel` writes each output row as at most three runs instead (fill, copy of the input
row, fill), or one fill for the rows above and below; LLVM turns the runs into vector stores
and copies. The rows are written in parallel where the output holds MIN_PARALLEL_WORK bytes
or more: a float32 pad is a memory copy that one core cannot saturate.
"""

from __future__ import annotations

import math

from tvm import DataType, ir, tirx
from tvm.sym.analyzer import Analyzer
from tvm.script import tirx as T

from ..fusion import sole_block
from .schedules import MIN_PARALLEL_WORK


def _row_padding(func: tirx.PrimFunc) -> tuple[list[int], list[int], ir.expr.Expr, list[int]] | None:
    """(input shape, output shape, fill value, padding before each axis) of a pad of the H and W
    axes of an [N, H, W, C] tensor, else None."""
    block = sole_block(func) if len(func.params) == 2 else None
    if block is None:
        return None
    store = block.body
    if len(block.reads) != 1 or len(block.writes) != 1 or not isinstance(store, tirx.BufferStore):
        return None
    value = store.value
    # TOPI's pad: block "PadInput", out = if_then_else(inside, data[...], constant)
    if not (block.name_hint == "PadInput" and isinstance(value, ir.expr.Call)
            and value.op.name == "prim.if_then_else" and isinstance(value.args[1], ir.expr.TensorLoad)
            and isinstance(value.args[2], (tirx.IntImm, tirx.FloatImm))):
        return None
    data, out = (param.ty for param in func.params)
    in_shape, out_shape = [int(d) for d in data.shape], [int(d) for d in out.shape]
    if len(in_shape) != 4 or len(block.iter_vars) != 4 or data.dtype != out.dtype:
        return None
    analyzer = Analyzer()
    offsets = [analyzer.simplify(iv.var - r.min) for iv, r in zip(block.iter_vars, block.reads[0].region)]
    if not all(isinstance(o, tirx.IntImm) for o in offsets):
        return None
    before = [int(o) for o in offsets]
    if before[0] or before[3] or in_shape[0] != out_shape[0] or in_shape[3] != out_shape[3] \
            or any(o < 0 for o in before) or any(i + b > o for i, b, o in zip(in_shape, before, out_shape)):
        return None
    return in_shape, out_shape, value.args[2], before


def row_pad_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The row-copy kernel for `func` if it pads H and W of an [N, H, W, C] tensor with a
    constant, else None."""
    found = _row_padding(func)
    if found is None:
        return None
    in_shape, out_shape, fill, (_, top, left, _) = found
    (batch, height, width, channels), (_, out_height, out_width, _) = in_shape, out_shape
    dtype = str(func.params[0].ty.dtype)
    row, out_row = width * channels, out_width * channels
    head = left * channels
    tail = out_row - head - row
    in_size, out_size = math.prod(in_shape), math.prod(out_shape)
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    rows = batch * out_height
    rows_loop = T.parallel if out_size * DataType(dtype).bits // 8 >= MIN_PARALLEL_WORK else T.serial

    @T.prim_func(private=True, s_tir=True)
    def kernel(source: T.Buffer(in_shape, dtype), padded: T.Buffer(out_shape, dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):  # TVM's Relax passes expect a root block
            flat_data = T.decl_buffer((in_size,), dtype, data=source.data)
            flat_out = T.decl_buffer((out_size,), dtype, data=padded.data)
            for r in rows_loop(rows):
                n = r // out_height
                h = r % out_height
                if top <= h and h < top + height:
                    for j in range(head):
                        flat_out[r * out_row + j] = T.Cast(dtype, fill)
                    for j in range(row):
                        flat_out[r * out_row + head + j] = flat_data[(n * height + h - top) * row + j]
                    for j in range(tail):
                        flat_out[r * out_row + head + row + j] = T.Cast(dtype, fill)
                else:
                    for j in range(out_row):
                        flat_out[r * out_row + j] = T.Cast(dtype, fill)

    return kernel
