"""bias correction: remove the mean shift that weight rounding adds to each conv/matmul output.

With int8 weights w_q = s·q (q as quantized, or as AdaRound chose) and error ε = w_q − w, an
anchor's output moves by ε applied to its input. Its expectation over the calibration data is,
per output channel o (Nagel et al., "Data-Free Quantization", 2019, empirical form):

  matmul  y[n] = Σ_k x[k]·w[k, n]          E[Δy_n] = Σ_k E[x_k]·ε[k, n]
  conv    y[o] = Σ_{i,taps} x[i]·w[o,i,·]   E[Δy_o] = Σ_i E[x_{g(o)·I/g + i}]·Σ_taps ε[o, i, taps]

(g(o) the group of output channel o, I/g the input channels per group; E[x_i] the mean of input
channel i over all calibration samples and positions, zero padding at the borders ignored).
The correction subtracts E[Δy] from the anchor's bias, so the int8 output is unbiased on data
like the calibration data. It changes only the int32 offset realize adds anyway: no run time.
"""

from __future__ import annotations

import numpy as np

from .annotate import AnnotationPlan
from .qconfig import QConfig
from .simulate import quantized_weight


def input_channel_axes(plan: AnnotationPlan) -> dict[str, int]:
    """For each weighted anchor's input tensor: its observer key → its channel axis (the mean
    calibration must collect)."""
    axes = {}
    for op in plan.ops:
        if op.weight is None:
            continue
        axes[plan.keys[op.inputs[0]]] = _input_axis(op)
    return axes


def _input_axis(op) -> int:
    """Channel axis of the anchor's input: the last for matmul and NHWC conv, 1 for NCHW."""
    if op.op == "relax.matmul":
        return -1
    return 3 if op.kernel_layout == "OHWI" else 1


def _per_group_error(op, error: np.ndarray) -> np.ndarray:
    """Σ over kernel taps of the weight error, as [out channels, inputs per group]."""
    if op.op == "relax.matmul":
        return error.T  # [K, N] → [N, K]
    if op.kernel_layout == "OHWI":
        return error.sum(axis=(1, 2))
    return error.sum(axis=(2, 3))


def expected_output_shift(op, error: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """E[Δy] per output channel for weight error `error` and input channel means `input_mean`."""
    per_input = _per_group_error(op, np.asarray(error, np.float64))  # [O, I/g]
    outputs, per_group = per_input.shape
    groups = input_mean.size // per_group
    means = input_mean.reshape(groups, per_group)[np.arange(outputs) // (outputs // groups)]
    return np.sum(per_input * means, axis=1)


def bias_corrections(plan: AnnotationPlan, config: QConfig, channel_means: dict[str, np.ndarray],
                     int8_weights: dict | None = None) -> dict:
    """Per weighted anchor var: −E[Δy], the shift to add to its bias (simulate.Corrections.bias).
    `int8_weights` holds weights chosen otherwise than by rounding to nearest (AdaRound)."""
    int8_weights = int8_weights or {}
    shifts = {}
    for op in plan.ops:
        mean = channel_means.get(plan.keys[op.inputs[0]]) if op.weight is not None else None
        if mean is None:
            continue
        wq, scales = quantized_weight(op.weight, op.weight_axis, config.per_channel)
        wq = int8_weights.get(op.var, wq)
        shape = [1] * op.weight.ndim
        shape[op.weight_axis] = -1
        error = wq.astype(np.float64) * scales.reshape(shape) - op.weight
        shifts[op.var] = -expected_output_shift(op, error, mean)
    return shifts
