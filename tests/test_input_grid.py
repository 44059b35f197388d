"""Model inputs on an 8-bit grid (passes/input_grid.py): detected on calibration data, rewritten
exactly in fp32 (against onnxruntime), and quantized without loss in the integer artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper
from tvm import relax

import qcompiler
from conftest import input_step_bound, make_model, ort_run
from qcompiler.frontend import load_onnx
from qcompiler.passes.calibrate import host_runner
from qcompiler.passes.graph import FunctionView, expose, op_name
from qcompiler.passes.input_grid import align_grid, detect_grid, grid_channel_axis
from qcompiler.passes.layout import channels_last
from qcompiler.quantize import host_target, quantize

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def images(count: int, seed: int, size: int = 16) -> list[np.ndarray]:
    """8-bit RGB pixels normalized per channel as torchvision does, [1, 3, size, size] float32."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 3, size, size))
    return [((p / 255.0 - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)[None] for p in pixels]


def smooth_images(count: int, seed: int, size: int = 16) -> list[np.ndarray]:
    """As `images`, of slowly varying pixels (a few levels from one pixel to the next), where the
    stem's edge filters see differences as small as the rounding of a re-quantized input."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = []
    for _ in range(count):
        (a, b), phase = rng.uniform(0.05, 0.15, (2, 3, 1, 1)), rng.uniform(0, 6.3, (3, 1, 1))
        pixels = np.round(128 + 120 * np.sin(a * i + b * j + phase))
        out.append(((pixels / 255.0 - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)[None])
    return out


def stem(nhwc: bool = False):
    """x → 3×3 stride-2 conv (edge filters: each tap set sums to 0) padded on the bottom and right
    only (TensorFlow "same") → Relu → 1×1 conv; with `nhwc`, x is [1, 16, 16, 3] and a Transpose
    leads to the conv (as in models exported from Keras)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 2.0, (8, 3, 3, 3))
    w1 -= w1.mean(axis=(2, 3), keepdims=True)
    transpose = [helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2])] if nhwc else []
    nodes = [*transpose,
             helper.make_node("Conv", ["x_nchw" if nhwc else "x", "w1", "b1"], ["c1"], name="stem", strides=[2, 2],
                              pads=[0, 0, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="head")]
    return make_model(nodes, [("x", [1, 16, 16, 3] if nhwc else [1, 3, 16, 16])], [("y", [1, 4, 8, 8])],
                      {"w1": w1, "b1": rng.normal(0, 0.1, 8), "w2": rng.normal(0, 0.5, (4, 8, 1, 1)),
                       "b2": np.zeros(4)})


def test_detect_grid_finds_each_channels_step_and_refuses_other_data():
    grid = detect_grid("x", images(4, seed=1))
    np.testing.assert_allclose(grid.step, 1 / (255 * STD), rtol=1e-5)
    values = images(1, seed=2)[0][0]
    for c in range(3):  # another sample's values sit on the grid too, inside the 256-level window
        index = (values[c].astype(np.float64) - grid.origin[c]) / grid.step[c]
        assert np.abs(index - np.round(index)).max() < 1e-3 and index.min() > -1e-3 and index.max() < 255 + 1e-3
    rng = np.random.default_rng(0)
    assert detect_grid("x", [rng.normal(size=(1, 3, 16, 16)).astype(np.float32)]) is None  # continuous values
    assert detect_grid("x", [(rng.integers(0, 1024, (1, 3, 16, 16)) / 1023).astype(np.float32)]) is None  # 10 bits
    constant = images(1, seed=3)[0].copy()
    constant[0, 1] = 0.5
    assert detect_grid("x", [constant]) is None  # one value: no step


@pytest.mark.parametrize("nhwc", [False, True])
def test_aligned_graph_computes_the_same_function_as_onnxruntime(nhwc):
    model = stem(nhwc)
    layout = (lambda x: x.transpose(0, 2, 3, 1).copy()) if nhwc else (lambda x: x)
    fp32, _ = channels_last(relax.transform.FoldConstant()(load_onnx(model, None).mod))
    axis = grid_channel_axis(fp32, "x")
    assert axis == (3 if nhwc else 1)
    first = FunctionView(fp32["main"]).bindings[0].value  # NHWC: the Transpose and channels-last's own cancel
    assert nhwc == (op_name(first) == "relax.nn.conv2d" and first.args[0].same_as(fp32["main"].params[0]))
    aligned, index = align_grid(fp32, detect_grid("x", [layout(x) for x in images(4, seed=1)], axis))
    assert index is not None and index.name == "grid_index"
    run = host_runner(aligned, host_target())
    for x in map(layout, images(3, seed=2)):
        np.testing.assert_allclose(run([x])[0], ort_run(model, {"x": x})["y"], atol=1e-4, rtol=0)


def test_pipeline_detects_an_nhwc_input_on_its_channel_axis():
    calib = [{"x": x.transpose(0, 2, 3, 1).copy()} for x in images(16, seed=1)]
    q = quantize(load_onnx(stem(nhwc=True), None), qcompiler.QConfig(), calib)
    assert [(grid.name, grid.axis) for grid in q.input_grids] == [("x", 3)]
    np.testing.assert_allclose(q.input_grids[0].step, 1 / (255 * STD), rtol=1e-5)


def test_grid_input_is_quantized_without_loss_in_the_artifact(tmp_path):
    model = stem()
    calib = [{"x": x} for x in smooth_images(32, seed=1)]
    evaluation = smooth_images(8, seed=2)
    imported = load_onnx(model, None)
    q = quantize(imported, qcompiler.QConfig(), calib)
    index = next(var for var in q.plan.keys if var.name == "grid_index")
    dequantized = q.dequantized_of[q.plan.keys[index]]
    exact = host_runner(expose(q.fp32, [index]), host_target())
    seen = host_runner(expose(q.qdq, [dequantized]), host_target())
    for x in evaluation:
        # All but the padding ring (the last row and column) are grid points: no rounding at all.
        np.testing.assert_allclose(seen([x])[-1][:, :-1, :-1], exact([x])[-1][:, :-1, :-1], atol=1e-3, rtol=0)
    # The integer artifact computes the same as the QDQ module, which tracks onnxruntime's fp32
    # model: y stays float, so they differ where requantization rounds r1 otherwise than fake
    # quantization, by at most one step of r1 per input of the head conv.
    so = qcompiler.compile(model, quantize="int8", calib=calib).export(tmp_path / "grid.so")
    simulated = host_runner(q.qdq, host_target())
    head = next(op for op in q.plan.ops if op.node == "head")
    bound = input_step_bound(q.calibration.qparams(q.config)[q.plan.keys[head.inputs[0]]].scale, head.weight,
                             head.weight_axis)
    for x in evaluation:
        got, fake, ref = qcompiler.load(so).run({"x": x})["y"], simulated([x])[0], ort_run(model, {"x": x})["y"]
        assert np.abs(got - fake).max() <= 1.01 * bound
        assert 10 * np.log10(np.sum(ref ** 2) / np.sum((got - ref) ** 2)) > 15  # measured 19-25 dB


def test_calibration_cache_keeps_the_grid(tmp_path):
    model = stem()
    cache = tmp_path / "calib.json"
    calib = [{"x": x} for x in images(16, seed=1)]
    first = qcompiler.compile(model, quantize="int8", calib=calib, calib_cache=cache).export(tmp_path / "a.so")
    grids = json.loads(cache.read_text())["input_grids"]
    assert [g["name"] for g in grids] == ["x"]
    again = qcompiler.compile(model, quantize="int8", calib=None, calib_cache=cache).export(tmp_path / "b.so")
    x = images(1, seed=4)[0]
    np.testing.assert_array_equal(qcompiler.load(first).run({"x": x})["y"], qcompiler.load(again).run({"x": x})["y"])


def test_cli_records_the_grid_and_can_turn_it_off(tmp_path):
    import onnx

    from qcompiler.cli import main

    onnx.save(stem(), tmp_path / "stem.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate(images(16, seed=1)))
    grids = {}
    for flags in ([], ["--no-input-grid"]):
        out = tmp_path / f"m{len(flags)}.so"
        assert main(["compile", str(tmp_path / "stem.onnx"), "-o", str(out), "--quantize", "int8",
                     "--calib", str(tmp_path / "calib.npz"), *flags]) == 0
        grids[bool(flags)] = json.loads(out.with_suffix(".json").read_text())["quantization"]["input_grids"]
    assert [g["name"] for g in grids[False]] == ["x"] and grids[True] == []


def test_detection_reads_ahead_of_a_one_shot_generator():
    """The grid is detected on the first samples of a generator, which calibration still sees:
    the peek yields them again (and every later sample once)."""
    from qcompiler.data import CalibrationData

    specs = load_onnx(stem(), None).inputs
    source = images(40, seed=1)
    data = CalibrationData(({"x": x} for x in source), specs, keep=4)
    ahead = data.peek(32)
    assert len(ahead) == 32 and all(np.array_equal(a["x"], x) for a, x in zip(ahead, source))
    seen = [s["x"] for s in data]
    assert len(seen) == 36 and all(np.array_equal(s, x) for s, x in zip(seen, source))
    assert len(data.holdout) == 4 and np.array_equal(data.holdout[-1]["x"], source[-1])


@pytest.mark.parametrize("nhwc", [False, True])
def test_export_qdq_quantizes_the_grid_index_as_the_artifact_does(tmp_path, nhwc):
    """export-qdq writes the grid index in front of the stem (Pad, Mul, Add, then uint8 QDQ with
    scale 1 and zero point 128; the stem's pads 0): onnxruntime's output stays within one step of
    r1 per head input of the artifact's, as fake quantization's does (test above)."""
    import onnx

    model = stem(nhwc)
    layout = (lambda x: x.transpose(0, 2, 3, 1).copy()) if nhwc else (lambda x: x)
    calib = [{"x": layout(x)} for x in smooth_images(32, seed=1)]
    qdq = onnx.load(qcompiler.export_qdq(model, calib, tmp_path / "stem.qdq.onnx"))
    ops = [n.op_type for n in qdq.graph.node if n.op_type != "DequantizeLinear" or "x" in n.input[0]]
    start = ops.index("Pad")
    assert ops[start:start + 5] == ["Pad", "Mul", "Add", "QuantizeLinear", "DequantizeLinear"]
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    grid_q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    assert constants[grid_q.input[1]] == 1.0 and constants[grid_q.input[2]] == 128
    conv = next(n for n in qdq.graph.node if n.name == "stem")
    assert next(a.ints for a in conv.attribute if a.name == "pads") == [0, 0, 0, 0]
    report = tmp_path / "r.json"
    so = qcompiler.compile(model, quantize="int8", calib=calib, report=report).export(tmp_path / "stem.so")
    r1 = next(layer["scale"] for layer in json.loads(report.read_text())["layers"] if layer["name"] == "stem")
    w2 = next(t for name, t in constants.items() if name.startswith("w2"))
    bound = input_step_bound(r1, w2, 0)
    artifact = qcompiler.load(so)
    for x in map(layout, smooth_images(8, seed=2)):
        assert np.abs(ort_run(qdq, {"x": x})["y"] - artifact.run({"x": x})["y"]).max() <= 1.01 * bound
