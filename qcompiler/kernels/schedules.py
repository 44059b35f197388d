"""Default CPU schedules for fused kernels that no tuning record covers.

Without a schedule TVM lowers every kernel to its naive loop nest (single-threaded, scalar).
`default_schedule` gives each fused PrimFunc a reasonable schedule by the op class of its
anchor block, so an untuned model is already usable; tuning records, where they exist, win.

  dot-product conv2d / dense
                        L output channels × 4 reduction elements per `vpdpbusd` (L = 16) or
                        `sdot` (L = 4), tensorized; a tile of up to 8 output pixels kept in registers, the epilogue
                        (requantize, clamp, residual add ...) computed per tile from registers,
                        outer spatial loops parallel
  NEON conv2d / dense   (no dot product) pixels parallel, reduction over contiguous input
                        channels innermost for LLVM's loop vectorizer, epilogue per pixel
  depthwise conv2d      over interleaved taps (taps.py): L channels × 4 taps per lane-wise
                        `vpdpbusd`, tensorized, with the dot-product convs' tiling and epilogue;
                        without it: channels vectorized (16, 8 or 4 int32 lanes), the same tiling
  injective ops         producers inlined into consumers, outer loop parallel, inner vectorized
  anything else         leading spatial loops parallel (reductions stay serial; point-wise
                        producers such as a zero-point subtraction inlined into them)

Byte-table lookups and channels-last pads get kernels of their own instead (lookup.py, pad.py;
tuning.with_default_schedules chooses).
"""

from __future__ import annotations

import logging
import math
from functools import partial

import tvm
from tvm import tirx
from tvm.s_tir import Schedule, ScheduleError
from tvm.s_tir import analysis as s_tir_analysis
from tvm.sym.analyzer import Analyzer

from ..fusion import child_blocks
from . import amx, fp32, vector_math
from .compute import DEPTHWISE_BLOCK
from .isa import BF16_DOT, CPU_DOT_PRODUCTS, VNNI, VNNI_YMM, DotProduct

log = logging.getLogger("qcompiler")

MAX_TILE = 8        # output pixels per register tile (8 accumulator registers)
MAX_LANES = 16      # int32 lanes of an AVX-512 vector (NEON's 16-byte registers take one in 4)
# Kernels with less work than this (see `_work`) run serially: starting and joining threads
# costs more than they save. Measured (A/B, 2 threads): rapidocr's MobileNetV3 classifier int8
# 0.440 -> 0.400 ms (it has the most small kernels), PP-LCNet and the ResNet stack unchanged.
# Counting iterations alone (not bytes) left the ResNet stack's input quantization, 52K
# iterations reading float32, on one thread: 3% slower.
MIN_PARALLEL_WORK = 1 << 16
# Root-block annotation of the default schedule among tuning candidates (default_space).
DEFAULT_CANDIDATE = "qcompiler.default_candidate"
# Function attribute of a scheduled kernel, as TVM 0.27 writes and reads it (MetaSchedule's
# ApplyDatabase and task extraction, dlight): kernels carrying it are left as they are.
SCHEDULED = "tirx.is_scheduled"
# Where a kernel's schedule came from (tuning.ScheduleSource), recorded in the artifact metadata;
# the two values default schedules set themselves:
SCHEDULE_SOURCE = "qcompiler.schedule_source"
DEFAULT_KERNEL = "default"  # an anchor rule: a kernel written for the op (conv, dense, depthwise, ...)
GENERIC_LOOPS = "generic"  # only the generic rule: the op's loop nest, parallel and vectorized


def loop_extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def largest_divisor(extent: int, limit: int = MAX_TILE) -> int:
    """The largest divisor of `extent` not above `limit`."""
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def vector_lanes(extent: int) -> int:
    """Lanes for a vectorized loop over `extent`: 16, 8 or 4 where one divides it (whole AVX-512,
    AVX2 or SSE registers of 32-bit values), else the largest divisor up to 16. (Vectors of 10 or
    11 lanes, which the largest divisor gives for 200 or 88 channels, compile to masked and split
    operations: with 8 lanes rapidocr's MobileNetV3 classifier runs 12% faster.)"""
    return next((lanes for lanes in (16, 8, 4) if extent % lanes == 0), largest_divisor(extent, MAX_LANES))


