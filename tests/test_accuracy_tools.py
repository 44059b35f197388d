"""Accuracy tools: the fallback search, bias correction, equalization, AdaRound, export-qdq and the
HTML report, each against an independent reference (onnxruntime, numpy, constructed values)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace as dataclasses_replace

import numpy as np
import onnx
import pytest
from onnx import helper
from tvm import relax

import qcompiler
from conftest import input_step_bound, make_model, ort_run
from qcompiler.errors import QCompilerError


def outlier_mlp():
    """x[1,16] → fc1 → Relu → fc2 → Relu → fc3. fc2's weight row 0 is 1000 on an input that is
    always 0 (fc1's unit 0 has zero weights and bias −1): each column's int8 scale is 1000/127, so
    fc2's other weights (~0.3) all round to 0 in int8. fc2, and only fc2, cannot be quantized well."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (32, 16))
    b1 = np.full(32, 0.1)
    w1[0], b1[0] = 0.0, -1.0
    w2 = rng.normal(0, 0.3, (32, 32))
    w2[:, 0] = 1000.0
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], name="fc3", transB=1)]
    return make_model(nodes, [("x", [1, 16])], [("y", [1, 10])],
                      {"w1": w1, "b1": b1, "w2": w2, "b2": np.full(32, 0.05), "w3": rng.normal(0, 0.5, (10, 32)),
                       "b3": np.zeros(10)})


def conv_chain(activation: str = "Relu"):
    """x[1,3,16,16] → conv1 → activation → depthwise → Relu → conv3, conv1's channel ranges spread
    over 100× and the depthwise's inversely (what equalization evens out)."""
    rng = np.random.default_rng(0)
    spread = np.logspace(-1, 1, 8)
    bounds = ["zero", "six"] if activation == "Clip" else []  # Clip: ReLU6
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node(activation, ["c1", *bounds], ["a1"], name="act1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Relu", ["c2"], ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "w3"], ["y"], name="conv3")]
    return make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 4, 16, 16])],
                      {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)) * spread[:, None, None, None],
                       "b1": rng.normal(0, 0.1, 8) * spread,
                       "w2": rng.normal(0, 0.3, (8, 1, 3, 3)) / spread[:, None, None, None],
                       "b2": rng.normal(0, 0.1, 8), "w3": rng.normal(0, 0.3, (4, 8, 1, 1)),
                       **({"zero": np.float32(0), "six": np.float32(6)} if bounds else {})}, opset=14)


def input_step_effect(report: dict, model) -> float:
    """How far conv3's float output moves when each of its inputs, a2, is one quantization step off."""
    model = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    w3 = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w3"))
    step = next(layer["scale"] for layer in report["layers"] if layer["name"] == "dw")  # dw → Relu → a2
    return input_step_bound(step, w3, 0)


def samples(shape, count, seed, mean=0.0):
    rng = np.random.default_rng(seed)
    return [{"x": (mean + rng.normal(size=shape)).astype(np.float32)} for _ in range(count)]


def sqnr_db(got, ref):
    return 10 * np.log10(sum(float(np.sum(r * r)) for r in ref) / sum(float(np.sum((g - r) ** 2)) for g, r in zip(got, ref)))


# ------------------------------------------------------------------ accuracy-aware fallback

def test_fallback_search_chooses_the_one_bad_layer_and_only_it(tmp_path):
    model = outlier_mlp()
    evaluation = samples((1, 16), 64, seed=2)
    artifact = qcompiler.compile(model, quantize="int8", calib=samples((1, 16), 32, seed=1),
                                 accuracy_target="top1-agreement=0.95", eval_data=evaluation)
    result = artifact.metadata.quantization["accuracy_target"]
    assert result["fallback"] == ["fc2"]
    assert result["int8_value"] < 0.6 and result["realized_value"] >= 0.95
    assert artifact.metadata.quantization["skipped"] == ["fc2"]
    # The artifact's own top-1 agrees with onnxruntime's fp32 on the evaluation samples.
    model_so = qcompiler.load(artifact.export(tmp_path / "mlp.so"))
    agree = [int(np.argmax(model_so.run(s)["y"]) == np.argmax(ort_run(model, s)["y"])) for s in evaluation]
    assert np.mean(agree) >= 0.95



def test_fallback_within_a_least_int8_share_of_macs(caplog):
    """fc2 holds 1024 of the 1856 MACs (55%): with at least 50% of MACs in int8 it cannot fall
    back, the target is missed, the best set within the bound is kept and a warning says so; with
    at least 40% the search is as without a bound."""
    model, calib, evaluation = outlier_mlp(), samples((1, 16), 32, seed=1), samples((1, 16), 64, seed=2)
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        bounded = qcompiler.compile(model, quantize="int8", calib=calib, accuracy_target="top1-agreement=0.95",
                                    eval_data=evaluation, min_int8_macs=0.5)
    result = bounded.metadata.quantization["accuracy_target"]
    assert "fc2" not in result["fallback"] and not result["met"] and result["min_int8_macs"] == 0.5
    assert result["realized_value"] < 0.95 and bounded.metadata.quantization["int8_mac_fraction"] >= 0.5
    assert any("not met with at least 50% of MACs in int8: best" in r.getMessage() for r in caplog.records)
    loose = qcompiler.compile(model, quantize="int8", calib=calib, accuracy_target="top1-agreement=0.95",
                              eval_data=evaluation, min_int8_macs=0.4).metadata.quantization["accuracy_target"]
    assert loose["fallback"] == ["fc2"] and loose["met"]
    with pytest.raises(QCompilerError, match="least int8 share of MACs 1.5: expected a fraction from 0 to 1"):
        qcompiler.compile(model, quantize="int8", calib=calib, accuracy_target="top1-agreement=0.95",
                          eval_data=evaluation, min_int8_macs=1.5)
    with pytest.raises(QCompilerError, match="give --accuracy-target METRIC=VALUE and --eval DATA with it"):
        qcompiler.compile(model, quantize="int8", calib=calib, min_int8_macs=0.9)

