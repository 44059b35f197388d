"""Accuracy-aware mixed precision: the fewest ops returned to fp32 for an accuracy target.

The search runs one compiled module, the fake-quant model with switches (simulate.insert_qdq,
`switches=True`), on the evaluation samples; a trial is a set of ops kept in float:

1. int8 everywhere, and fp32 everywhere (s = 0). Where fp32 itself misses the target, no
   fallback can meet it: an error says so with both values.
2. Sensitivity of each quantized op: the SQNR (dB) of the first output with that op alone in
   fp32, minus the SQNR with none; and the same for the target's metric. The SQNR gain orders
   the ops: a top-1 metric on a few hundred samples moves in steps of one sample, too coarse
   to rank single ops, while the SQNR sees every op's contribution.
3. Greedy: ops join the fallback set in order of sensitivity (largest SQNR gain first; ties:
   fewer MACs first, then graph order) until the target is met. With a least int8 share of
   MACs (`min_int8_macs`), an op that would take the share below it is passed over; where the
   target is not met within it, the set of the greedy's steps with the best SQNR (ties: the
   best metric, then the fewest ops) is kept, and a warning says so with the value reached.
   The SQNR decides there because the best of many steps' top-1 metrics is chosen on noise: on
   EfficientNet-Lite0 (128 samples) the step with the best agreement, 0.945 simulated, gave
   0.898 in the integer model, below all ops in int8 (0.906 simulated).
4. Pruning: each op of the set, last added first, is returned to int8 where the target still
   holds without it.

Every step is deterministic: the same model, data and target give the same set. Metrics (all
higher-is-better) compare the first float output with the fp32 model's on the same sample:

  top1-agreement   share of rows (the last axis is the classes) whose argmax agrees
  top1             share of rows whose argmax equals the label (labelled data)
  cosine           Σ y·ŷ / (‖y‖ ‖ŷ‖) over all samples
  sqnr-db          10·log10(Σ y² / Σ (ŷ − y)²)

or any function from (outputs, fp32 outputs), each a list of per-sample output lists, to a float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .errors import QCompilerError
from .progress import Progress

log = logging.getLogger("qcompiler")

Outputs = list[list[np.ndarray]]  # per sample, the model's outputs in order
MetricFn = Callable[[Outputs, Outputs], float]

METRICS = ("top1-agreement", "top1", "cosine", "sqnr-db")


def _first_float(outputs: Outputs) -> list[np.ndarray]:
    index = next((i for i, o in enumerate(outputs[0]) if np.asarray(o).dtype.kind == "f"), None)
    if index is None:
        raise QCompilerError("the accuracy metrics compare a float output: the model has none")
    return [np.asarray(sample[index], np.float64) for sample in outputs]


def _rows(values: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([v.reshape(-1, v.shape[-1]) for v in values])


def top1_agreement(outputs: Outputs, reference: Outputs) -> float:
    got, ref = _rows(_first_float(outputs)), _rows(_first_float(reference))
    return float(np.mean(got.argmax(-1) == ref.argmax(-1)))


def cosine(outputs: Outputs, reference: Outputs) -> float:
    got = np.concatenate([v.ravel() for v in _first_float(outputs)])
    ref = np.concatenate([v.ravel() for v in _first_float(reference)])
    norms = float(np.sqrt(np.sum(got * got) * np.sum(ref * ref)))
    return float(np.sum(got * ref)) / norms if norms else 1.0


def sqnr_db(outputs: Outputs, reference: Outputs) -> float:
    got = np.concatenate([v.ravel() for v in _first_float(outputs)])
    ref = np.concatenate([v.ravel() for v in _first_float(reference)])
    noise = float(np.sum((got - ref) ** 2))
    return float(10 * np.log10(float(np.sum(ref * ref)) / noise)) if noise > 0 else float("inf")


def top1_of(labels: np.ndarray) -> MetricFn:
    """Accuracy against `labels` (one per output row, in sample order)."""
    labels = np.asarray(labels).reshape(-1)

    def top1(outputs: Outputs, reference: Outputs) -> float:
        predicted = _rows(_first_float(outputs)).argmax(-1)
        if predicted.size != labels.size:
            raise QCompilerError(f"top1: {labels.size} labels for {predicted.size} predicted rows: expected one "
                                 f"label per sample (per row of the first output)")
        return float(np.mean(predicted == labels))

    return top1


@dataclass(frozen=True)
class AccuracyTarget:
    """`metric` ≥ `value` on the evaluation samples. `metric` is one of METRICS or a function
    (outputs, fp32 outputs) → float, higher is better; "top1" needs `labels`."""

    metric: "str | MetricFn"
    value: float
    labels: "np.ndarray | None" = None
    min_int8_macs: float = 0.0  # the least share of the model's MACs the search leaves in int8

    def __post_init__(self):
        if not 0.0 <= self.min_int8_macs <= 1.0:
            raise QCompilerError(f"least int8 share of MACs {self.min_int8_macs:g}: expected a fraction from 0 to 1, "
                                 f"e.g. 0.9")
        if isinstance(self.metric, str) and self.metric not in METRICS:
            raise QCompilerError(f"accuracy metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.metric == "top1" and self.labels is None:
            raise QCompilerError("accuracy metric top1 needs labels: an array 'labels' in the --eval .npz "
                                 "(one per sample), or labels= in Python; top1-agreement needs none")

    @property
    def name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "metric")

    def function(self) -> MetricFn:
        if callable(self.metric):
            return self.metric
        return {"top1-agreement": top1_agreement, "cosine": cosine, "sqnr-db": sqnr_db}.get(self.metric) \
            or top1_of(self.labels)

    @classmethod
    def parse(cls, text: str, labels: "np.ndarray | None" = None) -> "AccuracyTarget":
        """METRIC=VALUE, e.g. top1-agreement=0.97 or sqnr-db=30."""
        metric, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise QCompilerError(f"--accuracy-target {text!r}: expected METRIC=VALUE with METRIC one of "
                                 f"{', '.join(METRICS)}, e.g. top1-agreement=0.97")
        return cls(metric, number, labels)


def coarse_target(target: AccuracyTarget, reference: Outputs) -> str | None:
    """A warning where a top-1 target below 1 allows no row of the evaluation samples to
    disagree (m misses are allowed where m ≤ (1 − value)·rows): one borderline row then decides
    which ops stay in fp32. None otherwise, and for the other metrics."""
    if target.metric not in ("top1-agreement", "top1") or target.value >= 1:
        return None
    rows = len(_rows(_first_float(reference)))
    if np.floor((1 - target.value) * rows + 1e-9) >= 1:
        return None
    return (f"accuracy target {target.name} >= {target.value:g} on {rows} rows allows no row to disagree: one "
            f"borderline row decides which ops stay in fp32; {int(np.ceil(1 / (1 - target.value) - 1e-9))} rows "
            f"or more allow one")


@dataclass
class FallbackResult:
    """What the search chose and measured (values of the target's metric)."""

    metric: str
    target: float
    fallback: list[str]  # ONNX node names kept in fp32, in the order they were chosen
    int8_value: float  # everything quantized, simulated
    fp32_value: float
    value: float  # with the fallback, simulated
    sensitivity: dict[str, float] = field(default_factory=dict)  # node → metric gain when it alone is fp32
    sqnr_gain: dict[str, float] = field(default_factory=dict)  # node → SQNR (dB) gain when it alone is fp32
    trials: int = 0
    samples: int = 0
    realized_value: float | None = None  # the integer model's, measured after realize
    min_int8_macs: float = 0.0

    @property
    def met(self) -> bool:
        return (self.value if self.realized_value is None else self.realized_value) >= self.target

    def to_json(self) -> dict:
        return {"metric": self.metric, "target": self.target, "met": self.met, "min_int8_macs": self.min_int8_macs,
                "fallback": self.fallback, "int8_value": self.int8_value, "fp32_value": self.fp32_value,
                "simulated_value": self.value, "realized_value": self.realized_value, "trials": self.trials,
                "evaluation_samples": self.samples, "sensitivity": self.sensitivity, "sqnr_gain_db": self.sqnr_gain}


def search_fallback(
    evaluate: Callable[[frozenset[str]], tuple[float, float]],
    candidates: Sequence[tuple[str, int]],
    target: AccuracyTarget,
    budget: int | None = None,
) -> FallbackResult:
    """The fewest of `candidates` (node name, MACs; in graph order) to keep in fp32 so that
    the metric `evaluate(fallback set)` returns (with the first output's SQNR) is ≥
    target.value, their MACs summing to at most `budget` (see the module docstring for the steps)."""
    progress = Progress("accuracy search", len(candidates) + 2)
    int8_value, int8_sqnr = evaluate(frozenset())
    progress(1)
    names = [name for name, _ in candidates]
    fp32_value, _ = evaluate(frozenset(names))
    progress(2)
    result = FallbackResult(target.name, target.value, [], int8_value, fp32_value, int8_value,
                            min_int8_macs=target.min_int8_macs)
    if int8_value >= target.value:
        progress.close()
        result.trials = 2
        return result
    if fp32_value < target.value:
        progress.close()
        raise QCompilerError(f"accuracy target {target.name} >= {target.value:g} cannot be met: the fp32 model "
                             f"reaches {fp32_value:.4g} on these samples (all int8: {int8_value:.4g})")
    for i, name in enumerate(names):
        value, sqnr = evaluate(frozenset([name]))
        result.sensitivity[name], result.sqnr_gain[name] = value - int8_value, min(sqnr - int8_sqnr, 1e3)
        progress(i + 3)
    progress.close()
    macs = dict(candidates)
    left = sum(macs.values()) if budget is None else budget
    trials = 2 + len(names)
    chosen: list[str] = []
    value, sqnr = int8_value, int8_sqnr
    best = (sqnr, value, 0)  # (SQNR, metric, −ops) of the best step, and its set
    best_set: list[str] = []
    for name in fallback_order(result, candidates):
        if macs[name] > left:
            continue
        chosen.append(name)
        left -= macs[name]
        value, sqnr = evaluate(frozenset(chosen))
        trials += 1
        log.info("accuracy search: %d in fp32 (+%s): %s %.4g", len(chosen), name, target.name, value)
        if (sqnr, value, -len(chosen)) > best:
            best, best_set = (sqnr, value, -len(chosen)), list(chosen)
        if value >= target.value:
            break
    if value < target.value:
        log.warning("accuracy target %s >= %g not met with at least %.0f%% of MACs in int8: best %.4g with %d ops "
                    "in fp32 (all int8: %.4g)", target.name, target.value, 100 * target.min_int8_macs, best[1],
                    len(best_set), int8_value)
        return replace(result, fallback=best_set, value=best[1], trials=trials)
    for name in list(reversed(chosen[:-1])):
        without = [n for n in chosen if n != name]
        trial, _ = evaluate(frozenset(without))
        trials += 1
        if trial >= target.value:
            chosen, value = without, trial
    return replace(result, fallback=chosen, value=value, trials=trials)


def fallback_order(result: FallbackResult, candidates: Sequence[tuple[str, int]]) -> list[str]:
    """The candidates not yet in fp32, most sensitive first (the search's greedy order)."""
    names = [name for name, _ in candidates]
    macs = dict(candidates)
    rest = [n for n in names if n not in result.fallback]
    return sorted(rest, key=lambda n: (-result.sqnr_gain.get(n, 0.0), macs[n], names.index(n)))


LABELS = "labels"


def load_evaluation(source, inputs) -> tuple[list[dict[str, np.ndarray]], "np.ndarray | None"]:
    """Evaluation samples (the formats of calibration data, qcompiler.data) and their labels: an
    .npz may hold an array `labels` (one per sample) besides the input arrays."""
    import os
    from pathlib import Path

    from .data import UNREADABLE, load_calibration

    labels = None
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".npz" and Path(source).is_file():
        try:
            with np.load(source, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except UNREADABLE as err:
            raise QCompilerError(f"evaluation data {source} is not a readable .npz: {err}") from None
        labels = arrays.pop(LABELS, None)
        counts = {len(a) for a in arrays.values() if a.ndim}
        if len(counts) == 1 and labels is not None and len(labels) != counts.pop():
            raise QCompilerError(f"evaluation data {source}: {len(labels)} labels for "
                                 f"{len(next(iter(arrays.values())))} samples: expected one label per sample")
        count = len(next(iter(arrays.values()))) if arrays else 0
        source = [{name: array[i] for name, array in arrays.items()} for i in range(count)]
    samples = load_calibration(source, inputs, kind="evaluation")
    return samples, labels
