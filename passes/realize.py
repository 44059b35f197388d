"""realize: turn a QDQ (quantize/dequantize) module into integer kernels.

Every value of the QDQ function is tracked as one of:

* `Float`       — an ordinary float tensor;
* `QTensor`     — int8/uint8 data q with real = scale · (q − zero_point) (weights may have a
                  per-channel scale along `axis`; activations are per tensor);
* `Accumulator` — int32 data with real = scale[c] · (acc + offset[c]) (per channel along
                  `axis`): a constant offset (zero-point correction, bias) not yet added, plus a
                  pending clamp [lo, hi] in real units from an absorbed relu/clip.

and re-emitted bottom-up. `dequantize` only relabels an integer tensor; integer ops consume
the relabelled tensors directly:

  conv2d / matmul(QTensor, int8 weight)  acc = Σ q_x·q_w in int32 (uint8 × int8 kernels); an
                                         asymmetric input is padded with its zero point and
                                         corrected by −zp_x·Σq_w: a pending offset
  add(acc, bias)                         bias added to the offset: round(bias / scale[c])
  relu / clip on an accumulator          integer clamp at requantization
  add / multiply(QTensor, QTensor)       add: fixed-point rescale to max(scale)/2^14, in int32
                                         (multipliers < 2^22, rounding half up); a following
                                         relu / clip is a clamp at requantization;
                                         multiply: (q_x − zp_x)·(q_y − zp_y), scale s_x·s_y
  mean (global average pooling)          int32 sum of (q − zp); scale / count
  max_pool2d, reshape, permute, ...      run on the integer tensor, parameters unchanged
  quantize(acc) → requantize             q = clamp(⌊fma(float32(acc), r_c, k_c)⌋) in float32, with
                                         r_c = scale[c]/scale_out and k_c = offset_c·r_c + zp + ½
                                         one constant per channel (rounding half up; float_scale)
  quantize(QTensor with equal params)    nothing: consecutive int8 ops stay int8
  elementwise chain of one QTensor       a 256-entry table of fn(real(q)), quantized (or float
  (hardswish, sigmoid, ...)              for a float consumer), read with `take`

A float consumer of an integer value gets `dequantize` (or acc·scale for an accumulator,
which FuseOps fuses into the producing kernel's epilogue); any other op runs in float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .annotate import UNARY_FUNCTIONS, UNARY_OPS
from .graph import (Constant, FunctionView, along_axis, const, constant_value, conv_channel_axis, op_name, shape_of,
                    with_main)
from .weight_only import quantize_embedding_tables

LAYOUT_OPS = frozenset({"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
                        "relax.strided_slice", "relax.flatten"})


@dataclass(frozen=True)
class Float:
    expr: relax.Expr


@dataclass(frozen=True)
class QTensor:
    expr: relax.Expr
    scale: np.ndarray  # float64; shape () per tensor, (C,) per channel
    zero_point: int
    dtype: str
    axis: int | None = None
    values: np.ndarray | None = None  # integer values when constant (weights)

    def same_params(self, other: "QTensor") -> bool:
        return (self.axis is None and other.axis is None and self.dtype == other.dtype
                and self.zero_point == other.zero_point and float(self.scale) == float(other.scale))


@dataclass(frozen=True)
class Accumulator:
    expr: relax.Expr
    scale: np.ndarray  # float64; () or (C,) along `axis`
    axis: int | None
    lo: float = -math.inf
    hi: float = math.inf
    bound: float = math.inf  # max |acc| known at compile time
    offset: np.ndarray | None = None  # int64, () or (C,) along `axis`: added at requantization
    channel_hi: np.ndarray | None = None  # (C,) along `axis`: a per-channel upper clamp, real units

    @property
    def clamped(self) -> bool:
        return math.isfinite(self.lo) or math.isfinite(self.hi) or self.channel_hi is not None


@dataclass(frozen=True)
class Unary:
    """fn(real value of `source`), elementwise: becomes a 256-entry table indexed by source's q."""

    source: QTensor
    fn: Callable[[np.ndarray], np.ndarray]


