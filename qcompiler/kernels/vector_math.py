"""erf, tanh, sigmoid, softmax, GELU and SiLU as polynomials that vectorize, on CPU targets.

LLVM has no vector form of these functions here: a vectorized `exp` becomes one scalar libm
call per lane, so an epilogue with `erf` (GELU) or a Softmax runs at scalar speed however its
loops are scheduled. Before legalization, each op becomes TOPI's polynomial form, plain
arithmetic on vectors (as onnxruntime's MLAS computes them):

  erf(x)      fast_erf: x·p(x²)/q(x²), x clamped to ±4 (Eigen's generic_fast_erf_float)
  tanh(x)     fast_tanh: x·p(x²)/q(x²), x clamped to ±9 (Eigen's generic_fast_tanh_float)
  softmax     exp(x − max) / Σ exp(x − max) with fast_exp: x = n·ln 2 + r, exp(x) = 2ⁿ · p(r),
              x clamped to ±88.38 (no inf, and NaN is not propagated); over the last axis as
              `softmax_last_axis` below, other axes with TOPI's fast_softmax
  sigmoid(x)  1 / (1 + fast_exp(−x))
  gelu(x)     x/2 · (1 + fast_erf(x/√2))
  max, min    over the last axis: lane-wise partial results, as Softmax's max (no polynomial; a
              reduction TVM's loops would run one element at a time)
  silu(x)     x · sigmoid(x)

A plain Exp keeps libm's exp, whose inf and NaN a model may rely on. Errors against the exact
functions are measured in tests/test_fp32_kernels.py.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi

from ..passes.graph import CallRewriter, is_float32, op_name


SOFTMAX_LANES = 16
SOFTMAX_LANE_MAX = "softmax_lane_max"  # the anchor blocks of schedules.schedule_softmax
ROW_LANE_MIN = "softmax_lane_min"
SOFTMAX_EXP = "softmax_exp"


def _lane_reduction(x: te.Tensor, combine, name: str) -> te.Tensor:
    """r[...] = combine over the last axis of x, in two steps that vectorize: SOFTMAX_LANES
    partial results p[..., l] = combine_j x[..., j·L + l] (one vector per step), then the lanes
    and the tail beyond the last whole vector."""
    *outer, n = (int(d) for d in x.shape)
    lanes, whole = SOFTMAX_LANES, n // SOFTMAX_LANES
    parts = []
    if whole:
        j = te.reduce_axis((0, whole), "j")
        partial = te.compute((*outer, lanes), lambda *i: combine(x[(*i[:-1], j * lanes + i[-1])], axis=j),
                             name=f"softmax_lane_{name}")
        l = te.reduce_axis((0, lanes), "l")
        parts.append(te.compute(outer, lambda *i: combine(partial[(*i, l)], axis=l), name=f"softmax_lanes_{name}"))
    if n % lanes:
        t = te.reduce_axis((0, n % lanes), "t")
        parts.append(te.compute(outer, lambda *i: combine(x[(*i, whole * lanes + t)], axis=t), name=f"softmax_tail_{name}"))
    if len(parts) == 1:
        return parts[0]
    both = {"max": tvm.tirx.max, "min": tvm.tirx.min}.get(name, lambda a, b: a + b)
    return te.compute(outer, lambda *i: both(parts[0](*i), parts[1](*i)), name=f"softmax_{name}")


def softmax_last_axis(x: te.Tensor) -> te.Tensor:
    """y[..., i] = e[..., i] / Σ_k e[..., k], e = fast_exp(x − max_k x[..., k]); both reductions
    over vectors of lanes (`_lane_reduction`)."""
    maximum = _lane_reduction(x, te.max, "max")
    delta = te.compute(x.shape, lambda *i: x(*i) - maximum(*i[:-1]), name="softmax_delta")
    exp_poly = topi.fast_exp(delta)
    exp = te.compute(x.shape, lambda *i: exp_poly(*i), name=SOFTMAX_EXP)
    total = _lane_reduction(exp, te.sum, "sum")
    return te.compute(x.shape, lambda *i: exp(*i) * (1.0 / total(*i[:-1])), name="softmax_norm")


def row_reduction(x: te.Tensor, keepdims: bool, kind: str) -> te.Tensor:
    """max or min (`kind`) over the last axis, over vectors of lanes (`_lane_reduction`;
    scheduled as Softmax's first reduction is)."""
    reduced = _lane_reduction(x, te.max if kind == "max" else te.min, kind)
    shape = [*x.shape[:-1], 1] if keepdims else list(x.shape[:-1])
    return te.compute(shape, lambda *i: reduced(*(i[:-1] if keepdims else i)), name=f"row_{kind}")


def sigmoid(x: te.Tensor) -> te.Tensor:
    exp = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="negative"))
    return te.compute(x.shape, lambda *i: 1.0 / (1.0 + exp(*i)), name="sigmoid")


def gelu(x: te.Tensor) -> te.Tensor:
    erf = topi.fast_erf(te.compute(x.shape, lambda *i: x(*i) * (1.0 / math.sqrt(2.0)), name="scaled"))
    return te.compute(x.shape, lambda *i: 0.5 * x(*i) * (1.0 + erf(*i)), name="gelu")


def silu(x: te.Tensor) -> te.Tensor:
    gate = sigmoid(x)
    return te.compute(x.shape, lambda *i: x(*i) * gate(*i), name="silu")


POLYNOMIAL = {
    "relax.erf": topi.fast_erf,
    "relax.tanh": topi.fast_tanh,
    "relax.sigmoid": sigmoid,
    "relax.nn.gelu": gelu,
    "relax.nn.silu": silu,
}


def _float32_unary(call) -> bool:
    return bool(call.args) and is_float32(call.args[0]) and is_float32(call)


@relax.expr_functor.mutator
class _VectorMath(CallRewriter):
    HANDLERS = {"relax.nn.softmax": "softmax", "relax.max": "row_reduction", "relax.min": "row_reduction",
                **{name: "polynomial" for name in POLYNOMIAL}}

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod_ = mod

    def softmax(self, call) -> relax.Expr | None:
        if not _float32_unary(call):
            return None
        rank = len(call.args[0].ty.shape)
        if rank >= 2 and int(call.attrs.axis) % rank == rank - 1:
            return self.builder_.call_te(softmax_last_axis, call.args[0], primfunc_name_hint="softmax")
        return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")

    def row_reduction(self, call) -> relax.Expr | None:
        """A max or min over the last axis only (int8-dynamic's row ranges, ReduceMax): lane-wise."""
        if not _float32_unary(call) or call.attrs.axis is None:
            return None
        rank = len(call.args[0].ty.shape)
        axes = [int(a) % rank for a in call.attrs.axis]
        if rank < 2 or axes != [rank - 1] or int(call.args[0].ty.shape[-1]) < SOFTMAX_LANES:
            return None
        kind = op_name(call).split(".")[-1]
        return self.builder_.call_te(row_reduction, call.args[0], bool(call.attrs.keepdims), kind,
                                     primfunc_name_hint=f"row_{kind}")

    def polynomial(self, call) -> relax.Expr | None:
        if not _float32_unary(call):
            return None
        name = op_name(call)
        return self.builder_.call_te(POLYNOMIAL[name], call.args[0], primfunc_name_hint=name.split(".")[-1])


def with_vector_math(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its float32 erf, tanh, sigmoid, softmax, GELU and SiLU in polynomial form, on
    CPU targets (otherwise `mod` itself)."""
    if target.kind.name != "llvm":
        return mod
    return _VectorMath(mod).run()
