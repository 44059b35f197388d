"""adaround: learn whether each int8 weight rounds up or down (Nagel et al., "Up or Down?
Adaptive Rounding for Post-Training Quantization", 2020), in numpy, layer by layer.

Per conv / matmul anchor with weight rows W [O, K] (per group), scales s [O] and input rows X
[R, K] (patches of the layer's fp32 input on calibration samples), the int8 weight is
floor(W / s) + h(V) with h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1, and V
minimises

  ‖X Eᵀ‖² / R + λ Σ (1 − |2h(V) − 1|^β) = tr(E G Eᵀ) + λ Σ (1 − |2h(V) − 1|^β),
  E = W − s·(floor(W/s) + h(V)),  G = XᵀX / R

by Adam (learning rate 0.01, ITERATIONS steps; β anneals from 20 to 2 after a 20% warm start
without the regulariser, which pushes every h to 0 or 1). V starts where h equals the
fractional part (rounding to nearest is the start), and the result rounds h at ½.

The inputs enter only through the Gram matrix G [K, K], summed one sample at a time
(`InputGrams`): every output position of a sample, up to ROWS_PER_SAMPLE chosen by `seed`,
adds its row, so many samples can be used at no cost per step and with memory K² per layer
(rows fewer than K would leave G singular and the rounding fitted to those rows alone). A
step costs O·K² multiply-adds (all groups): a layer's time is ITERATIONS × O·K².

Time and memory are bounded (`learned_layers`): a layer whose Gram matrices hold more than
MAX_GRAM_ELEMENTS values (float64: 512 MB) keeps rounding to nearest, and so do the costliest
layers beyond a budget of MAX_STEP_MACS multiply-adds per step summed over the layers, or of
MAX_TOTAL_GRAM_ELEMENTS Gram values in all (every Gram is summed before the first layer is
learned; the cheapest steps are taken first, so most layers are learned). Fewer steps would
not serve: with β annealed over fewer steps the rounding settles before it fits
(EfficientNet-Lite0: 1000 steps gain over nearest rounding, 250 lose), so a layer is learned
in full or not at all.
"""

from __future__ import annotations

import numpy as np

from .annotate import AnnotationPlan, QuantizedOp
from .qconfig import QConfig
from .simulate import quantized_weight

ZETA, GAMMA = 1.1, -0.1
ROWS_PER_SAMPLE = 1024
ITERATIONS = 1000
REGULARIZATION = 0.01
MAX_GRAM_ELEMENTS = 1 << 26  # per layer, G·K² (K = 8192 with one group)
MAX_STEP_MACS = 16 * 10**9  # per step, Σ O·K² over the learned layers: ~4 min at 70 G/s (2 cores)
MAX_TOTAL_GRAM_ELEMENTS = 1 << 28  # Σ G·K² over the learned layers (float64: 2 GB)


def _rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h(V) and dh/dV."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    return np.clip(raw, 0.0, 1.0), np.where((raw > 0) & (raw < 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)


def round_adaptively(gram: np.ndarray, w: np.ndarray, scales: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """int8 rows for weights `w` [G, O, K] with `scales` [G, O] given the inputs' Gram matrix
    `gram` [G, K, K] (XᵀX / R per group). The optimisation runs in float32."""
    gram, w, scales = (np.asarray(a, np.float32) for a in (gram, w, scales))
    steps = w / scales[..., None]
    floor = np.floor(steps)
    frac = np.clip(steps - floor, 0.01, 0.99)
    v = -np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)  # h(v) = frac
    m = np.zeros_like(v)
    u = np.zeros_like(v)
    warm = iterations // 5
    for step in range(iterations):
        h, dh = _rectified_sigmoid(v)
        error = w - scales[..., None] * (floor + h)  # [G, O, K]
        grad_h = -2.0 * (error @ gram) * scales[..., None]  # batched BLAS products
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


def _row_length(op: QuantizedOp) -> int:
    """K: the inputs one output channel's weight row reads (per group)."""
    return op.weight.size // op.weight.shape[op.weight_axis]


def gram_elements(op: QuantizedOp) -> int:
    """G·K²: the values of the layer's Gram matrices."""
    groups = 1 if op.op == "relax.matmul" else op.groups
    return groups * _row_length(op) ** 2


def step_macs(op: QuantizedOp) -> int:
    """O·K²: the multiply-adds of one optimisation step of the layer (E G over its groups)."""
    return op.weight.shape[op.weight_axis] * _row_length(op) ** 2


