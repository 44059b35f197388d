"""float32 FMA kernels (kernels/fp32.py): each kernel class against onnxruntime on odd shapes,
and no conv or dense left to a naive loop nest when there are no tuning records."""

from __future__ import annotations

import math
import re
import subprocess

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
    (8, 16, 3, 1, 1, 2, 9),      # grouped: 2 groups of 4 → 8 (8-lane vectors)
    (24, 96, 3, 2, 1, 3, 11),    # grouped, strided: 3 groups of 8 → 32
    (12, 24, 3, 1, 2, 6, 10),    # grouped, dilated: 6 groups of 2 → 4 (4-lane vectors)
    (64, 64, 1, 1, 1, 4, 7),     # grouped pointwise (ShuffleNet / ResNeXt style)
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


@pytest.mark.parametrize("channels, k, stride, dilation, pads, size", [
    (96, 3, 2, 1, [0, 0, 1, 1], 14),  # TensorFlow's SAME padding of a stride-2 layer: bottom and right only
    (32, 3, 1, 2, [2, 2, 2, 2], 9),   # dilated
    (24, 5, 1, 1, [2, 1, 0, 3], 8),   # a different padding on every side
])
def test_depthwise_reads_its_padding(tmp_path, channels, k, stride, dilation, pads, size):
    """A depthwise convolution tests each tap against its unpadded input instead of reading a
    padded copy: no pad kernel runs, and the result equals onnxruntime's."""
    top, left, bottom, right = pads
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride] * 2,
                              dilations=[dilation] * 2, pads=pads, group=channels)]
    out_h = (size + top + bottom - dilation * (k - 1) - 1) // stride + 1
    out_w = (size + left + right - dilation * (k - 1) - 1) // stride + 1
    model = make_model(nodes, [("x", [1, channels, size, size])], [("y", [1, channels, out_h, out_w])],
                       {"w": w(channels, 1, k, k), "b": w(channels)})
    feed = {"x": rng.standard_normal((1, channels, size, size)).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    assert_close_rel(got["y"], ort_run(model, feed)["y"], rtol=1e-5)
    assert_fma_kernels(kernels, ("depthwise_nhwc_f32",))
    assert not [name for name in kernels if "pad" in name], kernels


@pytest.mark.parametrize("batch, seq, k, n", [(1, 7, 384, 1536), (1, 32, 24, 200), (1, 128, 64, 7), (1, 1, 200, 3),
                                               (5, 3, 4, 24), (3, 7, 32, 40)])
def test_matmul_with_constant_weight_against_onnxruntime(tmp_path, batch, seq, k, n):
    """Rows of rank 3, batch > 1 included (a row tile that does not divide the tokens once gave
    wrong rows)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    model = make_model(nodes, [("x", [batch, seq, k])], [("y", [batch, seq, n])], {"w": w(k, n), "b": w(n)})
    feed = {"x": rng.standard_normal((batch, seq, k)).astype(np.float32)}
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


@pytest.mark.parametrize("heads, seq, depth", [(2, 7, 16), (3, 32, 24), (1, 128, 64)])
def test_attention_batch_matmuls_against_onnxruntime(tmp_path, heads, seq, depth):
    """QKᵀ (with the scale and mask as its epilogue), Softmax, then PV: two matmuls of activations."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    shape = [1, heads, seq, depth]
    model = make_model(nodes, [("q", shape), ("k", shape), ("v", shape)], [("y", shape)],
                       {"scale": np.float32(depth ** -0.5), "mask": w(1, 1, 1, seq)})
    feed = {name: rng.standard_normal(shape).astype(np.float32) for name in ("q", "k", "v")}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    assert_close_rel(got["y"], ort_run(model, feed)["y"], rtol=1e-5)
    assert_fma_kernels(kernels, ("batch_matmul_f32",))


def test_batch_matmul_broadcasts_batch_axes(tmp_path):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    model = make_model(nodes, [("a", [5, 9]), ("b", [3, 9, 20])], [("y", [3, 5, 20])])
    feed = {"a": rng.standard_normal((5, 9)).astype(np.float32), "b": rng.standard_normal((3, 9, 20)).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    np.testing.assert_allclose(got["y"], np.matmul(feed["a"], feed["b"]), rtol=1e-5, atol=1e-5)
    assert_fma_kernels(kernels, ("batch_matmul_f32",))


@pytest.mark.parametrize("cin, cout, k, stride, pad, out_pad, dilation, size", [
    (24, 24, 2, 2, 0, 0, 1, 10),   # 2x upsampling (a segmentation head: PP-OCR's detector)
    (24, 1, 2, 2, 0, 0, 1, 9),     # to one channel
    (7, 5, 3, 2, 1, 1, 1, 6),      # overlapping taps, padding, output padding
    (3, 8, 3, 1, 1, 0, 2, 7),      # dilation 2, stride 1
    (4, 6, 4, 3, 2, 0, 1, 5),      # kernel not a multiple of the stride
])
def test_conv_transpose_against_onnxruntime(tmp_path, cin, cout, k, stride, pad, out_pad, dilation, size):
    out = (size - 1) * stride - 2 * pad + dilation * (k - 1) + out_pad + 1
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride] * 2,
                              pads=[pad] * 4, output_padding=[out_pad] * 2, dilations=[dilation] * 2),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [("x", [1, cin, size, size])], [("y", [1, cout, out, out])],
                       {"w": w(cin, cout, k, k), "b": w(cout)})
    feed = {"x": rng.standard_normal((1, cin, size, size)).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    assert_close_rel(got["y"], ort_run(model, feed)["y"], rtol=1e-5)
    assert any("col2im_nhwc_f32" in name for name in kernels), kernels
    assert_fma_kernels(kernels, ("dense_f32",))


@pytest.mark.parametrize("shape, axis", [([2, 5, 33], -1), ([1, 3, 6625], -1), ([4, 16], 1), ([2, 7, 9], 1)])
def test_softmax_against_onnxruntime(tmp_path, shape, axis):
    """Softmax (after a masking Add, fused into it) over rows that are and are not whole vectors
    of 16, and over an inner axis; the last-axis ones on the vectorized kernel."""
    nodes = [helper.make_node("Add", ["x", "mask"], ["masked"]), helper.make_node("Softmax", ["masked"], ["y"], axis=axis)]
    model = make_model(nodes, [("x", shape)], [("y", shape)], {"mask": w(shape[-1])})
    feed = {"x": (rng.standard_normal(shape) * 8).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    np.testing.assert_allclose(got["y"], ort_run(model, feed)["y"], rtol=1e-5, atol=1e-7)
    if axis == -1 and shape[-1] >= 16:
        assert any("softmax" in name and source == "default" for name, source in kernels.items()), kernels


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("shape, keepdims", [([2, 3, 40], 1), ([5, 16], 0), ([3, 7], 1)])
def test_row_reductions_against_onnxruntime(tmp_path, op, shape, keepdims):
    """Max and min over the last axis: lane-wise (a tail beyond whole vectors of 16 included;
    rows shorter than a vector stay on TVM's loop), exact."""
    out = [*shape[:-1], 1] if keepdims else shape[:-1]
    model = make_model([helper.make_node(op, ["x"], ["y"], axes=[-1], keepdims=keepdims)], [("x", shape)],
                       [("y", out)], opset=17)
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    kernels, got = compiled_outputs(model, feed, tmp_path)
    np.testing.assert_array_equal(got["y"], ort_run(model, feed)["y"])
    lanewise = any(f"row_{op[6:].lower()}" in name and source == "default" for name, source in kernels.items())
    assert lanewise == (shape[-1] >= 16), kernels


def test_polynomial_transcendentals_against_exact_functions(tmp_path):
    """Erf, Tanh, Sigmoid and GELU run as vectorizable polynomials (kernels/vector_math.py):
    within 1e-6 (GELU 2e-6, whose 1 + erf cancels for x << 0) of the exact function in float64,
    over [-30, 30] and far outside it; the artifact calls no scalar libm function for them."""
    x = np.concatenate([np.linspace(-30, 30, 60001), [-1e4, -100.0, 100.0, 1e4, 0.0]]).astype(np.float32)
    ops = ("Erf", "Tanh", "Sigmoid", "Gelu")
    nodes = [helper.make_node(op, ["x"], [op.lower()]) for op in ops]
    model = make_model(nodes, [("x", [x.size])], [(op.lower(), [x.size]) for op in ops], opset=20)
    artifact = qcompiler.compile(model, committed_logs=False).export(tmp_path / "m.so")
    got = qcompiler.load(artifact).run({"x": x})
    imported = subprocess.run(["objdump", "-T", str(artifact)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\b(erff|expf|tanhf)\b", imported), imported
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    x64 = x.astype(np.float64)
    expected = {"erf": exact, "tanh": np.tanh(x64), "sigmoid": 0.5 * (1 + np.tanh(x64 / 2)),
                "gelu": 0.5 * x64 * (1 + np.array([math.erf(v) for v in x64 / math.sqrt(2)]))}
    for name, reference in expected.items():
        np.testing.assert_allclose(got[name], reference, rtol=1e-6, atol=2e-6 if name == "gelu" else 1e-6, err_msg=name)


def test_weight_packing_layouts():
    weight = np.arange(5 * 2 * 2 * 3, dtype=np.float32).reshape(5, 2, 2, 3)  # OHWI
    packed = pack_conv_weight(weight, 4)
    assert packed.shape == (2, 2, 2, 3, 4)
    assert packed[1, 1, 0, 2, 0] == weight[4, 1, 0, 2] and not packed[1, :, :, :, 1:].any()
    dense = np.arange(3 * 6, dtype=np.float32).reshape(3, 6)  # [K, N]
    packed = pack_dense_weight(dense, 4)
    assert packed.shape == (2, 3, 4) and packed[1, 2, 1] == dense[2, 5] and not packed[1, :, 2:].any()
    assert [lanes_for(c, 16) for c in (64, 200, 7, 12)] == [16, 8, 16, 4]
