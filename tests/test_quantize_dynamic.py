"""int8-dynamic (passes/dynamic.py): weights int8 offline, activations quantized per row at run
time; no calibration."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from conftest import REPO, make_model, ort_run
from qcompiler.errors import QCompilerError
from qcompiler.passes.dynamic import quantize_weight

rng = np.random.default_rng(0)
DEPTH, HIDDEN, OUT = 48, 64, 24


def mlp():
    """x [2, 7, 48] → MatMul + bias → Relu → MatMul: a transformer block's feed-forward shape."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return make_model(nodes, [("x", [2, 7, DEPTH])], [("y", [2, 7, OUT])],
                      {"w1": rng.standard_normal((DEPTH, HIDDEN)) * 0.2, "b1": rng.standard_normal(HIDDEN) * 0.1,
                       "w2": rng.standard_normal((HIDDEN, OUT)) * 0.2})


def dynamic_matmul_reference(x: np.ndarray, w: np.ndarray, w_q: np.ndarray | None = None,
                             w_scale: np.ndarray | None = None) -> np.ndarray:
    """The formula of passes/dynamic.py in numpy (float64 except where it rounds), with the
    weight's own int8 values and scales where given."""
    if w_q is None:
        w_q, w_scale = quantize_weight(w)
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=-1, keepdims=True), 0).astype(np.float32)
    span = (hi - lo) / np.float32(255)
    scale = np.where(span > 0, span, np.float32(1)).astype(np.float32)
    inverse = np.float32(1) / scale
    zero_point = np.floor(-lo * inverse + np.float32(0.5))
    x_q = np.clip(np.floor(x * inverse + np.float32(0.5)) + zero_point, 0, 255).astype(np.int64)
    acc = x_q @ w_q.astype(np.int64) - zero_point.astype(np.int64) * w_q.astype(np.int64).sum(axis=0)
    return acc * scale.astype(np.float64) * w_scale.astype(np.float64)


def test_weight_quantization_is_symmetric_per_column():
    w = np.array([[1.0, 0.0, -0.5], [-2.0, 0.0, 0.25]], np.float32)
    w_q, scale = quantize_weight(w)
    np.testing.assert_allclose(scale, [2 / 127, 1.0, 0.5 / 127], rtol=1e-6)
    np.testing.assert_array_equal(w_q, [[64, 0, -127], [-127, 0, 64]])


def test_a_weight_on_an_int8_grid_keeps_its_integers():
    """An int8 model's weight, dequantized (q · s) and folded: per tensor, columns whose largest
    |q| is below 127 keep q and s (not a finer per-column grid); per column, q comes back too."""
    q = rng.integers(-127, 128, (40, 6)).astype(np.int8)
    q[:, 2] = np.clip(q[:, 2], -50, 50)
    w_q, scale = quantize_weight(q.astype(np.float32) * np.float32(0.0123))
    np.testing.assert_array_equal(w_q, q)
    np.testing.assert_allclose(scale, 0.0123, rtol=1e-6)
    q[0] = 127  # every column reaches 127: per-column scales
    column_scales = np.linspace(0.01, 0.2, 6).astype(np.float32)
    w_q, scale = quantize_weight(q.astype(np.float32) * column_scales)
    np.testing.assert_array_equal(w_q, q)
    np.testing.assert_allclose(scale, column_scales, rtol=1e-6)


