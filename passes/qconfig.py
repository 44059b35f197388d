"""Typed quantization configuration and the integer arithmetic every stage agrees on."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from qcompiler.errors import QCompilerError

# The quantization strategies (`--quantize`, `compile(quantize=...)`), each a pass sequence.
STRATEGIES = {
    "int8": "static: int8 weights and activations, activation ranges calibrated on samples (--calib)",
    "int8-dynamic": "int8 weights; activations quantized per row at run time, no calibration (matmul-heavy models)",
    "int8-weight-only": "int8 weights (matmuls, convolutions, embeddings), float compute, no calibration (for size)",
    "fp16": "float16 weights, convolution and matmul products on float16 operands, float32 sums; no calibration",
    "bf16": "bfloat16 weights, convolution and matmul products on bfloat16 operands (AVX-512 BF16), float32 sums; "
            "no calibration",
}
CALIBRATION_FREE_STRATEGIES = ("int8-dynamic", "int8-weight-only", "fp16", "bf16")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise QCompilerError(f"quantize={strategy!r} is not a strategy: expected one of: {', '.join(STRATEGIES)}")


class ActivationDType(enum.Enum):
    """uint8 asymmetric (zero point in [0, 255]) or int8 symmetric (zero point 0)."""

    UINT8 = "uint8"
    INT8 = "int8"


class FallbackPrecision(enum.Enum):
    """What the convolutions and matmuls kept out of int8 compute in: float32, or half-width
    products with float32 sums (passes/reduced_precision.py)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class CalibrationMethod(enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


@dataclass(frozen=True)
class QConfig:
    """What is quantized and how.

    Weights are always int8 symmetric (zero point 0, range [-127, 127]), per output channel
    unless `per_channel` is False. `skip_op_types` holds ONNX op types (e.g. "Gemm") and
    `skip_nodes` ONNX node names; skipped ops stay fp32. `num_samples` caps how many
    calibration samples are used (None: all); `holdout` samples at the end of the data are
    kept back for the report's SQNR measurements.

    Accuracy recovery, each off by default: `equalization` rescales consecutive convolutions
    through ReLU so their per-channel weight ranges even out, pair by pair where that lowers
    the predicted quantization noise (passes/equalize.py, passes/equalize_noise.py);
    `adaround` learns each weight's rounding direction on calibration data
    (passes/adaround.py, `seed` picks its input positions); `bias_correction` removes the mean shift
    that quantizing the weights and the input adds to each conv/matmul output
    (passes/bias_correction.py).

    `input_grid` (on by default, uint8 activations): a float input whose calibration values lie
    on an 8-bit grid per channel (images normalized per channel) and that feeds one convolution
    is quantized on that grid, without loss (passes/input_grid.py).

    `fallback_precision`: the convolutions (groups = 1) and matmuls with constant weights that
    stay out of int8 (skipped, kept in float by the accuracy search, or not quantizable) compute
    in float32, or with bf16 / fp16 weights and products and float32 sums, as
    `--quantize bf16` / `fp16` do (passes/reduced_precision.py); other float ops stay float32
    (as do all of them in the fake-quant build, `simulate`, and in export-qdq's ONNX model).
    """

    activation_dtype: ActivationDType = ActivationDType.UINT8
    per_channel: bool = True
    calibration: CalibrationMethod = CalibrationMethod.PERCENTILE
    percentile: float = 99.99
    histogram_bins: int = 2048
    num_samples: int | None = None
    holdout: int = 4
    skip_op_types: frozenset[str] = field(default_factory=frozenset)
    skip_nodes: frozenset[str] = field(default_factory=frozenset)
    equalization: bool = False
    adaround: bool = False
    bias_correction: bool = False
    input_grid: bool = True
    smoothing: bool = False
    seed: int = 0
    fallback_precision: FallbackPrecision = FallbackPrecision.FP32

    def __post_init__(self):
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.histogram_bins < 256 or self.histogram_bins % 2:
            raise ValueError(f"histogram_bins must be an even number >= 256, got {self.histogram_bins}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1 (or None for all samples), got {self.num_samples}")
        if self.holdout < 0:
            raise ValueError(f"holdout must be a number of samples >= 0, got {self.holdout}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        for name, kind in (("activation_dtype", ActivationDType), ("calibration", CalibrationMethod),
                           ("fallback_precision", FallbackPrecision)):
            value = getattr(self, name)
            if not isinstance(value, kind):  # the enum's value ("bf16") names it as well
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    choices = ", ".join(k.value for k in kind)
                    raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None
        object.__setattr__(self, "skip_op_types", frozenset(self.skip_op_types))
        object.__setattr__(self, "skip_nodes", frozenset(self.skip_nodes))

    def fingerprint(self) -> dict:
        """The fields that change calibration results (for the calibration cache)."""
        return {
            "activation_dtype": self.activation_dtype.value,
            "calibration": self.calibration.value,
            "percentile": self.percentile,
            "histogram_bins": self.histogram_bins,
            "num_samples": self.num_samples,
            "holdout": self.holdout,
            "equalization": self.equalization,
            "input_grid": self.input_grid,
            "smoothing": self.smoothing,
        }


@dataclass(frozen=True)
class QParams:
    """Affine quantization of one tensor: real = scale · (q − zero_point)."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" | "int8"

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """round-half-to-even(x / scale) + zero_point, saturated (as relax.quantize computes)."""
        q = np.round(np.asarray(x, np.float64) / self.scale) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


# A calibrated range narrower than this is a tensor that was zero (a dead branch's 1e-42s):
# its scale would be denormal in float32, and a bias over it beyond int32.
MIN_ACTIVATION_RANGE = 1e-30


def activation_qparams(lo: float, hi: float, dtype: ActivationDType) -> QParams:
    """Scale and zero point covering [lo, hi] (widened to include 0, as zero must be exact; a
    range narrower than MIN_ACTIVATION_RANGE is a zero tensor, scale 1).

    uint8: scale = (hi − lo) / 255, zero_point = round(−lo / scale);
    int8:  scale = max(|lo|, |hi|) / 127, zero_point = 0.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < MIN_ACTIVATION_RANGE:  # zero in calibration, up to float noise: any scale is exact
        lo = hi = 0.0
    if dtype is ActivationDType.INT8:
        bound = max(-lo, hi)
        scale = bound / 127.0 if bound > 0 else 1.0
        return QParams(scale, 0, "int8")
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(np.clip(round(-lo / scale), 0, 255))
    return QParams(scale, zero_point, "uint8")


GRID_TOLERANCE = 1e-3  # |w / s − round(w / s)| of a weight that is s times integers (float32 products)


def weight_scales(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """int8 symmetric weight scales: max |w| / 127 per channel along `axis` (or per tensor).

    A weight that already is one scale s times integers in [−127, 127] (an int8 model's weight
    dequantized by Cast+Mul or DequantizeLinear, then folded) keeps s in every channel, so its
    integers come back exactly: per channel, a channel whose largest integer is below 127 would
    get a finer grid that misses the original points. (A per-channel int8 weight whose channels
    reach ±127 comes back exactly from the per-channel maxima.)"""
    w = np.abs(np.asarray(weight, np.float64))
    peak = w.max() if w.size else 0.0
    if axis is None:
        bound = np.array([peak])
    else:
        bound = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(axis=1)
        if peak > 0 and on_int8_grid(w, peak / 127.0):
            bound = np.full_like(bound, peak)
    return np.where(bound > 0, bound / 127.0, 1.0)


def on_int8_grid(weight: np.ndarray, scale: float) -> bool:
    """Whether every element of `weight` is `scale` times an integer (up to GRID_TOLERANCE)."""
    steps = np.asarray(weight, np.float64) / scale
    return bool(np.abs(steps - np.round(steps)).max(initial=0.0) <= GRID_TOLERANCE)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    """round(w / scale) clipped to [-127, 127] as int8, scales broadcast along `axis`."""
    w = np.asarray(weight, np.float64)
    if axis is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        scales = scales.reshape(shape)
    return np.clip(np.round(w / scales), -127, 127).astype(np.int8)
