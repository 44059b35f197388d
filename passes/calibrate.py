"""calibrate: run the observed model on real samples and turn streaming statistics into ranges.

The observed module (annotate.observed_module) is compiled for the host CPU and run once per
sample; each observer updates its statistics in place, so memory does not grow with the
number of samples. Ranges can be saved to and loaded from a JSON calibration cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import tvm
from tvm import relax

from qcompiler.errors import QCompilerError
from qcompiler.runtime import default_num_threads

from .annotate import AnnotationPlan, observed_module
from .input_grid import InputGrid
from .observers import make_observer, observed_range
from .qconfig import QConfig, QParams, activation_qparams

CACHE_FORMAT = "qcompiler-calibration-cache"


@dataclass
class CalibrationResult:
    """Per observer key: the chosen [lo, hi] range and the resulting quantization parameters."""

    ranges: dict[str, tuple[float, float]]
    samples: int
    statistics_bytes: int

    def qparams(self, config: QConfig) -> dict[str, QParams]:
        return {key: activation_qparams(lo, hi, config.activation_dtype) for key, (lo, hi) in self.ranges.items()}


def flatten_results(result) -> list[np.ndarray]:
    """The tensors of a VM result in order, with (nested) tuples flattened depth first."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [array for item in result for array in flatten_results(item)]


def host_runner(mod: tvm.IRModule, target: tvm.target.Target) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """Compile `mod` for the host CPU with qcompiler's default kernels (tuning.cpu_pipeline: 25x
    faster than TVM's naive loop nests on PP-LCNet); return a function from input arrays to its
    flattened outputs (run on one thread per physical core unless TVM_NUM_THREADS says otherwise)."""
    from qcompiler.tuning import cpu_pipeline

    default_num_threads()
    with target:
        lowered = cpu_pipeline(target)(mod)
    vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return flatten_results(vm["main"](*[tvm.runtime.tensor(np.asarray(a, order="C")) for a in arrays]))

    return run


def run_observers(
    mod: tvm.IRModule,
    plan: AnnotationPlan,
    samples: Iterable[Sequence[np.ndarray]],
    config: QConfig,
    target: tvm.target.Target,
    progress: Callable[[int], None] | None = None,
) -> CalibrationResult:
    """Calibrate: compile the observed module, feed every sample, keep streaming statistics."""
    observed, keys = observed_module(mod, plan)
    run = host_runner(observed, target)
    observers = {key: make_observer(config) for key in keys}
    count = 0
    for sample in samples:
        # The observed tensors follow the model's own outputs (which may be nested tuples).
        observed_values = run(sample)[-len(keys):] if keys else []
        for key, value in zip(keys, observed_values):
            observers[key].update(value)
        count += 1
        if progress is not None:
            progress(count)
    if count == 0:
        raise QCompilerError("calibration got no samples")
    ranges = {key: observed_range(obs, config) for key, obs in observers.items()}
    return CalibrationResult(ranges, count, sum(obs.state_bytes() for obs in observers.values()))


def save_cache(path: str | Path, result: CalibrationResult, model_sha256: str, config: QConfig,
               input_grids: list[dict] = (), equalization: list[bool] | None = None) -> None:
    """Write the calibration cache atomically (with the input grids and the equalization flags
    per pair the ranges were calibrated with, passes/input_grid.py and passes/equalize.py)."""
    path = Path(path)
    payload = {
        "format": CACHE_FORMAT,
        "model_sha256": model_sha256,
        "config": config.fingerprint(),
        "samples": result.samples,
        "ranges": {key: [lo, hi] for key, (lo, hi) in result.ranges.items()},
        "input_grids": list(input_grids),
    }
    if equalization is not None:
        payload["equalization"] = [bool(flag) for flag in equalization]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def cached_input_grids(path: str | Path) -> list[InputGrid]:
    """The input grids a calibration cache was made with ([] where it holds none or is unreadable:
    load_cache reports what is wrong with it)."""
    try:
        return [InputGrid.from_json(grid) for grid in _cached(path, "input_grids") or []]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def cached_equalization(path: str | Path, pairs: int) -> list[bool] | None:
    """The equalization flag of each of the model's `pairs` pairs of layers that a calibration
    cache was made with; None where it holds none (made without equalization) or is unreadable
    (load_cache says why). Flags that are not `pairs` booleans are an error: the cache was
    edited, or made for another graph."""
    flags = _cached(path, "equalization")
    if flags is None:
        return None
    if not isinstance(flags, list) or not all(isinstance(flag, bool) for flag in flags):
        raise QCompilerError(f"calibration cache {path}: its equalization field is {json.dumps(flags)[:40]}, "
                             f"expected a list of {pairs} true/false flags, one per pair of layers")
    if len(flags) != pairs:
        raise QCompilerError(f"calibration cache {path} holds {len(flags)} equalization flags, this model has "
                             f"{pairs} pairs of layers: the graph changed; delete it or pass another --calib-cache")
    return flags


def _cached(path: str | Path, key: str):
    """One field of a calibration cache, None where it is missing or the file unreadable."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return payload.get(key) if isinstance(payload, dict) else None


def load_cache(path: str | Path, plan: AnnotationPlan, model_sha256: str, config: QConfig) -> CalibrationResult:
    """Read a calibration cache, refusing one made for another model, config or graph."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QCompilerError(f"calibration cache {path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise QCompilerError(f"{path} is not a qcompiler calibration cache")
    if payload.get("model_sha256") != model_sha256:
        raise QCompilerError(
            f"calibration cache {path} was made for another model (sha256 {str(payload.get('model_sha256'))[:12]}..., "
            f"this model {model_sha256[:12]}...): delete it or pass another --calib-cache"
        )
    if payload.get("config") != config.fingerprint():
        raise QCompilerError(
            f"calibration cache {path} was made with another calibration config {payload.get('config')}, "
            f"expected {config.fingerprint()}"
        )
    try:
        ranges = {key: (float(lo), float(hi)) for key, (lo, hi) in payload["ranges"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise QCompilerError(f"calibration cache {path} is malformed: {err}") from None
    if set(ranges) != set(plan.observer_keys):
        raise QCompilerError(
            f"calibration cache {path} does not match this model's quantized tensors "
            f"({len(ranges)} cached, {len(plan.observer_keys)} expected): the skip lists or the graph changed"
        )
    return CalibrationResult(ranges, int(payload.get("samples", 0)), 0)
