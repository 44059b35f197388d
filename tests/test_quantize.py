"""Quantization passes on small graphs: structure, numerics, calibration cache, QDQ import, bad data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper
from tvm import relax

import qcompiler
from conftest import input_step_bound, make_model, ort_run, requantize_reference
from qcompiler import ActivationDType, CalibrationMethod, QConfig
from qcompiler.errors import QCompilerError
from qcompiler.frontend import load_onnx
from qcompiler.passes.graph import FunctionView, op_name
from qcompiler.quantize import quantize

rng = np.random.default_rng(0)


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.5


def residual_net(opset=17):
    """conv+bias+relu → maxpool → (depthwise conv | 1x1 conv) → residual add → concat → GAP → Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="stem_relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "dw"], ["d"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="dw_relu6"),
        helper.make_node("Conv", ["d6", "pw", "pb"], ["e"], name="pw", kernel_shape=[1, 1]),
        helper.make_node("Add", ["p", "e"], ["a"], name="residual"),
        helper.make_node("Concat", ["a", "p"], ["cat"], name="cat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = {"w": w(8, 3, 3, 3), "b": w(8), "dw": w(8, 1, 3, 3), "pw": w(8, 8, 1, 1), "pb": w(8),
             "lo": np.array(0.0), "hi": np.array(6.0), "fw": w(10, 16), "fb": w(10)}
    return make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 10])], inits, opset=opset)


def mobile_net():
    """A MobileNetV3-style block: conv → hardswish → depthwise → hardswish → squeeze-excitation
    (GAP → 1x1 conv → relu → 1x1 conv → hardsigmoid → broadcast multiply) → 1x1 conv → GAP → Gemm."""
    r = np.random.default_rng(11)  # its own weights: leaves the module's rng to residual_net

    def w(*shape):
        return r.standard_normal(shape).astype(np.float32) * 0.5

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c"], ["h"], name="stem_hswish"),
        helper.make_node("Conv", ["h", "dw"], ["d"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[2, 2], group=8),
        helper.make_node("HardSwish", ["d"], ["dh"], name="dw_hswish"),
        helper.make_node("GlobalAveragePool", ["dh"], ["se_pool"], name="se_pool"),
        helper.make_node("Conv", ["se_pool", "se1", "se1b"], ["se_r"], name="se_reduce", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["se_r"], ["se_rr"], name="se_relu"),
        helper.make_node("Conv", ["se_rr", "se2", "se2b"], ["se_e"], name="se_expand", kernel_shape=[1, 1]),
        helper.make_node("HardSigmoid", ["se_e"], ["se_gate"], name="se_gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["dh", "se_gate"], ["se"], name="se_scale"),
        helper.make_node("Conv", ["se", "pw", "pb"], ["e"], name="pw", kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["e"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = {"w": w(8, 3, 3, 3), "b": w(8), "dw": w(8, 1, 3, 3), "se1": w(4, 8, 1, 1), "se1b": w(4),
             "se2": w(8, 4, 1, 1), "se2b": w(8), "pw": w(16, 8, 1, 1), "pb": w(16), "fw": w(10, 16), "fb": w(10)}
    return make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 10])], inits)


