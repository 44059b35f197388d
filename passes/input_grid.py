"""input_grid: a model input that carries 8-bit data, quantized without loss.

An image decoded to 8 bits and normalized per channel, x_c = (p/255 − mean_c) / std_c with
p ∈ {0, …, 255}, lies on a grid per channel: x = origin_c + step_c · k, k an integer in
[0, 255]. One per-tensor uint8 scale cannot land on three grids with different steps and
offsets, so quantizing x re-rounds every pixel by up to half a step, noise the network then
amplifies (on EfficientNet-Lite0 with ImageNet normalization, the input's quantization alone
brings the logits' SQNR to 24 dB). Where the calibration samples of a float input lie on such
a grid (`detect_grid`, along the axis that becomes the convolution's channels: 1 for NCHW, 3
for an NHWC input transposed on its way, `grid_channel_axis`) and the input feeds one 2-D
convolution (groups 1) alone, `align_grid` rewrites the graph so that the quantized tensor is
the grid index itself, exactly in fp32:

    conv(x, W, padding P) + b  =  conv(u, W', padding 0) + b'
    u  = (pad(x, P, 0) − origin) / step − 128   the grid index k − 128 on real values
    W' = W · step                                per input channel
    b' = b + Σ_{taps, c} W[·, taps, c] · (origin_c + 128 · step_c)

u quantized as uint8 with scale 1 and zero point 128 (calibration range `GRID_RANGE`) is exact
on every real value; only the padding ring, where u = −origin/step − 128, is rounded. Centring
u on 0 keeps the weights' rounding error from meeting a large mean (pixel indices average ~128),
which would shift every output channel. The pad and the per-channel multiply-add run in float
on the input, fused with its quantization. Inputs whose values are not on a grid of at most 256
levels (random data, 16-bit images, resized in float) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .graph import FunctionView, conv_channel_axis, const, op_name, shape_of, with_main

LEVELS = 256
CENTRE = LEVELS // 2
GRID_RANGE = (float(-CENTRE), float(LEVELS - 1 - CENTRE))  # u's calibration range: uint8 scale 1, zero point 128
# |k − round(k)| allowed for a value's grid index k (float32 preprocessing rounds values by ~1e-7).
INDEX_TOLERANCE = 1e-3
# Calibration samples the grid is detected on.
DETECTION_SAMPLES = 32


@dataclass(frozen=True)
class InputGrid:
    """Model input `name`'s values lie on origin[c] + step[c] · k, k ∈ {0, …, 255}, per index c
    of `axis`."""

    name: str
    axis: int
    origin: tuple[float, ...]
    step: tuple[float, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "axis": self.axis, "origin": list(self.origin), "step": list(self.step)}

    @classmethod
    def from_json(cls, payload: dict) -> "InputGrid":
        return cls(str(payload["name"]), int(payload["axis"]), tuple(map(float, payload["origin"])),
                   tuple(map(float, payload["step"])))


def detect_grid(name: str, arrays: list[np.ndarray], axis: int = 1) -> InputGrid | None:
    """The grid of input `name` on its samples `arrays` (channels along `axis`), or None where a
    channel has one value, more than 256, or values off a common step. The 256-level window is
    centred on the values seen, so values a few levels beyond them still fit."""
    if not arrays or any(a.dtype.kind != "f" or a.ndim <= axis for a in arrays):
        return None
    data = np.concatenate([np.moveaxis(np.asarray(a), axis, 0).reshape(a.shape[axis], -1) for a in arrays], axis=1)
    origins, steps = [], []
    for row in data:
        values = np.unique(row.astype(np.float64))
        if not 2 <= values.size <= LEVELS or not np.all(np.isfinite(values)):
            return None
        # Each value's index on the smallest difference, then the step and origin fitted to all of
        # them (one float32 difference is off by ~1e-5 of a step: too much over 255 steps).
        index = np.round((values - values[0]) / np.diff(values).min())
        if index[-1] > LEVELS - 1:
            return None
        step, first = np.polyfit(index, values, 1)
        if np.abs((values - first) / step - index).max() > INDEX_TOLERANCE:
            return None
        span = int(index[-1])
        origins.append(float(first) - ((LEVELS - 1 - span) // 2) * float(step))
        steps.append(float(step))
    return InputGrid(name, axis, tuple(origins), tuple(steps))


def _feeding_conv(view: FunctionView, param: relax.Var):
    """(the conv's data tensor, the conv, the permutation between: axis i of the data tensor is
    axis axes[i] of `param`) where `param` feeds one 2-D convolution with groups 1 alone,
    directly or through permute_dims (an NHWC model's Transpose, channels_last's transform);
    else None."""
    tensor, axes = param, None
    user = view.single_user(tensor)
    value = view.value.get(user)
    while op_name(value) == "relax.permute_dims" and value.attrs.axes is not None:
        step = [int(a) for a in value.attrs.axes]
        axes = [axes[a] for a in step] if axes is not None else step
        tensor = user
        user = view.single_user(tensor)
        value = view.value.get(user)
    if op_name(value) != "relax.nn.conv2d" or not value.args[0].same_as(tensor) or int(value.attrs.groups) != 1:
        return None
    return tensor, user, axes


def grid_channel_axis(mod: tvm.IRModule, name: str) -> int | None:
    """The axis of input `name` that becomes the channel axis of the convolution it alone feeds
    (1 for NCHW, 3 for an NHWC input), or None where it feeds anything else."""
    view = FunctionView(mod["main"])
    param = next((p for p in mod["main"].params if p.name == name), None)
    found = _feeding_conv(view, param) if param is not None else None
    if found is None:
        return None
    _, conv, axes = found
    axis = conv_channel_axis(view.value[conv])
    return None if axis is None else (axes[axis] if axes is not None else axis)


def align_grid(mod: tvm.IRModule, grid: InputGrid) -> tuple[tvm.IRModule, relax.Var | None]:
    """`mod` rewritten so that the grid index u of input `grid.name` feeds its convolution (see
    the module docstring), and u's var; (`mod`, None) where the input is used otherwise."""
    view = FunctionView(mod["main"])
    param = next((p for p in mod["main"].params if p.name == grid.name), None)
    found = _feeding_conv(view, param) if param is not None else None
    if found is None:
        return mod, None
    tensor, user, axes = found
    value = view.value[user]
    out_axis = conv_channel_axis(value)
    channel_axis = axes.index(grid.axis) if axes is not None else grid.axis
    weight = view.constant(value.args[1])
    layout = str(value.attrs.kernel_layout)
    if out_axis is None or weight is None or weight.dtype != np.float32 or channel_axis != out_axis:
        return mod, None
    in_axis = 3 if layout == "OHWI" else 1
    if weight.shape[in_axis] != len(grid.step):
        return mod, None
    conv, rank = user, len(shape_of(tensor))
    shape = [1] * rank
    shape[channel_axis] = -1
    step, origin = np.asarray(grid.step, np.float64), np.asarray(grid.origin, np.float64)
    w_shape = [1] * weight.ndim
    w_shape[in_axis] = -1
    aligned_weight = (weight.astype(np.float64) * step.reshape(w_shape)).astype(np.float32)
    centre = origin + CENTRE * step  # the real value u = 0 stands for
    offset = (weight.astype(np.float64) * centre.reshape(w_shape)).reshape(weight.shape[0], -1).sum(axis=1)
    bias_add = view.single_user(conv)
    bias = None
    if op_name(view.value.get(bias_add)) == "relax.add":
        bias = view.other_constant(bias_add, conv)
        if bias is not None and bias.size != offset.size:
            bias = None
    out_shape = [1] * len(shape_of(conv))
    out_shape[out_axis] = -1
    top, left, bottom, right = (int(p) for p in value.attrs.padding)
    pad_width = [0] * (2 * rank)
    spatial = [a for a in range(rank) if a not in (0, channel_axis)]
    pad_width[2 * spatial[0]:2 * spatial[0] + 2] = [top, bottom]
    pad_width[2 * spatial[1]:2 * spatial[1] + 2] = [left, right]
    index_var: list = []

    @relax.expr_functor.mutator
    class Align(relax.PyExprMutator):
        def emit_index(self, source):
            data = source
            if any(pad_width):
                data = self.builder_.emit(relax.op.nn.pad(source, pad_width, pad_value=0.0), "grid_padded")
            scaled = self.builder_.emit(relax.op.multiply(data, const((1.0 / step).astype(np.float32).reshape(shape))))
            index_var.append(self.builder_.emit(
                relax.op.add(scaled, const((-centre / step).astype(np.float32).reshape(shape))), "grid_index"))

        def visit_var_binding_(self, binding):
            var, call = binding.var, binding.value
            if tensor is param and not index_var:
                self.emit_index(param)
            if var.same_as(conv):
                new = relax.op.nn.conv2d(index_var[0], const(aligned_weight), strides=value.attrs.strides,
                                         padding=[0, 0, 0, 0], dilation=value.attrs.dilation, groups=1,
                                         data_layout=value.attrs.data_layout, kernel_layout=layout,
                                         out_layout=value.attrs.out_layout, out_dtype=value.attrs.out_dtype)
                self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(new)))
                if bias is None:
                    shifted = relax.op.add(var, const(offset.astype(np.float32).reshape(out_shape)))
                    self.set_var_remap(var, self.builder_.emit(shifted, f"{var.name}_grid_offset"))
                return
            if bias is not None and var.same_as(bias_add):
                args = [self.visit_expr(a) for a in call.args]
                index = view.constant_index(var)
                args[index] = const((bias.astype(np.float64) + offset.reshape(bias.shape)).astype(np.float32))
                self.builder_.emit_normalized(relax.VarBinding(
                    var, self.builder_.normalize(relax.Call(call.op, args, call.attrs, call.ty_args))))
                return
            super().visit_var_binding_(binding)
            if var.same_as(tensor):
                self.emit_index(self.get_var_remap(var) or var)

    func = Align(mod).visit_expr(mod["main"])
    return with_main(mod, func), (index_var[0] if index_var else None)