def test_fallback_of_the_first_layer_unquantizes_the_model_input():
    """fc1 kept in fp32 leaves the model input unquantized: the plan after the search has fewer
    tensors than the search's (the realized model is checked on that plan)."""
    model = outlier_mlp()
    weights = {i.name: onnx.numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    weights["w1"][:, 5] = 1000.0  # fc1 now has the outlier, on input feature 5, which the samples keep at 0
    del model.graph.initializer[:]
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in weights.items())

    def zeroed(data):
        for sample in data:
            sample["x"][:, 5] = 0.0
        return data

    artifact = qcompiler.compile(model, quantize="int8", calib=zeroed(samples((1, 16), 32, seed=1)),
                                 accuracy_target="cosine=0.999", eval_data=zeroed(samples((1, 16), 32, seed=2)))
    result = artifact.metadata.quantization["accuracy_target"]
    assert "fc1" in result["fallback"] and result["realized_value"] >= 0.999


def test_a_top1_target_that_allows_no_disagreeing_row_is_warned_about(caplog):
    """top1-agreement >= 0.99 on 64 rows allows no disagreement (0.64 < 1): the search warns that
    one borderline row decides it and how many rows allow one (100); 0.95 allows 3, the other
    metrics count no rows."""
    outputs = lambda rows: [[np.zeros((1, 10), np.float32)] for _ in range(rows)]  # noqa: E731
    target = qcompiler.AccuracyTarget("top1-agreement", 0.99)
    assert qcompiler.accuracy.coarse_target(target, outputs(64)) == (
        "accuracy target top1-agreement >= 0.99 on 64 rows allows no row to disagree: one borderline row decides "
        "which ops stay in fp32; 100 rows or more allow one")
    assert qcompiler.accuracy.coarse_target(target, outputs(100)) is None
    assert qcompiler.accuracy.coarse_target(qcompiler.AccuracyTarget("top1-agreement", 0.95), outputs(64)) is None
    assert qcompiler.accuracy.coarse_target(qcompiler.AccuracyTarget("cosine", 0.999), outputs(8)) is None
    assert qcompiler.accuracy.coarse_target(qcompiler.AccuracyTarget("top1-agreement", 1.0), outputs(8)) is None
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        qcompiler.compile(outlier_mlp(), quantize="int8", calib=samples((1, 16), 32, seed=1),
                          accuracy_target="top1-agreement=0.99", eval_data=samples((1, 16), 64, seed=2))
    assert "on 64 rows allows no row to disagree" in caplog.text


def test_unreachable_target_says_so_in_one_line():
    with pytest.raises(QCompilerError, match=r"cannot be met: the fp32 model reaches 1 on these samples \(all int8: "):
        qcompiler.compile(outlier_mlp(), quantize="int8", calib=samples((1, 16), 16, seed=1),
                          accuracy_target="top1-agreement=1.5", eval_data=samples((1, 16), 8, seed=2))


def test_accuracy_target_bad_input():
    with pytest.raises(QCompilerError, match="is not one of top1-agreement, top1, cosine, sqnr-db"):
        qcompiler.AccuracyTarget.parse("accuracy=0.9")
    with pytest.raises(QCompilerError, match="expected METRIC=VALUE"):
        qcompiler.AccuracyTarget.parse("top1-agreement")
    with pytest.raises(QCompilerError, match="top1 needs labels"):
        qcompiler.AccuracyTarget.parse("top1=0.9")
    with pytest.raises(QCompilerError, match="give both --accuracy-target METRIC=VALUE and --eval DATA"):
        qcompiler.compile(outlier_mlp(), quantize="int8", calib=samples((1, 16), 8, seed=1),
                          accuracy_target="cosine=0.99")
    wrong_shape = r"^evaluation sample 0: input 'x' sample has shape \[15\], expected \[1, 16\]"
    with pytest.raises(QCompilerError, match=wrong_shape):
        qcompiler.compile(outlier_mlp(), quantize="int8", calib=samples((1, 16), 8, seed=1),
                          accuracy_target="cosine=0.99", eval_data=samples((15,), 4, seed=2))


