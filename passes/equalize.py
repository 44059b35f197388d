"""equalize: cross-layer equalization of consecutive convolutions / matmuls through ReLU.

For y = W2 · relu(W1 x + b1) and any s > 0 per channel c of the middle tensor,

  relu(z / s) · s = relu(z)        so   W1[c] / s_c, b1[c] / s_c, W2[:, c] · s_c

compute the same function (Nagel et al., "Data-Free Quantization", 2019). With r1_c the range
max |W1[c]| of the first layer's output channel c and r2_c = max |W2[:, c]| of the second's
input channel c, s_c = sqrt(r1_c / r2_c) makes both sqrt(r1_c · r2_c): channels whose weights
were tiny next to their neighbours' (which per-tensor scales, and the activation between,
round away) get the same range. Pairs are equalized in graph order, `iterations` times, so a
layer between two pairs settles between both (`find_pairs`). `apply_pairs` rescales the pairs
a caller accepts: the pipeline keeps those that lower the quantization noise predicted on
calibration data (passes/equalize_noise.py), since with per-channel weights the rescaling can
only move noise between the activation and the second layer's weights.

Only a direct chain qualifies: the first layer's output (after an optional constant bias add)
feeds, through at most one ReLU or ReLU6 and with no other user, the second layer alone.
ReLU6 = clip(z, 0, 6) is scale-equivariant with a per-channel bound, clip(z, 0, 6)/s =
min(relu(z/s), 6/s): its binding becomes that minimum (annotate absorbs it into the
convolution's epilogue, realize clamps per channel at requantization). Any other elementwise
op between them (HardSwish, Sigmoid, a clip not starting at 0, ...) is not scale-equivariant:
that pair is refused and listed with the op at fault. Variables keep their identity (only
constants change), so the ONNX node of each binding is still known afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .graph import FunctionView, const, conv_channel_axis, op_name, shape_of, with_main

_LAYERS = ("relax.nn.conv2d", "relax.matmul")
_ELEMENTWISE = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.clip",
                          "relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.maximum", "relax.minimum",
                          "relax.nn.gelu", "relax.nn.silu", "relax.exp", "relax.nn.prelu", "relax.nn.leakyrelu"})


@dataclass
class Layer:
    """One conv/matmul with a constant weight: where its output and input channels lie."""

    var: relax.Var
    weight: np.ndarray
    out_axis: int
    in_axis: int
    groups: int
    output_channel_axis: int  # the channel axis of the layer's output tensor


@dataclass
class EqualizationResult:
    pairs: list[tuple[relax.Var, relax.Var]] = field(default_factory=list)  # (first, second) layers equalized
    refused: list[tuple[relax.Var, str]] = field(default_factory=list)  # (first layer, the op in the way)
    unchanged: list[tuple[relax.Var, relax.Var]] = field(default_factory=list)  # pairs not accepted


def _layer(view: FunctionView, var) -> Layer | None:
    value = view.value.get(var)
    name = op_name(value)
    if name not in _LAYERS:
        return None
    weight = view.constant(value.args[1])
    if weight is None or weight.dtype != np.float32:
        return None
    if name == "relax.matmul":
        return Layer(var, weight, 1, 0, 1, len(shape_of(var)) - 1) if weight.ndim == 2 else None
    layout = str(value.attrs.kernel_layout)
    if layout not in ("OIHW", "OHWI") or conv_channel_axis(value) is None:
        return None
    return Layer(var, weight, 0, 1 if layout == "OIHW" else 3, int(value.attrs.groups), conv_channel_axis(value))


def _relu6_bound(call) -> float | None:
    """c of clip(x, 0, c), c > 0 (ReLU6: c = 6), else None."""
    lo, hi = float(call.args[1].value), float(call.args[2].value)
    return hi if lo == 0.0 and 0.0 < hi < float("inf") else None


def _chain(view: FunctionView, first: Layer):
    """(bias add var or None, clip(0, c) var or None, next layer) after `first` through at most a
    bias add and a ReLU or ReLU6; (None, None, ops in the way) where other elementwise ops lead
    from `first` to exactly one next layer; None where the output goes anywhere else."""
    bias = clip = None
    activated = False
    current = first.var
    while True:
        user = view.single_user(current)
        if user is None:
            break
        name = op_name(view.value[user])
        layer = _layer(view, user)
        if layer is not None:
            return (bias, clip, layer) if view.value[user].args[0].same_as(current) else None
        if name == "relax.add" and bias is None and not activated and view.other_constant(user, current) is not None:
            bias = user
        elif name == "relax.nn.relu" and not activated:
            activated = True
        elif name == "relax.clip" and not activated and _relu6_bound(view.value[user]) is not None:
            clip, activated = user, True
        else:
            break
        current = user
    ops = _elementwise_region(view, current)
    return (None, None, ops) if ops else None


def _elementwise_region(view: FunctionView, start) -> str | None:
    """The elementwise ops (names, joined) through which all of `start`'s uses reach the data
    input of one conv/matmul, or None where a use leads anywhere else."""
    ops, exits, frontier, seen = [], set(), [start], {start}
    while frontier:
        var = frontier.pop()
        if var in view.outputs:
            return None
        for user in view.users.get(var, []):
            value = view.value[user]
            if _layer(view, user) is not None and value.args[0].same_as(var):
                exits.add(user)
            elif op_name(value) in _ELEMENTWISE:
                if user not in seen:
                    seen.add(user)
                    ops.append(op_name(value).replace("relax.", ""))
                    frontier.append(user)
            else:
                return None
    return ", ".join(dict.fromkeys(ops)) if len(exits) == 1 and ops else None


def _input_channel_ranges(layer: Layer, weight: np.ndarray) -> np.ndarray:
    """max |W2| per input channel of the second layer (all groups' channels in order)."""
    w = np.abs(np.moveaxis(weight, (layer.out_axis, layer.in_axis), (0, 1)))  # [O, I/g, ...]
    outputs, per_group = w.shape[:2]
    groups = layer.groups
    per_out = w.reshape(outputs, per_group, -1).max(axis=2)  # [O, I/g]
    return per_out.reshape(groups, outputs // groups, per_group).max(axis=1).reshape(-1)


def per_output(values: np.ndarray, outputs: int, groups: int) -> np.ndarray:
    """values[c] over all input channels as [outputs, inputs per group]: each output's own group."""
    per_group = values.size // groups
    return np.repeat(values.reshape(groups, 1, per_group), outputs // groups, axis=1).reshape(outputs, per_group)


def scale_input_channels(layer: Layer, weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`weight` with input channel c (over all groups) multiplied by scales[c]."""
    w = np.moveaxis(weight, (layer.out_axis, layer.in_axis), (0, 1)).copy()
    outputs, per_group = w.shape[:2]
    w *= per_output(scales, outputs, layer.groups).reshape(outputs, per_group, *([1] * (w.ndim - 2)))
    return np.moveaxis(w, (0, 1), (layer.out_axis, layer.in_axis))


@dataclass
class Pair:
    """Two layers joined by a scale-equivariant chain, and the classic scales of their channels."""

    first: Layer
    bias: relax.Var | None  # the first layer's bias add
    clip: relax.Var | None  # its ReLU6 (clip(0, c))
    second: Layer
    middle: relax.Var  # the tensor the second layer reads
    scales: np.ndarray  # s per middle channel: W1[c] / s_c, W2[:, c] · s_c (float64)


def find_pairs(mod: tvm.IRModule, iterations: int = 4) -> tuple[list[Pair], list[tuple[relax.Var, str]]]:
    """The qualifying pairs of `main` in graph order with their scales (each pair equalized in
    turn, `iterations` times, all pairs applied), and the refused ones (first layer, the op in
    the way)."""
    view = FunctionView(mod["main"])
    pairs, refused = [], []
    for binding in view.bindings:
        first = _layer(view, binding.var)
        chain = _chain(view, first) if first is not None else None
        if chain is None:
            continue
        bias, clip, second = chain
        if isinstance(second, str):
            refused.append((first.var, second))
            continue
        channels = first.weight.shape[first.out_axis]
        if second.weight.shape[second.in_axis] * second.groups != channels:
            continue
        middle = view.value[second.var].args[0]
        pairs.append(Pair(first, bias, clip, second, middle, np.ones(channels)))
    weights = {}
    for _ in range(iterations):
        for pair in pairs:
            w1 = weights.get(pair.first.var, pair.first.weight.astype(np.float64))
            w2 = weights.get(pair.second.var, pair.second.weight.astype(np.float64))
            r1 = np.abs(np.moveaxis(w1, pair.first.out_axis, 0)).reshape(w1.shape[pair.first.out_axis], -1).max(axis=1)
            r2 = _input_channel_ranges(pair.second, w2)
            scales = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            weights[pair.first.var] = scale_output_channels(pair.first, w1, scales)
            weights[pair.second.var] = scale_input_channels(pair.second, w2, scales)
            pair.scales = pair.scales * scales
    return pairs, refused


def scale_output_channels(layer: Layer, weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`weight` with output channel c divided by scales[c]."""
    shape = [1] * weight.ndim
    shape[layer.out_axis] = -1
    return weight / scales.reshape(shape)


def equalize(mod: tvm.IRModule, iterations: int = 4,
             accepted: Sequence[bool] | None = None) -> tuple[tvm.IRModule, EqualizationResult]:
    """`mod` with the qualifying pairs of `main` equalized (see the module docstring): all of
    them, or those `accepted` marks (one flag per pair of `find_pairs`, in its order)."""
    pairs, refused = find_pairs(mod, iterations)
    flags = _flags(pairs, accepted)
    result = EqualizationResult(refused=refused)
    for pair, keep in zip(pairs, flags):
        (result.pairs if keep else result.unchanged).append((pair.first.var, pair.second.var))
    return apply_pairs(mod, pairs, flags), result


def _flags(pairs: list[Pair], accepted: Sequence[bool] | None) -> list[bool]:
    if accepted is None:
        return [True] * len(pairs)
    if len(accepted) != len(pairs):
        raise ValueError(f"{len(accepted)} equalization flags for {len(pairs)} pairs")
    return [bool(flag) for flag in accepted]


def apply_pairs(mod: tvm.IRModule, pairs: list[Pair], accepted: Sequence[bool] | None = None) -> tvm.IRModule:
    """`mod` with each accepted pair's scales applied: W1 rows, its bias and ReLU6 bound divided
    by s, W2's input channels multiplied by it."""
    view = FunctionView(mod["main"])
    weights: dict = {}  # var → new weight (layers) or new bias (bias adds)
    bounds: dict = {}  # clip(0, c) var → per-channel upper bounds after rescaling
    for pair, keep in zip(pairs, _flags(pairs, accepted)):
        if not keep:
            continue
        first, second, scales = pair.first, pair.second, pair.scales
        weights[first.var] = scale_output_channels(first, weights.get(first.var, first.weight.astype(np.float64)), scales)
        weights[second.var] = scale_input_channels(second, weights.get(second.var, second.weight.astype(np.float64)),
                                                   scales)
        if pair.bias is not None:
            b = view.other_constant(pair.bias, first.var).astype(np.float64)
            weights[pair.bias] = b / scales.reshape(b.shape) if b.size == scales.size else b
        if pair.clip is not None:  # clip(z, 0, c) · s = min(relu(z · s), c · s) per channel
            shape = [1] * len(shape_of(pair.clip))
            shape[first.output_channel_axis] = -1
            bounds[pair.clip] = (_relu6_bound(view.value[pair.clip]) / scales).reshape(shape).astype(np.float32)
    weights = {var: w.astype(np.float32) for var, w in weights.items()}
    return _with_constants(mod, view, weights, bounds) if weights else mod


def _with_constants(mod: tvm.IRModule, view: FunctionView, new: dict, bounds: dict) -> tvm.IRModule:
    """`mod` with the constant operand of each binding in `new` replaced, and each clip(x, 0, c)
    of `bounds` become minimum(relu(x), bound) (vars unchanged)."""

    @relax.expr_functor.mutator
    class Replace(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            var = binding.var
            call = binding.value
            if var in bounds:
                relu = self.builder_.emit(relax.op.nn.relu(self.visit_expr(call.args[0])), f"{var.name}_relu")
                value = self.builder_.normalize(relax.op.minimum(relu, const(bounds[var])))
                self.builder_.emit_normalized(relax.VarBinding(var, value))
                return
            if var not in new:
                return super().visit_var_binding_(binding)
            args = [self.visit_expr(a) for a in call.args]
            if op_name(call) in _LAYERS:
                args[1] = const(new[var])
            else:  # the bias add: replace its constant operand
                index = view.constant_index(var)
                args[index] = const(new[var].reshape(view.constant(call.args[index]).shape))
            value = self.builder_.normalize(relax.Call(call.op, args, call.attrs, call.ty_args))
            self.builder_.emit_normalized(relax.VarBinding(var, value))

    return with_main(mod, Replace(mod).visit_expr(mod["main"]))
