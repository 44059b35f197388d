"""smooth: move activation outliers of matmul inputs into the weights (SmoothQuant).

A transformer's activations before its linear layers (LayerNorm outputs above all) carry a few
channels tens of times wider than the rest. One per-tensor activation scale must cover them, so
the other channels get a handful of levels (or, with percentile calibration, the outlier channels
are clipped). The weights have no such channels. For X [.., K] read by matmuls with constant
weights W_m [K, N_m], per input channel k

    s_k = sqrt(max |X_k|) / sqrt(max_m max_n |W_m[k, n]|)         (migration strength 1/2)
    X W_m = (X · diag(1/s)) (diag(s) W_m)

so X / s and every s·W_m have the same range per channel: the activation's outliers are halved
in decibels and the weights, quantized per output channel, take the rest. The rewrite is exact
in fp32 (up to rounding): a multiply by 1/s before the matmuls, which realize fuses into the
activation's quantization, and the weights' rows scaled. Other readers of X (a residual add, say)
keep reading X itself. max |X_k| is measured on calibration samples. s is clamped to
[1/MAX_SCALE, MAX_SCALE], and a channel that is zero in the samples or the weights keeps s = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .graph import FunctionView, const, expose, op_name, with_main

MIGRATION = 0.5
MAX_SCALE = 1e4
SUFFIX = "_smoothed"  # the name of X / s is X's name + SUFFIX


@dataclass
class SmoothGroup:
    """An activation and the constant-weight matmuls (their vars) that read it."""

    data: relax.Var
    matmuls: list


def _constant_weight(view: FunctionView, call) -> np.ndarray | None:
    """W of matmul(x, W) when W is a 2-D float32 constant, else None."""
    if op_name(call) != "relax.matmul" or len(call.args) != 2:
        return None
    weight = view.constant(call.args[1])
    return weight if weight is not None and weight.ndim == 2 and weight.dtype == np.float32 else None


def find_groups(mod: tvm.IRModule) -> list[SmoothGroup]:
    """Each float32 activation (not a model input) read by matmuls with constant [K, N] weights
    over its last axis, with those matmuls, in graph order."""
    view = FunctionView(mod["main"])
    params = set(mod["main"].params)
    groups: dict = {}
    for binding in view.bindings:
        call = binding.value
        weight = _constant_weight(view, call)
        data = call.args[0] if weight is not None else None
        if (not isinstance(data, relax.Var) or data in params or str(data.ty.dtype) != "float32"
                or int(data.ty.shape[-1]) != weight.shape[0]):
            continue
        groups.setdefault(data, SmoothGroup(data, [])).matmuls.append(binding.var)
    return list(groups.values())


def measure_ranges(mod: tvm.IRModule, groups: list[SmoothGroup], samples: list, target: tvm.target.Target) -> dict:
    """max |X_k| per last-axis channel of each group's activation over `samples` (each a list of
    the model's inputs in order), by var."""
    from .calibrate import host_runner

    tensors = [group.data for group in groups]
    run = host_runner(expose(mod, tensors), target)
    ranges: dict = {}
    for sample in samples:
        for var, value in zip(tensors, run(sample)[-len(tensors):]):
            channel_max = np.abs(np.asarray(value)).reshape(-1, value.shape[-1]).max(axis=0)
            ranges[var] = np.maximum(ranges.get(var, 0.0), channel_max)
    return ranges


def smoothing_scales(activation_max: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """s_k = max|X_k|^α / max|W_k|^(1-α) (module docstring), 1 where either is 0, clamped."""
    weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
    x = activation_max.astype(np.float64)
    valid = (x > 0) & (weight_max > 0)
    scales = np.ones_like(x)
    scales[valid] = x[valid] ** MIGRATION / weight_max[valid] ** (1 - MIGRATION)
    return np.clip(scales, 1 / MAX_SCALE, MAX_SCALE)


def smooth(mod: tvm.IRModule, samples: list, target: tvm.target.Target) -> tuple[tvm.IRModule, int]:
    """`mod` with every group's activation divided by its smoothing scales before its matmuls and
    their weights' rows multiplied by them; and the number of groups rewritten."""
    groups = find_groups(mod)
    if not groups or not samples:
        return mod, 0
    view = FunctionView(mod["main"])
    ranges = measure_ranges(mod, groups, samples, target)
    scales = {group.data: smoothing_scales(ranges[group.data], [view.constant(view.value[m].args[1])
                                                               for m in group.matmuls]) for group in groups}
    reader = {matmul: group.data for group in groups for matmul in group.matmuls}

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.divided: dict = {}

        def visit_var_binding_(self, binding):
            data = reader.get(binding.var)
            if data is None:
                return super().visit_var_binding_(binding)
            s = scales[data]
            if data not in self.divided:
                self.divided[data] = self.builder_.emit(
                    relax.op.multiply(self.visit_expr(data), const((1.0 / s).astype(np.float32))),
                    data.name + SUFFIX)
            call = binding.value
            weight = view.constant(call.args[1]) * s[:, None]
            value = self.builder_.normalize(relax.Call(call.op, [self.divided[data], const(weight.astype(np.float32))],
                                                       call.attrs, call.ty_args))
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))

    return with_main(mod, Rewrite(mod).visit_expr(mod["main"])), len(groups)


def smoothing_multiplies(mod: tvm.IRModule) -> list[tuple]:
    """(X / s var, X, 1/s) of each multiply `smooth` added to `mod`, in graph order."""
    view = FunctionView(mod["main"])
    found = []
    for binding in view.bindings:
        call = binding.value
        if op_name(call) != "relax.multiply" or not isinstance(call.args[0], relax.Var):
            continue
        if binding.var.name == call.args[0].name + SUFFIX:
            found.append((binding.var, call.args[0], view.constant(call.args[1])))
    return found