def test_top1_with_labels_from_the_eval_npz_on_the_cli(tmp_path):
    model = outlier_mlp()
    onnx.save(model, tmp_path / "mlp.onnx")
    calib = samples((1, 16), 32, seed=1)
    evaluation = samples((1, 16), 48, seed=2)
    labels = np.array([int(np.argmax(ort_run(model, s)["y"])) for s in evaluation])
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"] for s in calib]))
    np.savez(tmp_path / "eval.npz", x=np.stack([s["x"] for s in evaluation]), labels=labels)
    run = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "mlp.onnx", "-o", tmp_path / "m.so",
                          "--quantize", "int8", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                          "--accuracy-target", "top1=0.95"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "kept in fp32 (1): fc2" in run.stdout and "int8 MACs:" in run.stdout and "latency" in run.stdout
    np.savez(tmp_path / "bad.npz", x=np.stack([s["x"] for s in evaluation]), labels=labels[:5])
    run = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "mlp.onnx", "-o", tmp_path / "b.so",
                          "--quantize", "int8", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "bad.npz",
                          "--accuracy-target", "top1=0.95"], capture_output=True, text=True)
    assert run.returncode == 2 and "5 labels for 48 samples" in run.stderr and not (tmp_path / "b.so").exists()
    run = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "mlp.onnx", "-o", tmp_path / "h.so",
                          "--quantize", "int8", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                          "--accuracy-target", "top1=0.95", "--fallback-precision", "bf16"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "kept out of int8 (1): fc2; on bf16 products: fc2; the rest in fp32" in run.stdout
    run = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "mlp.onnx", "-o", tmp_path / "c.so",
                          "--quantize", "int8", "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                          "--accuracy-target", "top1=0.95", "--min-int8-macs", "0.5", "--report", tmp_path / "c.html"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "not met within 50% int8 MACs; the best set is kept" in run.stdout
    assert "fc2" not in next(line for line in run.stdout.splitlines() if line.startswith("kept in fp32"))
    page = (tmp_path / "c.html").read_text()
    assert "top1 &ge; 0.95 with at least 50% of MACs in int8 on 48 samples: <strong>not met</strong>" in page


# ------------------------------------------------------------------ fallback precision

HALF_OFF = 2.0 ** -12  # below half a unit in the last place of 1 in bf16 (2^-8) and fp16 (2^-11)


def half_fallback_pair(peak: float = 2.0):
    """x[1,8,6,6] → conv_a (1×1, 32 channels, to be kept out of int8) → y1 (an output) → Relu →
    conv_b (3×3, int8) → y2. conv_a's weights are k·(1 + 2⁻¹²) with k in {±1, ±2} (and `peak`
    once): in bf16 and fp16 they round to k, so on inputs that are multiples of 1/4 conv_a
    computes Σ k·x exactly, and in float32 Σ k·(1 + 2⁻¹²)·x."""
    rng = np.random.default_rng(3)
    k = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(32, 8, 1, 1))
    k[0, 0, 0, 0] = peak
    nodes = [helper.make_node("Conv", ["x", "wa"], ["y1"], name="conv_a"),
             helper.make_node("Relu", ["y1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["y2"], name="conv_b", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", [1, 8, 6, 6])], [("y1", [1, 32, 6, 6]), ("y2", [1, 8, 6, 6])],
                       {"wa": k * (1 + HALF_OFF), "wb": rng.normal(0, 0.1, (8, 32, 3, 3))})
    return model, k


def quarter_samples(count, seed):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.integers(-8, 9, (1, 8, 6, 6)) / 4).astype(np.float32)} for _ in range(count)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fallback_precision_computes_the_kept_conv_in_half_precision(tmp_path, precision):
    model, k = half_fallback_pair()
    calib, evaluation = quarter_samples(16, seed=1), quarter_samples(4, seed=2)
    # No input grid: it would rewrite conv_a on the grid index with a float32 bias (exact, but not Σ k·x).
    config = qcompiler.QConfig(skip_nodes={"conv_a"}, holdout=0, input_grid=False,
                               fallback_precision=qcompiler.FallbackPrecision(precision))
    artifact = qcompiler.compile(model, quantize="int8", calib=calib, config=config, report=tmp_path / "r.html")
    quantization = artifact.metadata.quantization
    assert quantization["fallback_precision"] == {"dtype": precision, "layers": ["conv_a"]}
    assert f"<td>conv_a</td><td>skipped by configuration (Conv); runs on {precision} products</td>" in \
        (tmp_path / "r.html").read_text()
    assert quantization["skipped"] == ["conv_a"] and quantization["integer_ops"]
    half = qcompiler.load(artifact.export(tmp_path / "half.so"))
    fp32 = qcompiler.load(qcompiler.compile(model, quantize="int8", calib=calib, config=dataclasses_replace(
        config, fallback_precision=qcompiler.FallbackPrecision.FP32)).export(tmp_path / "fp32.so"))
    for sample in evaluation:
        exact = np.einsum("oc,chw->ohw", k[:, :, 0, 0], sample["x"][0].astype(np.float64))[None]
        got, kept_fp32, ref = half.run(sample), fp32.run(sample), ort_run(model, sample)
        np.testing.assert_allclose(got["y1"], exact, atol=1e-6)  # the half-precision weights: k
        np.testing.assert_allclose(kept_fp32["y1"], exact * (1 + HALF_OFF), rtol=1e-6, atol=1e-6)
        assert sqnr_db([got["y2"]], [ref["y2"]]) > 30  # conv_b is int8 in both