def samples(n=24, seed=1):
    r = np.random.default_rng(seed)
    return [{"x": r.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def ops_of(mod):
    return [(op_name(b.value), b.value) for b in FunctionView(mod["main"]).bindings if op_name(b.value)]


@pytest.fixture(scope="module")
def quantized():
    imported = load_onnx(residual_net())
    return imported, quantize(imported, QConfig(), samples())


def test_annotate_plan(quantized):
    _, q = quantized
    by_node = {op.node: op for op in q.plan.ops}
    assert {"stem", "dw", "pw", "residual", "cat", "gap", "fc"} <= set(by_node)
    assert [v.name for v in by_node["stem"].epilogue] == ["stem", "stem_relu"]  # bias add and relu absorbed
    assert [v.name for v in by_node["dw"].epilogue] == ["dw_relu6"]  # relu6 absorbed
    keys = {v.name: k for v, k in q.plan.keys.items()}
    assert keys["pool"] == keys["stem_relu"]  # max pool carries its input's quantization
    assert "fc" not in keys  # the logits: no quantized op reads them, they stay float
    assert q.summary()["int8_mac_fraction"] == 1.0


def test_realized_module_is_integer(quantized):
    _, q = quantized
    ops = ops_of(q.mod)
    convs = [v for name, v in ops if name == "relax.nn.conv2d"]
    matmuls = [v for name, v in ops if name == "relax.matmul"]
    assert len(convs) == 3 and len(matmuls) == 1
    for call in convs + matmuls:
        assert str(call.attrs.out_dtype) == "int32"
        assert {str(a.ty.dtype) for a in call.args} <= {"uint8", "int8"}
    # No dequantize → quantize pair between consecutive int8 ops: one quantize at the model
    # input, the logits' int32 sums scaled to float at the output, and nothing float in between.
    names = [name for name, _ in ops]
    assert names.count("relax.quantize") == 1 and names.count("relax.dequantize") == 0
    assert names[-2:] == ["relax.astype", "relax.multiply"] and str(ops[-1][1].ty.dtype) == "float32"
    assert not any(name in ("relax.nn.conv2d", "relax.matmul") and str(v.ty.dtype) == "float32" for name, v in ops)


def runner(mod):
    """Compile `mod` for the host once; return x → first output."""
    from qcompiler.passes.calibrate import host_runner
    from qcompiler.quantize import host_target

    run = host_runner(mod, host_target())
    return lambda x: run([x])[0]


@pytest.mark.parametrize("model, config", [
    (residual_net, QConfig()),
    (residual_net, QConfig(activation_dtype=ActivationDType.INT8)),
    (residual_net, QConfig(per_channel=False, calibration=CalibrationMethod.MINMAX)),
    (mobile_net, QConfig()),  # table lookups indexed by uint8 q
    (mobile_net, QConfig(activation_dtype=ActivationDType.INT8)),  # ... by int8 q read as uint8
])
def test_realized_matches_simulated_within_one_step(model, config):
    imported = load_onnx(model())
    q = quantize(imported, config, samples())
    fc = next(op for op in q.plan.ops if op.node == "fc")
    # The logits stay float: realized and simulated differ where requantization rounds fc's
    # inputs otherwise than fake quantization, each by at most one step.
    step = input_step_bound(q.calibration.qparams(config)[q.plan.keys[fc.inputs[0]]].scale, fc.weight, fc.weight_axis)
    run_realized, run_simulated, run_fp32 = runner(q.mod), runner(q.qdq), runner(q.fp32)
    for sample in samples(4, seed=9):
        realized = run_realized(sample["x"])
        simulated = run_simulated(sample["x"])
        assert np.abs(realized - simulated).max() <= step * 1.0001
        reference = run_fp32(sample["x"])
        cosine = np.sum(realized * reference) / np.linalg.norm(realized) / np.linalg.norm(reference)
        assert cosine > 0.99


def integer_conv_reference(model, q, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int32 sums of `model`'s 3×3 pad-1 conv "w" (bias "b", 2 → 3 channels, 6×6) on `x` as
    quantized by `q`, over the zero-point-padded input, with the per-channel offset (the
    zero-point correction and the bias in the sums' units) and the sums' scales s_x·s_w."""
    from qcompiler.passes.simulate import quantized_weight

    x_params = q.calibration.qparams(q.config)[q.plan.keys[q.plan.ops[0].inputs[0]]]
    wq, w_scales = quantized_weight(model_weight(model), 0, True)
    bias = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b"))
    xpad = np.pad(x_params.quantize(x).astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)),
                  constant_values=x_params.zero_point)
    acc = sum(np.einsum("nchw,oc->nohw", xpad[:, :, i:i + 6, j:j + 6], wq[:, :, i, j].astype(np.int64))
              for i in range(3) for j in range(3))
    acc_scales = float(np.float32(x_params.scale)) * w_scales.astype(np.float64)
    offset = (-x_params.zero_point * wq.astype(np.int64).reshape(3, -1).sum(axis=1)
              + np.round(bias.astype(np.float64) / acc_scales).astype(np.int64))
    return acc, offset.reshape(1, 3, 1, 1), acc_scales.reshape(1, 3, 1, 1)


def lone_conv(read_by_concat: bool = False):
    """x[1,2,6,6] → 3×3 conv "w" with bias "b" → y, the output; or z = concat(y, y), an integer reader of y."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    if read_by_concat:
        nodes.append(helper.make_node("Concat", ["y", "y"], ["z"], name="cat", axis=1))
    output = ("z", [1, 6, 6, 6]) if read_by_concat else ("y", [1, 3, 6, 6])
    return make_model(nodes, [("x", [1, 2, 6, 6])], [output], {"w": w(3, 2, 3, 3), "b": w(3) * 4})


def test_integer_conv_bit_exact_against_numpy():
    """A uint8 conv with zero point and bias, read by an integer concat: the realized kernel
    equals the integer formula exactly (int32 accumulation over the zero-point-padded input;
    the zero-point correction, bias, output zero point and rounding folded into one float32
    constant per channel)."""
    model = lone_conv(read_by_concat=True)
    q = quantize(load_onnx(model), QConfig(calibration=CalibrationMethod.MINMAX, holdout=0), samples_of(model, 8))
    y_params = q.calibration.qparams(q.config)[q.plan.keys[q.plan.ops[0].output]]
    x = samples_of(model, 1, seed=5)[0]["x"]
    acc, offset, acc_scales = integer_conv_reference(model, q, x)
    expected = requantize_reference(acc, acc_scales / float(np.float32(y_params.scale)), offset,
                                    y_params.zero_point, 0, 255)
    realized = runner(q.mod)(x)
    got = np.round(realized[:, :3] / np.float32(y_params.scale)).astype(np.int64) + y_params.zero_point
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(realized[:, :3], realized[:, 3:])


def test_float_output_of_an_integer_conv_is_its_scaled_sum():
    """A conv that only the caller reads is not requantized: its output is the int32 sum plus
    the folded offset, times the per-channel scale s_x·s_w, in float32."""
    model = lone_conv()
    q = quantize(load_onnx(model), QConfig(calibration=CalibrationMethod.MINMAX, holdout=0), samples_of(model, 8))
    assert q.plan.ops[0].output not in q.plan.keys and "relax.dequantize" not in {name for name, _ in ops_of(q.mod)}
    x = samples_of(model, 1, seed=5)[0]["x"]
    acc, offset, acc_scales = integer_conv_reference(model, q, x)
    expected = (acc + offset) * acc_scales
    np.testing.assert_allclose(runner(q.mod)(x), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


POST_NORM_GAMMA = np.where(np.arange(16) == 3, 40.0, 1.0).astype(np.float32)


def post_norm_block():
    """n = tanh(x) · g; y = LayerNorm(n + MatMul(n, W)): a transformer's residual add, read only
    by a float LayerNorm. n, computed in float, has one channel 40× wider than the others (as
    transformers' LayerNorm outputs do)."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("Mul", ["t", "g"], ["n"], name="gain"),
             helper.make_node("MatMul", ["n", "w"], ["m"], name="linear"),
             helper.make_node("Add", ["n", "m"], ["r"], name="residual"),
             helper.make_node("LayerNormalization", ["r", "ones", "b"], ["y"], name="norm2", axis=-1)]
    return make_model(nodes, [("x", [1, 8, 16])], [("y", [1, 8, 16])],
                      {"g": POST_NORM_GAMMA, "b": np.zeros(16), "ones": np.ones(16), "w": w(16, 16) * 0.005})


def post_norm_stream(x):
    """n of post_norm_block, in float64."""
    return np.tanh(np.asarray(x, np.float64)) * POST_NORM_GAMMA


def layer_norm(x):
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def test_residual_add_read_by_float_ops_stays_float():
    """The residual add that only LayerNorm reads is no int8 op, and it reads n itself, not n's
    8-bit copy: the residual stream stays exact (8-bit only as the matmul's input, whose step
    its outlier channel sets), and the matmul's output stays float. Against numpy: the residual's error is at most the matmul's,
    half a step on each input and half a weight step on each weight,
    Σ_k (s_x/2)|W_kj| + |n_k| s_j/2, and norm2 scales it by at most 2/σ(r) (centring, then
    division by the standard deviation). Rounding n itself to 8 bits would move r by up to
    s_x/2 on every channel: over 10× the residual's bound here."""
    model = post_norm_block()
    q = quantize(load_onnx(model), QConfig(calibration=CalibrationMethod.MINMAX, holdout=0), samples_of(model, 8))
    assert [op.op for op in q.plan.ops] == ["relax.matmul"]
    (key,) = q.plan.observer_keys  # n, as the matmul's input
    step = q.calibration.qparams(q.config)[key].scale
    weight = model_weight(model).astype(np.float64)
    x = samples_of(model, 1, seed=5)[0]["x"]
    n = post_norm_stream(x)
    r = n + n @ weight
    weight_steps = np.abs(weight).max(axis=0) / 127
    residual_error = step / 2 * np.abs(weight).sum(axis=0) + np.abs(n) @ np.ones_like(weight) * weight_steps / 2
    bound = residual_error.max(axis=-1, keepdims=True) * 2 / r.std(axis=-1, keepdims=True)
    assert step / 2 > 10 * residual_error.max()
    error = np.abs(runner(q.mod)(x) - layer_norm(r))
    assert (error <= bound + 1e-5).all(), (error.max(axis=-1), bound.ravel())


def test_qdq_export_of_a_residual_add_reads_the_float_stream(tmp_path):
    """export-qdq follows the artifact: the residual add reads n's float value, only the matmul
    reads its QuantizeLinear → DequantizeLinear copy; onnxruntime's outputs of the QDQ
    model agree with the artifact's (one matmul input step through norm2, as above)."""
    model = post_norm_block()
    calib = samples_of(model, 8)
    config = QConfig(calibration=CalibrationMethod.MINMAX, holdout=0)
    qdq = onnx.load(qcompiler.export_qdq(model, calib, tmp_path / "m.qdq.onnx", config=config))
    produced_by = {output: node for node in qdq.graph.node for output in node.output}
    (residual,) = [node for node in qdq.graph.node if node.name == "residual"]
    (linear,) = [node for node in qdq.graph.node if node.name == "linear"]
    assert produced_by[residual.input[0]].op_type == "Mul"
    assert produced_by[linear.input[0]].op_type == "DequantizeLinear"
    x = samples_of(model, 1, seed=5)[0]
    artifact = qcompiler.load(qcompiler.compile(model, quantize="int8", calib=calib, config=config).export(tmp_path / "m.so"))
    np.testing.assert_allclose(ort_run(qdq, x)["y"], artifact.run(x)["y"], atol=0.01, rtol=0)


def test_a_max_pool_after_a_lookup_table_stays_on_integers():
    """conv → HardSwish → MaxPool → conv: HardSwish is a lookup table over the conv's integers, and
    the max pool that reads it (an op computed in float in the QDQ form) runs on the table's
    integers, not in float (PP-LCNet's stem: 1.12× slower in float)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c1"], ["h"], name="hswish"),
             helper.make_node("MaxPool", ["h"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 3, 3])], {"w1": w(8, 3, 3, 3), "w2": w(4, 8, 2, 2)})
    q = quantize(load_onnx(model), QConfig(holdout=0), samples_of(model, 8))
    assert q.stats.integer_ops.get("lookup_table") == 1 and "relax.nn.max_pool2d" not in q.stats.float_ops


def test_gelu_through_erf_is_one_lookup_table(tmp_path):
    """conv → GELU as exported before opset 20 (x · 0.5 · (1 + erf(x / √2))) → conv: the whole
    chain is a function of the conv's 8-bit output, one lookup table with no float op left;
    the artifact's output within 5% of the largest of onnxruntime fp32's."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c1", "sqrt2"], ["s"]),
             helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["c1", "e1"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["g"]),
             helper.make_node("Conv", ["g", "w2"], ["y"], name="conv2")]
    scalars = {"sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
               "half": np.array(0.5, np.float32)}
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 7, 7])],
                       {"w1": w(8, 3, 3, 3), "w2": w(4, 8, 2, 2), **scalars})
    calib = samples_of(model, 8)
    q = quantize(load_onnx(model), QConfig(holdout=0), calib)
    assert q.stats.integer_ops.get("lookup_table") == 1
    assert not {"relax.erf", "relax.multiply", "relax.add"} & set(q.stats.float_ops)
    x = samples_of(model, 1, seed=5)[0]
    artifact = qcompiler.load(qcompiler.compile(model, quantize="int8", calib=calib).export(tmp_path / "m.so"))
    expected = ort_run(model, x)["y"]
    np.testing.assert_allclose(artifact.run(x)["y"], expected, atol=0.05 * np.abs(expected).max(), rtol=0)


