"""Interrupted tuning at scale: `qcompiler tune` killed with SIGKILL (with its measurement
workers) at random points, each time resumed by the next `tune`; then the database must be
readable by `tune` and `compile`, and hold every record that was complete before each kill.

    .venv/bin/python benchmarks/tune_kill.py [--points 20] [--seed 0] [--max-seconds 90] [--trials 400]

The model is one 3x3 conv + ReLU (tests/test_tuning.py's); each kill comes after a random time
in [1, --max-seconds] s of a run. A kill loses the measurements in flight: MetaSchedule commits
a task's records per batch of candidates (16 per task at --trials 400, 64 at 2000). Prints, per
kill, the seconds, the complete records before and after, and whether any was lost; then the
final check.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def complete_records(log_dir: Path) -> list[str]:
    from qcompiler.tuning import RECORDS

    path = log_dir / RECORDS
    return [line for line in path.read_text().splitlines() if line.endswith("]")] if path.exists() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    parser.add_argument("--trials", type=int, default=400, help="each run's --trials")
    args = parser.parse_args()
    import qcompiler
    from qcompiler.frontend import load_onnx
    from qcompiler.targets import resolve
    from qcompiler.tuning import tune
    from test_tuning import conv_model

    rng = np.random.default_rng(args.seed)
    lost_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        model = conv_model()
        path = Path(tmp) / "conv.onnx"
        onnx.save(model, path)
        log_dir = Path(tmp) / "log"
        for point in range(args.points):
            before = set(complete_records(log_dir))
            seconds = float(rng.uniform(1.0, args.max_seconds))
            proc = subprocess.Popen([sys.executable, "-m", "qcompiler", "tune", str(path), "--log", str(log_dir),
                                     "--trials", str(args.trials)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            time.sleep(seconds)
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            after = set(complete_records(log_dir))
            # the next run rewrites the file without a cut last line; complete records must survive
            lost = len(before - set(complete_records(log_dir)))
            lost_total += lost
            print(f"kill {point + 1:2d} after {seconds:5.1f} s (exit {code}): {len(before)} -> {len(after)} complete "
                  f"records, {lost} lost", flush=True)
        tasks = tune(load_onnx(model).mod, resolve("x86"), log_dir, trials=0)
        kept = complete_records(log_dir)
        artifact = qcompiler.compile(model, tuning_logs=[log_dir], committed_logs=False)
        tuned = sum(source == "tuning record" for source in artifact.metadata.kernels.values())
        feed = {"x": np.random.default_rng(1).standard_normal((1, 16, 28, 28)).astype(np.float32)}
        got = qcompiler.load(artifact.export(Path(tmp) / "m.so")).run(feed)["y"]
        import onnxruntime as ort

        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        error = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"after {args.points} kills: {len(kept)} records, {lost_total} lost; tune resumed ({len(tasks)} tasks, "
          f"{sum(t.best_seconds is not None for t in tasks)} with a best time); compile used {tuned} tuned kernel(s); "
          f"max error vs onnxruntime {error:.1e} of the output's scale")
    return 0 if lost_total == 0 and tuned and error < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