def test_fallback_precision_bad_input(tmp_path):
    model, _ = half_fallback_pair(peak=1e5)
    fp16 = qcompiler.QConfig(skip_nodes={"conv_a"}, input_grid=False,
                             fallback_precision=qcompiler.FallbackPrecision.FP16)
    with pytest.raises(QCompilerError, match=r"^the weight of convolution conv_a has values up to 1e\+05, "
                                             r"beyond float16's range \(±65504\): use --fallback-precision bf16"):
        qcompiler.compile(model, quantize="int8", calib=quarter_samples(8, seed=1), config=fp16)
    with pytest.raises(QCompilerError, match="fallback_precision fp16 applies to quantize='int8', not int8-dynamic"):
        qcompiler.compile(model, quantize="int8-dynamic", config=fp16)
    with pytest.raises(QCompilerError, match="^fallback_precision fp16 is for compile: export-qdq writes the ops kept "
                                             "out of int8 as float32 ONNX ops$"):
        qcompiler.export_qdq(model, quarter_samples(8, seed=1), tmp_path / "api.onnx", config=fp16)
    assert not (tmp_path / "api.onnx").exists()
    onnx.save(model, tmp_path / "pair.onnx")
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"] for s in quarter_samples(8, seed=1)]))
    run = subprocess.run([sys.executable, "-m", "qcompiler", "export-qdq", tmp_path / "pair.onnx", "--calib",
                          tmp_path / "calib.npz", "-o", tmp_path / "out.onnx", "--fallback-precision", "bf16"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "export-qdq writes the ops kept out of int8 as float32" in run.stderr
    assert not (tmp_path / "out.onnx").exists()
    run = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "pair.onnx", "-o",
                          tmp_path / "m.so", "--fallback-precision", "bf16"], capture_output=True, text=True)
    assert run.returncode == 2 and "--fallback-precision need --quantize int8" in run.stderr


# ------------------------------------------------------------------ bias correction

def shifted_gemm():
    """x (mean 5) → Gemm whose weights all lie 0.4 of a step above an integer step of the column's
    scale s = 0.01: rounding to nearest moves every output by −0.4·s·Σ E[x] = −0.3."""
    rng = np.random.default_rng(0)
    w = (rng.integers(-100, 100, (8, 16)) + 0.4) * 0.01
    w[:, 0] = 1.27
    return make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                      [("x", [1, 16])], [("y", [1, 8])], {"w": w, "b": np.zeros(8)})


def test_bias_correction_removes_a_constructed_shift(tmp_path):
    model = shifted_gemm()
    calib = samples((1, 16), 64, seed=1, mean=5.0)
    evaluation = samples((1, 16), 64, seed=2, mean=5.0)
    ref = np.concatenate([ort_run(model, s)["y"] for s in evaluation])
    shifts = {}
    for on in (False, True):
        config = qcompiler.QConfig(bias_correction=on, calibration=qcompiler.CalibrationMethod.MINMAX)
        so = qcompiler.compile(model, quantize="int8", calib=calib, config=config).export(tmp_path / f"bc{on}.so")
        got = np.concatenate([qcompiler.load(so).run(s)["y"] for s in evaluation])
        shifts[on] = np.median(np.abs((got - ref).mean(axis=0)))
    assert abs(shifts[False] - 0.3) < 0.05  # the constructed shift, −0.4 · 0.01 · 15 · 5
    assert shifts[True] < 0.03


# ------------------------------------------------------------------ equalization

def _fp32_and_equalized(activation):
    from qcompiler.frontend import load_onnx
    from qcompiler.passes.equalize import equalize
    from qcompiler.passes.layout import channels_last

    fp32, _ = channels_last(relax.transform.FoldConstant()(load_onnx(conv_chain(activation), None).mod))
    return fp32, *equalize(fp32)


@pytest.mark.parametrize("activation", ["Relu", "Clip"])
def test_equalization_keeps_fp32_outputs_and_evens_ranges(activation):
    from qcompiler.passes.calibrate import host_runner
    from qcompiler.passes.graph import FunctionView, op_name
    from qcompiler.quantize import host_target

    fp32, equalized, result = _fp32_and_equalized(activation)
    assert len(result.pairs) == 2 and not result.refused
    x = samples((1, 3, 16, 16), 1, seed=3)[0]["x"]
    before, after = host_runner(fp32, host_target())([x])[0], host_runner(equalized, host_target())([x])[0]
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    convs = [FunctionView(equalized["main"]).constant(b.value.args[1]) for b in FunctionView(equalized["main"]).bindings
             if op_name(b.value) == "relax.nn.conv2d"]
    first = np.abs(convs[0]).reshape(8, -1).max(axis=1)
    assert first.max() / first.min() < 10  # was 100× (logspace(-1, 1)) times the random spread


def test_equalization_is_refused_across_hardswish():
    fp32, equalized, result = _fp32_and_equalized("HardSwish")
    assert [op for _, op in result.refused] == ["add, multiply, clip, divide"]
    assert len(result.pairs) == 1  # the depthwise → conv3 pair, through ReLU, still qualifies


def offset_chain():
    """x[1,2,16,16] → conv1 → Relu → depthwise → Relu → conv3. x's channel 1 is 100× smaller than
    channel 0, and conv1's weights on it grow over 100× from row to row: the rows' ranges spread
    while their outputs, the activation's channels, stay alike. Classic equalization divides
    the rows by up to 10× and so spreads the activation's ranges."""
    rng = np.random.default_rng(4)
    w1 = rng.normal(0, 0.5, (8, 2, 3, 3))
    w1[:, 1] = np.sign(rng.normal(size=(8, 3, 3))) * 0.5 * np.logspace(0, 2, 8)[:, None, None]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
             helper.make_node("Conv", ["a2", "w3"], ["y"], name="conv3")]
    return make_model(nodes, [("x", [1, 2, 16, 16])], [("y", [1, 4, 16, 16])],
                      {"w1": w1, "w2": rng.normal(0, 0.3, (8, 1, 3, 3)), "w3": rng.normal(0, 0.3, (4, 8, 1, 1))})


def offset_samples(count, seed):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.normal(size=(1, 2, 16, 16)) * np.array([1.0, 0.01])[:, None, None]).astype(np.float32)}
            for _ in range(count)]


