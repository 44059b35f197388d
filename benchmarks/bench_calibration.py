"""Calibration methods side by side on every zoo model and EfficientNet-Lite0: which default?

    .venv/bin/python benchmarks/bench_calibration.py [--models ...] [--methods percentile mse ...]
        [--json OUT.json]

Per model and method, qcompiler's static int8 artifact (default QConfig but the calibration
method; no accuracy technique) runs the model's evaluation samples, and its first output is
compared with onnxruntime fp32's on the same samples:

  SQNR     10·log10(Σ y² / Σ (ŷ − y)²) over all evaluation samples, in dB
  cosine   the mean over samples of y·ŷ / (‖y‖ ‖ŷ‖) (bench_zoo's measure)

with the calibration time (observers and range computation, `quantize`). The calibration and
evaluation samples are the zoo's (zoo_data.py) and bench_accuracy's for EfficientNet-Lite0
(64 crops of 8 photos; 256 crops of 8 other photos), disjoint in every case. The last lines
give, per method, the mean SQNR difference to the first method and the worst model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from qcompiler.models import ZOO  # noqa: E402

METHODS = ("percentile", "mse", "entropy", "minmax")
MODELS = (*ZOO, "efficientnet-lite0")


def load_case(name: str):
    """(onnx path, input shapes, calibration feeds, evaluation feeds)."""
    if name == "efficientnet-lite0":
        from bench_accuracy import efficientnet_case

        case = efficientnet_case()
        import onnxruntime as ort

        input_name = ort.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        return (case.onnx_path, {input_name: case.input_shape}, [{input_name: x[None]} for x in case.calib],
                [{input_name: x[None]} for x in case.evaluate])
    from zoo_data import zoo_case

    case = zoo_case(name)
    return case.onnx_path, ZOO[name].input_shapes, case.calib, case.evaluate


def measure(name: str, methods: list[str], work: Path) -> dict:
    """{method: {"sqnr_db", "cosine", "calibration_s"} or {"error"}} for one model."""
    import onnxruntime as ort

    from qcompiler.build import build
    from qcompiler.frontend import load_onnx
    from qcompiler.quantize import quantize
    from qcompiler.targets import resolve

    onnx_path, shapes, calib, evaluate = load_case(name)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = [np.asarray(session.run(None, feed)[0], np.float64) for feed in evaluate]
    imported = load_onnx(onnx_path, shapes)
    rows = {}
    for method in methods:
        try:
            start = time.perf_counter()
            quantized = quantize(imported, qcompiler.QConfig(calibration=qcompiler.CalibrationMethod(method), holdout=0),
                                 calib)
            seconds = time.perf_counter() - start
            path = build(imported, resolve("x86"), quantized, committed_logs=False).export(work / f"{name}_{method}.so")
            model = qcompiler.load(path)
            outputs = [np.asarray(next(iter(model.run(feed).values())), np.float64) for feed in evaluate]
        except qcompiler.QCompilerError as err:
            rows[method] = {"error": str(err)}
            continue
        error = sum(float(np.sum((o - r) ** 2)) for o, r in zip(outputs, reference))
        power = sum(float(np.sum(r**2)) for r in reference)
        cosines = [float(o.ravel() @ r.ravel() / (np.linalg.norm(o) * np.linalg.norm(r) or 1.0))
                   for o, r in zip(outputs, reference)]
        rows[method] = {"sqnr_db": 10 * np.log10(power / error) if error else float("inf"),
                        "cosine": float(np.mean(cosines)), "calibration_s": seconds}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", metavar="OUT", help="write every measurement to this JSON file")
    args = parser.parse_args()
    results = {}
    print(f"{'model':20s} " + " ".join(f"{m:>26s}" for m in args.methods))
    print(f"{'':20s} " + " ".join(f"{'SQNR dB  cosine  calib s':>26s}" for _ in args.methods))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results[name] = rows = measure(name, args.methods, Path(tmp))
            cells = [f"{'error: ' + r['error'][:18]:>26s}" if "error" in r else
                     f"{r['sqnr_db']:7.2f}  {r['cosine']:.5f}  {r['calibration_s']:7.1f}"
                     for r in (rows[m] for m in args.methods)]
            print(f"{name:20s} " + " ".join(f"{c:>26s}" for c in cells), flush=True)
    first = args.methods[0]
    for method in args.methods[1:]:
        gains = {name: rows[method]["sqnr_db"] - rows[first]["sqnr_db"] for name, rows in results.items()
                 if "sqnr_db" in rows.get(method, {}) and "sqnr_db" in rows.get(first, {})}
        if gains:
            worst = min(gains, key=gains.get)
            print(f"{method} vs {first}: mean SQNR {np.mean(list(gains.values())):+.2f} dB over {len(gains)} models, "
                  f"median {np.median(list(gains.values())):+.2f} dB, worst {worst} {gains[worst]:+.2f} dB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
