"""float32 kernel classes in GFLOP/s: qcompiler's default kernels (no tuning records) next to
onnxruntime fp32 on the same one-op models, and the host's measured FMA peak, in one run.

    .venv/bin/python benchmarks/bench_kernels.py [--threads 1] [--repeat 200]

Each kernel class is one ONNX op on a shape taken from a real network (ResNet, MobileNet, a
MiniLM encoder, PP-OCR's detector head). Time: median of `--repeat` runs after warm-up, batch 1,
both runtimes in this process with the same thread count. "qc kernel" is the op's own kernels
(conv, dense, col2im, ... with their fused epilogue: `Model.profile`); "qc run" and "ort run" are
whole runs of the one-op model, which for qcompiler include the NCHW <-> NHWC transposes at the
model's input and output (in a network they occur once, where it enters and leaves its
convolutional part). FLOPs count a multiply-add as two
(a transposed convolution: 2·H·W·C·KH·KW·O over its input). The peak is measured, not looked
up: a C loop of 12 independent vector FMA chains (AVX-512 where the host has it, else AVX2),
compiled here with gcc, per core times the threads.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler.runtime import set_num_threads

PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 vec; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define DECLARE(i) vec acc##i = SET1((float)i);
#define STEP(i) acc##i = FMA(acc##i, a, b);
#define SUM(i) sum = ADD(sum, acc##i);
int main(void) {
    vec a = SET1(0.999999f), b = SET1(1e-7f), sum = SET1(0.0f);
    CHAINS(DECLARE)
    const long iterations = 100000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < iterations; n++) {
        CHAINS(STEP)
        __asm__ volatile("" ::: "memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHAINS(SUM)
    float out[LANES]; STORE(out, sum);
    double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    printf("%f %d %f\n", 2.0 * LANES * 12 * iterations / seconds / 1e9, LANES, out[0]);
    return 0;
}
"""


def fma_peak_per_core() -> tuple[float, str]:
    """(GFLOP/s of one core, instruction set) from the FMA loop above."""
    flags = open("/proc/cpuinfo").read()
    isa, arch = ("AVX-512", "-mavx512f") if " avx512f" in flags else ("AVX2", "-mavx2")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "peak"
        subprocess.run(["gcc", "-O2", arch, "-mfma", "-x", "c", "-", "-o", str(exe)], input=PEAK_C, text=True,
                       check=True)
        runs = [float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()[0])
                for _ in range(3)]
    return max(runs), isa


KERNEL_ROWS = re.compile(r"conv2d|depthwise|dense|matmul|col2im")


@dataclass(frozen=True)
class Case:
    kernel: str
    shape: str
    model: onnx.ModelProto
    feed: dict
    flops: float


def _model(nodes, inputs: dict, output: tuple[str, list[int]], weights: dict) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "kernel", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in inputs.items()],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def cases(rng: np.random.Generator) -> list[Case]:
    def r(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def conv(kernel, cin, cout, size, k, stride, group=1):
        pad, out = k // 2, (size + 2 * (k // 2) - k) // stride + 1
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride] * 2,
                                pads=[pad] * 4, group=group)
        x = r(1, cin, size, size)
        model = _model([node], {"x": x}, ("y", [1, cout, out, out]), {"w": r(cout, cin // group, k, k), "b": r(cout)})
        kind = "" if group == 1 else " depthwise" if group == cin == cout else f" {group} groups"
        return Case(kernel, f"{cin}->{cout} {k}x{k}/{stride} at {size}x{size}" + kind,
                    model, {"x": x}, 2.0 * out * out * cout * (cin // group) * k * k)

    def dense(rows, depth, columns):
        x = r(1, rows, depth)
        model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": x}, ("y", [1, rows, columns]),
                       {"w": r(depth, columns)})
        return Case("dense", f"{rows}x{depth} · {depth}x{columns}", model, {"x": x}, 2.0 * rows * depth * columns)

    def batch_matmul(heads, rows, depth, columns):
        a, b = r(1, heads, rows, depth), r(1, heads, depth, columns)
        model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a, "b": b}, ("y", [1, heads, rows, columns]), {})
        return Case("batch matmul", f"{heads} x {rows}x{depth} · {depth}x{columns}", model, {"a": a, "b": b},
                    2.0 * heads * rows * depth * columns)

    def conv_transpose(cin, cout, size, k, stride):
        x = r(1, cin, size, size)
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride] * 2)
        out = (size - 1) * stride + k
        model = _model([node], {"x": x}, ("y", [1, cout, out, out]), {"w": r(cin, cout, k, k), "b": r(cout)})
        return Case("conv transpose", f"{cin}->{cout} {k}x{k}/{stride} at {size}x{size}", model, {"x": x},
                    2.0 * size * size * cin * k * k * cout)

    return [
        conv("conv 3x3", 64, 64, 56, 3, 1),
        conv("conv 3x3 (7 -> 24)", 7, 24, 56, 3, 1),
        conv("conv 3x3 strided", 64, 128, 56, 3, 2),
        conv("conv 1x1", 256, 64, 56, 1, 1),
        conv("first layer", 3, 32, 224, 3, 2),
        conv("depthwise 3x3", 128, 128, 56, 3, 1, group=128),
        conv("depthwise 5x5 strided", 96, 96, 56, 5, 2, group=96),
        conv("grouped 3x3", 128, 128, 28, 3, 1, group=4),
        dense(128, 384, 1536),
        dense(1, 1024, 1000),
        batch_matmul(12, 128, 32, 128),
        batch_matmul(12, 128, 128, 32),
        conv_transpose(24, 24, 160, 2, 2),
    ]


def median_seconds(run, repeat: int) -> float:
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_num_threads(args.threads)  # before the first kernel runs
    import onnxruntime as ort

    peak, isa = fma_peak_per_core()
    peak *= args.threads
    print(f"FMA peak ({isa} loop, {args.threads} thread(s)): {peak:.0f} GFLOP/s")
    print("GFLOP/s:")
    print(f"{'kernel':22s} {'shape':34s} {'qc kernel':>9s} {'qc run':>7s} {'ort run':>7s} {'kernel/peak':>11s} "
          f"{'qc/ort run':>10s}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases(np.random.default_rng(0))):
            artifact = qcompiler.compile(case.model, committed_logs=False).export(Path(tmp) / f"k{i}.so")
            model = qcompiler.load(artifact)
            session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            expected = session.run(None, case.feed)[0]
            got = model.run(case.feed)["y"]
            error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
            qc = case.flops / median_seconds(lambda: model.run(case.feed), args.repeat) / 1e9
            reference = case.flops / median_seconds(lambda: session.run(None, case.feed), args.repeat) / 1e9
            profile = model.profile(case.feed, repeat=args.repeat)
            kernel_us = sum(row.total_us for row in profile.rows if row.kind == "kernel" and KERNEL_ROWS.search(row.name))
            kernel = case.flops / kernel_us / 1e3
            print(f"{case.kernel:22s} {case.shape:34s} {kernel:9.1f} {qc:7.1f} {reference:7.1f} {kernel / peak:11.0%} "
                  f"{qc / reference:10.2f}"
                  + ("" if error < 1e-4 else f"  WRONG: max error {error:.1e} of the output's scale"))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