@pytest.mark.parametrize("per_channel", [True, False])
def test_equalization_keeps_only_rescalings_that_lower_the_noise(per_channel, monkeypatch, tmp_path):
    """With per-channel weights, rescaling conv1's rows leaves their rounding error as it was and
    spreads the activation's ranges: equalization leaves the chain alone (the artifact is the
    plain one), and forcing every pair measures no better. With per-tensor weights it evens
    conv1's rows: kept, and better than plain. A calibration cache keeps the decision."""
    import qcompiler.quantize as pipeline

    model = offset_chain()
    calib, evaluation = offset_samples(16, seed=1), offset_samples(8, seed=2)
    ref = [ort_run(model, s)["y"] for s in evaluation]

    def measured(equalization, calib=calib, cache=None):
        config = qcompiler.QConfig(per_channel=per_channel, equalization=equalization)
        artifact = qcompiler.compile(model, quantize="int8", calib=calib, config=config, calib_cache=cache)
        runtime = qcompiler.load(artifact.export(tmp_path / "m.so"))
        return [runtime.run(s)["y"] for s in evaluation]

    plain, kept = measured(False), measured(True, cache=tmp_path / "calib.json")
    cached = measured(True, calib=None, cache=tmp_path / "calib.json")
    choose = pipeline.choose
    monkeypatch.setattr(pipeline, "choose", lambda mod, pairs, *args: [True] * len(pairs))
    forced = measured(True)
    flags = json.loads((tmp_path / "calib.json").read_text())["equalization"]
    monkeypatch.setattr(pipeline, "choose", choose)
    for a, b in zip(cached, kept):
        np.testing.assert_array_equal(a, b)
    if per_channel:  # measured: plain = kept 13.80 dB, forced 13.73 dB
        assert flags == [False, False]
        for a, b in zip(kept, plain):
            np.testing.assert_array_equal(a, b)
        assert sqnr_db(forced, ref) <= sqnr_db(kept, ref)
    else:  # measured: plain 11.39 dB, kept 13.57 dB
        assert flags[0] is True
        assert sqnr_db(kept, ref) > sqnr_db(plain, ref) + 1.5


@pytest.mark.parametrize("flags, message", [
    ("yes", r'equalization field is "yes", expected a list of 2 true/false flags'),
    ([True], "holds 1 equalization flags, this model has 2 pairs of layers"),
])
def test_a_calibration_cache_with_bad_equalization_flags_is_refused(tmp_path, flags, message):
    model = offset_chain()
    cache = tmp_path / "calib.json"
    config = qcompiler.QConfig(equalization=True)
    qcompiler.compile(model, quantize="int8", calib=offset_samples(8, seed=1), config=config, calib_cache=cache)
    payload = json.loads(cache.read_text())
    payload["equalization"] = flags
    cache.write_text(json.dumps(payload))
    with pytest.raises(QCompilerError, match=message):
        qcompiler.compile(model, quantize="int8", calib=None, config=config, calib_cache=cache)


def test_recovery_techniques_on_the_integer_artifact(tmp_path):
    """Each switch works end to end; equalization recovers the spread-range chain (measured > 10 dB)."""
    model = conv_chain("Relu")
    calib = samples((1, 3, 16, 16), 16, seed=1)
    evaluation = samples((1, 3, 16, 16), 8, seed=2)
    ref = [ort_run(model, s)["y"] for s in evaluation]
    sqnr = {}
    for name, config in {"plain": qcompiler.QConfig(), "equalize": qcompiler.QConfig(equalization=True),
                         "all": qcompiler.QConfig(equalization=True, adaround=True, bias_correction=True)}.items():
        so = qcompiler.compile(model, quantize="int8", calib=calib, config=config).export(tmp_path / f"{name}.so")
        sqnr[name] = sqnr_db([qcompiler.load(so).run(s)["y"] for s in evaluation], ref)
    assert sqnr["equalize"] > sqnr["plain"] + 10 and sqnr["all"] > sqnr["plain"] + 10


def test_adaround_rounding_beats_nearest_on_its_objective():
    from qcompiler.passes.adaround import round_adaptively

    rng = np.random.default_rng(0)
    z = rng.normal(size=(1, 512, 24))  # correlated inputs: where choosing the rounding pays
    x = z @ rng.normal(size=(24, 24)) * 0.5 + z.mean(axis=2, keepdims=True) * 3
    w = rng.normal(size=(1, 6, 24))
    scales = np.abs(w).max(axis=2) / 127 * 16  # coarse steps: rounding matters
    nearest = np.clip(np.round(w / scales[..., None]), -127, 127)
    learned = round_adaptively(np.swapaxes(x, 1, 2) @ x / x.shape[1], w, scales, iterations=300)
    error = lambda q: float(np.sum(np.einsum("grk,gok->gro", x, w - scales[..., None] * q) ** 2))
    assert np.all(np.abs(learned - w / scales[..., None]) < 1.0)  # still a rounding, up or down
    assert error(learned) < 0.9 * error(nearest)  # measured 0.80


