"""float32 FMA kernels (kernels/fp32.py): each kernel class against onnxruntime on odd shapes,
and no conv or dense left to a naive loop nest when there are no tuning records."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import assert_close_rel, make_model, ort_run
from qcompiler.kernels.fp32 import lanes_for, pack_conv_weight, pack_dense_weight

rng = np.random.default_rng(7)


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.3


def compiled_outputs(model, feed, tmp_path):
    artifact = qcompiler.compile(model, committed_logs=False)
    loaded = qcompiler.load(artifact.export(tmp_path / "m.so"))
    return artifact.metadata.kernels, loaded.run(feed)


def assert_fma_kernels(kernels: dict, kinds: tuple[str, ...]) -> None:
    """Every conv / dense kernel is one of qcompiler's, with its default schedule (not naive)."""
    compute = {name: source for name, source in kernels.items()
               if any(k in name for k in ("conv2d", "depthwise", "dense", "matmul"))}
    assert compute, kernels
    for name, source in compute.items():
        assert source == "default" and any(kind in name for kind in kinds), (name, source)


@pytest.mark.parametrize("cin, cout, k, stride, dilation, group, size", [
    (3, 24, 3, 2, 1, 1, 17),     # a first layer: 3 input channels, stride 2, odd size
    (1, 7, 5, 1, 1, 1, 9),       # one input channel, 7 output channels (4-lane vectors, padded)
    (7, 200, 1, 1, 1, 1, 6),     # pointwise, 200 = 8 (mod 16) output channels
    (24, 40, 3, 1, 2, 1, 11),    # dilation 2
    (24, 24, 3, 2, 1, 24, 13),   # depthwise, strided
    (200, 200, 5, 1, 1, 200, 7),  # depthwise 5x5
])
def test_conv_against_onnxruntime(tmp_path, cin, cout, k, stride, dilation, group, size):
    pad = dilation * (k - 1) // 2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride] * 2,
                              dilations=[dilation] * 2, pads=[pad] * 4, group=group),
             helper.make_node("Relu", ["c"], ["y"])]
    out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    model = make_model(nodes, [("x", [1, cin, size, size])], [("y", [1, cout, out, out])],
                       {"w": w(cout, cin // group, k, k), "b": w(cout)})
    feed = {"x": rng.standard_normal((1, cin, size, size)).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    assert_close_rel(got["y"], ort_run(model, feed)["y"], rtol=1e-5)
    assert_fma_kernels(kernels, ("conv2d_nhwc_f32", "depthwise_nhwc_f32"))


@pytest.mark.parametrize("seq, k, n", [(7, 384, 1536), (32, 24, 200), (128, 64, 7), (1, 200, 3)])
def test_matmul_with_constant_weight_against_onnxruntime(tmp_path, seq, k, n):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    model = make_model(nodes, [("x", [1, seq, k])], [("y", [1, seq, n])], {"w": w(k, n), "b": w(n)})
    feed = {"x": rng.standard_normal((1, seq, k)).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    assert_close_rel(got["y"], ort_run(model, feed)["y"], rtol=1e-5)
    assert_fma_kernels(kernels, ("dense_f32",))


def test_gemm_with_transposed_weight(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    model = make_model(nodes, [("x", [1, 40])], [("y", [1, 10])], {"w": w(10, 40), "b": w(10)})
    feed = {"x": rng.standard_normal((1, 40)).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    assert_close_rel(got["y"], ort_run(model, feed)["y"], rtol=1e-5)
    assert_fma_kernels(kernels, ("dense_f32",))


def test_weight_packing_layouts():
    weight = np.arange(5 * 2 * 2 * 3, dtype=np.float32).reshape(5, 2, 2, 3)  # OHWI
    packed = pack_conv_weight(weight, 4)
    assert packed.shape == (2, 2, 2, 3, 4)
    assert packed[1, 1, 0, 2, 0] == weight[4, 1, 0, 2] and not packed[1, :, :, :, 1:].any()
    dense = np.arange(3 * 6, dtype=np.float32).reshape(3, 6)  # [K, N]
    packed = pack_dense_weight(dense, 4)
    assert packed.shape == (2, 3, 4) and packed[1, 2, 1] == dense[2, 5] and not packed[1, :, 2:].any()
    assert [lanes_for(c, 16) for c in (64, 200, 7, 12)] == [16, 8, 16, 4]