def learned_layers(ops, max_gram_elements: int = MAX_GRAM_ELEMENTS, max_step_macs: int = MAX_STEP_MACS,
                   max_total_gram_elements: int = MAX_TOTAL_GRAM_ELEMENTS) -> tuple[list, list]:
    """(learned, nearest): the weighted `ops` AdaRound learns, and those that keep rounding to
    nearest because their Gram matrices exceed `max_gram_elements` or, taking layers cheapest
    step first, they would take the sum of O·K² beyond `max_step_macs` or of G·K² beyond
    `max_total_gram_elements`. Both in `ops`' order."""
    fits = [op for op in ops if gram_elements(op) <= max_gram_elements]
    macs, grams, chosen = 0, 0, set()
    for op in sorted(fits, key=step_macs):
        if macs + step_macs(op) > max_step_macs or grams + gram_elements(op) > max_total_gram_elements:
            break
        macs, grams = macs + step_macs(op), grams + gram_elements(op)
        chosen.add(id(op))
    return [op for op in ops if id(op) in chosen], [op for op in ops if id(op) not in chosen]


def _positions(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """All of `total` positions where they are at most `count`, else `count` distinct ones."""
    return np.arange(total) if total <= count else np.sort(rng.choice(total, count, replace=False))


def input_rows(op: QuantizedOp, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """At most `count` rows of the layer's input `x` as the weight rows see them, [G, rows, K]:
    matmul rows, or conv patches (taps × input channels of each group) at output positions (all
    of them where there are at most `count`, else `count` chosen by `rng`)."""
    if op.op == "relax.matmul":
        flat = x.reshape(-1, x.shape[-1])
        return flat[_positions(flat.shape[0], count, rng)][None]
    nhwc = x if op.kernel_layout == "OHWI" else np.transpose(x, (0, 2, 3, 1))
    (sh, sw), (dh, dw), (top, left, bottom, right) = op.conv_geometry
    kh, kw = op.weight.shape[1:3] if op.kernel_layout == "OHWI" else op.weight.shape[2:4]
    padded = np.pad(nhwc, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
    n, oh, ow = np.unravel_index(_positions(nhwc.shape[0] * out_h * out_w, count, rng), (nhwc.shape[0], out_h, out_w))
    rows_h = oh[:, None] * sh + np.arange(kh)[None] * dh  # [rows, kh]
    rows_w = ow[:, None] * sw + np.arange(kw)[None] * dw
    patches = padded[n[:, None, None], rows_h[:, :, None], rows_w[:, None, :]]  # [rows, kh, kw, C]
    groups = op.groups
    channels = patches.shape[-1]
    patches = patches.reshape(len(n), kh, kw, groups, channels // groups)
    return np.transpose(patches, (3, 0, 1, 2, 4)).reshape(groups, len(n), -1)


class InputGrams:
    """Per weighted anchor var, Σ xᵀx over its input rows x (`input_rows`, at most
    ROWS_PER_SAMPLE per sample) and the number of rows, added one sample at a time."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.sums: dict = {}
        self.rows: dict = {}

    def add(self, op: QuantizedOp, x: np.ndarray) -> None:
        rows = input_rows(op, x, ROWS_PER_SAMPLE, self.rng).astype(np.float64)  # cast the rows, not all of x
        product = np.swapaxes(rows, 1, 2) @ rows
        self.sums[op.var] = self.sums[op.var] + product if op.var in self.sums else product
        self.rows[op.var] = self.rows.get(op.var, 0) + rows.shape[1]

    def gram(self, var) -> np.ndarray:
        """XᵀX / R, [G, K, K]."""
        return self.sums[var] / self.rows[var]


def adaround_weights(plan: AnnotationPlan, config: QConfig, grams: InputGrams, progress=None) -> dict:
    """Per weighted anchor var: its int8 weight with learned rounding (simulate.Corrections.weights),
    from the Gram matrices of its fp32 inputs on calibration samples; `progress(layers done)` is
    called after each layer."""
    chosen = {}
    for op in plan.ops:
        if op.weight is None or op.var not in grams.sums:
            continue
        if progress is not None:
            progress(len(chosen) + 1)
        wq, scales = quantized_weight(op.weight, op.weight_axis, config.per_channel)
        rows, groups = _rows(op)
        learned = round_adaptively(grams.gram(op.var), rows, scales.reshape(groups, -1))
        if op.op == "relax.matmul":
            chosen[op.var] = learned[0].T.astype(np.int8)
            continue
        ohwi = wq.shape if op.kernel_layout == "OHWI" else (wq.shape[0], wq.shape[2], wq.shape[3], wq.shape[1])
        shaped = learned.reshape(ohwi)
        chosen[op.var] = (shaped if op.kernel_layout == "OHWI" else np.transpose(shaped, (0, 3, 1, 2))).astype(np.int8)
    return chosen