def test_adaround_gram_matches_the_convolution_it_models():
    """tr(E G Eᵀ) from the Gram matrix of all patches equals the mean square output of convolving the
    input with the weight error E (a direct numpy convolution: grouped, strided, asymmetric padding)."""
    from qcompiler.passes.adaround import InputGrams
    from qcompiler.passes.annotate import QuantizedOp

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 6, 4))  # NHWC, 2 samples in one tensor
    error = rng.normal(size=(6, 3, 2, 2))  # OHWI, 2 groups of 2 input channels → 3 outputs each
    op = QuantizedOp(var="conv", op="relax.nn.conv2d", node=None, inputs=[], output=None, weight=error,
                     kernel_layout="OHWI", groups=2, conv_geometry=((2, 1), (1, 2), (1, 0, 0, 2)))
    grams = InputGrams(seed=0)
    grams.add(op, x)
    rows = error.reshape(2, 3, -1)  # [G, O/G, K], K in (kh, kw, c) order as the patches
    predicted = sum(np.trace(rows[g] @ grams.gram("conv")[g] @ rows[g].T) for g in range(2))

    padded = np.pad(x, ((0, 0), (1, 0), (0, 2), (0, 0)))
    out_h, out_w = (padded.shape[1] - 3) // 2 + 1, (padded.shape[2] - 2 * 1 - 1) // 1 + 1
    y = np.zeros((2, out_h, out_w, 6))
    for o in range(6):
        group = o // 3
        for i in range(out_h):
            for j in range(out_w):
                for a in range(3):
                    for b in range(2):
                        y[:, i, j, o] += padded[:, 2 * i + a, j + 2 * b, 2 * group:2 * group + 2] @ error[o, a, b]
    assert grams.rows["conv"] == 2 * out_h * out_w
    np.testing.assert_allclose(predicted, np.sum(y ** 2) / (2 * out_h * out_w), rtol=1e-10)

def test_adaround_bounds_by_hand():
    """Layers over the Gram bound keep nearest rounding; the rest are learned cheapest step first
    until the step budget or the total Gram budget is spent (O·K² per step, G·K² Gram values)."""
    from qcompiler.passes.adaround import gram_elements, learned_layers, step_macs
    from qcompiler.passes.annotate import QuantizedOp

    def layer(name, op, shape, axis, groups=1):
        return QuantizedOp(var=name, op=op, node=name, inputs=[], output=None, weight=np.zeros(shape, np.float32),
                           weight_axis=axis, kernel_layout="OIHW", groups=groups)

    dense = layer("dense", "relax.matmul", (4, 3), 1)  # K 4, O 3
    grouped = layer("grouped", "relax.nn.conv2d", (8, 2, 3, 3), 0, groups=4)  # K 18 per group, O 8
    wide = layer("wide", "relax.nn.conv2d", (2, 100, 1, 1), 0)  # K 100, O 2
    assert [step_macs(op) for op in (dense, grouped, wide)] == [48, 2592, 20000]
    assert [gram_elements(op) for op in (dense, grouped, wide)] == [16, 1296, 10000]
    names = lambda ops: [op.node for op in ops]
    learned, nearest = learned_layers([wide, dense, grouped], max_gram_elements=5000, max_step_macs=10**6)
    assert names(learned) == ["dense", "grouped"] and names(nearest) == ["wide"]
    learned, nearest = learned_layers([wide, dense, grouped], max_gram_elements=10**6, max_step_macs=2600)
    assert names(learned) == ["dense"] and names(nearest) == ["wide", "grouped"]
    learned, _ = learned_layers([wide, dense, grouped], max_gram_elements=10**6, max_step_macs=22640)
    assert names(learned) == ["wide", "dense", "grouped"]
    learned, nearest = learned_layers([wide, dense, grouped], max_gram_elements=10**6, max_step_macs=10**6,
                                      max_total_gram_elements=11311)  # 16 + 1296 + 10000 = 11312
    assert names(learned) == ["dense", "grouped"] and names(nearest) == ["wide"]


def test_adaround_keeps_nearest_rounding_on_a_layer_too_wide_for_its_gram(tmp_path, caplog):
    """A matmul with K = 8193 inputs (a K×K Gram of 67 M values, over the bound) is left to nearest
    rounding, named in a warning and counted in the metadata; the other layer is learned, and the
    artifact still agrees with onnxruntime."""
    from qcompiler.passes.adaround import MAX_GRAM_ELEMENTS

    k = 8193
    assert k * k > MAX_GRAM_ELEMENTS
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="wide"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="narrow")]
    model = make_model(nodes, [("x", [1, k])], [("y", [1, 4])],
                       {"w1": rng.normal(0, 0.02, (k, 16)), "w2": rng.normal(0, 0.3, (16, 4))})
    calib = [{"x": rng.normal(size=(1, k)).astype(np.float32)} for _ in range(8)]
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        artifact = qcompiler.compile(model, quantize="int8", calib=calib, config=qcompiler.QConfig(adaround=True))
    assert "adaround: 1 of 2 layers keep rounding to nearest" in caplog.text and ": wide" in caplog.text
    assert artifact.metadata.quantization["adaround"] == {"layers": 2, "learned": 1}
    loaded = qcompiler.load(artifact.export(tmp_path / "wide.so"))
    evaluation = [{"x": rng.normal(size=(1, k)).astype(np.float32)} for _ in range(4)]
    reference = [ort_run(model, s)["y"] for s in evaluation]
    assert sqnr_db([loaded.run(s)["y"] for s in evaluation], reference) > 25  # measured 28.2


