"""simulate: the fake-quantized (QDQ) form of a model — quantize → dequantize in float.

Each quantized tensor t is followed by `dequantize(quantize(t))` with its calibrated
parameters, and every later use of t reads the dequantized value; each anchor's constant
weight becomes `dequantize(int8 weight)` with per-channel (or per-tensor) scales. This module
computes in float what the integer model computes, up to rounding of requantization; it is
the debugging mode, and the input `realize` turns into integer kernels — the same form a
pre-quantized ONNX QDQ model imports as.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .annotate import AnnotationPlan
from .graph import const, with_main
from .qconfig import QConfig, QParams, quantize_weight, weight_scales


def _qdq(builder, value, params: QParams):
    q = builder.emit(relax.op.quantize(value, const(np.float32(params.scale)), const(np.int32(params.zero_point)),
                                       axis=-1, out_dtype=params.dtype))
    return builder.emit(relax.op.dequantize(q, const(np.float32(params.scale)), const(np.int32(params.zero_point)),
                                            axis=-1, out_dtype="float32"))


def quantized_weight(weight: np.ndarray, axis: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scales) for an anchor's weight."""
    scales = weight_scales(weight, axis if per_channel else None)
    wq = quantize_weight(weight, scales, axis if per_channel else None)
    if not per_channel:
        scales = np.repeat(scales, weight.shape[axis])
    return wq, scales.astype(np.float32)


def insert_qdq(
    mod: tvm.IRModule, plan: AnnotationPlan, qparams: dict[str, QParams], config: QConfig
) -> tuple[tvm.IRModule, dict]:
    """The QDQ (fake-quant) module for `plan` with calibrated `qparams` (per observer key),
    and for each observer key the dequantized var that carries it in that module."""
    dequantized_of: dict = {}
    weights = {op.var: op for op in plan.ops if op.weight is not None}

    params = [p for p in mod["main"].params if p in plan.keys]

    @relax.expr_functor.mutator
    class InsertQDQ(relax.PyExprMutator):
        started = False

        def visit_var_binding_(self, binding):
            if not self.started:  # quantized model inputs: fake-quantize before the first binding
                self.started = True
                for param in params:
                    dequantized = _qdq(self.builder_, param, qparams[plan.keys[param]])
                    dequantized_of.setdefault(plan.keys[param], dequantized)
                    self.set_var_remap(param, dequantized)
            var = binding.var
            if var in weights:
                op = weights[var]
                wq, scales = quantized_weight(op.weight, op.weight_axis, config.per_channel)
                weight = self.builder_.emit(relax.op.dequantize(
                    const(wq), const(scales), const(np.zeros(scales.shape, np.int32)),
                    axis=op.weight_axis, out_dtype="float32"))
                call = binding.value
                new_call = relax.Call(call.op, [self.visit_expr(call.args[0]), weight], call.attrs, call.ty_args)
                new_var = self.builder_.emit(new_call, var.name)
                self.set_var_remap(var, new_var)
            else:
                super().visit_var_binding_(binding)
            if var in plan.keys:
                emitted = self.get_var_remap(var) if self.get_var_remap(var) is not None else var
                dequantized = _qdq(self.builder_, emitted, qparams[plan.keys[var]])
                dequantized_of.setdefault(plan.keys[var], dequantized)
                self.set_var_remap(var, dequantized)

    mutator = InsertQDQ(mod)
    func = mutator.visit_expr(mod["main"])
    return with_main(mod, func), dequantized_of
