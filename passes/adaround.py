"""adaround: learn whether each int8 weight rounds up or down (Nagel et al., "Up or Down?
Adaptive Rounding for Post-Training Quantization", 2020), in numpy, layer by layer.

Per conv / matmul anchor with weight rows W [O, K] (per group), scales s [O] and input rows X
[R, K] (patches of the layer's fp32 input on calibration samples, R ≤ ROWS), the int8 weight is
floor(W / s) + h(V) with h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1, and V
minimises

  ‖X (W − s·(floor(W/s) + h(V)))ᵀ‖² / R  +  λ Σ (1 − |2h(V) − 1|^β)

by Adam (learning rate 0.01, ITERATIONS steps; β anneals from 20 to 2 after a 20% warm start
without the regulariser, which pushes every h to 0 or 1). V starts where h equals the
fractional part (rounding to nearest is the start), and the result rounds h at ½. The rows
sampled are chosen by `seed`: the same seed gives the same weights. Time is bounded by
ROWS × ITERATIONS per layer.
"""

from __future__ import annotations

import numpy as np

from .annotate import AnnotationPlan, QuantizedOp
from .qconfig import QConfig
from .simulate import quantized_weight

ZETA, GAMMA = 1.1, -0.1
ROWS = 512
ITERATIONS = 200
REGULARIZATION = 0.01


def _rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h(V) and dh/dV."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    return np.clip(raw, 0.0, 1.0), np.where((raw > 0) & (raw < 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)


def round_adaptively(x: np.ndarray, w: np.ndarray, scales: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """int8 rows for weights `w` [G, O, K] with `scales` [G, O] given inputs `x` [G, R, K]."""
    steps = w / scales[..., None]
    floor = np.floor(steps)
    frac = np.clip(steps - floor, 0.01, 0.99)
    v = -np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)  # h(v) = frac
    m = np.zeros_like(v)
    u = np.zeros_like(v)
    rows = x.shape[1]
    warm = iterations // 5
    for step in range(iterations):
        h, dh = _rectified_sigmoid(v)
        error = w - scales[..., None] * (floor + h)  # [G, O, K]
        residual = x @ np.swapaxes(error, 1, 2)  # [G, R, O] (batched BLAS products, not einsum's loops)
        grad_h = -2.0 / rows * (np.swapaxes(residual, 1, 2) @ x) * scales[..., None]
        if step >= warm:
            beta = 20.0 - (20.0 - 2.0) * (step - warm) / max(iterations - warm - 1, 1)
            centred = 2 * h - 1
            grad_h += REGULARIZATION * -beta * np.abs(centred) ** (beta - 1) * np.sign(centred) * 2
        grad = grad_h * dh
        m = 0.9 * m + 0.1 * grad
        u = 0.999 * u + 0.001 * grad * grad
        v -= 0.01 * (m / (1 - 0.9 ** (step + 1))) / (np.sqrt(u / (1 - 0.999 ** (step + 1))) + 1e-8)
    h, _ = _rectified_sigmoid(v)
    return np.clip(floor + (h >= 0.5), -127, 127)


def _rows(op: QuantizedOp) -> tuple[np.ndarray, int]:
    """The weight as [G, O/G, K] rows (K in the order patches are taken) and G."""
    w = op.weight.astype(np.float64)
    if op.op == "relax.matmul":
        return w.T[None], 1
    if op.kernel_layout == "OIHW":
        w = np.transpose(w, (0, 2, 3, 1))  # → OHWI
    outputs = w.shape[0]
    groups = op.groups
    return w.reshape(groups, outputs // groups, -1), groups


def input_rows(op: QuantizedOp, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` rows of the layer's input `x` as the weight rows see them, [G, count, K]:
    matmul rows, or conv patches (taps × input channels of each group) at random output positions."""
    if op.op == "relax.matmul":
        flat = x.reshape(-1, x.shape[-1])
        return flat[rng.integers(0, flat.shape[0], count)][None]
    nhwc = x if op.kernel_layout == "OHWI" else np.transpose(x, (0, 2, 3, 1))
    (sh, sw), (dh, dw), (top, left, bottom, right) = op.conv_geometry
    kh, kw = op.weight.shape[1:3] if op.kernel_layout == "OHWI" else op.weight.shape[2:4]
    padded = np.pad(nhwc, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
    n = rng.integers(0, nhwc.shape[0], count)
    oh, ow = rng.integers(0, out_h, count), rng.integers(0, out_w, count)
    rows_h = oh[:, None] * sh + np.arange(kh)[None] * dh  # [count, kh]
    rows_w = ow[:, None] * sw + np.arange(kw)[None] * dw
    patches = padded[n[:, None, None], rows_h[:, :, None], rows_w[:, None, :]]  # [count, kh, kw, C]
    groups = op.groups
    channels = patches.shape[-1]
    patches = patches.reshape(count, kh, kw, groups, channels // groups)
    return np.transpose(patches, (3, 0, 1, 2, 4)).reshape(groups, count, -1)


def adaround_weights(plan: AnnotationPlan, config: QConfig, inputs: dict, progress=None) -> dict:
    """Per weighted anchor var: its int8 weight with learned rounding (simulate.Corrections.weights).
    `inputs` maps each anchor var to a list of its fp32 input tensors on calibration samples;
    `progress(layers done)` is called after each layer."""
    rng = np.random.default_rng(config.seed)
    chosen = {}
    for op in plan.ops:
        if op.weight is None or op.var not in inputs:
            continue
        if progress is not None:
            progress(len(chosen) + 1)
        wq, scales = quantized_weight(op.weight, op.weight_axis, config.per_channel)
        rows, groups = _rows(op)
        per_sample = max(1, ROWS // len(inputs[op.var]))
        x = np.concatenate([input_rows(op, sample.astype(np.float64), per_sample, rng) for sample in inputs[op.var]],
                           axis=1)
        learned = round_adaptively(x, rows, scales.astype(np.float64).reshape(groups, -1))
        if op.op == "relax.matmul":
            chosen[op.var] = learned[0].T.astype(np.int8)
            continue
        ohwi = wq.shape if op.kernel_layout == "OHWI" else (wq.shape[0], wq.shape[2], wq.shape[3], wq.shape[1])
        shaped = learned.reshape(ohwi)
        chosen[op.var] = (shaped if op.kernel_layout == "OHWI" else np.transpose(shaped, (0, 3, 1, 2))).astype(np.int8)
    return chosen
