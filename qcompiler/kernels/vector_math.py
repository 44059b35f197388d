"""erf, tanh, sigmoid, softmax, GELU and SiLU as polynomials that vectorize, on CPU targets.

LLVM has no vector form of these functions here: a vectorized `exp` becomes one scalar libm
call per lane, so an epilogue with `erf` (GELU) or a Softmax runs at scalar speed however its
loops are scheduled. Before legalization, each op becomes TOPI's polynomial form, plain
arithmetic on vectors (as onnxruntime's MLAS computes them):

  erf(x)      fast_erf: x·p(x²)/q(x²), x clamped to ±4 (Eigen's generic_fast_erf_float)
  tanh(x)     fast_tanh: x·p(x²)/q(x²), x clamped to ±9 (Eigen's generic_fast_tanh_float)
  softmax     fast_softmax: exp(x − max) with fast_exp: x = n·ln 2 + r, exp(x) = 2ⁿ · p(r), x
              clamped to ±88.38 (no inf, and NaN is not propagated)
  sigmoid(x)  1 / (1 + fast_exp(−x))
  gelu(x)     x/2 · (1 + fast_erf(x/√2))
  silu(x)     x · sigmoid(x)

A plain Exp keeps libm's exp, whose inf and NaN a model may rely on. Errors against the exact
functions are measured in tests/test_fp32_kernels.py.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi

from ..passes.graph import op_name


def _is_float32(expr) -> bool:
    return isinstance(expr.ty, relax.TensorType) and str(expr.ty.dtype) == "float32"


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


@relax.expr_functor.mutator
class _VectorMath(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = op_name(call)
        if not (call.args and _is_float32(call.args[0]) and _is_float32(call)):
            return call
        if name == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis),
                                         primfunc_name_hint="softmax")
        if name in POLYNOMIAL:
            return self.builder_.call_te(POLYNOMIAL[name], call.args[0], primfunc_name_hint=name.split(".")[-1])
        return call


def with_vector_math(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its float32 erf, tanh, sigmoid, softmax, GELU and SiLU in polynomial form, on
    CPU targets (otherwise `mod` itself)."""
    if target.kind.name != "llvm":
        return mod
    mutator = _VectorMath(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
