"""`qcompiler bench`: latency (median/min/max) and peak memory of an artifact in this process."""

from __future__ import annotations

import resource
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .tensor_spec import TensorSpec
from .profile import Profile
from .runtime import load, physical_cores, set_num_threads


def random_feed(inputs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right shapes and dtypes: standard normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            feed[spec.name] = rng.integers(0, 8, spec.shape).astype(dtype)
    return feed


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux's VmHWM (/proc/self/status) where available: unlike `ru_maxrss`, which survives
    fork + exec, it belongs to this program alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class BenchResult:
    artifact: str
    threads: int
    repeat: int
    median_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    rss_before_load_mb: float

    def render(self) -> str:
        return (
            f"{self.artifact}: median {self.median_ms:.3f} ms, min {self.min_ms:.3f} ms, max {self.max_ms:.3f} ms "
            f"over {self.repeat} runs, {self.threads} thread(s); peak RSS {self.peak_rss_mb:.1f} MB "
            f"({self.rss_before_load_mb:.1f} MB before loading the artifact)"
        )

    def to_json(self) -> dict:
        return asdict(self)


def bench(path: str, repeat: int = 50, threads: int = 0, warmup: int = 5, verify: bool = True) -> BenchResult:
    """Time `repeat` runs of the artifact on random inputs after `warmup` runs.

    `threads=0` uses one thread per core. Peak memory is this process's peak RSS, which
    includes the Python interpreter and the TVM runtime (reported separately as the RSS
    before the artifact was loaded).
    """
    set_num_threads(threads)
    before = peak_rss_mb()
    model = load(path, verify=verify)
    times = model.time_run(random_feed(model.inputs), repeat=repeat, warmup=warmup)
    ms = [t * 1e3 for t in times]
    return BenchResult(
        artifact=str(path),
        threads=threads or physical_cores(),
        repeat=repeat,
        median_ms=statistics.median(ms),
        min_ms=min(ms),
        max_ms=max(ms),
        peak_rss_mb=peak_rss_mb(),
        rss_before_load_mb=before,
    )


def profile(path: str, repeat: int = 50, threads: int = 0, warmup: int = 5, verify: bool = True) -> "Profile":
    """Per-kernel profile of the artifact on random inputs (qcompiler.profile), `repeat` runs."""
    set_num_threads(threads)
    model = load(path, verify=verify)
    return model.profile(random_feed(model.inputs), repeat=repeat, warmup=warmup)
