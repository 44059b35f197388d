"""int8 on models beyond one float input and one output: several heads, integer inputs
(token ids, masks) with an embedding Gather, integer outputs (ArgMax, counts).

Each model is compiled with calibration, exported, loaded and run; float outputs are compared
with onnxruntime's fp32 outputs (quantization error, stated tolerance), integer outputs exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from conftest import assert_close_rel, make_model, ort_run
from qcompiler import CalibrationMethod, QConfig

VOCAB, SEQ, HIDDEN = 40, 8, 16


def two_head_net() -> onnx.ModelProto:
    """conv → relu → flatten → (Gemm → `reg`) and (Gemm → Softmax → `prob`): MTCNN's RNet shape."""
    r = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wa", "ba"], ["reg"], name="head_reg", transB=1),
        helper.make_node("Gemm", ["f", "wb", "bb"], ["logits"], name="head_cls", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
    ]
    inits = {"w": r.normal(size=(8, 3, 3, 3)) * 0.5, "b": r.normal(size=8) * 0.1,
             "wa": r.normal(size=(4, 8 * 8 * 8)) * 0.05, "ba": r.normal(size=4) * 0.1,
             "wb": r.normal(size=(2, 8 * 8 * 8)) * 0.05, "bb": r.normal(size=2) * 0.1}
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("reg", [1, 4]), ("prob", [1, 2])], inits)


