"""ONNX Resize (opset 11 and newer) computed as ONNX specifies it, one axis at a time.

Resize is separable. Along one resized axis of input length `n_in`, output position y reads
the input at the source coordinate x(y) given by `coordinate_transformation_mode` and the
axis's scale s (the `scales` entry, or out / n_in when `sizes` is given):

  half_pixel            x = (y + 0.5) / s − 0.5
  half_pixel_symmetric  x = n_in/2 · (1 − n_out / (s·n_in)) + (y + 0.5) / s − 0.5
  pytorch_half_pixel    x = (y + 0.5) / s − 0.5, or −0.5 when s·n_in = 1
  align_corners         x = y (n_in − 1) / (s·n_in − 1), or 0 when s·n_in = 1
  asymmetric            x = y / s
  tf_crop_and_resize    x = start (n_in − 1) + y (end − start)(n_in − 1) / (s·n_in − 1) from the roi,
                        and `extrapolation_value` where x falls outside [0, n_in − 1]

and takes `taps` neighbours of x (2 for nearest and linear, 4 for cubic, 2⌈1/s⌉ and 4⌈1/s⌉ when
antialiasing a downscale), edge-clamped, weighted by the mode's coefficients of the fraction
r = x − ⌊x⌋ (r = 1 when x is an integer): nearest picks one by `nearest_mode`, linear
(1 − r, r), cubic Keys' kernel with `cubic_coeff_a`, antialiasing the kernel stretched by 1/s
and normalized; `exclude_outside` zeroes the weights of taps outside the input and renormalizes.

The taps are compile-time tables (`axis_taps`: index and weight per output position, the
formulas of ONNX's reference implementation), so every mode, scale and `axes` / `roi` /
`keep_aspect_ratio_policy` combination is one gather and one weighted sum per axis; integer
inputs are rounded half to even and saturated as ONNX's reference casts back. TVM's own
resize2d (faster: one fused kernel) is kept where it computes the same thing (`tvm_computes`):
4-D NCHW inputs resized in H and W whose output sizes are exactly scale × input, without
antialiasing a downscale, `axes` or an aspect-ratio policy. TVM's converter uses out / in as
the scale, so a scale of 0.6 on 4 pixels (2 out, ratio 0.5) is computed wrongly there; and
it has no half_pixel_symmetric, antialias or `axes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from tvm import relax

from .errors import QCompilerError
from .passes.graph import Constant, const, constant_value, shape_of

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
MODES = ("nearest", "linear", "cubic")


@dataclass(frozen=True)
class ResizeAttrs:
    """Resize's attributes (ONNX defaults)."""

    mode: str = "nearest"
    coordinate_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0
    antialias: bool = False
    keep_aspect_ratio_policy: str = "stretch"
    axes: tuple[int, ...] | None = None

    @classmethod
    def from_onnx(cls, attrs: Mapping[str, object], rank: int) -> "ResizeAttrs":
        def text(key: str, default: str) -> str:
            value = attrs.get(key, default)
            return value.decode() if isinstance(value, bytes) else str(value)

        axes = attrs.get("axes")
        parsed = cls(
            mode=text("mode", "nearest"),
            coordinate_mode=text("coordinate_transformation_mode", "half_pixel"),
            nearest_mode=text("nearest_mode", "round_prefer_floor"),
            cubic_coeff_a=float(attrs.get("cubic_coeff_a", -0.75)),
            exclude_outside=bool(attrs.get("exclude_outside", 0)),
            extrapolation_value=float(attrs.get("extrapolation_value", 0.0)),
            antialias=bool(attrs.get("antialias", 0)),
            keep_aspect_ratio_policy=text("keep_aspect_ratio_policy", "stretch"),
            axes=None if axes is None else tuple(int(a) % rank for a in axes),
        )
        for value, allowed, what in ((parsed.mode, MODES, "mode"),
                                     (parsed.coordinate_mode, COORDINATE_MODES, "coordinate_transformation_mode"),
                                     (parsed.nearest_mode, NEAREST_MODES, "nearest_mode"),
                                     (parsed.keep_aspect_ratio_policy, ("stretch", "not_larger", "not_smaller"),
                                      "keep_aspect_ratio_policy")):
            if value not in allowed:
                raise QCompilerError(f"Resize {what} {value!r} is not one of {', '.join(allowed)}")
        if parsed.antialias and parsed.mode == "nearest":
            raise QCompilerError("Resize antialias is defined for linear and cubic modes, not nearest")
        return parsed


