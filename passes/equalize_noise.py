"""equalize_noise: keep only the equalizations that lower the predicted quantization noise.

Cross-layer equalization (passes/equalize.py) evens out per-tensor weight ranges. With
per-channel weights, dividing W1's output channel c by s_c leaves that row's rounding error
unchanged relative to the row; what moves is the activation x between the layers (one
per-tensor scale for channels whose ranges are now divided by different s_c) and W2's per-row
ranges. Whether a pair's rescaling helps therefore depends on the data. For each pair this
module predicts the noise power at the second layer's output with and without its scales,
rounding to a step Δ taken as independent uniform noise of power Δ²/12:

  activation    (Δ_x² / 12) · Σ_c G_c                        G_c = Σ_{o, taps} W2[o, c, taps]²
  W2's weights  Σ_o (Δ_o² / 12) · taps · Σ_{c ∈ group(o)} E[x_c²]
  W1's weights  Σ_c G_c · (Δ1_c² / 12) · taps1 · Σ_{i ∈ group(c)} E[u_i²]

with x_c → x_c / s_c, Δ_x = the range of x over all its channels / the activation levels,
Δ_o = max |W2[o]| / 127 per output channel (or max |W2| per tensor), likewise Δ1_c for W1, u
the first layer's input, and every weight as the accepted scales leave it. Ranges and E[x²]
are measured per channel on calibration samples. Pairs are decided in graph order, each given
the decisions before it; a pair's scales are kept where they lower the sum by more than
`MIN_GAIN_DB`: the model is a rough guide (ranges from a few samples, uniform independent
rounding, no clipping), and a rescaling that it rates as a small gain can lose as much. On
EfficientNet-Lite0's one project → expand pair (per-channel weights) a predicted gain of 0.5 dB
measured a loss of 0.4 dB in the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .equalize import Pair, per_output
from .graph import FunctionView, expose
from .qconfig import ActivationDType

WEIGHT_LEVELS = 127.0  # int8 symmetric weights: max |w| / 127
MIN_GAIN_DB = 1.0  # the predicted noise reduction a pair's rescaling must reach to be kept


@dataclass
class ChannelStats:
    """Per-channel min, max and mean square of one tensor over calibration samples."""

    low: np.ndarray
    high: np.ndarray
    power: np.ndarray

    def divided(self, scales: np.ndarray) -> "ChannelStats":
        """The statistics of x_c / scales[c]."""
        return ChannelStats(self.low / scales, self.high / scales, self.power / scales**2)

    def step(self, dtype: ActivationDType) -> float:
        """The per-tensor quantization step covering every channel's range (zero included)."""
        low, high = min(float(self.low.min()), 0.0), max(float(self.high.max()), 0.0)
        if dtype is ActivationDType.INT8:
            return max(-low, high) / 127.0
        return (high - low) / 255.0


def _data_input(view: FunctionView, layer) -> tuple:
    """(the layer's data input var, its channel axis)."""
    data = view.value[layer.var].args[0]
    return data, (-1 if layer.weight.ndim == 2 else layer.output_channel_axis)


def measure(mod: tvm.IRModule, pairs: list[Pair], samples: list, target: tvm.target.Target) -> dict:
    """ChannelStats of each pair's middle tensor and first layer's input, by var, over `samples`
    (each a list of the model's inputs in order)."""
    from .calibrate import host_runner

    view = FunctionView(mod["main"])
    axes: dict = {}
    for pair in pairs:
        axes[pair.middle] = _data_input(view, pair.second)[1]
        data, axis = _data_input(view, pair.first)
        axes[data] = axis
    tensors = list(axes)
    run = host_runner(expose(mod, tensors), target)
    sums: dict = {}
    for sample in samples:
        for var, value in zip(tensors, run(sample)[-len(tensors):]):
            rows = np.moveaxis(np.asarray(value, np.float64), axes[var], -1).reshape(-1, value.shape[axes[var]])
            low, high, square, count = sums.get(var, (np.inf, -np.inf, 0.0, 0))
            sums[var] = (np.minimum(low, rows.min(axis=0)), np.maximum(high, rows.max(axis=0)),
                         square + (rows**2).sum(axis=0), count + rows.shape[0])
    return {var: ChannelStats(low, high, square / count) for var, (low, high, square, count) in sums.items()}


