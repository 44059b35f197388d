"""CUDA schedules for qcompiler's int8 kernels (`conv2d_nhwc_dp4a`, `dense_dp4a`).

One thread computes one output element: its int32 accumulator lives in a register, the
reduction runs over (kernel rows, kernel columns, input channels / 4) with one `__dp4a` per 4
input channels, and the fused epilogue (requantize, clamp, residual add ...) is computed by the
same thread before its single store. A thread block is one output pixel's channels (up to 256):
its threads read the same activations, served by the cache.

Every other kernel of the module is left to dlight's GPU rules, which run afterwards and skip
kernels scheduled here (`tir.is_scheduled`).
"""

from __future__ import annotations

import logging

from tvm import tirx
from tvm.s_tir import Schedule, ScheduleError

from .isa import DP4A
from .schedules import child_blocks, inline_consumers, largest_divisor, loop_extent

log = logging.getLogger("qcompiler")

MAX_THREADS = 256  # threads per block: output channels of one pixel (a divisor of their count)


def _schedule_dp4a(sch: Schedule, block) -> None:
    consumers = inline_consumers(sch, block)
    writeback = sch.cache_write(block, 0, "local")
    for consumer in consumers:
        sch.reverse_compute_inline(consumer)  # the epilogue runs on the register accumulator
    reduces = [iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars]
    loops = sch.get_loops(block)  # the untransformed nest: one loop per block axis
    outputs = [loop for loop, is_reduce in zip(loops, reduces) if not is_reduce]
    reduction = [loop for loop, is_reduce in zip(loops, reduces) if is_reduce]
    channels = reduction[-1]  # input channels: the innermost reduction
    channel_words, products = sch.split(channels, [None, DP4A.reduce])
    *pixels, out_channels = outputs
    threads = largest_divisor(loop_extent(sch, out_channels), MAX_THREADS)
    channel_blocks, channel_threads = sch.split(out_channels, [None, threads])
    pixel = sch.fuse(*pixels)
    sch.reorder(pixel, channel_blocks, channel_threads, *reduction[:-1])
    sch.bind(pixel, "blockIdx.x")
    sch.bind(channel_blocks, "blockIdx.y")
    sch.bind(channel_threads, "threadIdx.x")
    sch.reverse_compute_at(writeback, channel_threads)
    sch.decompose_reduction(block, reduction[0] if len(reduction) > 1 else channel_words)
    sch.tensorize(products, DP4A.register())


def schedule_gpu_int8(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`func` scheduled for CUDA if its anchor is a dp4a kernel, else None (dlight's turn)."""
    sch = Schedule(func)
    anchors = [b for b in child_blocks(sch) if sch.get(b).name_hint in (DP4A.conv_block(), DP4A.dense_block())]
    if not anchors:
        return None
    try:
        _schedule_dp4a(sch, anchors[0])
    except (ScheduleError, RuntimeError, ValueError, TypeError) as err:
        log.debug("no dp4a schedule: %s", str(err).strip().splitlines()[-1])
        return None
    return sch.mod["main"].with_attr("tir.is_scheduled", True)