@dataclass(frozen=True)
class AxisTaps:
    """Output position y of one axis reads input[index[y, t]] · weight[y, t], summed over t;
    positions where `extrapolated` is True are the extrapolation value instead."""

    index: np.ndarray  # [n_out, taps] int64, within [0, n_in)
    weight: np.ndarray  # [n_out, taps] float64
    extrapolated: np.ndarray | None  # [n_out] bool, only for tf_crop_and_resize


def output_geometry(shape: Sequence[int], attrs: ResizeAttrs, scales: np.ndarray | None,
                    sizes: np.ndarray | None) -> tuple[list[float], list[int]]:
    """(scale per axis, output size per axis) as ONNX's reference derives them from `scales` or
    `sizes` (given for `attrs.axes` only, when set) and the aspect-ratio policy."""
    rank = len(shape)
    axes = list(attrs.axes) if attrs.axes is not None else list(range(rank))
    given = sizes if sizes is not None else scales
    if given is None:
        raise QCompilerError("Resize needs scales or sizes")
    if len(given) != len(axes):
        raise QCompilerError(f"Resize {'sizes' if sizes is not None else 'scales'} has {len(given)} values, expected "
                             f"{len(axes)} (one per resized axis)")
    if sizes is None:
        scale = [1.0] * rank
        for axis, value in zip(axes, scales):
            scale[axis] = float(value)
        if any(s <= 0 for s in scale):
            raise QCompilerError(f"Resize scales must be positive, got {[float(v) for v in scales]}")
        return scale, [int(np.floor(s * n)) for s, n in zip(scale, shape)]
    size = list(shape)
    for axis, value in zip(axes, sizes):
        size[axis] = int(value)
    if any(n <= 0 for n in size):
        raise QCompilerError(f"Resize sizes must be positive, got {[int(v) for v in sizes]}")
    scale = [out / n for out, n in zip(size, shape)]
    if attrs.keep_aspect_ratio_policy != "stretch":
        pick = min if attrs.keep_aspect_ratio_policy == "not_larger" else max
        common = pick(scale[axis] for axis in axes)
        scale = [common if axis in axes else 1.0 for axis in range(rank)]
        size = [int(common * n + 0.5) if axis in axes else n for axis, n in enumerate(shape)]
    return scale, size


