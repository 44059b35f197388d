"""Streaming statistics of activations and the calibration methods that turn them into ranges.

Memory is independent of the number of samples: `MinMaxObserver` keeps two floats,
`HistogramObserver` a fixed number of bins over a symmetric range [−R, R] that doubles (by
merging bin pairs) whenever a sample exceeds it.
"""

from __future__ import annotations

import numpy as np

from .qconfig import ActivationDType, CalibrationMethod, QConfig


class MinMaxObserver:
    """Running minimum and maximum."""

    def __init__(self):
        self.lo = np.inf
        self.hi = -np.inf

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def state_bytes(self) -> int:
        return 16


class HistogramObserver(MinMaxObserver):
    """Signed histogram with `bins` equal bins over [−R, R]; R only grows, by doubling."""

    def __init__(self, bins: int = 2048):
        super().__init__()
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.bound = 0.0

    def _grow_to(self, needed: float) -> None:
        if self.bound == 0.0:
            self.bound = needed
            return
        while self.bound < needed:
            # Pairs of bins merge into the middle half of the doubled range.
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros_like(self.counts)
            quarter = self.bins // 4
            self.counts[quarter : quarter + self.bins // 2] = merged
            self.bound *= 2.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        if not x.size:
            return
        super().update(x)
        needed = max(abs(self.lo), abs(self.hi))
        if needed > self.bound or self.bound == 0.0:
            self._grow_to(max(needed, 1e-12))
        counts, _ = np.histogram(x, bins=self.bins, range=(-self.bound, self.bound))
        self.counts += counts

    def state_bytes(self) -> int:
        return 16 + self.counts.nbytes + 8

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.bound, self.bound, self.bins + 1)

    def magnitude_histogram(self) -> tuple[np.ndarray, float]:
        """Counts of |x| over [0, R] (bins/2 bins) and the bin width."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.bound / half


def percentile_range(obs: HistogramObserver, percentile: float) -> tuple[float, float]:
    """[lo, hi] holding `percentile`% of values in each tail's direction (bin upper edges)."""
    total = obs.counts.sum()
    if total == 0:
        return 0.0, 0.0
    cdf = np.cumsum(obs.counts) / total
    edges = obs.edges
    q = percentile / 100.0
    hi_bin = int(np.searchsorted(cdf, q, side="left"))
    lo_bin = int(np.searchsorted(cdf, 1.0 - q, side="left"))
    hi = min(float(edges[min(hi_bin + 1, obs.bins)]), obs.hi)
    lo = max(float(edges[lo_bin]), obs.lo)
    return lo, hi


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_threshold(obs: HistogramObserver, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the |x| clip threshold minimizing KL(P ‖ Q).

    For each candidate threshold bin i (from `levels` up): P is the |x| histogram cut at i
    with the clipped tail added to its last bin; Q merges P's i bins into `levels` levels
    and spreads each level's mass evenly over its non-empty bins. The threshold is the upper
    edge of the best i.
    """
    hist, width = obs.magnitude_histogram()
    # The bin at 0 holds ReLU's exact zeros, which every threshold represents exactly; left in,
    # its spike makes every merge of it with its neighbours look costly, and the smallest
    # candidate wins however much it clips (ReLU6 outputs cut at a quarter of their range).
    hist = np.concatenate([[0], hist[1:]])
    nbins = hist.size
    if hist.sum() == 0:
        return 0.0
    best_i, best_kl = nbins, np.inf
    hist = hist.astype(np.float64)
    positions = np.arange(nbins)
    for i in range(levels, nbins + 1):
        reference = hist[:i].copy()
        reference[i - 1] += hist[i:].sum()
        if reference.sum() == 0:
            continue
        # Level of each of the i bins, as np.array_split(i bins, levels) groups them: the first
        # i % levels levels hold one bin more (i ≥ levels: every level holds at least one).
        size, extra = divmod(i, levels)
        j = positions[:i]
        level = np.where(j < extra * (size + 1), j // (size + 1), extra + (j - extra * (size + 1)) // size)
        chunk = hist[:i]
        nonzero = chunk > 0
        mass = np.bincount(level, weights=chunk, minlength=levels)
        filled = np.bincount(level, weights=nonzero, minlength=levels)
        candidate = np.where(nonzero, mass[level] / np.maximum(filled[level], 1), 0.0)
        p = reference / reference.sum()
        if candidate.sum() == 0:
            continue
        q = candidate / candidate.sum()
        q = np.where((p > 0) & (q == 0), 1e-12, q)
        kl = _kl_divergence(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def mse_threshold(obs: HistogramObserver, steps: int = 127, candidates: int = 100) -> float:
    """The |x| clip threshold T minimizing the expected squared quantization error.

    Each bin contributes count · err(center): (|x| − T)² when clipped, else step²/12 with
    step = T / steps (uniform rounding noise). T is searched over `candidates` fractions
    of the observed maximum.
    """
    hist, width = obs.magnitude_histogram()
    if hist.sum() == 0:
        return 0.0
    centers = (np.arange(hist.size) + 0.5) * width
    top = max(abs(obs.lo), abs(obs.hi))
    best_t, best_err = top, np.inf
    for t in np.linspace(top / candidates, top, candidates):
        step = t / steps
        err = np.where(centers > t, (centers - t) ** 2, step * step / 12.0)
        total = float(np.sum(hist * err))
        if total < best_err:
            best_err, best_t = total, float(t)
    return best_t


def make_observer(config: QConfig) -> MinMaxObserver:
    if config.calibration is CalibrationMethod.MINMAX:
        return MinMaxObserver()
    return HistogramObserver(config.histogram_bins)


def observed_range(obs: MinMaxObserver, config: QConfig) -> tuple[float, float]:
    """The [lo, hi] a calibration method chooses from an observer's statistics."""
    if not np.isfinite(obs.lo):
        return 0.0, 0.0
    method = config.calibration
    if method is CalibrationMethod.MINMAX:
        return obs.lo, obs.hi
    assert isinstance(obs, HistogramObserver)
    if method is CalibrationMethod.PERCENTILE:
        return percentile_range(obs, config.percentile)
    # Quantization steps available to |x|: 127 for int8, 255 for one-sided uint8, ~127 otherwise.
    one_sided_uint8 = config.activation_dtype is ActivationDType.UINT8 and obs.lo >= 0
    steps = 255 if one_sided_uint8 else 127
    if method is CalibrationMethod.ENTROPY:
        threshold = entropy_threshold(obs, levels=steps + 1)
    else:
        threshold = mse_threshold(obs, steps=steps)
    # A one-sided (e.g. post-ReLU) tensor keeps its unused side empty.
    lo = -threshold if obs.lo < 0 else obs.lo
    hi = threshold if obs.hi > 0 else obs.hi
    return max(lo, obs.lo), min(hi, obs.hi)