def token_net() -> onnx.ModelProto:
    """int64 `ids` → embedding Gather, int64 `mask` → Cast → multiply, two MatMuls; outputs
    float `logits`, int64 `label` (ArgMax) and int64 `count` (ReduceSum of the mask)."""
    r = np.random.default_rng(4)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed", axis=0),
        helper.make_node("Cast", ["mask"], ["mf"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "last"], ["mu"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["e", "mu"], ["em"], name="masked"),
        helper.make_node("MatMul", ["em", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="fc1_relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"], name="fc2"),
        helper.make_node("ArgMax", ["logits"], ["label"], name="argmax", axis=-1, keepdims=0),
        helper.make_node("ReduceSum", ["mask", "last"], ["count"], name="count", keepdims=0),
    ]
    inits = [numpy_helper.from_array(r.normal(size=(VOCAB, HIDDEN)).astype(np.float32), "emb"),
             numpy_helper.from_array((r.normal(size=(HIDDEN, HIDDEN)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((r.normal(size=(HIDDEN, 4)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([-1], np.int64), "last")]
    graph = helper.make_graph(
        nodes, "token_net",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, SEQ]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [1, SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, SEQ, 4]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [1, SEQ]),
         helper.make_tensor_value_info("count", TensorProto.INT64, [1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def token_samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Token ids covering the whole vocabulary (each batch a permutation slice), random masks."""
    r = np.random.default_rng(seed)
    ids = np.concatenate([r.permutation(VOCAB) for _ in range(n * SEQ // VOCAB + 1)])[: n * SEQ]
    return [{"ids": ids[i * SEQ:(i + 1) * SEQ].reshape(1, SEQ).astype(np.int64),
             "mask": (r.random((1, SEQ)) > 0.25).astype(np.int64)} for i in range(n)]


def compile_run(model, calib, feeds, tmp_path, name, **options):
    artifact = qcompiler.compile(model, quantize="int8", calib=calib,
                                 config=QConfig(calibration=CalibrationMethod.MINMAX, holdout=4), **options)
    path = artifact.export(tmp_path / f"{name}.so")
    loaded = qcompiler.load(path)
    return artifact, [loaded.run(feed) for feed in feeds]


def test_two_output_model_quantizes_and_matches_onnxruntime(tmp_path):
    model = two_head_net()
    r = np.random.default_rng(5)
    calib = [{"x": r.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)]
    feeds = [{"x": r.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    artifact, results = compile_run(model, calib, feeds, tmp_path, "two_heads", report=tmp_path / "report.json")
    summary = artifact.metadata.quantization
    assert summary["integer_ops"] == {"conv2d": 1, "matmul": 2}, summary
    assert [o.name for o in artifact.metadata.outputs] == ["reg", "prob"]
    for feed, out in zip(feeds, results):
        ref = ort_run(model, feed)
        assert set(out) == {"reg", "prob"}
        assert_close_rel(out["reg"], ref["reg"], rtol=0.1)
        assert np.abs(out["prob"] - ref["prob"]).max() <= 0.05
    # The report compares every float output with fp32 on the held-back samples.
    metrics = json.loads((tmp_path / "report.json").read_text())["model"]
    assert set(metrics["outputs"]) == {"reg", "prob"}
    assert all(m["cosine"] > 0.95 for m in metrics["outputs"].values()), metrics


def test_int64_inputs_embedding_and_integer_outputs(tmp_path):
    model = token_net()
    feeds = token_samples(6, seed=8)
    artifact, results = compile_run(model, token_samples(20, seed=7), feeds, tmp_path, "tokens")
    summary = artifact.metadata.quantization
    assert summary["integer_ops"].get("matmul") == 2, summary  # both MatMuls in int8
    assert "relax.take" in summary["float_ops"]  # the embedding Gather stays a float table lookup
    assert {o.name: o.dtype for o in artifact.metadata.outputs} == {"logits": "float32", "label": "int64",
                                                                    "count": "int64"}
    for feed, out in zip(feeds, results):
        ref = ort_run(model, feed)
        assert out["label"].dtype == np.int64 and out["count"].dtype == np.int64
        np.testing.assert_array_equal(out["count"], ref["count"])
        assert_close_rel(out["logits"], ref["logits"], rtol=0.05)
        # ArgMax runs on the integer logits: it agrees exactly with the artifact's own logits
        # (dequantization is monotonic; ties go to the first index in both).
        np.testing.assert_array_equal(out["label"], np.argmax(out["logits"], axis=-1))
    agreement = np.mean([np.mean(out["label"] == ort_run(model, feed)["label"]) for feed, out in zip(feeds, results)])
    assert agreement >= 0.9


def test_cli_quantizes_integer_input_model(tmp_path):
    model_path = tmp_path / "tokens.onnx"
    onnx.save(token_net(), model_path)
    samples = token_samples(12, seed=9)
    np.savez(tmp_path / "calib.npz", **{k: np.stack([s[k][0] for s in samples]) for k in ("ids", "mask")})
    result = subprocess.run(
        [sys.executable, "-m", "qcompiler", "compile", str(model_path), "-o", str(tmp_path / "t.so"),
         "--quantize", "int8", "--calib", str(tmp_path / "calib.npz")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    feed = token_samples(1, seed=10)[0]
    out = qcompiler.load(tmp_path / "t.so").run(feed)
    np.testing.assert_array_equal(out["count"], ort_run(token_net(), feed)["count"])


def test_integer_calibration_data_of_the_wrong_dtype_is_one_line_error(tmp_path):
    samples = [{"ids": s["ids"].astype(np.int32), "mask": s["mask"]} for s in token_samples(4, seed=11)]
    with pytest.raises(qcompiler.QCompilerError) as err:
        qcompiler.compile(token_net(), quantize="int8", calib=samples)
    message = str(err.value)
    assert "\n" not in message and "'ids'" in message and "int32" in message and "int64" in message


def _calibration_peak_bytes(model, samples) -> int:
    """Peak of Python-tracked allocations (numpy arrays included) while quantizing on `samples`."""
    import tracemalloc

    from qcompiler.frontend import load_onnx
    from qcompiler.quantize import quantize

    imported = load_onnx(model)
    tracemalloc.start()
    try:
        quantize(imported, qcompiler.QConfig(), samples)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_calibration_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    """Samples from an iterable or a directory are read one at a time: calibrating on 3,000
    samples (36 MB of inputs) peaks within 10% (+1 MB) of calibrating on 100."""
    from onnx import helper as h

    rng = np.random.default_rng(3)
    shape = (1, 3, 32, 32)
    model = make_model([h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                       [("x", list(shape))], [("y", [1, 8, 32, 32])], {"w": rng.standard_normal((8, 3, 3, 3)) * 0.3})

    def stream(count):
        local = np.random.default_rng(count)
        return ({"x": local.standard_normal(shape).astype(np.float32)} for _ in range(count))

    small, large = _calibration_peak_bytes(model, stream(100)), _calibration_peak_bytes(model, stream(3000))
    assert large <= small * 1.1 + (1 << 20), (small, large)
    folders = {}
    for count in (100, 1500):
        folder = folders[count] = tmp_path / f"calib{count}"
        folder.mkdir()
        for i, sample in enumerate(stream(count)):
            np.save(folder / f"{i:05d}.npy", sample["x"])
    small, large = _calibration_peak_bytes(model, folders[100]), _calibration_peak_bytes(model, folders[1500])
    assert large <= small * 1.1 + (1 << 20), (small, large)


def test_calibration_holds_back_the_last_samples_of_a_stream():
    """The last `holdout` samples of an iterable are held back for the report, the rest calibrate;
    with no more samples than that, all of them do both."""
    from qcompiler.data import CalibrationData
    from qcompiler.tensor_spec import TensorSpec

    spec = [TensorSpec("x", (1, 2), "float32")]
    samples = [{"x": np.full((1, 2), i, np.float32)} for i in range(10)]
    data = CalibrationData(iter(samples), spec, keep=4)
    assert [int(s["x"][0, 0]) for s in data] == list(range(6))
    assert [int(s["x"][0, 0]) for s in data.holdout] == [6, 7, 8, 9]
    few = CalibrationData(iter(samples[:3]), spec, keep=4, limit=2)
    assert [int(s["x"][0, 0]) for s in few] == [0, 1] and len(few.holdout) == 3
    with pytest.raises(qcompiler.QCompilerError, match="has no samples"):
        list(CalibrationData(iter([]), spec, keep=4))
