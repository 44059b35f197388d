"""ONNX's "light" architecture models (shipped in the onnx package) through qcompiler, vs onnxruntime.

    .venv/bin/python benchmarks/conformance_light.py [--models squeezenet shufflenet ...]

AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19 and ZFNet-512 as
exported for ONNX IR 3 / opset 9: every weight is a graph input with an initializer (a constant),
and large weights are `ConstantOfShape` nodes. Each model is compiled fp32 for x86, exported,
loaded and run on standard-normal inputs; its outputs are compared with onnxruntime's on the same
inputs, relative to each output's largest magnitude (the tests' `assert_close_rel`). Prints one
row per model: compiled?, max relative error, compile seconds. About 3 minutes for all nine
on 2 cores (VGG-19, 548 MB of weights, takes 30 s to compile and 6 GB of memory).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from qcompiler.conformance import LIGHT_MODELS, run_light_model

TOLERANCE = 1e-4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(LIGHT_MODELS), choices=LIGHT_MODELS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    print(f"{'model':<16}{'compiled':>10}{'max rel err':>14}{'compile s':>11}  note", flush=True)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="qc-light-") as tmp:
        for name in args.models:
            result = run_light_model(name, Path(tmp))
            error = "-" if result.rel_error is None else f"{result.rel_error:.2e}"
            ok = result.rel_error is not None and result.rel_error <= TOLERANCE
            failures += not ok
            note = result.detail or ("" if ok else f"exceeds {TOLERANCE:g}")
            print(f"{name:<16}{'yes' if result.compiled else 'no':>10}{error:>14}{result.compile_seconds:>11.1f}  {note}",
                  flush=True)
            for so in Path(tmp).glob("*"):
                so.unlink()
    print(f"\n{len(args.models) - failures} of {len(args.models)} match onnxruntime within {TOLERANCE:g}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