def _is_spatial(sch: Schedule, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def inline_consumers(sch: Schedule, anchor) -> list:
    """Inline the elementwise chain after `anchor` into its last block(s); returns those blocks."""
    blocks = child_blocks(sch)
    after = blocks[[sch.get(b).name_hint for b in blocks].index(sch.get(anchor).name_hint) + 1:]
    kept = []
    for block in after:
        try:
            sch.compute_inline(block)
        except ScheduleError:
            kept.append(block)
    return kept


def _with_epilogue(sch: Schedule, block, at_loop) -> None:
    """Accumulate `block` in a register tile and run its elementwise consumers per tile at `at_loop`."""
    consumers = inline_consumers(sch, block)
    writeback = sch.cache_write(block, 0, "global")  # tensorize matches global buffers; a tile-sized stack array
    rest = []
    tile_shape = write_shape(sch, writeback)
    for consumer in consumers:
        if write_shape(sch, consumer) != tile_shape:  # e.g. dropping padded channels: not elementwise
            rest.append(consumer)
            continue
        try:
            sch.reverse_compute_inline(consumer)  # the epilogue reads the registers directly
        except ScheduleError:
            rest.append(consumer)
    # Consumers of another shape (dropping padded channels) run once per pixel tile, over all
    # its channels, not per channel tile: there the channels beyond the last real one would need
    # a per-lane test, and LLVM then turns the whole epilogue into scalar code (3-5x slower).
    loops = sch.get_loops(block)
    position = [sch.get(loop) for loop in loops].index(sch.get(at_loop))
    pixel_tile = loops[position - 1] if position else at_loop
    sch.reverse_compute_at(writeback, at_loop)
    _vectorize_inner(sch, writeback)
    for consumer in rest:
        # Per pixel tile only where the consumer indexes the tile's axes one to one: for a
        # reshaping consumer (rows [M] read back as [batch, tokens]) TVM 0.27 infers the
        # iteration range a tile covers wrongly (too few tokens), so it runs after the kernel.
        if not broadcasts(sch, consumer, writeback) and len(write_shape(sch, consumer)) == len(tile_shape):
            try:
                sch.reverse_compute_at(consumer, pixel_tile)
                _vectorize_inner(sch, consumer)
                continue
            except (ScheduleError, ValueError):  # ValueError: an index TVM cannot match to a region
                pass
        _parallel_outer(sch, sch.get_loops(consumer), consumer)


def write_shape(sch: Schedule, block) -> list[int]:
    return [int(d) for d in sch.get(block).writes[0].source.shape]


def broadcasts(sch: Schedule, consumer, producer) -> bool:
    """Whether `consumer` writes more elements than `producer` (e.g. a squeeze-excitation gate
    of one pixel multiplied into a whole feature map): computed per producer tile, it would run
    serially inside the producer's few parallel iterations."""
    return math.prod(write_shape(sch, consumer)) > math.prod(write_shape(sch, producer))


def _stores_bfloat16_constant(sch: Schedule, block) -> bool:
    """Whether `block` stores a bfloat16 constant (a pad's fill): TVM 0.27 cannot compile a
    vector of one (BF16StorageLegalize leaves the broadcast a bfloat16 vector)."""
    body = sch.get(block).body
    return isinstance(body, tirx.BufferStore) and str(body.buffer.dtype) == "bfloat16" \
        and isinstance(body.value, tirx.FloatImm)


def _vectorize_inner(sch: Schedule, block) -> None:
    """Vectorize the innermost loop, split to at most 16 lanes (longer vectors only bloat the code)."""
    loops = sch.get_loops(block)
    if not loops or loop_extent(sch, loops[-1]) <= 1 or _stores_bfloat16_constant(sch, block):
        return
    inner = loops[-1]
    if loop_extent(sch, inner) > MAX_LANES:
        lanes = vector_lanes(loop_extent(sch, inner))
        if lanes < 4:
            return
        inner = sch.split(inner, [None, lanes])[1]
    sch.vectorize(inner)


def _work(sch: Schedule, block) -> int:
    """Loop iterations of `block` × the element size of the largest tensor it reads (bytes
    through the loop nest, roughly: a float input costs 4 times a uint8 one)."""
    sizes = [(math.prod(int(d) for d in r.source.shape), tvm.DataType(str(r.source.dtype)).bits)
             for r in sch.get(block).reads]
    element_bytes = max(sizes)[1] // 8 if sizes else 1
    return math.prod(loop_extent(sch, loop) for loop in sch.get_loops(block)) * max(1, element_bytes)


def _parallel_outer(sch: Schedule, loops: list, block) -> None:
    """Fuse the leading loops until they have 64 or more iterations, and run them in parallel;
    unless `block` (whose nest `loops` are) has less than MIN_PARALLEL_WORK of work."""
    if _work(sch, block) < MIN_PARALLEL_WORK:
        return
    chosen, total = [], 1
    for loop in loops:
        chosen.append(loop)
        total *= loop_extent(sch, loop)
        if total >= 64:
            break
    if total > 1:
        sch.parallel(sch.fuse(*chosen) if len(chosen) > 1 else chosen[0])


def _tensorized_tiles(sch: Schedule, block, order: list, channel_tile, parallel: list, first_reduction,
                      intrinsic: str) -> None:
    """The loop nest `order` (outer spatial loops, the output channel tile loop, the reduction,
    then the pixel tile, the instruction's lanes and its reduction): the epilogue per channel
    tile, `parallel` in parallel, the accumulators zeroed before `first_reduction`, the lanes
    tensorized with `intrinsic` and the pixel tile unrolled."""
    sch.reorder(*order)
    _with_epilogue(sch, block, channel_tile)
    try:
        _parallel_outer(sch, parallel, block)
    except ScheduleError:  # an epilogue block at the pixel tile (dropping padded channels)
        _parallel_outer(sch, parallel[:-1], block)
    init = sch.decompose_reduction(block, first_reduction)
    _vectorize_inner(sch, init)
    sch.tensorize(order[-2], intrinsic)
    sch.unroll(order[-3])


def schedule_conv_dot(sch: Schedule, block, dp: DotProduct) -> None:
    b, h, w, o, r, s, c = sch.get_loops(block)
    oo, oi = sch.split(o, [None, dp.lanes])
    co, ci = sch.split(c, [None, dp.reduce])
    wo, wi = sch.split(w, [None, largest_divisor(loop_extent(sch, w))])
    _tensorized_tiles(sch, block, [b, h, wo, oo, r, s, co, wi, oi, ci], oo, [b, h, wo], r, dp.register())


def schedule_dense_dot(sch: Schedule, block, dp: DotProduct) -> None:
    """Rows of any rank: the last row axis is tiled, the others stay outer loops (fusing them
    first makes the tile's bindings non-affine, which tensorize cannot blockize)."""
    *outer, m, o, k = sch.get_loops(block)
    mo, mi = sch.split(m, [None, largest_divisor(loop_extent(sch, m), 4)])
    oo, oi = sch.split(o, [None, dp.lanes])
    ko, ki = sch.split(k, [None, dp.reduce])
    _tensorized_tiles(sch, block, [*outer, mo, oo, ko, mi, oi, ki], oo, [*outer, mo, oo], ko, dp.register())


def schedule_dense_tiles(sch: Schedule, block, engine: amx.TileBackend, product: amx.TileProduct) -> None:
    """A dense block on the tile engine: panels of 32 rows × a group of the output columns (rows
    outer), each zeroed, then one panel product over the whole reduction (amx.py), then its
    epilogue. The columns are split into the fewest groups that give PANEL_PARALLEL panels
    (`column_groups`): each panel product configures the tiles once."""
    m, o, k = sch.get_loops(block)
    depth = loop_extent(sch, k)
    mo, mi = sch.split(m, [None, amx.BLOCK])
    groups = column_groups(loop_extent(sch, mo), loop_extent(sch, o) // amx.BLOCK)
    oo, oi = sch.split(o, [groups, None])
    sch.reorder(mo, oo, mi, oi, k)
    _with_epilogue(sch, block, oo)
    try:
        _parallel_outer(sch, [mo, oo], block)
    except ScheduleError:  # an epilogue block per row panel (dropping padded rows or channels)
        _parallel_outer(sch, [mo], block)
    init = sch.decompose_reduction(block, mi)
    _vectorize_inner(sch, init)
    sch.tensorize(mi, amx.register(engine, depth, loop_extent(sch, oi), product))


def column_groups(row_panels: int, column_blocks: int) -> int:
    """Into how many groups a tile-engine kernel splits its `column_blocks` blocks of 32 output
    columns: the fewest (a divisor of `column_blocks`) with row panels × groups ≥ PANEL_PARALLEL."""
    return next((d for d in range(1, column_blocks + 1) if column_blocks % d == 0 and row_panels * d >= PANEL_PARALLEL),
                column_blocks)


def schedule_conv_reduction_inner(sch: Schedule, block) -> None:
    """Without a dot-product instruction (plain NEON): output pixels in parallel, the epilogue
    per pixel over its channels, and the reduction over contiguous input channels left
    innermost, which LLVM's loop vectorizer turns into widening multiply-accumulates."""
    b, h, w, _, _, _, _ = sch.get_loops(block)
    _with_epilogue(sch, block, w)
    _parallel_outer(sch, [b, h, w], block)


def schedule_dense_reduction_inner(sch: Schedule, block) -> None:
    *outer, m, o, _ = sch.get_loops(block)
    _with_epilogue(sch, block, m)
    _parallel_outer(sch, [*outer, m, o], block)


def schedule_depthwise_lanewise(sch: Schedule, block, dp: DotProduct) -> None:
    b, h, w, c, r, g, k = sch.get_loops(block)
    co, ci = sch.split(c, [None, dp.lanes])
    wo, wi = sch.split(w, [None, largest_divisor(loop_extent(sch, w))])
    # Column tiles outermost: threads split the columns as taps.py's kernel split their taps.
    _tensorized_tiles(sch, block, [wo, b, h, co, r, g, wi, ci, k], co, [wo, b, h], r, dp.register_lanewise())


# Accumulator vectors per register tile of the float32 FMA kernels: AVX-512 has 32 registers,
# which leaves room for the weight vectors and the broadcast activation.
FMA_ACCUMULATORS = 16


def fma_tile(rows: int, vectors: int, max_rows: int = 14) -> tuple[int, int]:
    """(rows, vectors) of a register tile: divisors of the row (pixel) and vector counts, at most
    FMA_ACCUMULATORS accumulators; the most accumulators, then the most vectors per broadcast.
    Up to 4 vectors per row, or up to 8 for a single row (a matrix-vector product: more
    independent accumulators hide the FMA latency)."""
    widths = range(1, 9) if rows == 1 else (4, 2, 1)
    options = [(r, v) for r in range(1, min(rows, max_rows) + 1) if rows % r == 0
               for v in widths if vectors % v == 0 and r * v <= FMA_ACCUMULATORS]
    return max(options, key=lambda rv: (rv[0] * rv[1], rv[1]))


PANEL_ROW_TILES = 4  # row tiles that must read a weight panel for converting it once to pay
PANEL_PARALLEL = 8  # parallel iterations wanted around a panel (a weight panel: chunks of the last outer axis ×
#                     channel tiles; a tile-engine panel: row panels × column groups)


def _panel_chunks(extent: int, channel_tiles: int) -> int:
    """Into how many chunks to cut the last outer axis (a convolution's output rows) so that
    chunks × channel tiles ≥ PANEL_PARALLEL: the smallest such divisor of `extent`, else `extent`."""
    return next((d for d in range(1, extent + 1) if extent % d == 0 and d * channel_tiles >= PANEL_PARALLEL), extent)


def _producer_named(sch: Schedule, block, name: str):
    """The producer block of `block` called `name`, if there is one."""
    return next((p for p in sch.get_producers(block) if sch.get(p).name_hint == name), None)


def _fma_tiles(sch: Schedule, block, outer: list, rows, channels, reductions: list, lanes: int,
               weight_panels: bool = False, dp: DotProduct | None = None) -> None:
    """The float32 FMA register tile: `rows` (pixels) × vectors of `lanes` output `channels`,
    accumulated over `reductions` (outermost first); the epilogue per tile, `outer` and the row
    tiles in parallel, the lanes vectorized, the tile unrolled.

    An int8 or half-width weight (fp32.widened) is converted next to each multiply-add, or with
    `weight_panels` as a float32 panel per channel tile, converted once and read by every row
    tile of a chunk of the last `outer` axis (a convolution's output rows; chunks × channel
    tiles, in parallel, ≥ PANEL_PARALLEL), where at least PANEL_ROW_TILES row tiles read it (a
    matrix-vector product converts inline: a panel would only add a pass over memory).

    With a dot-product instruction `dp` (`vdpbf16ps`: twice an FMA's work, where the int8
    instructions do four times) the same tile, its lanes tensorized with the instruction's
    reduction as the innermost step of the last reduction axis: a tile of one channel vector
    (schedule_conv_dot) would load a weight vector and a broadcast per instruction."""
    row_tile, vectors = fma_tile(loop_extent(sch, rows), loop_extent(sch, channels) // lanes)
    ro, ri = sch.split(rows, [None, row_tile])
    co, cj, cv = sch.split(channels, [None, vectors, lanes])
    lane_reduction = []
    if dp is not None:
        ko, ki = sch.split(reductions[-1], [None, dp.reduce])
        reductions, lane_reduction = [*reductions[:-1], ko], [ki]
    widen = _producer_named(sch, block, fp32.WIDENED_WEIGHT)
    chunks = _panel_chunks(loop_extent(sch, outer[-1]), loop_extent(sch, co)) if outer else 1
    rows_per_chunk = loop_extent(sch, outer[-1]) // chunks if outer else 1
    if widen is not None and not (weight_panels and rows_per_chunk * loop_extent(sch, ro) >= PANEL_ROW_TILES):
        sch.compute_inline(widen)
        widen = None
    if widen is not None:
        head, inner = outer, []
        if outer:
            chunk, within = sch.split(outer[-1], [chunks, None])
            head, inner = [*outer[:-1], chunk], [within]
        sch.reorder(*head, co, *inner, ro, *reductions, ri, cj, cv, *lane_reduction)
        _with_epilogue(sch, block, ro)
        sch.compute_at(widen, co)
        _vectorize_inner(sch, widen)
        _parallel_outer(sch, [*head, co], block)
    else:
        sch.reorder(*outer, ro, co, *reductions, ri, cj, cv, *lane_reduction)
        _with_epilogue(sch, block, co)
        try:
            _parallel_outer(sch, [*outer, ro, co], block)
        except ScheduleError:  # an epilogue block at the row tile (dropping padded channels)
            _parallel_outer(sch, [*outer, ro], block)
    if dp is None:
        sch.vectorize(cv)
    sch.unroll(cj)
    sch.unroll(ri)
    init = sch.decompose_reduction(block, reductions[0])
    _vectorize_inner(sch, init)
    if dp is not None:
        sch.tensorize(cv, dp.register())  # last: it drops loops of one iteration (cj of a one-vector tile)


def schedule_conv_dot_tiles(sch: Schedule, block, dp: DotProduct) -> None:
    b, h, w, o, r, s, c = sch.get_loops(block)
    _fma_tiles(sch, block, [b, h], w, o, [r, s, c], dp.lanes, dp=dp)


def schedule_dense_dot_tiles(sch: Schedule, block, dp: DotProduct) -> None:
    *outer, m, o, k = sch.get_loops(block)
    _fma_tiles(sch, block, outer, m, o, [k], dp.lanes, dp=dp)


def schedule_conv_fma(sch: Schedule, block, lanes: int) -> None:
    b, h, w, o, r, s, c = sch.get_loops(block)
    _fma_tiles(sch, block, [b, h], w, o, [r, s, c], lanes, weight_panels=True)


def schedule_dense_fma(sch: Schedule, block, lanes: int) -> None:
    """Rows of any rank: the last row axis is tiled, the others stay outer loops. (Fused first,
    a tile of rows [batch·tokens] that does not divide the tokens makes TVM 0.27 infer a wrong
    region for the epilogue: rows of [5, 3, K] came out wrong.)"""
    *outer, m, o, k = sch.get_loops(block)
    _fma_tiles(sch, block, outer, m, o, [k], lanes, weight_panels=True)


def schedule_batch_matmul_fma(sch: Schedule, block, lanes: int) -> None:
    *batch, m, n, k = sch.get_loops(block)
    _fma_tiles(sch, block, batch, m, n, [k], lanes)


def schedule_depthwise(sch: Schedule, block) -> None:
    b, h, w, ch, r, s = sch.get_loops(block)
    lanes = vector_lanes(loop_extent(sch, ch))
    tile = largest_divisor(loop_extent(sch, w), 4)
    co, ci = sch.split(ch, [None, lanes])
    wo, wi = sch.split(w, [None, tile])
    sch.reorder(b, h, wo, co, r, s, wi, ci)
    _with_epilogue(sch, block, co)
    _parallel_outer(sch, [b, h, wo], block)
    sch.vectorize(ci)
    sch.unroll(wi)
    init = sch.decompose_reduction(block, r)
    _vectorize_inner(sch, init)


def _vectorize_partitioned(sch: Schedule, block, lanes: int) -> None:
    """Vectorize the innermost loop of `block` by `lanes`; a length that is no multiple of
    `lanes` is partitioned into whole vectors and a scalar tail (a split with a remainder would
    put a condition in the vector loop, which TVM then runs scalar)."""
    inner = sch.get_loops(block)[-1]
    extent = loop_extent(sch, inner)
    if extent < lanes:
        return
    if extent % lanes:
        inner = sch.loop_partition(inner, [extent // lanes * lanes, None])[0]
    sch.vectorize(sch.split(inner, [None, lanes])[1])


def schedule_softmax(sch: Schedule, block) -> None:
    """Softmax over the last axis (vector_math.softmax_last_axis, with any fused prologue and
    epilogue): element-wise stages inlined except the exponentials, every stage computed per row
    under one parallel row loop, the lane-partial max and sum accumulating one vector per step
    (contiguous lanes innermost, which LLVM vectorizes: TVM's `vectorize` refuses a loop inside
    a reduction loop), the exponentials and the normalization vectorized."""
    for stage in child_blocks(sch)[:-1]:
        if _is_spatial(sch, stage) and sch.get(stage).name_hint != vector_math.SOFTMAX_EXP:
            try:
                sch.compute_inline(stage)
            except ScheduleError:
                pass
    *stages, last = child_blocks(sch)
    loops = sch.get_loops(last)
    rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    if _work(sch, last) >= MIN_PARALLEL_WORK:
        sch.parallel(rows)
    for stage in reversed(stages):
        sch.compute_at(stage, rows, preserve_unit_loops=True)
    lanes = vector_math.SOFTMAX_LANES
    for stage in child_blocks(sch):
        name = sch.get(stage).name_hint
        if name.startswith("softmax_lane_"):
            lane, step = sch.get_loops(stage)[-2:]
            sch.reorder(step, lane)
            init = sch.decompose_reduction(stage, step)  # the lanes innermost: LLVM vectorizes them
            sch.vectorize(sch.get_loops(init)[-1])
        elif name == vector_math.SOFTMAX_EXP or sch.get(stage).same_as(sch.get(last)):
            _vectorize_partitioned(sch, stage, lanes)


def _is_constant_point(region) -> bool:
    """The region is one element at a constant index (a scalar parameter such as a zero point)."""
    return all(isinstance(r.extent, tirx.IntImm) and r.extent.value == 1 and isinstance(r.min, tirx.IntImm)
               for r in region.region)


def _reads_pointwise(sch: Schedule, block) -> bool:
    """Each element the block writes reads one element of each input, at its own indices or at
    constant ones (casts, zero-point subtractions, broadcasts): inlined into a consumer, it adds
    arithmetic but no loads, and no branches (a pad's shifted, conditional reads do not qualify)."""
    iter_vars = [iv.var for iv in sch.get(block).iter_vars]
    return all(isinstance(r.extent, tirx.IntImm) and r.extent.value == 1
               and (isinstance(r.min, tirx.IntImm) or any(r.min.same_as(v) for v in iter_vars))
               for region in sch.get(block).reads for r in region.region)


def schedule_generic(sch: Schedule, partition: bool = True) -> bool:
    """Inline injective producers into injective consumers, and point-wise ones into reductions too
    (a sum of x - zero_point reads x once, where a materialized int32 copy costs a pass over memory
    four times the size; an inlined pad, by contrast, would be re-evaluated with its branch at every
    reduction step); parallel outer loops; vectorize fully spatial blocks. With `partition`, a
    final constant pad becomes a fill and an interior (`_fill_and_interior`), and a concatenation
    along the innermost axis is vectorized per segment (`_vectorize_segments`). Returns whether
    either partition happened."""
    for block in child_blocks(sch)[:-1]:
        consumers = sch.get_consumers(block)
        if _is_spatial(sch, block) and consumers and (all(_is_spatial(sch, c) for c in consumers)
                                                      or _reads_pointwise(sch, block)):
            try:
                sch.compute_inline(block)
            except ScheduleError:
                pass
    padded = _fill_and_interior(sch, child_blocks(sch)[-1]) if partition else []
    partitioned = bool(padded)
    for block in child_blocks(sch):
        loops = sch.get_loops(block)
        if not loops or any(sch.get(block).same_as(sch.get(p)) for p in padded):
            continue
        spatial = _is_spatial(sch, block)
        if spatial and partition and _vectorize_segments(sch, block):
            partitioned = True
            continue
        if spatial and len(loops) > 1 and loop_extent(sch, loops[-1]) >= 4:
            _vectorize_inner(sch, block)
            loops = sch.get_loops(block)[:-1]
        if spatial:
            _parallel_outer(sch, loops, block)
        elif len(loops) == len(sch.get(block).iter_vars):  # an untransformed nest: spatial loops first
            leading = [iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars]
            count = leading.index(False) if False in leading else len(leading)
            if not _reduce_around_contiguous_lanes(sch, block, loops, count):
                _parallel_outer(sch, loops[:count], block)
    return partitioned


def _segment_starts(sch: Schedule, block, axis: int = -1) -> list[int]:
    """Where the reads of `block` shift along its iteration variable `axis` (the innermost by
    default), v: the constants d > 0 of the read indices v - d (the segments of a concatenation
    along that axis, whose block selects input j for v in [d_j, d_j+1); a pad's start),
    ascending, below the axis's extent."""
    iter_var = sch.get(block).iter_vars[axis]
    extent = int(iter_var.dom.extent)
    analyzer = Analyzer()
    starts = set()
    for region in sch.get(block).reads:
        for index in region.region:
            shift = analyzer.simplify(iter_var.var - index.min)
            if isinstance(shift, tirx.IntImm) and 0 < shift.value < extent:
                starts.add(int(shift.value))
    return sorted(starts)


def _vectorize_segments(sch: Schedule, block) -> bool:
    """A concatenation along the innermost axis (`_segment_starts`): vectors of the largest
    width (≤ MAX_LANES, ≥ 4) that divides the extent and every segment start, their loop
    partitioned at the segment starts, each segment's vectors vectorized, the outer loops in
    parallel; where no such width exists (segments of 3), vectors along the next axis inside
    each segment. True where done. Without the partition, each vector selects its input per
    lane, and TVM runs a loop scalar where a vector straddles a segment start. Measured on Zen 4,
    2 threads: YOLOX's residual add concatenated with a 24-channel branch, 104 × 104 × 48,
    513 → 61 µs; its space-to-depth input (four 3-channel slices), 317 → 147 µs."""
    loops = sch.get_loops(block)
    if len(loops) < 2 or len(loops) != len(sch.get(block).iter_vars):
        return False
    extent = loop_extent(sch, loops[-1])
    starts = _segment_starts(sch, block)
    if not starts:
        return False
    lanes = math.gcd(MAX_LANES, extent, *starts)
    if lanes >= 4:
        _parallel_outer(sch, loops[:-1], block)
        vectors, _ = sch.split(loops[-1], [None, lanes])
        _partition_and_vectorize(sch, vectors, [start // lanes for start in starts], extent // lanes)
        return True
    lanes = vector_lanes(loop_extent(sch, loops[-2]))
    if lanes < 4 or extent > MAX_LANES:
        return False
    # Segments too narrow for vectors of their own (a space-to-depth's 3-channel slices): vectors
    # along the next axis, inside each segment's loop.
    _parallel_outer(sch, loops[:-2], block)
    outer, vectors = sch.split(loops[-2], [None, lanes])
    sch.reorder(outer, loops[-1], vectors)
    _partition_and_vectorize(sch, loops[-1], starts, extent)
    return True


def _partition_and_vectorize(sch: Schedule, loop, starts: list[int], extent: int) -> None:
    """Partition `loop` (of `extent` iterations) at `starts` and vectorize each part's innermost loop."""
    bounds = [0, *starts, extent]
    segments = sch.loop_partition(loop, [end - begin for begin, end in zip(bounds, bounds[1:-1])] + [None])
    for part in (sch.get_child_blocks(segment)[0] for segment in segments):
        sch.vectorize(sch.get_loops(part)[-1])


def _is_constant_pad(sch: Schedule, block) -> bool:
    """Whether `block` pads with a constant in a way `decompose_padding` splits into a fill and
    an interior."""
    loops = sch.get_loops(block)
    return bool(loops) and _is_spatial(sch, block) and sch.can_decompose_padding(block, loops[0])


def _fill_and_interior(sch: Schedule, block) -> list:
    """A block that pads a computation with a constant (out = inside ? f(...) : c, its producers
    inlined): split into a fill of the whole output with c and f over the interior alone,
    without the per-element test, which keeps the block from being vectorized (TVM scalarizes a
    vector if_then_else). Where the innermost axis is too short to vectorize (≤ 4), the interior
    is vectorized along the axis its largest input is contiguous in instead: an NCHW float → padded
    NHWC uint8 input quantization of an image then reads rows of floats, and 1 thread takes 9 µs
    for 3×48×192, against 34 µs vectorized over the 4 channels of each pixel (with 64 channels the
    channels stay the vector: 12 µs for 64×28×28, 23 µs along rows). Returns the blocks it
    scheduled (none if `block` pads nothing)."""
    if not _is_constant_pad(sch, block):
        return []
    fill = sch.decompose_padding(block, sch.get_loops(block)[0])
    fill_loops = sch.get_loops(fill)
    if len(fill_loops) > 1:
        sch.fuse(*fill_loops[-2:])
    _vectorize_inner(sch, fill)
    _parallel_outer(sch, sch.get_loops(fill)[:-1], fill)
    loops = sch.get_loops(block)
    rows = _contiguous_read_axis(sch, block)
    if (rows is None or rows == len(loops) - 1 or loop_extent(sch, loops[-1]) > 4
            or vector_lanes(loop_extent(sch, loops[rows])) < 4):  # e.g. 64 channels: store them contiguously
        return [fill]  # the interior is scheduled as any other spatial block
    outer, lanes = sch.split(loops[rows], [None, vector_lanes(loop_extent(sch, loops[rows]))])
    inner = loops[rows + 1:]
    sch.reorder(*loops[:rows], outer, *inner, lanes)
    for loop in inner:
        if loop_extent(sch, loop) <= 4:
            sch.unroll(loop)
    sch.vectorize(lanes)
    _parallel_outer(sch, [*loops[:rows], outer], block)
    return [fill, block]


def _contiguous_read_axis(sch: Schedule, block) -> int | None:
    """The position of the block iteration variable that indexes the last axis of its largest
    input (in bytes), if its loop nest is untransformed and there is one."""
    iter_vars = [iv.var for iv in sch.get(block).iter_vars]
    if len(sch.get_loops(block)) != len(iter_vars):
        return None
    reads = [r for r in sch.get(block).reads if not _is_constant_point(r)]
    if not reads:
        return None
    largest = max(reads, key=lambda r: math.prod(int(d) for d in r.source.shape) * tvm.DataType(str(r.source.dtype)).bits)
    last = largest.region[-1].min
    return next((i for i, v in enumerate(iter_vars) if last.same_as(v)), None)


def _reduce_around_contiguous_lanes(sch: Schedule, block, loops: list, spatial: int) -> bool:
    """A reduction over outer axes of a channels-last tensor (global average pooling: sum over
    H, W of [N, H, W, C]): run the channels innermost, 16 at a time, so that each step adds one
    contiguous vector, with the channel groups in parallel; the channels are vectorized here (left
    to LLVM, a max pool whose window reads its padding, a load under a condition, stayed scalar:
    PP-OCR's detector's 2×2 pool of 320 × 320 × 24 took 3.2 ms at 2 threads). False (nothing
    done) unless the block's last spatial axis is the innermost index of what it reads."""
    iter_vars = sch.get(block).iter_vars
    tensors = [r for r in sch.get(block).reads if not _is_constant_point(r)]
    if spatial == 0 or spatial == len(loops) or not tensors:
        return False
    lanes_var = iter_vars[spatial - 1].var
    if not all(isinstance(r.region[-1].min, tirx.Var) and r.region[-1].min.same_as(lanes_var) for r in tensors):
        return False
    lanes = vector_lanes(loop_extent(sch, loops[spatial - 1]))
    if lanes < 4:
        return False
    groups, inner = sch.split(loops[spatial - 1], [None, lanes])
    sch.reorder(*loops[: spatial - 1], groups, *loops[spatial:], inner)
    _parallel_outer(sch, [*loops[: spatial - 1], groups], block)
    sch.vectorize(inner)
    init = sch.decompose_reduction(block, loops[spatial])
    _vectorize_inner(sch, init)
    return True


ANCHORS = {
    vector_math.SOFTMAX_LANE_MAX: schedule_softmax,
    vector_math.ROW_LANE_MIN: schedule_softmax,
    DEPTHWISE_BLOCK: schedule_depthwise,
    fp32.DEPTHWISE_BLOCK: schedule_depthwise,
    **{fp32.conv_block(lanes): partial(schedule_conv_fma, lanes=lanes) for lanes in fp32.LANES},
    **{fp32.dense_block(lanes): partial(schedule_dense_fma, lanes=lanes) for lanes in fp32.LANES},
    **{fp32.batch_matmul_block(lanes, dtype): partial(schedule_batch_matmul_fma, lanes=lanes)
       for lanes in fp32.LANES for dtype in fp32.BATCH_MATMUL_DTYPES},
    **{dp.conv_block(): partial(schedule_conv_dot, dp=dp) if dp.register else schedule_conv_reduction_inner
       for dp in CPU_DOT_PRODUCTS},
    # x86: the register tile of pixels × up to 4 channel vectors (_fma_tiles), whose pixel count
    # need not divide 8 (13 or 26 pixels wide: the one-vector tile held 1 or 2 accumulators)
    **{dp.conv_block(): partial(schedule_conv_dot_tiles, dp=dp) for dp in (VNNI, VNNI_YMM)},
    **{dp.dense_block(): partial(schedule_dense_dot, dp=dp) if dp.register else schedule_dense_reduction_inner
       for dp in CPU_DOT_PRODUCTS},
    BF16_DOT.conv_block(): partial(schedule_conv_dot_tiles, dp=BF16_DOT),
    BF16_DOT.dense_block(): partial(schedule_dense_dot_tiles, dp=BF16_DOT),
    **{dp.depthwise_block(): partial(schedule_depthwise_lanewise, dp=dp)
       for dp in CPU_DOT_PRODUCTS if dp.register_lanewise},
    **{engine.dense_block(product): partial(schedule_dense_tiles, engine=engine, product=product)
       for engine in amx.BACKENDS for product in amx.PRODUCTS},
}
TILE_ENGINE_BLOCKS = {engine.dense_block(product) for engine in amx.BACKENDS for product in amx.PRODUCTS}


def apply_default_schedule(sch: Schedule, partition: bool = True) -> str | None:
    """Schedule the PrimFunc of `sch` in place by its anchor block. Returns DEFAULT_KERNEL where
    an anchor rule applied (a kernel written for the op), GENERIC_LOOPS where only the generic
    rule did (the loop nest parallelized and vectorized), None where no rule applies (`sch` may
    then be partly transformed: work on a copy), and for a PrimFunc without blocks (written
    with TOPI's ir_builder: it runs as written). `partition`: see schedule_generic."""
    blocks = child_blocks(sch)
    if not blocks:
        return None
    try:
        for block in blocks:
            rule = ANCHORS.get(sch.get(block).name_hint)
            if rule is not None:
                rule(sch, block)
                return DEFAULT_KERNEL
        schedule_generic(sch, partition)
        return GENERIC_LOOPS
    except (ScheduleError, RuntimeError, ValueError, TypeError) as err:
        log.debug("no default schedule: %s", str(err).strip().splitlines()[-1])
        return None


def default_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`func` with a default schedule, marked with its SCHEDULE_SOURCE, or None where none
    applies (it then stays naive)."""
    sch = Schedule(func)
    source = apply_default_schedule(sch)
    if source is None:
        return None
    return _finished(sch, source)


def _finished(sch: Schedule, source: str) -> tirx.PrimFunc:
    """The scheduled PrimFunc of `sch`, marked with its SCHEDULE_SOURCE; where it is not well
    formed, reparsed from its script. (The blocks `loop_partition` makes share their iteration
    variables, which TVM's check, run by every later Schedule of the function, rejects; parsing
    defines each block's afresh. TVM's RenewDefs keeps them shared.)"""
    func = sch.mod["main"]
    if not s_tir_analysis.verify_well_formed(func, False):
        func = tvm.script.from_source(func.script())
    return func.with_attr(SCHEDULED, True).with_attr(SCHEDULE_SOURCE, source)


def partitioned_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`func` with its default schedule where it is element-wise and that schedule partitions
    its loops (schedule_generic): a kernel ending in a constant pad (an input quantization into
    the zero-point border of the first convolution, say) split into a fill and a vectorized
    interior, or a concatenation along the innermost axis vectorized per segment; None for other
    kernels. Tuning cannot record these schedules (see `default_space`), and what it finds
    instead is slower in the network: these kernels are no tuning tasks, and keep this schedule
    (tuning.py)."""
    sch = Schedule(func)
    blocks = child_blocks(sch)
    if not blocks or not all(_is_spatial(sch, block) for block in blocks):
        return None
    if not _is_constant_pad(sch, blocks[-1]) and not any(
            _segment_starts(sch, block, axis) for block in blocks for axis in range(len(sch.get(block).iter_vars))):
        return None  # nothing to partition: spares scheduling twice
    try:
        if not schedule_generic(sch):
            return None
    except (ScheduleError, RuntimeError, ValueError, TypeError) as err:
        log.debug("no partitioned schedule: %s", str(err).strip().splitlines()[-1])
        return None
    return _finished(sch, GENERIC_LOOPS)


def tile_engine_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`func` with its default schedule where it is a tile-engine kernel (amx.py), None for other
    kernels. Its panel product is the whole reduction in tile registers, which MetaSchedule's
    x86 design space cannot express: these kernels are no tuning tasks (tuning.py)."""
    sch = Schedule(func)
    if not any(sch.get(block).name_hint in TILE_ENGINE_BLOCKS for block in child_blocks(sch)):
        return None
    return default_schedule(func)


def default_space(sch: Schedule) -> list[Schedule]:
    """MetaSchedule space generator (`ScheduleFn`): the default schedule as one more candidate,
    so that tuning measures it and a tuned record is never a regression from it. Its root block
    is annotated DEFAULT_CANDIDATE, which marks its records. Loops stay whole here: TVM 0.27
    cannot print a trace with `decompose_padding` (its instruction's AsPython takes the loop as
    a LoopRV where it is given a name), and MetaSchedule prints every trace it records; a loop
    partition's blocks fail its well-formedness check (`_finished`)."""
    candidate = sch.copy()
    if not apply_default_schedule(candidate, partition=False):
        return []
    candidate.annotate(candidate.get_sblock("root"), DEFAULT_CANDIDATE, 1)
    return [candidate]