def test_a_tensor_that_was_zero_in_calibration_keeps_the_next_convs_bias(tmp_path):
    """conv1's weights are 1e-39: its output is ~1e-39 on every sample, a range whose scale
    would be denormal. It quantizes as a zero tensor, and conv2's bias is not cast to int64
    units of a 1e-44 accumulator scale (undefined: it overflows): y = conv2's bias, as in onnxruntime."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c2"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])],
                       {"w1": np.full((4, 3, 1, 1), 1e-39), "w2": w(4, 4, 1, 1), "b2": np.array([0.5, 1.0, 2.0, 3.0])})
    calib = samples_of(model, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no float → int64 cast of an overflowing bias
        artifact = qcompiler.load(qcompiler.compile(model, quantize="int8", calib=calib).export(tmp_path / "m.so"))
    x = samples_of(model, 1, seed=5)[0]
    np.testing.assert_allclose(artifact.run(x)["y"], ort_run(model, x)["y"], atol=2e-2, rtol=0)


def model_weight(model):
    return onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))


def samples_of(model, n, seed=3):
    r = np.random.default_rng(seed)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return [{"x": r.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_skip_by_node_name_and_op_type():
    imported = load_onnx(residual_net())
    q = quantize(imported, QConfig(skip_nodes=frozenset({"pw"}), skip_op_types=frozenset({"Gemm"})), samples(8))
    nodes = {op.node for op in q.plan.ops}
    assert "pw" not in nodes and "fc" not in nodes and "stem" in nodes
    float_convs = [v for n, v in ops_of(q.mod) if n == "relax.nn.conv2d" and str(v.ty.dtype) == "float32"]
    float_matmuls = [v for n, v in ops_of(q.mod) if n == "relax.matmul" and str(v.ty.dtype) == "float32"]
    assert len(float_convs) == 1 and len(float_matmuls) == 1
    assert {name for name, _ in q.plan.skipped} == {"pw", "fc"}


def test_calibration_cache(tmp_path):
    cache = tmp_path / "calib.json"
    model = residual_net()
    first = qcompiler.compile(model, quantize="int8", calib=samples(), calib_cache=cache)
    assert cache.exists()
    # Reuse: no calibration data needed, same ranges.
    second = qcompiler.compile(model, quantize="int8", calib_cache=cache)
    assert first.metadata.quantization["calibration_samples"] == second.metadata.quantization["calibration_samples"]
    with pytest.raises(QCompilerError, match="another calibration config"):
        qcompiler.compile(model, quantize="int8", calib_cache=cache, config=QConfig(calibration=CalibrationMethod.MSE))
    other = residual_net()
    changed = make_model(list(other.graph.node), [("x", [1, 3, 16, 16])], [("y", [1, 10])],
                         {i.name: onnx.numpy_helper.to_array(i) * (2 if i.name == "fb" else 1) for i in other.graph.initializer})
    with pytest.raises(QCompilerError, match="made for another model"):
        qcompiler.compile(changed, quantize="int8", calib_cache=cache)
    cache.write_text("{not json")
    with pytest.raises(QCompilerError, match="not valid JSON"):
        qcompiler.compile(model, quantize="int8", calib_cache=cache)


def test_qdq_onnx_model_matches_onnxruntime(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = residual_net(opset=13)
    onnx.save(model, tmp_path / "fp32.onnx")
    data = samples(16)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(data)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    qdq = onnx.load(tmp_path / "qdq.onnx")
    artifact = qcompiler.compile(qdq, quantize="int8")
    assert artifact.metadata.quantization["source"] == "onnx-qdq"
    assert artifact.metadata.quantization["float_ops"] == {}
    model_q = qcompiler.load(artifact.export(tmp_path / "qdq.so"))
    output_scale = onnx.numpy_helper.to_array(
        next(i for i in qdq.graph.initializer if i.name == next(
            n.input[1] for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "y")))
    for sample in samples(6, seed=4):
        ours = model_q.run(sample)["y"]
        theirs = ort_run(qdq, sample)["y"]
        assert np.abs(ours - theirs).max() <= float(output_scale) * 1.0001


@pytest.mark.parametrize("bad,message", [
    ([{"image": np.zeros((1, 3, 16, 16), np.float32)}], "unknown input name(s) 'image'"),
    ([{"x": np.zeros((1, 3, 8, 8), np.float32)}], "shape [1, 3, 8, 8], expected [1, 3, 16, 16]"),
    ([{"x": np.zeros((1, 3, 16, 16), np.float64)}], "dtype float64, expected float32"),
    ([{"x": np.full((1, 3, 16, 16), np.nan, np.float32)}], "NaN or Inf"),
    ([], "has no samples"),
])
def test_bad_calibration_data(bad, message):
    with pytest.raises(QCompilerError) as err:
        qcompiler.compile(residual_net(), quantize="int8", calib=bad)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_calibration_files(tmp_path):
    data = np.stack([s["x"][0] for s in samples(6)])  # [N, 3, 16, 16]: batch dim 1 implied
    np.savez(tmp_path / "calib.npz", x=data)
    artifact = qcompiler.compile(residual_net(), quantize="int8", calib=tmp_path / "calib.npz",
                                 config=QConfig(holdout=2))
    assert artifact.metadata.quantization["calibration_samples"] == 4
    directory = tmp_path / "dir"
    directory.mkdir()
    for i, x in enumerate(data):
        np.save(directory / f"{i:03d}.npy", x)
    assert qcompiler.compile(residual_net(), quantize="int8", calib=directory).metadata.quantization["quantized_layers"] > 0
    np.savez(tmp_path / "wrong.npz", image=data)
    with pytest.raises(QCompilerError, match="unknown input name"):
        qcompiler.compile(residual_net(), quantize="int8", calib=tmp_path / "wrong.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(QCompilerError, match="not a readable .npz"):
        qcompiler.compile(residual_net(), quantize="int8", calib=tmp_path / "broken.npz")
    with pytest.raises(QCompilerError, match="calibration data not found"):
        qcompiler.compile(residual_net(), quantize="int8", calib=tmp_path / "missing.npz")
    with pytest.raises(QCompilerError, match="needs calibration data"):
        qcompiler.compile(residual_net(), quantize="int8")


def test_report_and_metadata(tmp_path, capsys):
    artifact = qcompiler.compile(residual_net(), quantize="int8", calib=samples(), report=tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert {layer["name"] for layer in report["layers"]} >= {"stem", "dw", "pw", "fc"}
    assert all(layer["sqnr_db"] > 10 for layer in report["layers"])
    assert report["int8_mac_fraction"] == 1.0 and report["model"]["cosine"] > 0.99
    assert "SQNR dB" in capsys.readouterr().out
    assert artifact.metadata.quantization["agreement"]["cosine"] > 0.99


def test_simulate_mode_is_float():
    artifact = qcompiler.compile(residual_net(), quantize="int8", calib=samples(8), simulate=True)
    assert artifact.metadata.quantization["mode"] == "int8-simulated"
