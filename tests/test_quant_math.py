"""Quantization arithmetic and calibrators against hand-computed values and known distributions."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from conftest import fma_float32

from qcompiler.passes.observers import (
    HistogramObserver,
    MinMaxObserver,
    entropy_threshold,
    mse_threshold,
    observed_range,
    percentile_range,
)
from qcompiler.passes.qconfig import (
    ActivationDType,
    CalibrationMethod,
    FallbackPrecision,
    QConfig,
    activation_qparams,
    quantize_weight,
    weight_scales,
)


def test_activation_qparams_hand_computed():
    p = activation_qparams(-1.0, 3.0, ActivationDType.UINT8)
    assert p.scale == pytest.approx(4.0 / 255) and p.zero_point == 64 and p.dtype == "uint8"
    p = activation_qparams(0.5, 2.0, ActivationDType.UINT8)  # widened to include 0
    assert p.scale == pytest.approx(2.0 / 255) and p.zero_point == 0
    p = activation_qparams(-2.54, 1.0, ActivationDType.INT8)
    assert p.scale == pytest.approx(2.54 / 127) and p.zero_point == 0 and p.dtype == "int8"
    assert list(p.quantize(np.array([-2.54, 0.0, 0.02, 100.0]))) == [-127, 0, 1, 127]


def test_weight_quantization_per_channel():
    w = np.array([[1.0, -2.0], [0.5, 0.25]])
    scales = weight_scales(w, axis=0)
    assert np.allclose(scales, [2.0 / 127, 0.5 / 127])
    assert quantize_weight(w, scales, axis=0).tolist() == [[64, -127], [127, 64]]
    assert np.allclose(weight_scales(w, None), [2.0 / 127])


@pytest.mark.parametrize("a,b,c", [
    (3.0, 1 / 3, 0.5),  # the product's rounding would decide: fma keeps it
    (16777215.0, 1.0000001, -0.25),
    (-12345.0, 0.1, 7.5),
    (2.0**-30, 3.0, 1.0),  # the addend dominates, the product below its last bit
    (5.0, 0.1, -0.5),
])
def test_fma_reference_is_correctly_rounded(a, b, c):
    """The tests' float32 fused multiply-add (conftest.fma_float32) against exact rational
    arithmetic rounded to float32 by hand (round half to even)."""
    a32, b32, c32 = (np.float32(v) for v in (a, b, c))
    exact = Fraction(float(a32)) * Fraction(float(b32)) + Fraction(float(c32))
    assert fma_float32(a32, b32, c32) == _round_to_float32(exact)


def _round_to_float32(value: Fraction) -> np.float32:
    """The float32 nearest `value` (ties to even), by integer arithmetic."""
    if value == 0:
        return np.float32(0.0)
    sign, value = (-1 if value < 0 else 1), abs(value)
    exponent = math.floor(math.log2(value))
    exponent += (value >= Fraction(2) ** (exponent + 1)) - (value < Fraction(2) ** exponent)
    unit = Fraction(2) ** (max(exponent, -126) - 23)  # the spacing of float32s around value
    steps, rest = divmod(value, unit)
    steps += rest > unit / 2 or (rest == unit / 2 and steps % 2 == 1)
    return np.float32(sign * float(steps * unit))


def test_minmax_observer():
    obs = MinMaxObserver()
    for chunk in (np.array([1.0, -2.0]), np.array([5.0]), np.array([])):
        obs.update(chunk)
    assert (obs.lo, obs.hi) == (-2.0, 5.0)
    assert observed_range(obs, QConfig(calibration=CalibrationMethod.MINMAX)) == (-2.0, 5.0)


def test_histogram_growth_preserves_counts_and_memory_is_bounded():
    rng = np.random.default_rng(0)
    obs = HistogramObserver(bins=512)
    obs.update(rng.uniform(-1, 1, 1000))
    size = obs.state_bytes()
    for scale in [1, 3, 10, 100]:
        obs.update(rng.uniform(-scale, scale, 1000))
    assert obs.counts.sum() == 5000
    assert obs.state_bytes() == size  # statistics do not grow with the number of samples
    assert obs.bound >= 100


def test_percentile_on_uniform():
    rng = np.random.default_rng(1)
    obs = HistogramObserver()
    for _ in range(20):
        obs.update(rng.uniform(-1, 1, 10000))
    lo, hi = percentile_range(obs, 99.0)
    # 99% of U(-1, 1) lies below 0.98 and above -0.98.
    assert hi == pytest.approx(0.98, abs=0.01) and lo == pytest.approx(-0.98, abs=0.01)
    assert percentile_range(obs, 100.0)[1] == pytest.approx(obs.hi)


def test_entropy_clips_outliers_of_a_gaussian():
    rng = np.random.default_rng(2)
    obs = HistogramObserver()
    x = rng.standard_normal(200000)
    x[:20] = 40.0  # rare outliers far away
    obs.update(x)
    threshold = entropy_threshold(obs, levels=128)
    assert 2.5 < threshold < 15.0  # far below the outliers, well above the bulk


def test_entropy_keeps_most_of_a_relu6_output():
    """ReLU6 outputs: mostly exact zeros, the rest spread up to 6. The zeros are exact at any
    threshold and must not decide it: they used to make the first candidate win, a quarter of
    the range (1.5), clipping a tenth of the nonzero values."""
    rng = np.random.default_rng(4)
    x = np.clip(rng.normal(-2.0, 1.5, 200000), 0.0, 6.0)  # 91% zeros
    obs = HistogramObserver()
    obs.update(x)
    threshold = entropy_threshold(obs, levels=256)
    assert threshold > 3.0 and np.mean(x[x > 0] > threshold) < 1e-3


def _entropy_threshold_by_chunks(obs: HistogramObserver, levels: int) -> float:
    """entropy_threshold written out with np.array_split, chunk by chunk (the reference)."""
    hist, width = obs.magnitude_histogram()
    hist = np.concatenate([[0], hist[1:]])
    best_i, best_kl = hist.size, np.inf
    for i in range(levels, hist.size + 1):
        reference = hist[:i].astype(np.float64).copy()
        reference[i - 1] += hist[i:].sum()
        expanded = [np.where(chunk > 0, chunk.sum() / max((chunk > 0).sum(), 1), 0.0)
                    for chunk in np.array_split(hist[:i].astype(np.float64), levels)]
        p, q = reference / reference.sum(), np.concatenate(expanded)
        q = q / q.sum()
        q = np.where((p > 0) & (q == 0), 1e-12, q)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


@pytest.mark.parametrize("levels", [128, 256])
def test_entropy_threshold_matches_the_chunked_reference(levels):
    rng = np.random.default_rng(levels)
    for values in (rng.laplace(0, 1, 50000), np.maximum(rng.normal(size=50000), 0), rng.standard_t(2, 50000),
                   np.round(rng.normal(size=50000) * 4) / 4):  # sparse: many empty bins
        obs = HistogramObserver()
        obs.update(values)
        assert entropy_threshold(obs, levels) == _entropy_threshold_by_chunks(obs, levels)


def test_mse_threshold():
    rng = np.random.default_rng(3)
    uniform = HistogramObserver()
    uniform.update(rng.uniform(-1, 1, 100000))
    assert mse_threshold(uniform, steps=127) == pytest.approx(1.0, abs=0.03)  # nothing worth clipping
    laplace = HistogramObserver()
    laplace.update(rng.laplace(0, 1, 100000))
    t = mse_threshold(laplace, steps=127)
    assert 3.0 < t < 0.8 * max(-laplace.lo, laplace.hi)  # clips the long tail


def test_one_sided_ranges_stay_one_sided():
    obs = HistogramObserver()
    obs.update(np.abs(np.random.default_rng(4).standard_normal(50000)))
    for method in CalibrationMethod:
        if method is CalibrationMethod.MINMAX:
            continue
        lo, hi = observed_range(obs, QConfig(calibration=method))
        assert lo >= 0 and 0 < hi <= obs.hi and math.isfinite(hi)


def test_qconfig_validation():
    with pytest.raises(ValueError):
        QConfig(percentile=30)
    with pytest.raises(ValueError):
        QConfig(histogram_bins=100)
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        QConfig(num_samples=0)
    with pytest.raises(ValueError, match="holdout must be"):
        QConfig(holdout=-1)
    with pytest.raises(ValueError, match="seed must be an integer from 0"):
        QConfig(seed=-1)
    # Enum fields take their values as strings too; anything else names the choices.
    config = QConfig(calibration="mse", activation_dtype="int8", fallback_precision="bf16")
    assert (config.calibration, config.activation_dtype, config.fallback_precision) == \
        (CalibrationMethod.MSE, ActivationDType.INT8, FallbackPrecision.BF16)
    with pytest.raises(ValueError, match=r"^fallback_precision must be one of fp32, bf16, fp16, got 'bf17'$"):
        QConfig(fallback_precision="bf17")
    with pytest.raises(ValueError, match=r"^calibration must be one of minmax, percentile, entropy, mse, got 'kl'$"):
        QConfig(calibration="kl")