def source_coordinates(attrs: ResizeAttrs, n_in: int, n_out: int, scale: float,
                       roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """x(y) for y = 0 .. n_out − 1 (float64), and for tf_crop_and_resize which y extrapolate."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in  # the unrounded output length
    mode = attrs.coordinate_mode
    if mode == "align_corners":
        return (np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "pytorch_half_pixel":
        return (np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5, None
    start, end = roi if roi is not None else (0.0, 1.0)
    if width == 1:
        x = np.full(n_out, (end - start) * (n_in - 1) / 2)
    else:
        x = y * (end - start) * (n_in - 1) / (width - 1)
    x = x + start * (n_in - 1)
    return x, (x < 0) | (x > n_in - 1)


def _coefficients(attrs: ResizeAttrs, ratio: np.ndarray, scale: float) -> np.ndarray:
    """[n_out, taps] weights of the mode for fractions `ratio` in (0, 1]."""
    r = ratio[:, None]
    a = attrs.cubic_coeff_a
    if attrs.mode == "nearest":
        whole = ratio == 1.0
        right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                 "floor": np.zeros_like(whole), "ceil": np.ones_like(whole)}[attrs.nearest_mode] | whole
        return np.stack([~right, right], axis=1).astype(np.float64)
    if not attrs.antialias or scale >= 1.0:
        if attrs.mode == "linear":
            return np.concatenate([1 - r, r], axis=1)
        return np.concatenate([
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
            ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
        ], axis=1)
    if attrs.mode == "linear":
        start = int(np.floor(-1 / scale) + 1)
        offsets = np.arange(start, 2 - start, dtype=np.float64)
        kernel = np.clip(1 - np.abs((offsets[None, :] - r) * scale), 0, 1)
    else:
        start = int(np.floor(-2 / scale) + 1)
        offsets = np.arange(start, 2 - start, dtype=np.float64)
        x = np.abs(scale * (offsets[None, :] - r))
        kernel = np.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                          np.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, 0.0))
    return kernel / kernel.sum(axis=1, keepdims=True)


def axis_taps(attrs: ResizeAttrs, n_in: int, n_out: int, scale: float,
              roi: tuple[float, float] | None = None) -> AxisTaps:
    """The taps of one axis: ONNX's reference windows (the `taps` neighbours nearest x, ties to
    the smaller index, edge-clamped) and coefficients."""
    x, extrapolated = source_coordinates(attrs, n_in, n_out, scale, roi)
    floor = np.floor(x)
    ratio = np.where(x == floor, 1.0, x - floor)
    weight = _coefficients(attrs, ratio, scale)
    taps = weight.shape[1]
    pad = -(-taps // 2)
    padded = x + pad
    base = np.floor(padded)
    fraction = padded - base
    if taps % 2 == 0:
        offset = np.where(fraction == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        offset = np.where(fraction <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    index = (base + offset).astype(np.int64)[:, None] + np.arange(taps)[None, :] - pad
    if attrs.exclude_outside:
        weight = np.where((index < 0) | (index >= n_in), 0.0, weight)
        total = weight.sum(axis=1, keepdims=True)
        weight = weight / np.where(total == 0, 1.0, total)
    index = np.clip(index, 0, n_in - 1)
    if attrs.mode == "nearest":  # one tap: the one whose weight is 1
        chosen = np.argmax(weight, axis=1)
        index = index[np.arange(n_out), chosen][:, None]
        weight = np.ones((n_out, 1))
    return AxisTaps(index, weight, extrapolated)


def tvm_computes(shape: Sequence[int], attrs: ResizeAttrs, scale: Sequence[float], size: Sequence[int],
                 used_scales: bool) -> bool:
    """True where TVM's resize2d computes ONNX's result (see the module docstring)."""
    if len(shape) != 4 or attrs.axes is not None or attrs.keep_aspect_ratio_policy != "stretch":
        return False
    if attrs.coordinate_mode == "half_pixel_symmetric" or (attrs.antialias and min(scale[2:]) < 1.0):
        return False
    if list(size[:2]) != list(shape[:2]) or min(size[2:]) < 2:
        return False
    return not used_scales or all(out == s * n for out, s, n in zip(size[2:], scale[2:], shape[2:]))


def _constant(value, what: str) -> np.ndarray | None:
    """The numpy value of an optional constant input; a non-constant one is refused."""
    if value is None:
        return None
    if isinstance(value, Constant):
        array = constant_value(value)
        return array if array.size else None
    if isinstance(value, relax.ShapeExpr):
        return np.array([int(v) for v in value.values])
    raise QCompilerError(f"Resize {what} is computed at run time; it must be known at compile time (an "
                         f"initializer, or a graph input fixed with --constant-input NAME=FILE.npy)")


def convert_resize(bb: relax.BlockBuilder, inputs: Sequence, attrs: Mapping[str, object]) -> relax.Expr | None:
    """Resize (opset ≥ 11: X, roi, scales, sizes) as gathers and weighted sums, or None where
    TVM's converter computes the same (`tvm_computes`)."""
    x = inputs[0]
    shape = [int(d) for d in shape_of(x)]
    dtype = str(x.ty.dtype)
    rank = len(shape)
    parsed = ResizeAttrs.from_onnx(attrs, rank)
    roi = _constant(inputs[1] if len(inputs) > 1 else None, "roi")
    scales = _constant(inputs[2] if len(inputs) > 2 else None, "scales")
    sizes = _constant(inputs[3] if len(inputs) > 3 else None, "sizes")
    if scales is not None and sizes is not None:
        raise QCompilerError("Resize takes scales or sizes, not both")
    scale, size = output_geometry(shape, parsed, scales, sizes)
    if tvm_computes(shape, parsed, scale, size, sizes is None):
        return None
    if parsed.mode != "nearest" and not (dtype.startswith("float") or dtype.startswith("int")
                                         or dtype.startswith("uint")):
        raise QCompilerError(f"Resize {parsed.mode} of {dtype} is not supported (float and integer types are)")
    axes = list(parsed.axes) if parsed.axes is not None else list(range(rank))
    rois = _axis_rois(roi, axes) if parsed.coordinate_mode == "tf_crop_and_resize" else {}
    result = x
    for axis in axes:
        if size[axis] == shape[axis] and scale[axis] == 1.0 and rois.get(axis, (0.0, 1.0)) == (0.0, 1.0):
            continue
        taps = axis_taps(parsed, shape[axis], size[axis], scale[axis], rois.get(axis))
        result = _resize_axis(bb, result, axis, taps, parsed)
    return result


