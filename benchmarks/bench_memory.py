"""Bounded memory: calibration's peak memory from 100 to 10,000 samples (a directory of .npy
files and a Python iterable), and the C runtime's resident memory over 100,000 runs (a soak).

    .venv/bin/python benchmarks/bench_memory.py [--samples 100 1000 10000] [--runs 100000]

Calibration: a 3x3 conv model on [1, 3, 64, 64] inputs (48 KB a sample: 10,000 held at once
would be 480 MB), `qcompiler.compile(..., quantize="int8")` in a fresh process per case, its peak
resident memory (VmHWM). Soak: the C runtime's `qc_infer` N times on that model compiled
(deploy/tests/qc_threads with one thread, which also checks every output against a first run;
not `qc_run --repeat N`, which keeps every run's time for its median: 8 bytes a run), its VmRSS
sampled every 0.2 s; the line gives RSS after the first 1% of the time and at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
SHAPE = (1, 3, 64, 64)

_CALIBRATE = r"""
import sys
from pathlib import Path
import numpy as np
import onnx
import qcompiler
model, source, count = onnx.load(sys.argv[1]), sys.argv[2], int(sys.argv[3])
shape = (1, 3, 64, 64)
if source == "iterable":
    rng = np.random.default_rng(0)
    calib = ({"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count))
else:
    calib = source
qcompiler.compile(model, quantize="int8", calib=calib, committed_logs=False)
status = open("/proc/self/status").read().splitlines()
print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)
"""


def conv_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64, 64])],
        [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def calibration_peaks(model: Path, counts: list[int], work: Path) -> None:
    print("calibration peak memory (MB, VmHWM of the compiling process):")
    print(f"{'samples':>8} {'directory':>10} {'iterable':>10}")
    rng = np.random.default_rng(1)
    folder = work / "calib"
    folder.mkdir()
    written = 0
    for count in counts:
        while written < count:
            np.save(folder / f"{written:06d}.npy", rng.standard_normal(SHAPE).astype(np.float32))
            written += 1
        subset = work / f"calib{count}"
        subset.mkdir()
        for i in range(count):
            (subset / f"{i:06d}.npy").symlink_to(folder / f"{i:06d}.npy")
        peaks = [float(subprocess.run([sys.executable, "-c", _CALIBRATE, str(model), source, str(count)],
                                      capture_output=True, text=True, check=True).stdout.split()[-1])
                 for source in (str(subset), "iterable")]
        print(f"{count:>8} {peaks[0]:>10.0f} {peaks[1]:>10.0f}", flush=True)


def soak(model: Path, runs: int, work: Path) -> None:
    import qcompiler

    subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}", "tests"], check=True,
                   capture_output=True)
    artifact = qcompiler.compile(onnx.load(model), committed_logs=False).export(work / "conv.so")
    proc = subprocess.Popen([str(REPO / "deploy" / "build" / "qc_threads"), str(artifact), "1", str(runs), str(work / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    start = time.perf_counter()
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
            samples.append((time.perf_counter() - start, rss))
        except (OSError, StopIteration):
            break
        time.sleep(0.2)
    if proc.wait() != 0:
        raise SystemExit(f"qc_threads failed (an error or an output that changed): {proc.stderr.read().strip()}")
    total = time.perf_counter() - start
    early = next((rss for t, rss in samples if t >= 0.01 * total), samples[0][1]) if samples else float("nan")
    late = samples[-1][1] if samples else float("nan")
    print(f"C runtime soak: {runs} runs in {total:.1f} s; RSS {early:.1f} MB after 1% of the time, "
          f"{late:.1f} MB at the end, max {max(r for _, r in samples):.1f} MB ({len(samples)} samples)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--runs", type=int, default=100000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = conv_model(work / "conv.onnx")
        calibration_peaks(model, sorted(args.samples), work)
        soak(model, args.runs, work)


if __name__ == "__main__":
    main()
