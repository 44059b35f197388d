"""CUDA schedules qcompiler gives before dlight's: its int8 kernels, and small reductions.

  dp4a conv2d / dense   one thread per output element: its int32 accumulator lives in a register,
                        the reduction runs over (kernel rows, kernel columns, input channels / 4)
                        with one `__dp4a` per 4 input channels, and the fused epilogue (requantize,
                        clamp, residual add ...) is computed by the same thread before its single
                        store. A block of 256 threads covers one or more output pixels × up to 256
                        output channels: neighbouring threads are neighbouring output channels,
                        whose weight words are packed side by side (dp4a.LANES), and a pixel's
                        threads share its activation words through the cache.
  small reductions      (depthwise convolutions, pooling windows, ≤ SMALL_REDUCTION products per
                        output) one thread per output element, the innermost output axis across
                        neighbouring threads, the reduction serial in a register and the epilogue
                        fused. dlight's reduction rules would give each output a whole thread
                        block to sum a 3×3 window.

Every other kernel of the module is left to dlight's GPU rules, which run afterwards and skip
kernels scheduled here (`SCHEDULED`).
"""

from __future__ import annotations

import logging
import math

from tvm import tirx
from tvm.s_tir import Schedule, ScheduleError

from .isa import DP4A
from .schedules import SCHEDULED, child_blocks, inline_consumers, largest_divisor, loop_extent, write_shape

log = logging.getLogger("qcompiler")

MAX_THREADS = 256      # threads per block
SMALL_REDUCTION = 64   # products per output up to which one thread sums them all (7×7 windows included)


def _is_reduction(sch: Schedule, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _split_axes(sch: Schedule, block) -> tuple[list, list]:
    """The block's (output loops, reduction loops) of its untransformed nest: one loop per axis."""
    loops = sch.get_loops(block)
    reduces = [iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars]
    return ([loop for loop, is_reduce in zip(loops, reduces) if not is_reduce],
            [loop for loop, is_reduce in zip(loops, reduces) if is_reduce])


def _accumulate_in_register(sch: Schedule, block):
    """Inline the elementwise epilogue into a register write-back of `block`. Returns the
    write-back and the consumers of another shape (dropping padded channels, a squeeze-excitation
    gate broadcast over its feature map) for `_finish_others`."""
    consumers = inline_consumers(sch, block)
    writeback = sch.cache_write(block, 0, "local")
    others = []
    for consumer in consumers:
        if write_shape(sch, consumer) != write_shape(sch, writeback):
            others.append(consumer)
            continue
        try:
            sch.reverse_compute_inline(consumer)  # the epilogue runs on the register accumulator
        except ScheduleError:
            others.append(consumer)
    return writeback, others


def _bind_thread_per_iteration(sch: Schedule, loop):
    """One GPU thread per iteration of `loop`, in blocks of up to MAX_THREADS; returns the thread loop."""
    blocks, threads = sch.split(loop, [None, min(MAX_THREADS, loop_extent(sch, loop))])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    return threads


def _finish_others(sch: Schedule, writeback, others: list, thread) -> None:
    """Each consumer of another shape runs in the thread that computed its input where it can,
    else as a kernel of its own with one thread per element (one more launch, and the
    intermediate between the two kernels goes through global memory). The write-back's output
    stays in registers unless another kernel reads it."""
    separate = []
    for block in others:
        try:
            sch.reverse_compute_at(block, thread)
        except ScheduleError:
            separate.append(block)
    if others and not separate:
        sch.set_scope(writeback, 0, "local")
    for block in separate:
        _bind_thread_per_iteration(sch, sch.fuse(*sch.get_loops(block)))


def _schedule_dp4a(sch: Schedule, block) -> None:
    writeback, others = _accumulate_in_register(sch, block)
    outputs, reduction = _split_axes(sch, block)
    *pixels, columns, out_channels = outputs  # conv: (n, h) w o; dense: (m) o with no pixels
    channel_words, products = sch.split(reduction[-1], [None, DP4A.reduce])  # input channels: innermost
    threads = largest_divisor(loop_extent(sch, out_channels), MAX_THREADS)
    channel_blocks, channel_threads = sch.split(out_channels, [None, threads])
    # a block's pixels: neighbours in one row (splitting the fused pixel loop instead leaves
    # bindings that tensorize cannot blockize)
    column_blocks, block_columns = sch.split(columns, [None, largest_divisor(loop_extent(sch, columns),
                                                                             MAX_THREADS // threads)])
    sch.reorder(*pixels, column_blocks, channel_blocks, block_columns, channel_threads)
    sch.bind(sch.fuse(*pixels, column_blocks), "blockIdx.x")
    sch.bind(channel_blocks, "blockIdx.y")
    thread = sch.fuse(block_columns, channel_threads)
    sch.bind(thread, "threadIdx.x")
    sch.reverse_compute_at(writeback, thread)
    sch.decompose_reduction(block, reduction[0] if len(reduction) > 1 else channel_words)
    sch.tensorize(products, DP4A.register())
    _finish_others(sch, writeback, others, thread)


def _schedule_thread_per_output(sch: Schedule, block) -> None:
    children = child_blocks(sch)
    for producer in children[:[sch.get(b).name_hint for b in children].index(sch.get(block).name_hint)]:
        try:
            sch.compute_inline(producer)  # e.g. the spatial padding of a float convolution
        except ScheduleError:
            pass
    writeback, others = _accumulate_in_register(sch, block)
    outputs, reduction = _split_axes(sch, block)
    thread = _bind_thread_per_iteration(sch, sch.fuse(*outputs))
    sch.reverse_compute_at(writeback, thread)
    sch.decompose_reduction(block, reduction[0])
    _finish_others(sch, writeback, others, thread)


def _products_per_output(sch: Schedule, block) -> int:
    return math.prod(int(iv.dom.extent) for iv in sch.get(block).iter_vars
                     if iv.iter_type == tirx.IterVar.CommReduce)


def schedule_gpu(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`func` scheduled for CUDA if it is a dp4a kernel or a single small reduction, else None
    (dlight's turn)."""
    sch = Schedule(func)
    blocks = child_blocks(sch)
    anchors = [b for b in blocks if sch.get(b).name_hint in (DP4A.conv_block(), DP4A.dense_block())]
    reductions = [b for b in blocks if _is_reduction(sch, b)]
    anchor = anchors[0] if anchors else reductions[0] if len(reductions) == 1 else None
    if anchor is None or (not anchors and _products_per_output(sch, anchor) > SMALL_REDUCTION):
        return None
    name = sch.get(anchor).name_hint
    try:
        (_schedule_dp4a if anchors else _schedule_thread_per_output)(sch, anchor)
    except (ScheduleError, RuntimeError, ValueError, TypeError) as err:
        log.debug("no qcompiler GPU schedule for %s: %s", name, str(err).strip().splitlines()[-1])
        return None
    return sch.mod["main"].with_attr(SCHEDULED, True)
