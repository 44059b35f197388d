"""int8-weight-only (passes/weight_only.py): int8 weights in the artifact, float compute."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from conftest import REPO, make_model, ort_run
from qcompiler.passes.dynamic import quantize_weight
from qcompiler.weights import read as read_weights

rng = np.random.default_rng(0)
VOCAB, WIDTH, HIDDEN = 50, 32, 48


def model_with_every_kind(weights: dict[str, np.ndarray]):
    """ids → embedding Gather → MatMul → Relu → reshape to NCHW → 3×3 Conv: the three weight kinds."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
             helper.make_node("MatMul", ["e", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 16, 16, 3], np.int64))),
             helper.make_node("Reshape", ["r", "shape"], ["img"]),
             helper.make_node("Conv", ["img", "k"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("ids", [1, 16])], [("y", [1, 8, 16, 3])], weights)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    return model


def weights():
    return {"table": rng.standard_normal((VOCAB, WIDTH)).astype(np.float32),
            "w": (rng.standard_normal((WIDTH, HIDDEN)) * 0.2).astype(np.float32),
            "k": (rng.standard_normal((8, 16, 3, 3)) * 0.2).astype(np.float32)}


def dequantized(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as int8-weight-only stores them, back in float: per column of the matmul, per
    output channel of the conv, per row of the table."""
    q, s = quantize_weight(w["w"])
    out = {"w": q * s}
    q, s = quantize_weight(w["k"].reshape(8, -1).T)
    out["k"] = (q * s).T.reshape(w["k"].shape)
    q, s = quantize_weight(w["table"].T)
    out["table"] = (q * s).T
    return {k: v.astype(np.float32) for k, v in out.items()}


def test_weight_only_artifact_computes_with_the_int8_weights(tmp_path):
    """Against onnxruntime running the same model with the dequantized weights: float rounding
    only. The artifact stores int8 weights (a quarter of the bytes) and the kernels are the
    default float ones."""
    w = weights()
    model = model_with_every_kind(w)
    artifact = qcompiler.compile(model, quantize="int8-weight-only")
    assert artifact.metadata.quantization["mode"] == "int8-weight-only"
    assert artifact.metadata.quantization["quantized_layers"] == 3
    assert "naive" not in artifact.metadata.kernels.values()
    assert [k for k in artifact.metadata.kernels if "conv2d_nhwc_f32" in k]
    so = artifact.export(tmp_path / "wo.so")
    stored = read_weights(so)
    int8_bytes = sum(a.nbytes for a in stored if a.dtype == np.int8)
    assert int8_bytes >= sum(v.size for v in w.values())  # every weight as int8 (channels padded)
    assert sum(a.nbytes for a in stored if a.dtype == np.float32) < 0.1 * sum(v.nbytes for v in w.values())
    feed = {"ids": rng.integers(0, VOCAB, (1, 16)).astype(np.int64)}
    got = qcompiler.load(so).run(feed)["y"]
    reference = ort_run(model_with_every_kind(dequantized(w)), feed)["y"]
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    fp32 = ort_run(model, feed)["y"]
    assert float((got * fp32).sum() / np.linalg.norm(got) / np.linalg.norm(fp32)) > 0.999


@pytest.mark.parametrize("strategy", ["int8", "int8-dynamic"])
def test_int8_strategies_store_embedding_tables_as_int8(tmp_path, strategy):
    """Static and dynamic int8 leave gathers in float, but the table is stored as int8 rows with a
    scale each (as int8-weight-only stores it): no float32 copy of it in the artifact, and the
    outputs stay within the strategy's own error of fp32."""
    w = weights()
    model = model_with_every_kind(w)
    calib = [{"ids": rng.integers(0, VOCAB, (1, 16)).astype(np.int64)} for _ in range(8)]
    artifact = qcompiler.compile(model, quantize=strategy, calib=calib if strategy == "int8" else None)
    so = artifact.export(tmp_path / "m.so")
    stored = read_weights(so)
    assert [a for a in stored if a.dtype == np.int8 and a.shape == w["table"].shape]
    assert not [a for a in stored if a.dtype == np.float32 and a.size >= w["table"].size]
    feed = {"ids": rng.integers(0, VOCAB, (1, 16)).astype(np.int64)}
    got = qcompiler.load(so).run(feed)["y"]
    fp32 = ort_run(model, feed)["y"]
    assert float((got * fp32).sum() / np.linalg.norm(got) / np.linalg.norm(fp32)) > 0.999


def test_export_qdq_writes_the_int8_table(tmp_path):
    """export-qdq writes the table as the artifact stores it, int8 rows dequantized per row (axis
    0), and drops the float copy; onnxruntime on the export agrees with the artifact."""
    w = weights()
    model = model_with_every_kind(w)
    calib = [{"ids": rng.integers(0, VOCAB, (1, 16)).astype(np.int64)} for _ in range(8)]
    qdq = onnx.load(qcompiler.export_qdq(model, calib, tmp_path / "m.qdq.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    produced_by = {output: node for node in qdq.graph.node for output in node.output}
    (gather,) = [n for n in qdq.graph.node if n.op_type == "Gather"]
    dequantize = produced_by[gather.input[0]]
    rows, scales = (initializers[name] for name in dequantize.input[:2])
    assert dequantize.op_type == "DequantizeLinear" and helper.get_attribute_value(dequantize.attribute[0]) == 0
    assert rows.dtype == np.int8 and rows.shape == w["table"].shape and scales.shape == (VOCAB,)
    np.testing.assert_allclose(rows * scales[:, None], w["table"], atol=float(scales.max()) / 2 * 1.0001)
    assert not [a for a in initializers.values() if a.dtype == np.float32 and a.size >= w["table"].size]
    artifact = qcompiler.load(qcompiler.compile(model, quantize="int8", calib=calib).export(tmp_path / "m.so"))
    feed = {"ids": rng.integers(0, VOCAB, (1, 16)).astype(np.int64)}
    got, want = ort_run(qdq, feed)["y"], artifact.run(feed)["y"]
    # the same integer model; float epilogues may round a requantization tie the other way
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * float(np.abs(want).max()))


def test_cli_int8_weight_only(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_with_every_kind(weights()).SerializeToString())
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "compile", str(path), "-o", str(tmp_path / "m.so"),
                           "--quantize", "int8-weight-only"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    fp32 = subprocess.run([sys.executable, "-m", "qcompiler", "compile", str(path), "-o", str(tmp_path / "f.so")],
                          capture_output=True, text=True, cwd=REPO)
    assert fp32.returncode == 0, fp32.stderr
    assert (tmp_path / "m.so").stat().st_size < (tmp_path / "f.so").stat().st_size