def test_cast_mul_int8_weight_is_kept(tmp_path):
    """MatMul by Cast(int8) · scale (as int8-stored exports write it): the artifact computes with
    those integers and that scale exactly (the formula with them, not with re-quantized ones)."""
    q = rng.integers(-100, 101, (DEPTH, OUT)).astype(np.int8)
    q[0, 0] = 127  # per tensor: the largest |q| is 127, the other columns' below it
    nodes = [helper.make_node("Cast", ["wq"], ["wf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["wf", "s"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [("x", [2, 7, DEPTH])], [("y", [2, 7, OUT])], {"s": np.float32(0.02), "wq": q})
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(q, "wq"))  # int8, as exported
    x = rng.standard_normal((2, 7, DEPTH)).astype(np.float32)
    y = qcompiler.load(qcompiler.compile(model, quantize="int8-dynamic").export(tmp_path / "m.so")).run({"x": x})["y"]
    w = q.astype(np.float32) * np.float32(0.02)
    expected = dynamic_matmul_reference(x, w, q, np.full(OUT, 0.02, np.float32))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_dynamic_artifact_matches_the_formula_and_onnxruntime(tmp_path):
    model = mlp()
    artifact = qcompiler.compile(model, quantize="int8-dynamic")
    assert artifact.metadata.quantization["mode"] == "int8-dynamic"
    assert artifact.metadata.quantization["quantized_layers"] == 2
    dense = [k for k in artifact.metadata.kernels if "dense_u8s8" in k]
    assert len(dense) == 2, artifact.metadata.kernels  # both matmuls on the int8 kernels
    # the activation ranges are computed at run time: a row max and a row min kernel per layer,
    # lane-wise (kernels/vector_math.py)
    reductions = {k: source for k, source in artifact.metadata.kernels.items() if "row_max" in k or "row_min" in k}
    assert len(reductions) == 4 and set(reductions.values()) == {"default"}, artifact.metadata.kernels
    x = rng.standard_normal((2, 7, DEPTH)).astype(np.float32)
    y = qcompiler.load(artifact.export(tmp_path / "dyn.so")).run({"x": x})["y"]
    weights = {init.name: np.frombuffer(init.raw_data, np.float32).reshape(init.dims) if init.raw_data
               else np.array(init.float_data, np.float32).reshape(init.dims) for init in model.graph.initializer}
    hidden = np.maximum(dynamic_matmul_reference(x, weights["w1"]) + weights["b1"], 0).astype(np.float32)
    expected = dynamic_matmul_reference(hidden, weights["w2"])
    # float32 rescaling against the float64 formula; a rounding tie may move one level of one row
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=2e-3 * np.abs(expected).max())
    reference = ort_run(model, {"x": x})["y"]
    cosine = float((y * reference).sum() / np.linalg.norm(y) / np.linalg.norm(reference))
    assert cosine > 0.999


def test_rows_with_outliers_keep_their_own_range(tmp_path):
    """Per row: a token 1000× larger than the others does not flatten them to zero."""
    model = mlp()
    x = rng.standard_normal((2, 7, DEPTH)).astype(np.float32)
    x[0, 3] *= 1000
    y = qcompiler.load(qcompiler.compile(model, quantize="int8-dynamic").export(tmp_path / "d.so")).run({"x": x})["y"]
    reference = ort_run(model, {"x": x})["y"]
    for row in [(0, 0), (1, 5)]:
        a, b = y[row], reference[row]
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


def test_dynamic_takes_no_calibration_and_unknown_strategies_are_listed(caplog):
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        artifact = qcompiler.compile(mlp(), quantize="int8-dynamic", calib=[{"x": np.zeros((2, 7, DEPTH), np.float32)}])
    assert artifact.metadata.quantization["mode"] == "int8-dynamic"
    assert any("int8-dynamic takes no calibration data" in r.message for r in caplog.records)
    with pytest.raises(QCompilerError, match="expected one of: int8, int8-dynamic, int8-weight-only"):
        qcompiler.compile(mlp(), quantize="int4")
    with pytest.raises(QCompilerError, match="nothing to quantize with int8-dynamic"):
        conv = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 8])], [("y", [1, 8])])
        qcompiler.compile(conv, quantize="int8-dynamic")


def test_cli_int8_dynamic(tmp_path):
    model_path = tmp_path / "mlp.onnx"
    model_path.write_bytes(mlp().SerializeToString())
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "compile", str(model_path), "-o", str(tmp_path / "m.so"),
                           "--quantize", "int8-dynamic"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.so").exists()
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "compile", str(model_path), "-o", str(tmp_path / "n.so"),
                           "--quantize", "int5"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "int8-dynamic" in proc.stderr and not (tmp_path / "n.so").exists()
