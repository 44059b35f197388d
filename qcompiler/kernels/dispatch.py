"""Replace realized int8 convolutions and matmuls by qcompiler's dot-product kernels.

Runs on the Relax module before legalization, for targets with an int8 kernel family (isa.py:
x86 AVX-512 VNNI, ARM `sdot` or plain NEON, CUDA `__dp4a`). A call is replaced when its operands are what the
kernels take — uint8 or int8 activations, int8 constant weights, int32 output (L = the
instruction's lanes; VNNI's 256-bit form, L = 8, where 8 divides the output channels and 16 does
not: DotProduct.for_channels):

  conv2d NHWC/OHWI, groups = 1        → conv2d_nhwc_<isa>, weights packed [O/L, H, W, I/4, L, 4]
  conv2d NHWC/OHWI, grouped           → the same with groups, each group packed alone
  conv2d NHWC/OHWI, depthwise         → with a lane-wise dot product (VNNI) and ≥ L channels:
                                        taps interleaved (taps.py), then depthwise_nhwc_<isa>,
                                        weights packed [H, ⌈W/4⌉, ⌈C/L⌉, L, 4] (aligned
                                        taps for stride 1: one set per phase,
                                        [4, H, ⌈(W+3)/4⌉, ⌈C/L⌉, L, 4]); else
                                        depthwise_nhwc, weights [H, W, C]
  matmul [..., K] × constant [K, N]   → dense_<isa>, weights packed [N/L, K/4, L, 4]

  matmul (qa − za) · (qb − zb) of   → pack_activation_operand (b as [..., N/L, K/4, L, 4], at run
    two 8-bit activations             time), then batch_dense_<isa>, with row and column sums for
                                      the zero points (batch_matmul); same batch axes only

With a tile engine (AMX, or its emulation: isa.tile_engine_of), matmuls and groups = 1
convolutions with ≥ 32 rows (output pixels), K ≥ 128 (KH·KW·C for a convolution) and ≥ 64 output
channels (kernel_dispatch.tiles_worthwhile) go to amx.py's panel product instead (dense_on_tiles;
a k×k convolution over its windows, written as matrix rows by im2col.py: KernelDispatch.conv_on_tiles):
rows padded to 32, K to 64, weights [N'/16, K'/4, 16, 4].

Activations x of the other signedness than the instruction takes (`vpdpbusd`: uint8, `sdot`
and `__dp4a`: int8; NEON takes both) are fed as x ∓ 128 and the accumulator corrected by
±128 · Σ w per output channel, a constant added in the kernel's epilogue: Σ (x + t) · w − t · Σ w = Σ x · w exactly
(the tap interleaving shifts int8 activations itself). The int32 depthwise kernel takes either type directly.

Spatial padding becomes an explicit pad (value 0, before any shift: realize has already padded
asymmetric activations with their zero point; the tap interleaving writes the border of a pad
producing its input itself, leaving no pad kernel), input channels are zero-padded to a multiple of
4 (per group) and output channels computed to a multiple of L (per group; the kernel drops the
padded ones). Other calls are left to TVM's legalization. Packing happens here, once, at
compile time.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from ..passes.graph import Constant, const, constant_value, conv_channel_axis, op_name
from . import compute as kc
from . import amx
from .isa import DotProduct, dot_product_of, tile_engine_of
from .kernel_dispatch import ConvAttrs, KernelDispatch, Windows, conv_rows, depthwise_taps, tiles_worthwhile
from .schedules import MIN_PARALLEL_WORK
from .taps import aligned_positions, group_step, interleaves, phased, tap_interleave_kernel


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _shift_correction(shift: int, weight_sums: np.ndarray, shape: list[int]) -> np.ndarray:
    """−shift · Σw per output channel (int32, in `shape`): what activations fed as x + shift add."""
    return (-shift * weight_sums.astype(np.int64)).astype(np.int32).reshape(shape)


@relax.expr_functor.mutator
class _Int8KernelDispatch(KernelDispatch):
    def __init__(self, mod: tvm.IRModule, dp: DotProduct, engine: amx.TileBackend | None = None):
        super().__init__(mod)
        self.mod_ = mod
        self.dp = dp
        self.engine = engine

    def as_instruction_dtype(self, data, weight_sums: np.ndarray, shape: list[int]):
        """(data in the instruction's activation type, int32 correction constant or None):
        data of the other signedness shifted by t = ±128, with −t · Σw (`weight_sums` per
        output channel, broadcast to `shape`) to add back."""
        if self.dp.data_dtype in (None, _dtype(data)):
            return data, None
        shift = 128 if self.dp.data_dtype == "uint8" else -128
        return self.shifted(data, shift, self.dp.data_dtype), _shift_correction(shift, weight_sums, shape)

    def pad_group_channels(self, data, groups: int):
        """Zero-pad each group's input channels to a multiple of the instruction's reduction (4)."""
        n, h, w, channels = _shape(data)
        per_group = channels // groups
        extra = -per_group % self.dp.reduce
        if not extra:
            return data
        if groups == 1:
            return self.pad_last_axis(data, extra)
        split = self.builder_.emit(relax.op.reshape(data, [n, h, w, groups, per_group]))
        padded = self.builder_.emit(relax.op.nn.pad(split, [0, 0, 0, 0, 0, 0, 0, 0, 0, extra], pad_value=0.0))
        return self.builder_.emit(relax.op.reshape(padded, [n, h, w, groups * (per_group + extra)]))

    def constant_pad_producing(self, data) -> relax.Call | None:
        """The constant pad whose result `data` is (realize's zero-point border, or a pad of
        this pass), if it is one."""
        producer = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        if (isinstance(producer, relax.Call) and op_name(producer) == "relax.nn.pad"
                and str(producer.attrs.pad_mode) == "constant"):
            return producer
        return None

    def pad_last_axis(self, data, extra: int):
        """`data` padded by `extra` channels, whose value does not matter (they meet zero weights):
        a constant pad producing `data` (realize's zero-point border) is widened instead, so that
        the fused input kernel has one border test, not two (kernels/schedules.py then writes
        the border and the interior apart)."""
        producer = self.constant_pad_producing(data)
        if producer is not None:
            widths = [int(p) for p in producer.attrs.pad_width]
            widths[-1] += extra
            return self.builder_.emit(relax.op.nn.pad(producer.args[0], widths, pad_value=float(producer.attrs.pad_value)))
        return self.pad(data, [(0, 0), (0, 0), (0, 0), (0, extra)])

    def corrected(self, kernel_call, correction):
        """The kernel's result, plus the int8-activation correction where there is one (a
        per-channel add that fuses into the kernel's epilogue)."""
        if correction is None:
            return kernel_call
        return relax.op.add(self.builder_.emit(kernel_call), const(correction))

    def conv2d(self, call) -> relax.Expr | None:
        attrs = call.attrs
        data, weight = call.args
        if not (conv_channel_axis(call) == 3 and str(attrs.out_dtype) == "int32"
                and _dtype(data) in ("uint8", "int8") and isinstance(weight, Constant)):
            return None
        w = constant_value(weight)
        if w.dtype != np.int8:
            return None
        out_channels, _, _, in_per_group = w.shape
        channels = _shape(data)[3]
        conv = ConvAttrs.of(call)
        groups, strides, dilation = conv.groups, conv.strides, conv.dilation
        spatial = conv.nhwc_pads()
        if groups > 1 and groups == channels == out_channels and in_per_group == 1:
            data = self.pad(data, spatial)
            taps = depthwise_taps(w)
            dp = self.dp.for_channels(channels)
            if dp.register_lanewise is not None and interleaves(channels, strides[1], dilation[1], dp.lanes):
                return self.depthwise_lanewise(data, taps, strides, dilation, dp)
            return self.kernel(f"depthwise_nhwc_{self.operands(data)}",
                               lambda x, wd: kc.depthwise_nhwc(x, wd, strides, dilation), [data], [taps])
        if channels != groups * in_per_group or out_channels % groups:
            return None
        if groups == 1 and self.tile_engine_worthwhile(conv_rows(data, w, conv), w[0].size, out_channels):
            return self.conv_on_tiles(data, w, conv)
        data = self.pad(data, spatial)
        data, correction = self.as_instruction_dtype(data, w.reshape(out_channels, -1).sum(axis=1),
                                                     [1, 1, 1, out_channels])
        data = self.pad_group_channels(data, groups)
        dp = self.dp.for_channels(out_channels // groups)
        name = f"{'' if groups == 1 else 'grouped_'}conv2d_nhwc_{self.operands(data)}_{dp.name}"
        kernel = self.kernel(
            name, lambda x, wp: kc.conv2d_nhwc_packed(x, wp, dp, strides, dilation, out_channels, groups),
            [data], [kc.pack_conv_weight(w, dp, groups)])
        return self.corrected(kernel, correction)

    def depthwise_lanewise(self, data, taps: np.ndarray, strides: list[int], dilation: list[int],
                           dp: DotProduct) -> relax.Expr:
        """The depthwise convolution of (padded) `data` with `taps` [kh, kw, C] as taps.py's
        interleaving followed by one lane-wise dot product (`dp`'s) per 4 taps of L channels. A
        constant pad of rows and columns producing `data` is done by the interleaving instead."""
        dtype = _dtype(data)
        kh, kw, channels = taps.shape
        pads, pad_value = (0, 0, 0, 0), 0
        producer = self.constant_pad_producing(data)
        if producer is not None:
            n0, n1, top, bottom, left, right, c0, c1 = (int(p) for p in producer.attrs.pad_width)
            if not (n0 or n1 or c0 or c1):
                data, pads, pad_value = producer.args[0], (top, left, bottom, right), int(producer.attrs.pad_value)
        shape = _shape(data)
        out_w = kc.windows(shape[2] + pads[1] + pads[3], kw, strides[1], dilation[1])
        lanes, reduce = dp.lanes, dp.reduce
        if phased(kw, strides[1], dilation[1]):  # groups at multiples of 4: a stride-4 interleaving of 4 taps
            grouping = (reduce, reduce, 1, aligned_positions(out_w, kw))
            compute = lambda t, wt: kc.depthwise_nhwc_phased(t, wt, dp, strides[0], dilation[0], out_w,  # noqa: E731
                                                             channels)
            packed = kc.pack_depthwise_weight_phased(taps, lanes, reduce)
        else:
            grouping = (kw, strides[1], dilation[1], out_w)
            step = group_step(strides[1], dilation[1])
            compute = lambda t, wt: kc.depthwise_nhwc_lanewise(t, wt, dp, strides[0], dilation[0], step,  # noqa: E731
                                                               channels)
            packed = kc.pack_depthwise_weight(taps, lanes, reduce)
        interleave = tap_interleave_kernel(tuple(shape), dtype, *grouping, lanes, MIN_PARALLEL_WORK, pads, pad_value)
        taps_type = interleave.params[1].ty  # the kernel's output buffer
        interleaved = self.builder_.emit(relax.call_tir(
            self.builder_.add_func(interleave, "depthwise_taps"), [data],
            relax.TensorType([int(d) for d in taps_type.shape], str(taps_type.dtype))))
        kernel = self.kernel(f"depthwise_nhwc_u8s8_{dp.name}", compute, [interleaved], [packed])
        if dtype == "uint8":
            return kernel
        return self.corrected(kernel, _shift_correction(128, taps.sum(axis=(0, 1)), [1, 1, 1, channels]))

    def matmul(self, call) -> relax.Expr | None:
        data, weight = call.args
        if not isinstance(weight, Constant):
            return self.batch_matmul(call)
        if not (str(call.attrs.out_dtype) == "int32" and _dtype(data) in ("uint8", "int8")
                and len(_shape(data)) >= 2):
            return None
        w = constant_value(weight)
        if w.dtype != np.int8 or w.ndim != 2:
            return None
        rows = len(_shape(data)) - 1  # leading axes: [M] or a transformer's [batch, tokens]
        if self.tile_engine_worthwhile(math.prod(_shape(data)[:-1]), *w.shape):
            return self.dense_on_tiles(data, w)
        data, correction = self.as_instruction_dtype(data, w.sum(axis=0), [1] * rows + [w.shape[1]])
        data = self.pad(data, [(0, 0)] * rows + [(0, -w.shape[0] % self.dp.reduce)])
        dp = self.dp.for_channels(w.shape[1])
        kernel = self.kernel(f"dense_{self.operands(data)}_{dp.name}",
                             lambda x, wp: kc.dense_packed(x, wp, dp, w.shape[1]), [data],
                             [kc.pack_dense_weight(w, dp)])
        return self.corrected(kernel, correction)

    def quantized_operand(self, expr) -> tuple[relax.Expr, int] | None:
        """(q, zp) where `expr` is realize's (q − zp) of 8-bit activations: astype(q, int32),
        optionally minus a scalar constant zp (passes/realize.py, to_accumulator)."""
        zero_point = 0
        binding = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
        if isinstance(binding, relax.Call) and op_name(binding) == "relax.subtract" \
                and isinstance(binding.args[1], Constant) and constant_value(binding.args[1]).size == 1:
            zero_point = int(constant_value(binding.args[1]).reshape(()))
            expr = binding.args[0]
            binding = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
        if not (isinstance(binding, relax.Call) and op_name(binding) == "relax.astype"
                and _dtype(binding.args[0]) in ("uint8", "int8") and str(binding.attrs.dtype) == "int32"):
            return None
        return binding.args[0], zero_point

    def batch_matmul(self, call) -> relax.Expr | None:
        """A matmul of two 8-bit activations (attention's QKᵀ and PV), as realize writes it:
        (qa − za) · (qb − zb) in int32. With A_u = qa (+128 if int8, so uint8) and B_s = qb (−128
        if uint8, so int8), zero points shifted alike,

            Σ_k (A_u − za)(B_s − zb) = Σ_k A_u·B_s − zb·Σ_k A_u − za·Σ_k B_s + K·za·zb,

        the first term on the dot-product kernel (B_s packed at run time), the row and column
        sums by reductions, the rest in the kernel's epilogue. Exact in int32."""
        a, b = call.args
        operands = [self.quantized_operand(a), self.quantized_operand(b)]
        if None in operands or str(call.attrs.out_dtype) != "int32" or self.dp.data_dtype != "uint8":
            return None
        (qa, za), (qb, zb) = operands
        a_shape, b_shape = _shape(qa), _shape(qb)
        if len(a_shape) < 2 or a_shape[:-2] != b_shape[:-2] or a_shape[-1] != b_shape[-2]:
            return None  # broadcast batch axes stay on the int32 kernel
        depth, columns = a_shape[-1], b_shape[-1]
        if _dtype(qa) == "int8":
            qa, za = self.shifted(qa, 128, "uint8"), za + 128
        if _dtype(qb) == "uint8":
            qb, zb = self.shifted(qb, -128, "int8"), zb - 128
        rank = len(a_shape)
        extra = -depth % self.dp.reduce
        qa = self.pad(qa, [(0, 0)] * (rank - 1) + [(0, extra)])
        qb = self.pad(qb, [(0, 0)] * (rank - 2) + [(0, extra), (0, 0)])
        dp = self.dp.for_channels(columns)
        packed = self.kernel("pack_activation_operand",
                             lambda y: kc.pack_activation_operand(y, dp, kc.round_up(columns, dp.lanes)), [qb], [])
        product = self.kernel(f"batch_dense_u8s8_{dp.name}", lambda x, y: kc.batch_dense_packed(x, y, dp, columns),
                              [qa, self.builder_.emit(packed)], [])
        corrections = []
        if zb:
            row_sums = self.builder_.emit(relax.op.sum(relax.op.astype(qa, "int32"), axis=[-1], keepdims=True))
            corrections.append(self.builder_.emit(relax.op.multiply(row_sums, const(np.int32(-zb)))))
        if za:
            column_sums = self.builder_.emit(relax.op.sum(relax.op.astype(qb, "int32"), axis=[-2], keepdims=True))
            corrections.append(self.builder_.emit(relax.op.multiply(column_sums, const(np.int32(-za)))))
        if za and zb:
            corrections.append(const(np.int32(depth * za * zb)))
        result = product
        for term in corrections:  # the last sum is the call's own binding
            result = relax.op.add(self.builder_.emit(result), term)
        return result

    def shifted(self, data, shift: int, dtype: str):
        """8-bit `data` + `shift` as `dtype` (±128: uint8 ↔ int8, exact)."""
        wide = self.builder_.emit(relax.op.add(relax.op.astype(data, "int32"), const(np.int32(shift))))
        return self.builder_.emit(relax.op.astype(wide, dtype))

    def tile_engine_worthwhile(self, rows: int, depth: int, out_channels: int) -> bool:
        return self.engine is not None and tiles_worthwhile(amx.U8S8, rows, depth, out_channels)

    def dense_on_tiles(self, data, w: np.ndarray, windows: Windows | None = None) -> relax.Expr:
        """`data` [..., K] (or its `windows`) × constant int8 `w` [K, N] on `tdpbusd` tiles
        (uint8 activations, int8 ones shifted by 128 and corrected)."""
        leading = _shape(data)[:-1]  # of the padded NHWC input with `windows`: the same rank as the output
        data, correction = self.as_instruction_dtype(data, w.sum(axis=0), [1] * len(leading) + [w.shape[1]])
        kernel = self.dense_tiles(data, w, self.dp, self.engine, amx.U8S8,
                                  f"dense_{self.operands(data)}_{self.engine.name}", windows)
        return self.corrected(kernel, correction)

    def operands(self, data) -> str:
        """`u8s8` or `s8s8`: the activation and weight types the kernel multiplies."""
        return ("u8" if _dtype(data) == "uint8" else "s8") + "s8"



def dispatch_int8_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its int8 convolutions and matmuls on dot-product kernels, if `target` has a
    dot-product instruction (otherwise `mod` itself)."""
    dp = dot_product_of(target)
    if dp is None:
        return mod
    engine = tile_engine_of(target)
    return relax.transform.DeadCodeElimination()(_Int8KernelDispatch(mod, dp, engine).run())  # pads merged away