def _canonical(layer, weight: np.ndarray) -> np.ndarray:
    """The weight as [output channels, input channels per group, taps]."""
    w = np.moveaxis(np.asarray(weight, np.float64), (layer.out_axis, layer.in_axis), (0, 1))
    return w.reshape(w.shape[0], w.shape[1], -1)


def _per_input(values: np.ndarray, groups: int) -> np.ndarray:
    """[outputs, inputs per group] summed over each group's outputs: one value per input channel."""
    outputs, per_group = values.shape
    return values.reshape(groups, outputs // groups, per_group).sum(axis=1).reshape(-1)


def _weight_steps(w: np.ndarray, per_channel: bool) -> np.ndarray:
    peak = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return (peak if per_channel else np.full_like(peak, peak.max())) / WEIGHT_LEVELS


class _Predictor:
    def __init__(self, mod: tvm.IRModule, pairs: list[Pair], stats: dict, per_channel: bool, dtype: ActivationDType):
        self.view = FunctionView(mod["main"])
        self.pairs, self.stats, self.per_channel, self.dtype = pairs, stats, per_channel, dtype
        self.as_first = {pair.first.var: i for i, pair in enumerate(pairs)}
        self.as_second = {pair.second.var: i for i, pair in enumerate(pairs)}

    def weight(self, layer, flags: list[bool]) -> np.ndarray:
        """The layer's canonical weight with the accepted pairs' scales applied."""
        w = _canonical(layer, layer.weight)
        first, second = self.as_first.get(layer.var), self.as_second.get(layer.var)
        if first is not None and flags[first]:
            w = w / self.pairs[first].scales[:, None, None]
        if second is not None and flags[second]:
            w = w * per_output(self.pairs[second].scales, w.shape[0], layer.groups)[:, :, None]
        return w

    def input_stats(self, layer, flags: list[bool]) -> ChannelStats:
        stats = self.stats[_data_input(self.view, layer)[0]]
        second = self.as_second.get(layer.var)
        return stats.divided(self.pairs[second].scales) if second is not None and flags[second] else stats

    def noise(self, index: int, flags: list[bool]) -> float:
        """Predicted noise power at pair `index`'s second layer output (the module docstring)."""
        pair = self.pairs[index]
        x = self.input_stats(pair.second, flags)
        w2 = self.weight(pair.second, flags)
        outputs, _, taps = w2.shape
        gain = _per_input((w2**2).sum(axis=2), pair.second.groups)  # G_c
        activation = x.step(self.dtype) ** 2 / 12 * gain.sum()
        x_power = per_output(x.power, outputs, pair.second.groups).sum(axis=1)
        second = np.sum(_weight_steps(w2, self.per_channel) ** 2 / 12 * taps * x_power)
        w1 = self.weight(pair.first, flags)
        u = self.input_stats(pair.first, flags)
        u_power = per_output(u.power, w1.shape[0], pair.first.groups).sum(axis=1)
        first = np.sum(gain * _weight_steps(w1, self.per_channel) ** 2 / 12 * w1.shape[2] * u_power)
        return float(activation + second + first)


def choose(mod: tvm.IRModule, pairs: list[Pair], stats: dict, per_channel: bool,
           dtype: ActivationDType) -> list[bool]:
    """Per pair (in order), whether its scales lower the predicted noise (the module docstring)."""
    predictor = _Predictor(mod, pairs, stats, per_channel, dtype)
    flags = [False] * len(pairs)
    for index in range(len(pairs)):
        without = predictor.noise(index, flags)
        flags[index] = True
        flags[index] = predictor.noise(index, flags) < without * 10 ** (-MIN_GAIN_DB / 10)
    return flags