def test_equalized_relu6_clamps_per_channel_in_integers_and_in_the_qdq_export(tmp_path):
    """ReLU6 after equalization is min(relu(x), 6/s) per channel: the artifact stays all-integer
    (no float minimum), gains SQNR, and onnxruntime runs the exported QDQ model within one output step."""
    model = conv_chain("Clip")
    calib = samples((1, 3, 16, 16), 16, seed=1)
    evaluation = samples((1, 3, 16, 16), 8, seed=2)
    ref = [ort_run(model, s)["y"] for s in evaluation]
    config = qcompiler.QConfig(equalization=True)
    plain = qcompiler.load(qcompiler.compile(model, quantize="int8", calib=calib).export(tmp_path / "plain.so"))
    artifact = qcompiler.compile(model, quantize="int8", calib=calib, config=config, report=tmp_path / "r.json")
    assert "relax.minimum" not in artifact.metadata.quantization["float_ops"]
    equalized = qcompiler.load(artifact.export(tmp_path / "eq.so"))
    gain = sqnr_db([equalized.run(s)["y"] for s in evaluation], ref) - sqnr_db([plain.run(s)["y"] for s in evaluation], ref)
    assert gain > 1.0  # measured 2.8 dB
    qdq = onnx.load(qcompiler.export_qdq(model, calib, tmp_path / "eq.qdq.onnx", config=config))
    assert [n.op_type for n in qdq.graph.node if "Linear" not in n.op_type] == ["Conv", "Relu", "Min", "Conv", "Relu", "Conv"]
    step = input_step_effect(json.loads((tmp_path / "r.json").read_text()), model)
    for s in evaluation:
        assert np.abs(ort_run(qdq, s)["y"] - equalized.run(s)["y"]).max() <= step * 1.001


# ------------------------------------------------------------------ export-qdq