def _axis_rois(roi: np.ndarray | None, axes: Sequence[int]) -> dict[int, tuple[float, float]]:
    """tf_crop_and_resize's roi ([starts..., ends...] over `axes`) per axis."""
    if roi is None:
        raise QCompilerError("Resize tf_crop_and_resize needs roi")
    count = len(axes)
    if roi.size != 2 * count:
        raise QCompilerError(f"Resize roi has {roi.size} values, expected {2 * count} (start and end per resized axis)")
    values = [float(v) for v in roi.reshape(-1)]
    return {axis: (values[i], values[count + i]) for i, axis in enumerate(axes)}


def _resize_axis(bb: relax.BlockBuilder, x: relax.Expr, axis: int, taps: AxisTaps, attrs: ResizeAttrs) -> relax.Expr:
    """One axis resized: gather the taps, weight and sum them (nearest: the gather alone)."""
    shape = [int(d) for d in shape_of(x)]
    dtype = str(x.ty.dtype)
    n_out, count = taps.index.shape
    gathered = bb.normalize(relax.op.take(x, const(taps.index.reshape(-1), "int64"), axis=axis))
    if attrs.mode == "nearest":
        result = gathered
    else:
        compute = "float64" if dtype == "float64" else "float32"
        widened = gathered if dtype == compute else bb.normalize(relax.op.astype(gathered, compute))
        split = shape[:axis] + [n_out, count] + shape[axis + 1:]
        weight_shape = [n_out, count] + [1] * (len(shape) - axis - 1)
        weighted = relax.op.multiply(bb.normalize(relax.op.reshape(widened, split)),
                                     const(taps.weight.reshape(weight_shape), compute))
        result = bb.normalize(relax.op.sum(bb.normalize(weighted), axis=[axis + 1]))
        if dtype != compute:
            result = _cast_back(bb, result, dtype)
    if taps.extrapolated is not None and taps.extrapolated.any():
        mask_shape = [n_out] + [1] * (len(shape) - axis - 1)
        mask = const(taps.extrapolated.reshape(mask_shape), "bool")
        fill = const(np.array(attrs.extrapolation_value), dtype)
        result = bb.normalize(relax.op.where(mask, fill, result))
    return result


def _cast_back(bb: relax.BlockBuilder, value: relax.Expr, dtype: str) -> relax.Expr:
    """float32 → `dtype` as ONNX's reference casts: integers rounded half to even, then saturated."""
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        return bb.normalize(relax.op.astype(value, dtype))
    info = np.iinfo(np.dtype(dtype))
    clipped = relax.op.clip(relax.op.round(value), float(info.min), float(info.max))
    return bb.normalize(relax.op.astype(bb.normalize(clipped), dtype))
