"""export-qdq on every zoo model and EfficientNet-Lite0: onnxruntime's run of the QDQ model vs the int8 artifact.

    .venv/bin/python benchmarks/bench_qdq_export.py [--models ...] [--samples N]

Per model, with the default QConfig and the same calibration samples, `export_qdq` writes the
QDQ model and `compile` builds the int8 artifact. On the first N evaluation samples (disjoint
from calibration: zoo_data.py, bench_accuracy.py), the first output of

  ort-qdq     onnxruntime running the QDQ model with its default optimizations (its int8 kernels)
  ort-qdq-sim onnxruntime with graph optimizations off (QuantizeLinear / DequantizeLinear in float)
  qc-int8     qcompiler's artifact

is compared as SQNR = 10·log10(Σ y² / Σ (ŷ − y)²) in dB: each against onnxruntime fp32 (the
accuracy the exported calibration gives in onnxruntime vs in qcompiler), and ort-qdq against
qc-int8 (how closely the two int8 runtimes agree). The two runtimes round ties in
requantization (and float sums) differently; a flipped step in an early layer moves the
next layer's inputs and spreads, so on deep models they agree only statistically.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from bench_calibration import MODELS, load_case  # noqa: E402
from qcompiler.accuracy import sqnr_db  # noqa: E402


def _ort_outputs(path: Path, feeds: list[dict], optimized: bool = True) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in feed.items() if k in names}) for feed in feeds]


def measure(name: str, samples: int, work: Path) -> dict:
    """SQNRs (dB) of one model: ort-qdq, ort-qdq-sim and qc-int8 vs fp32, ort-qdq vs qc-int8."""
    onnx_path, shapes, calib, evaluate = load_case(name)
    evaluate = evaluate[:samples]
    qdq = qcompiler.export_qdq(onnx_path, calib, work / f"{name}.qdq.onnx", shapes)
    artifact = qcompiler.load(qcompiler.compile(onnx_path, input_shapes=shapes, quantize="int8", calib=calib)
                              .export(work / f"{name}.so"))
    fp32 = _ort_outputs(Path(onnx_path), evaluate)
    ort_qdq = _ort_outputs(qdq, evaluate)
    ort_sim = _ort_outputs(qdq, evaluate, optimized=False)
    qc_int8 = [list(artifact.run(feed).values()) for feed in evaluate]
    return {"ort-qdq": sqnr_db(ort_qdq, fp32), "ort-qdq-sim": sqnr_db(ort_sim, fp32), "qc-int8": sqnr_db(qc_int8, fp32),
            "ort-qdq vs qc-int8": sqnr_db(ort_qdq, qc_int8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--samples", type=int, default=16, help="evaluation samples per model (default 16)")
    args = parser.parse_args()
    columns = ("ort-qdq", "ort-qdq-sim", "qc-int8", "ort-qdq vs qc-int8")
    print(f"{'SQNR dB (vs fp32 unless said)':30s}" + "".join(f"{c:>20s}" for c in columns))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            try:
                row = measure(name, args.samples, Path(tmp))
            except qcompiler.QCompilerError as err:
                print(f"{name:30s}error: {err}", flush=True)
                continue
            print(f"{name:30s}" + "".join(f"{row[c]:20.2f}" for c in columns), flush=True)


if __name__ == "__main__":
    main()