@dataclass
class RealizeStats:
    """What realize produced: integer anchors, float fallbacks and requantizations."""

    integer_ops: dict = field(default_factory=dict)
    float_ops: dict = field(default_factory=dict)
    requantize: int = 0
    int8_tables: int = 0  # embedding tables stored as int8 rows


def _broadcast(values: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 0 or axis is None:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


# Multipliers of residual-add terms are below 2^22, so (q − zp) · m fits int32.
_ADD_MULTIPLIER_BITS = 22


def _qmin_qmax(dtype: str) -> tuple[int, int]:
    return (0, 255) if dtype == "uint8" else (-128, 127)


class Realizer:
    """Re-emits one QDQ function with integer kernels (see the module docstring)."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.view = FunctionView(func)
        self.bb = relax.BlockBuilder()
        self.env: dict = {}
        self.float_cache: dict = {}
        self.stats = RealizeStats()

    # ------------------------------------------------------------------ helpers
    def emit(self, expr, name: str = ""):
        return self.bb.emit(expr, name)

    def scalar(self, expr) -> np.ndarray | None:
        value = self.view.constant(expr)
        return None if value is None else np.asarray(value)

    def state(self, expr):
        """The tracked state of a var; any other argument (a constant, a tuple) is a Float."""
        return self.env[expr] if isinstance(expr, relax.Var) else Float(expr)

    def float_of(self, expr) -> relax.Expr:
        """The value of `expr` as a float tensor, emitting a dequantize once if needed."""
        if not isinstance(expr, relax.Var):
            if isinstance(expr, relax.Tuple):
                return relax.Tuple([self.float_of(f) for f in expr.fields])
            return expr
        state = self.env[expr]
        if isinstance(state, Float):
            return state.expr
        if expr in self.float_cache:
            return self.float_cache[expr]
        if isinstance(state, Unary):
            out = self.lookup(state, self.unary_table(state).astype(np.float32))
        elif isinstance(state, QTensor):
            out = self.emit(relax.op.dequantize(
                state.expr, const(np.asarray(state.scale, np.float32)),
                const(np.full(np.shape(state.scale), state.zero_point, np.int32)),
                axis=-1 if state.axis is None else state.axis, out_dtype="float32"))
        else:
            rank = len(shape_of_expr(state.expr))
            real = self.emit(relax.op.multiply(
                self.emit(relax.op.astype(self.with_offset(state), "float32")),
                const(_broadcast(state.scale, state.axis, rank).astype(np.float32))))
            if math.isfinite(state.lo) or math.isfinite(state.hi):
                lo = state.lo if math.isfinite(state.lo) else -3.0e38
                hi = state.hi if math.isfinite(state.hi) else 3.0e38
                real = self.emit(relax.op.clip(real, lo, hi))
            if state.channel_hi is not None:
                real = self.emit(relax.op.minimum(real, const(_broadcast(state.channel_hi, state.axis, rank),
                                                              "float32")))
            out = real
        self.float_cache[expr] = out
        return out

    def unary_table(self, u: Unary) -> np.ndarray:
        """fn at every value the source can take, indexed by q − qmin."""
        qmin, qmax = _qmin_qmax(u.source.dtype)
        real = (np.arange(qmin, qmax + 1, dtype=np.float64) - u.source.zero_point) * float(u.source.scale)
        return np.broadcast_to(u.fn(real), real.shape).astype(np.float64)

    def lookup(self, u: Unary, table: np.ndarray):
        """table[q − qmin] for each q of the source. The 8-bit q is the index itself (an int8 q read
        as uint8, with the table rotated by 128 to match), so the kernel producing q writes one
        byte per element, not a widened int32 index."""
        self.stats.integer_ops["lookup_table"] = self.stats.integer_ops.get("lookup_table", 0) + 1
        index = u.source.expr
        if u.source.dtype == "int8":  # q = -128..127 read as uint8: 128..255, 0..127
            table = np.roll(table, -128)
            index = self.emit(relax.op.astype(index, "uint8"))
        return self.emit(relax.op.take(const(table), index, axis=0, mode="clip"))

    def as_unary(self, call) -> Unary | None:
        """A Unary for an elementwise op of one per-tensor QTensor (or Unary of it) and scalars."""
        name = op_name(call)
        if name not in UNARY_OPS:
            return None
        source, parts = None, []
        for arg in call.args[:1] if name == "relax.clip" else call.args:
            state = self.env.get(arg) if isinstance(arg, relax.Var) else None
            constant = self.real_constant(arg) if not isinstance(state, (QTensor, Unary)) else None
            if isinstance(state, QTensor) and state.values is None and state.axis is None:
                src, fn = state, (lambda v: v)
            elif isinstance(state, Unary):
                src, fn = state.source, state.fn
            elif constant is not None and constant.size == 1:
                value = float(constant.reshape(()))
                parts.append(lambda v, value=value: value)
                continue
            else:
                return None
            if source is not None and source is not src:
                return None
            source = src
            parts.append(fn)
        if source is None:
            return None
        if name == "relax.clip":
            lo, hi = float(call.args[1].value), float(call.args[2].value)
            inner = parts[0]
            return Unary(source, lambda v: np.clip(inner(v), lo, hi))
        op = UNARY_FUNCTIONS[name]
        if len(parts) == 1:
            inner = parts[0]
            return Unary(source, lambda v: op(inner(v)))
        first, second = parts
        return Unary(source, lambda v: op(first(v), second(v)))

    def to_accumulator(self, q: QTensor) -> Accumulator:
        """(q − zp) in int32, same scale."""
        acc = self.emit(relax.op.astype(q.expr, "int32"))
        if q.zero_point:
            acc = self.emit(relax.op.subtract(acc, const(np.int32(q.zero_point))))
        return Accumulator(acc, q.scale, q.axis)

    def with_offset(self, acc: Accumulator) -> relax.Expr:
        """acc + offset as an int32 tensor."""
        if acc.offset is None:
            return acc.expr
        offset = _broadcast(acc.offset, acc.axis, len(shape_of_expr(acc.expr)))
        return self.emit(relax.op.add(acc.expr, const(offset, "int32")))

    def float_scale(self, acc: Accumulator, scale_out: float, zero_point: int):
        """⌊fma(float32(acc), r_c, k_c)⌋ as int32: (acc + offset) · scale_acc / scale_out + zero_point
        rounded half up, with the ratio r_c = float32(scale_acc[c] / scale_out) and the offset, the
        zero point and the rounding folded into one constant k_c = float32(offset_c · r_c + zp + ½).

        The multiply and the add are one fused multiply-add: LLVM contracts them wherever the
        target has FMA (every x86 preset, AArch64) and nvcc does on CUDA, so the sum is rounded
        to float32 once and the floor is exact. (A host preset older than Haswell has no FMA: there
        the product is rounded first.) Against exact arithmetic a result moves only where the true
        value lies within 2^−24 (relative) of a rounding boundary. Four vector instructions per 16
        outputs (convert, fma, floor, convert) against eight in int64 fixed point (widen, multiply,
        add, shift, on two vectors of 8), as onnxruntime's MLAS requantizes in float32 too:
        rapidocr's MobileNetV3 classifier int8 took 0.363 → 0.315 ms at 1 thread and 0.304 →
        0.274 ms at 2 (Zen 4, in-process A/B).
        """
        ratios = np.atleast_1d(np.asarray(acc.scale, np.float64) / scale_out).astype(np.float32)
        offsets = np.zeros(1) if acc.offset is None else np.asarray(acc.offset, np.float64)
        constants = (offsets * ratios.astype(np.float64) + zero_point + 0.5).astype(np.float32)
        r, k = np.broadcast_arrays(ratios, constants)
        axis = acc.axis if r.size > 1 else None  # one value: a scalar constant
        r, k = (_broadcast(v, axis, len(shape_of_expr(acc.expr))) for v in (r, k))
        values = self.emit(relax.op.astype(acc.expr, "float32"))
        values = self.emit(relax.op.add(self.emit(relax.op.multiply(values, const(r, "float32"))), const(k, "float32")))
        return self.emit(relax.op.astype(self.emit(relax.op.floor(values)), "int32"))

    def residual_term(self, q: QTensor, common: float):
        """round((q − zp) · scale / common) for scale/common ≤ 2^14, all in int32.

        (v · m + 2^(s−1)) >> s with m = round(scale/common · 2^s) ≤ 2^22: as |v| ≤ 255 the
        product stays below 2^30. The shift s ≥ 8 bounds the multiplier's error by 255 · 2^−9,
        so the term is within 1 unit of `common` (2^−14 steps of the larger input scale) of exact.
        """
        ratio = float(q.scale) / common
        shift = int(min(30, max(1, _ADD_MULTIPLIER_BITS - math.ceil(math.log2(ratio)))))
        m = int(round(ratio * 2.0**shift))
        product = self.emit(relax.op.multiply(self.to_accumulator(q).expr, const(np.int32(m))))
        rounded = self.emit(relax.op.add(product, const(np.int32(1 << (shift - 1)))))
        return self.emit(relax.op.right_shift(rounded, const(np.int32(shift))))

    def narrow_rescale(self, values, ratio: float, bound: float):
        """round(values · ratio) all in int32 for |values| ≤ bound, or None where that is not exact enough.

        values are first rounded down to 15 bits, v = (values + 2^(p−1)) >> p, then
        (v · m + 2^(s−1)) >> s with m = round(ratio · 2^p · 2^s) in [2^15, 2^16]: |v · m| ≤ 2^30.
        Taken only when ratio · 2^p ≤ 1/8, so the first rounding moves the result by at most
        1/16 of an output step (and the 16-bit multiplier by less than 2^−16 of it).
        """
        pre = max(0, math.ceil(math.log2(bound + 1)) - 14)
        scaled = ratio * 2.0**pre
        if not 0 < scaled <= 0.125:
            return None
        mantissa, exponent = math.frexp(scaled)
        m, shift = int(round(mantissa * 2**16)), 16 - exponent
        if m == 1 << 16:
            m, shift = m >> 1, shift - 1
        if not 1 <= shift <= 30:
            return None
        if pre:
            values = self.emit(relax.op.right_shift(self.emit(relax.op.add(values, const(np.int32(1 << (pre - 1))))),
                                                    const(np.int32(pre))))
        product = self.emit(relax.op.add(self.emit(relax.op.multiply(values, const(np.int32(m)))),
                                         const(np.int32(1 << (shift - 1)))))
        return self.emit(relax.op.right_shift(product, const(np.int32(shift))))

    def requantize(self, acc: Accumulator, scale: float, zero_point: int, dtype: str) -> QTensor:
        """q = clamp(round(acc · scale_acc / scale) + zp, clamps) as int8/uint8: in int32 where
        the accumulator's bound allows (narrow_rescale), else in float32 (float_scale)."""
        self.stats.requantize += 1
        shifted = None
        if acc.axis is None and acc.offset is None and math.isfinite(acc.bound):
            shifted = self.narrow_rescale(acc.expr, float(acc.scale) / scale, acc.bound)
            if shifted is not None and zero_point:
                shifted = self.emit(relax.op.add(shifted, const(np.asarray(zero_point, "int32"), "int32")))
        if shifted is None:
            shifted = self.float_scale(acc, scale, zero_point)
        qmin, qmax = _qmin_qmax(dtype)
        lo = qmin if not math.isfinite(acc.lo) else max(qmin, int(round(acc.lo / scale)) + zero_point)
        hi = qmax if not math.isfinite(acc.hi) else min(qmax, int(round(acc.hi / scale)) + zero_point)
        clamped = self.emit(relax.op.clip(shifted, lo, max(lo, hi)))
        if acc.channel_hi is not None:
            channel_hi = np.clip(np.round(acc.channel_hi / scale) + zero_point, lo, hi).astype(np.int32)
            rank = len(shape_of_expr(acc.expr))
            clamped = self.emit(relax.op.minimum(clamped, const(_broadcast(channel_hi, acc.axis, rank), "int32")))
        return QTensor(self.emit(relax.op.astype(clamped, dtype)), np.float64(scale), zero_point, dtype)

    def qparams_of(self, call) -> tuple[np.ndarray, np.ndarray] | None:
        scale, zp = self.scalar(call.args[1]), self.scalar(call.args[2])
        if scale is None or zp is None:
            return None
        return scale.astype(np.float64), zp.astype(np.int64)

    # ------------------------------------------------------------------ op handlers
    def on_dequantize(self, var, call):
        params = self.qparams_of(call)
        source = call.args[0]
        axis = int(call.attrs.axis)
        if params is None:
            return None
        scale, zp = params
        if isinstance(source, Constant):  # a quantized constant (weights, bias)
            values = constant_value(source)
            rank = values.ndim
            per_channel = scale.size > 1
            if per_channel and np.any(zp != 0):
                return None
            return QTensor(source, scale.reshape(-1) if per_channel else scale.reshape(()),
                           int(zp.reshape(-1)[0]), str(values.dtype), (axis % rank) if per_channel else None, values)
        state = self.state(source)
        if isinstance(state, QTensor) and scale.size == 1 and state.axis is None and \
                float(state.scale) == float(scale.reshape(())) and state.zero_point == int(zp.reshape(-1)[0]):
            return state
        return None

    def on_quantize(self, var, call):
        params = self.qparams_of(call)
        if params is None or params[0].size != 1:
            return None
        scale, zp = float(params[0].reshape(())), int(params[1].reshape(-1)[0])
        dtype = str(call.attrs.out_dtype)
        state = self.state(call.args[0])
        if isinstance(state, QTensor) and state.values is None and state.axis is None:
            if state.same_params(QTensor(None, np.float64(scale), zp, dtype)):
                return state
            return self.requantize(self.to_accumulator(state), scale, zp, dtype)
        if isinstance(state, Accumulator):
            return self.requantize(state, scale, zp, dtype)
        if isinstance(state, Unary):
            qmin, qmax = _qmin_qmax(dtype)
            table = np.clip(np.round(self.unary_table(state) / np.float32(scale)) + zp, qmin, qmax).astype(dtype)
            return QTensor(self.lookup(state, table), np.float64(scale), zp, dtype)
        q = self.emit(relax.op.quantize(self.float_of(call.args[0]), const(np.float32(scale)),
                                        const(np.int32(zp)), axis=-1, out_dtype=dtype))
        return QTensor(q, np.float64(scale), zp, dtype)

    def on_conv2d(self, var, call):
        x, w = self.state(call.args[0]), self.state(call.args[1])
        attrs = call.attrs
        if not (isinstance(x, QTensor) and x.axis is None and x.values is None and isinstance(w, QTensor)
                and w.values is not None and w.zero_point == 0 and w.dtype == "int8"):
            return None
        channel_axis = conv_channel_axis(call)
        if channel_axis is None:
            return None
        padding = [int(p) for p in attrs.padding]
        data = x.expr
        if x.zero_point and any(padding):
            top, left, bottom, right = padding
            spatial = [top, bottom, left, right]
            pad_width = [0, 0, 0, 0, *spatial] if channel_axis == 1 else [0, 0, *spatial, 0, 0]
            data = self.emit(relax.op.nn.pad(data, pad_width, pad_value=float(x.zero_point)))
            padding = [0, 0, 0, 0]
        acc = self.emit(relax.op.nn.conv2d(
            data, w.expr, strides=[int(s) for s in attrs.strides], padding=padding,
            dilation=[int(d) for d in attrs.dilation], groups=int(attrs.groups),
            data_layout=attrs.data_layout, kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
            out_dtype="int32"))
        channels = w.values.shape[0]
        offset = None
        if x.zero_point:
            offset = -x.zero_point * w.values.astype(np.int64).reshape(channels, -1).sum(axis=1)
        scale = float(x.scale) * (w.scale if w.axis is not None else np.full(channels, float(w.scale)))
        self.stats.integer_ops["conv2d"] = self.stats.integer_ops.get("conv2d", 0) + 1
        return Accumulator(acc, scale, channel_axis, offset=offset)

    def on_matmul(self, var, call):
        a, b = self.state(call.args[0]), self.state(call.args[1])
        if not (isinstance(a, QTensor) and a.axis is None and a.values is None and isinstance(b, QTensor)):
            return None
        if b.values is not None:
            if b.values.ndim != 2 or b.zero_point != 0 or b.dtype != "int8" or b.axis not in (None, 1):
                return None
            acc = self.emit(relax.op.matmul(a.expr, b.expr, out_dtype="int32"))
            offset = -a.zero_point * b.values.astype(np.int64).sum(axis=0) if a.zero_point else None
            channels = b.values.shape[1]
            scale = float(a.scale) * (b.scale if b.axis is not None else np.full(channels, float(b.scale)))
            self.stats.integer_ops["matmul"] = self.stats.integer_ops.get("matmul", 0) + 1
            return Accumulator(acc, scale, len(shape_of(var)) - 1, offset=offset)
        if b.axis is not None:
            return None
        lhs, rhs = self.to_accumulator(a), self.to_accumulator(b)
        acc = self.emit(relax.op.matmul(lhs.expr, rhs.expr, out_dtype="int32"))
        self.stats.integer_ops["batch_matmul"] = self.stats.integer_ops.get("batch_matmul", 0) + 1
        return Accumulator(acc, np.float64(float(a.scale) * float(b.scale)), None)

    def real_constant(self, expr) -> np.ndarray | None:
        value = self.view.constant(expr)
        if value is not None:
            return value.astype(np.float64)
        if isinstance(expr, relax.Var):
            state = self.env.get(expr)
            if isinstance(state, Float) and isinstance(state.expr, Constant):
                return constant_value(state.expr).astype(np.float64)
            if isinstance(state, QTensor) and state.values is not None:
                rank = state.values.ndim
                return (state.values.astype(np.float64) - state.zero_point) * _broadcast(state.scale, state.axis, rank)
        return None

    def on_add(self, var, call):
        x, y = self.state(call.args[0]), self.state(call.args[1])
        if isinstance(y, Accumulator) and not isinstance(x, Accumulator):
            x, y = y, x
            bias_expr = call.args[0]
        else:
            bias_expr = call.args[1]
        if isinstance(x, Accumulator) and not x.clamped:
            bias = self.real_constant(bias_expr)
            out_shape = shape_of(var)
            if bias is not None and x.axis is not None:
                channels = out_shape[x.axis]
                flat = bias.reshape(-1)
                if flat.size in (1, channels) and (bias.ndim == 0 or bias.size == channels):
                    per_channel = np.broadcast_to(flat, (channels,))
                    units = np.round(per_channel / x.scale)  # a bias beyond int32 units stays a float add
                    if np.all(np.abs(units) < 2**31):
                        offset = units.astype(np.int64) + (0 if x.offset is None else x.offset)
                        if np.all(np.abs(offset) < 2**31):
                            return replace(x, offset=offset)
            return None
        if isinstance(x, QTensor) and isinstance(y, QTensor) and x.values is None and y.values is None \
                and x.axis is None and y.axis is None and x is not y:
            # Both terms in units of max(scale)/2^14; |q − zp| · 2^14 < 2^22 keeps the sum far
            # from int32 overflow.
            common = max(float(x.scale), float(y.scale)) / 2.0**14
            total = self.emit(relax.op.add(self.residual_term(x, common), self.residual_term(y, common)))
            self.stats.integer_ops["add"] = self.stats.integer_ops.get("add", 0) + 1
            bound = sum(255 * float(t.scale) / common + 1 for t in (x, y))
            return Accumulator(total, np.float64(common), None, bound=bound)
        return None

    def on_multiply(self, var, call):
        x, y = self.state(call.args[0]), self.state(call.args[1])
        if isinstance(x, QTensor) and isinstance(y, QTensor) and x.values is None and y.values is None \
                and x.axis is None and y.axis is None and x is not y:
            product = self.emit(relax.op.multiply(self.to_accumulator(x).expr, self.to_accumulator(y).expr))
            self.stats.integer_ops["multiply"] = self.stats.integer_ops.get("multiply", 0) + 1
            return Accumulator(product, np.float64(float(x.scale) * float(y.scale)), None)
        return None

    def on_relu(self, var, call):
        x = self.state(call.args[0])
        if isinstance(x, Accumulator):
            return replace(x, lo=max(x.lo, 0.0))
        if isinstance(x, QTensor) and x.values is None and x.axis is None:
            return replace(x, expr=self.emit(relax.op.maximum(x.expr, const(np.asarray(x.zero_point, x.dtype)))))
        return None

    def on_clip(self, var, call):
        x = self.state(call.args[0])
        lo, hi = float(call.args[1].value), float(call.args[2].value)
        if isinstance(x, Accumulator):
            return replace(x, lo=max(x.lo, lo), hi=min(x.hi, hi))
        if isinstance(x, QTensor) and x.values is None and x.axis is None:
            qmin, qmax = _qmin_qmax(x.dtype)
            qlo = max(qmin, int(math.ceil(lo / float(x.scale))) + x.zero_point) if math.isfinite(lo) else qmin
            qhi = min(qmax, int(math.floor(hi / float(x.scale))) + x.zero_point) if math.isfinite(hi) else qmax
            return replace(x, expr=self.emit(relax.op.clip(x.expr, qlo, max(qlo, qhi))))
        return None

    def on_minimum(self, var, call):
        """minimum(acc, per-channel constant): a per-channel clamp at requantization (equalized ReLU6)."""
        x = self.state(call.args[0])
        bound = self.real_constant(call.args[1])
        if not isinstance(x, Accumulator) or x.axis is None or bound is None:
            return None
        if not along_axis(bound, x.axis, shape_of(var)):
            return None
        flat = bound.reshape(-1)
        return replace(x, channel_hi=flat if x.channel_hi is None else np.minimum(x.channel_hi, flat))

    def on_mean(self, var, call):
        x = self.state(call.args[0])
        if not (isinstance(x, QTensor) and x.values is None and x.axis is None):
            return None
        axes = [int(a) for a in call.attrs.axis] if call.attrs.axis is not None else None
        in_shape = shape_of(call.args[0])
        count = int(np.prod([in_shape[a] for a in axes])) if axes is not None else int(np.prod(in_shape))
        total = self.emit(relax.op.sum(self.to_accumulator(x).expr, axis=axes, keepdims=bool(call.attrs.keepdims)))
        self.stats.integer_ops["mean"] = self.stats.integer_ops.get("mean", 0) + 1
        return Accumulator(total, np.float64(float(x.scale) / count), None)

    def on_passthrough(self, var, call):
        """max_pool2d and layout ops run on the integer tensor with unchanged parameters."""
        x = self.state(call.args[0])
        if isinstance(x, QTensor) and x.axis is None and x.values is None:
            new = relax.Call(call.op, [x.expr, *call.args[1:]], call.attrs, call.ty_args)
            return replace(x, expr=self.emit(new))
        if isinstance(x, QTensor) and x.values is not None and op_name(call) == "relax.permute_dims":
            axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(x.values.ndim))[::-1]
            values = np.transpose(x.values, axes)
            axis = None if x.axis is None else axes.index(x.axis)
            return QTensor(const(values), x.scale, x.zero_point, x.dtype, axis, values)
        if isinstance(x, QTensor) and x.values is not None and op_name(call) == "relax.reshape":
            # A quantized constant reshaped (e.g. a bias): carry its real value as a float constant.
            real = self.real_constant(call.args[0]).reshape(shape_of(var))
            return Float(const(real.astype(np.float32)))
        return None

    def on_concat(self, var, call):
        fields = call.args[0].fields
        states = [self.state(f) for f in fields]
        if not all(isinstance(s, QTensor) and s.axis is None and s.values is None for s in states):
            return None
        target = states[0]
        user = self.view.single_user(var)
        if user is not None and op_name(self.view.value[user]) == "relax.quantize":
            params = self.qparams_of(self.view.value[user])
            if params is not None and params[0].size == 1:
                target = QTensor(None, params[0].reshape(()), int(params[1].reshape(-1)[0]),
                                 str(self.view.value[user].attrs.out_dtype))
        if not all(s.dtype == target.dtype for s in states):
            return None
        parts = [s.expr if s.same_params(target) else
                 self.requantize(self.to_accumulator(s), float(target.scale), target.zero_point, target.dtype).expr
                 for s in states]
        self.stats.integer_ops["concat"] = self.stats.integer_ops.get("concat", 0) + 1
        return QTensor(self.emit(relax.op.concat(parts, axis=int(call.attrs.axis))), target.scale,
                       target.zero_point, target.dtype)

    HANDLERS = {
        "relax.dequantize": on_dequantize,
        "relax.quantize": on_quantize,
        "relax.nn.conv2d": on_conv2d,
        "relax.matmul": on_matmul,
        "relax.add": on_add,
        "relax.multiply": on_multiply,
        "relax.nn.relu": on_relu,
        "relax.clip": on_clip,
        "relax.minimum": on_minimum,
        "relax.mean": on_mean,
        "relax.nn.max_pool2d": on_passthrough,
        "relax.concat": on_concat,
        **dict.fromkeys(LAYOUT_OPS, on_passthrough),
    }

    # ------------------------------------------------------------------ driver
    def float_call(self, call):
        args = [self.float_of(a) for a in call.args]
        name = op_name(call)
        if name is not None:
            self.stats.float_ops[name] = self.stats.float_ops.get(name, 0) + 1
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def visit(self, var, value):
        if isinstance(value, relax.Var):
            self.env[var] = self.env[value]
            return
        name = op_name(value)
        handler = self.HANDLERS.get(name)
        state = handler(self, var, value) if handler is not None else None
        if state is None and isinstance(value, relax.Call):
            state = self.as_unary(value)
        if state is None:
            if isinstance(value, relax.Call):
                state = Float(self.emit(self.float_call(value), var.name))
            elif isinstance(value, relax.Tuple):
                state = Float(self.emit(relax.Tuple([self.float_of(f) for f in value.fields])))
            elif isinstance(value, relax.TupleGetItem):
                state = Float(self.emit(relax.TupleGetItem(self.float_of(value.tuple_value), value.index)))
            else:
                state = Float(self.emit(value))
        self.env[var] = state

    def run(self) -> relax.Function:
        params = [relax.Var(p.name, p.ty) for p in self.func.params]
        for old, new in zip(self.func.params, params):
            self.env[old] = Float(new)
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with self.bb.function("main", params, attrs=attrs):
            with self.bb.dataflow():
                for binding in self.view.bindings:
                    self.visit(binding.var, binding.value)
                result = self.func.body.body
                output = self.bb.emit_output(self.float_of(result))
            self.bb.emit_func_output(output)
        return self.bb.get()["main"]


def shape_of_expr(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape.values)


def realize(mod: tvm.IRModule) -> tuple[tvm.IRModule, RealizeStats]:
    """Integer kernels for the QDQ module `mod` (see the module docstring); the float embedding
    tables that gathers read stored as int8 rows (weight_only.quantize_embedding_tables)."""
    realizer = Realizer(mod["main"])
    func = realizer.run()
    realized, realizer.stats.int8_tables = quantize_embedding_tables(with_main(mod, func))
    return realized, realizer.stats
