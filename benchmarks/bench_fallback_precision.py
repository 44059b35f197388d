"""What the ops kept out of int8 cost in fp32 and in bf16: accuracy, size and latency, one run.

    .venv/bin/python benchmarks/bench_fallback_precision.py [--models minilm efficientnet-lite0 ...]
        [--target sqnr-db=25]

Per model: the fp32 artifact, the all-int8 artifact, and the accuracy search's fallback
(`--accuracy-target`, default sqnr-db=25) with the ops it keeps out of int8 in fp32 and in bf16
(`--fallback-precision`, passes/reduced_precision.py). The search runs on the even evaluation
samples; the SQNR of the first output against onnxruntime fp32 is measured on the odd ones
(disjoint from the search's and from calibration's: zoo_data.py, bench_accuracy.py). Latency is
each artifact's median over 5 interleaved rounds of 20 runs on the first odd sample, this
process's threads; sizes are the .so files'. bf16 products run on `vdpbf16ps` where the CPU has
AVX-512 BF16 (else they are converted next to each multiply-add: smaller, not faster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from bench_accuracy import interleaved_latency_ms  # noqa: E402
from bench_calibration import MODELS, load_case  # noqa: E402
from qcompiler.accuracy import sqnr_db  # noqa: E402


def measure(name: str, target: str, work: Path) -> None:
    import onnxruntime as ort

    onnx_path, shapes, calib, evaluate = load_case(name)
    search, held_out = evaluate[0::2], evaluate[1::2]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = [session.run(None, feed) for feed in held_out]
    variants = {"fp32 model": {}, "int8": {"quantize": "int8", "calib": calib,
                                           "config": qcompiler.QConfig(holdout=0)}}
    for precision in ("fp32", "bf16"):
        config = qcompiler.QConfig(holdout=0, fallback_precision=qcompiler.FallbackPrecision(precision))
        variants[f"fallback in {precision}"] = {"quantize": "int8", "calib": calib, "config": config,
                                                "accuracy_target": target, "eval_data": search}
    models, rows = {}, {}
    for label, options in variants.items():
        artifact = qcompiler.compile(onnx_path, input_shapes=shapes, **options)
        path = artifact.export(work / f"{name}_{label.replace(' ', '_')}.so")
        models[label] = qcompiler.load(path)
        quantization = artifact.metadata.quantization or {}
        searched = quantization.get("accuracy_target")
        outputs = [list(models[label].run(feed).values()) for feed in held_out]
        rows[label] = {"sqnr": sqnr_db(outputs, reference), "size": path.stat().st_size / 1e6,
                       "int8": quantization.get("int8_mac_fraction", 0.0),
                       "kept": "" if searched is None else f"{len(searched['fallback'])} ops kept out of int8"}
    latency = interleaved_latency_ms(models, held_out[0])
    print(f"\n{name}: search {target} on {len(search)} samples, measured on {len(held_out)} others")
    for label, row in rows.items():
        print(f"  {label:18s} SQNR {row['sqnr']:6.2f} dB  int8 MACs {row['int8']:6.1%}  size {row['size']:7.2f} MB  "
              f"latency {latency[label]:8.3f} ms  {row['kept']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "efficientnet-lite0"], choices=MODELS)
    parser.add_argument("--target", default="sqnr-db=25", help="the accuracy search's target (METRIC=VALUE)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            measure(name, args.target, Path(tmp))


if __name__ == "__main__":
    main()
