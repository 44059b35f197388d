"""bias correction: remove the mean shift that quantization adds to each conv/matmul output.

An anchor y = W·x (+ b) computes, in int8, W_q·qdq(x): W_q = s·q the int8 weight (as rounded,
or as AdaRound chose), qdq(x) its input quantized with the input's calibrated scale and zero
point (rounding, and clipping of the tails the calibration range cuts off). Its mean output
moves, per output channel o, by

  E[Δy_o] = Σ_i Σ_taps (W_q[o, i, taps]·E[qdq(x)_{g(o)·I/g + i}] − W[o, i, taps]·E[x_{g(o)·I/g + i}])

(g(o) the group of output channel o, I/g the input channels per group; for a matmul y[n] =
Σ_k x[k]·w[k, n] the same with k for i and no taps). E[x] and E[qdq(x)] are the means of input
channel i over calibration samples and positions, zero padding at the borders left out. This is
Nagel et al.'s empirical bias correction ("Data-Free Quantization", 2019) with the input's own
quantization included; each layer's estimate uses its fp32 input, so corrections do not
compound. The correction −E[Δy] joins the anchor's bias: it changes only the int32 offset
realize adds anyway, so it costs no run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .annotate import AnnotationPlan, QuantizedOp
from .qconfig import QConfig, QParams
from .simulate import quantized_weight


def input_channel_axis(op: QuantizedOp, rank: int) -> int:
    """Channel axis of the anchor's input: the last for matmul and NHWC conv, 1 for NCHW."""
    if op.op == "relax.matmul" or op.kernel_layout == "OHWI":
        return rank - 1
    return 1


@dataclass
class InputMeans:
    """Running per-channel sums of each anchor's input x and of qdq(x)."""

    sums: dict = field(default_factory=dict)  # anchor var → (Σ x, Σ qdq(x), count)

    def update(self, op: QuantizedOp, x: np.ndarray, params: QParams) -> None:
        axis = input_channel_axis(op, x.ndim)
        rows = np.moveaxis(np.asarray(x, np.float64), axis, -1).reshape(-1, x.shape[axis])
        dequantized = (params.quantize(rows).astype(np.float64) - params.zero_point) * params.scale
        total, total_q, count = self.sums.get(op.var, (0.0, 0.0, 0))
        self.sums[op.var] = (total + rows.sum(axis=0), total_q + dequantized.sum(axis=0), count + rows.shape[0])

    def means(self, op: QuantizedOp) -> tuple[np.ndarray, np.ndarray] | None:
        if op.var not in self.sums:
            return None
        total, total_q, count = self.sums[op.var]
        return total / count, total_q / count


def _taps_summed(op: QuantizedOp, weight: np.ndarray) -> np.ndarray:
    """The weight summed over kernel taps, as [out channels, inputs per group]."""
    if op.op == "relax.matmul":
        return weight.T  # [K, N] → [N, K]
    if op.kernel_layout == "OHWI":
        return weight.sum(axis=(1, 2))
    return weight.sum(axis=(2, 3))


def expected_output(op: QuantizedOp, weight: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """Σ_i Σ_taps weight[o, i, taps]·E[x_i] per output channel o: the mean output, bias and
    padding aside."""
    per_input = _taps_summed(op, np.asarray(weight, np.float64))  # [O, I/g]
    outputs, per_group = per_input.shape
    groups = input_mean.size // per_group
    means = input_mean.reshape(groups, per_group)[np.arange(outputs) // (outputs // groups)]
    return np.sum(per_input * means, axis=1)


def bias_corrections(plan: AnnotationPlan, config: QConfig, means: InputMeans, int8_weights: dict | None = None) -> dict:
    """Per weighted anchor var: −E[Δy], the shift to add to its bias (simulate.Corrections.bias)."""
    int8_weights = int8_weights or {}
    shifts = {}
    for op in plan.ops:
        measured = means.means(op) if op.weight is not None else None
        if measured is None:
            continue
        mean_x, mean_qdq_x = measured
        wq, scales = quantized_weight(op.weight, op.weight_axis, config.per_channel)
        wq = int8_weights.get(op.var, wq)
        shape = [1] * op.weight.ndim
        shape[op.weight_axis] = -1
        dequantized = wq.astype(np.float64) * scales.reshape(shape)
        shifts[op.var] = expected_output(op, op.weight, mean_x) - expected_output(op, dequantized, mean_qdq_x)
    return shifts