def test_export_qdq_runs_in_onnxruntime_and_agrees_with_the_artifact(tmp_path):
    model = conv_chain("HardSwish")
    onnx.save(model, tmp_path / "chain.onnx")
    calib = samples((1, 3, 16, 16), 16, seed=1)
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"][0] for s in calib]))
    run = subprocess.run([sys.executable, "-m", "qcompiler", "export-qdq", tmp_path / "chain.onnx", "--calib",
                          tmp_path / "calib.npz", "--bias-correction", "-o", tmp_path / "chain.qdq.onnx"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    qdq = onnx.load(tmp_path / "chain.qdq.onnx")
    ops = [n.op_type for n in qdq.graph.node]
    # 4 tensors, 3 weights; y, which no quantized op reads, stays float
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 7
    config = qcompiler.QConfig(bias_correction=True)
    so = qcompiler.compile(tmp_path / "chain.onnx", quantize="int8", calib=tmp_path / "calib.npz", config=config,
                           report=tmp_path / "r.json").export(tmp_path / "chain.so")
    step = input_step_effect(json.loads((tmp_path / "r.json").read_text()), tmp_path / "chain.onnx")
    model_so = qcompiler.load(so)
    for s in samples((1, 3, 16, 16), 4, seed=5):
        got, want = ort_run(qdq, s)["y"], model_so.run(s)["y"]
        assert np.abs(got - want).max() <= step * 1.001


def test_export_qdq_bad_input(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    run = subprocess.run([sys.executable, "-m", "qcompiler", "export-qdq", tmp_path / "broken.onnx", "--calib",
                          tmp_path / "none.npz", "-o", tmp_path / "out.onnx"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and not (tmp_path / "out.onnx").exists()
    onnx.save(conv_chain(), tmp_path / "chain.onnx")
    run = subprocess.run([sys.executable, "-m", "qcompiler", "export-qdq", tmp_path / "chain.onnx",
                          "-o", tmp_path / "out.onnx"], capture_output=True, text=True)
    assert run.returncode == 2 and "needs calibration data" in run.stderr and not (tmp_path / "out.onnx").exists()


# ------------------------------------------------------------------ HTML report

def test_a_report_path_names_its_format(tmp_path):
    """JSON for .json, the page for .html; anything else is refused before compiling."""
    with pytest.raises(QCompilerError, match=r"^report .*r\.txt: expected a path ending in \.json \(the per-layer "
                                             r"report\) or \.html \(the page with charts\)$"):
        qcompiler.compile(outlier_mlp(), quantize="int8", calib=samples((1, 16), 8, seed=1), report=tmp_path / "r.txt")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian package chromium is not installed")
def test_html_report_draws_its_charts_in_chromium(tmp_path):
    model = outlier_mlp()
    qcompiler.compile(model, quantize="int8", calib=samples((1, 16), 24, seed=1), report=tmp_path / "report.html",
                      accuracy_target="top1-agreement=0.95", eval_data=samples((1, 16), 32, seed=2))
    page = (tmp_path / "report.html").read_text()
    assert "top1-agreement &ge; 0.95 on 32 samples: met." in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<rect" not in page  # every chart element is drawn by the page's script
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="bar"') >= 2 + 40  # SQNR bars of fc1 and fc3, histogram bars
    assert dom.count('class="node"') == 5  # the five ONNX nodes
    assert dom.count('fill="#e67e22"') >= 1  # fc2, kept in fp32, in the fallback colour


# ------------------------------------------------------------------ smoothing (SmoothQuant)

SMOOTH_GAIN = np.where(np.arange(16) == 5, 50.0, 1.0)


def outlier_linear_pair():
    """x[1,8,16] → LayerNorm whose channel 5 has gain 50 → n; y1 = n·W1, y2 = n·W2: two linear
    layers reading one activation with an outlier channel (a transformer's Q and V), whose
    weights on that channel are 50× smaller (it adds as much to the outputs as another)."""
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(0, 0.3, (16, 12)), rng.normal(0, 0.3, (16, 12))
    w1[5] /= 50
    w2[5] /= 50
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w1"], ["y1"], name="linear1"),
             helper.make_node("MatMul", ["n", "w2"], ["y2"], name="linear2")]
    return make_model(nodes, [("x", [1, 8, 16])], [("y1", [1, 8, 12]), ("y2", [1, 8, 12])],
                      {"g": SMOOTH_GAIN, "b": np.zeros(16), "w1": w1, "w2": w2})


def test_smoothing_scales_by_hand():
    from qcompiler.passes.smooth import smoothing_scales

    weights = [np.array([[1.0, -4.0], [0.0, 0.0], [2.0, 1.0]]), np.array([[0.5, 0.5], [3.0, 0.0], [-8.0, 0.0]])]
    # s_k = sqrt(max|X_k|) / sqrt(max over both weights of |W[k, :]|); channel 1 is 0 in x: s = 1
    np.testing.assert_allclose(smoothing_scales(np.array([16.0, 0.0, 2.0]), weights), [4 / 2, 1.0, np.sqrt(2 / 8)])


def test_smoothing_keeps_fp32_outputs_and_evens_ranges():
    """The rewrite is exact in fp32 (1e-5 relative), and after it each channel's activation range
    equals its weights' range: max|X_k| / s_k = s_k · max_m max|W_m[k, :]|."""
    from qcompiler.frontend import load_onnx
    from qcompiler.passes.calibrate import host_runner
    from qcompiler.passes.graph import FunctionView, op_name
    from qcompiler.passes.layout import channels_last
    from qcompiler.passes.smooth import find_groups, measure_ranges, smooth
    from qcompiler.quantize import host_target

    fp32, _ = channels_last(relax.transform.FoldConstant()(load_onnx(outlier_linear_pair(), None).mod))
    calib = [[s["x"]] for s in samples((1, 8, 16), 8, seed=1)]
    (group,) = find_groups(fp32)
    assert len(group.matmuls) == 2
    smoothed, count = smooth(fp32, calib, host_target())
    assert count == 1
    x = samples((1, 8, 16), 1, seed=3)[0]["x"]
    for before, after in zip(host_runner(fp32, host_target())([x]), host_runner(smoothed, host_target())([x])):
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())
    view = FunctionView(smoothed["main"])
    divided = next(b.var for b in view.bindings if b.var.name.endswith("_smoothed"))
    (smoothed_group,) = find_groups(smoothed)
    activation_range = measure_ranges(smoothed, [smoothed_group], calib, host_target())[divided]
    weights = [view.constant(view.value[b.var].args[1]) for b in view.bindings if op_name(b.value) == "relax.matmul"]
    np.testing.assert_allclose(activation_range, np.max([np.abs(w).max(axis=1) for w in weights], axis=0), rtol=1e-5)


def test_smoothing_recovers_an_outlier_channel_on_the_integer_artifact(tmp_path):
    """With one channel 50× wider, the activation's 8-bit step leaves the other channels a few
    levels; smoothing (`--smooth` on the CLI) moves half of that into the weights: ≥ 6 dB better
    outputs. export-qdq writes X / s as a Mul before X's QDQ, and onnxruntime's outputs of that
    model agree with the artifact's to 1% of their range."""
    model = outlier_linear_pair()
    onnx.save(model, tmp_path / "pair.onnx")
    calib = samples((1, 8, 16), 16, seed=1)
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"][0] for s in calib]))
    evaluation = samples((1, 8, 16), 8, seed=2)
    ref = [ort_run(model, s)["y1"] for s in evaluation]
    plain = qcompiler.compile(model, quantize="int8", calib=calib,
                              config=qcompiler.QConfig(calibration=qcompiler.CalibrationMethod.MINMAX))
    run = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "pair.onnx", "-o", tmp_path / "s.so",
                          "--quantize", "int8", "--calib", tmp_path / "calib.npz", "--calib-method", "minmax", "--smooth"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    sqnr = {name: sqnr_db([qcompiler.load(so).run(s)["y1"] for s in evaluation], ref)
            for name, so in (("plain", plain.export(tmp_path / "p.so")), ("smooth", tmp_path / "s.so"))}
    assert sqnr["smooth"] > sqnr["plain"] + 6, sqnr
    config = qcompiler.QConfig(smoothing=True, calibration=qcompiler.CalibrationMethod.MINMAX)
    qdq = onnx.load(qcompiler.export_qdq(model, calib, tmp_path / "s.qdq.onnx", config=config))
    assert [n.op_type for n in qdq.graph.node].count("Mul") == 1
    artifact = qcompiler.load(tmp_path / "s.so")
    for s in evaluation[:3]:
        want = artifact.run(s)["y1"]
        np.testing.assert_allclose(ort_run(qdq, s)["y1"], want, rtol=0, atol=0.01 * np.abs(want).max())


def test_export_qdq_quantizes_a_layer_norm_output(tmp_path):
    """LayerNormalization's output (bound by TVM's converter under a name of its own) is the
    node's tensor: both matmuls read DequantizeLinear(QuantizeLinear(LayerNorm output)), as the
    artifact quantizes it."""
    model = outlier_linear_pair()
    qdq = onnx.load(qcompiler.export_qdq(model, samples((1, 8, 16), 16, seed=1), tmp_path / "p.qdq.onnx"))
    produced_by = {output: node for node in qdq.graph.node for output in node.output}
    for name in ("linear1", "linear2"):
        dequantize = produced_by[next(n for n in qdq.graph.node if n.name == name).input[0]]
        quantize = produced_by[dequantize.input[0]]
        assert [dequantize.op_type, quantize.op_type, produced_by[quantize.input[0]].op_type] == \
            ["DequantizeLinear", "QuantizeLinear", "LayerNormalization"]
