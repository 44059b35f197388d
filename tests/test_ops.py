"""Each supported op family compiled for the host matches onnxruntime within 1e-4 relative."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import assert_close_rel, make_model, ort_run

rng = np.random.default_rng(7)


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.5


def conv_model(groups, cin, cout, k=3, stride=1, pads=1, act=None):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=groups, kernel_shape=[k, k],
                              strides=[stride, stride], pads=[pads] * 4)]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="act"))
    elif act == "clip":
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="act"))
    else:
        nodes[0].output[0] = "y"
    inits = {"w": w(cout, cin // groups, k, k), "b": w(cout)}
    if act == "clip":
        inits.update(lo=np.array(0.0), hi=np.array(6.0))
    hw = (12 + 2 * pads - k) // stride + 1
    return make_model(nodes, [("x", [1, cin, 12, 12])], [("y", [1, cout, hw, hw])], inits)


def batchnorm_model():
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn", epsilon=1e-5),
    ]
    inits = {"w": w(c, 4, 3, 3), "s": w(c), "b": w(c), "m": w(c), "v": np.abs(w(c)) + 0.5}
    return make_model(nodes, [("x", [1, 4, 10, 10])], [("y", [1, c, 10, 10])], inits)


def gemm_model():
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1, alpha=1.0, beta=1.0)]
    return make_model(nodes, [("x", [2, 32])], [("y", [2, 16])], {"w": w(16, 32), "b": w(16)})


def matmul_model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return make_model(nodes, [("x", [3, 5, 24])], [("y", [3, 5, 10])], {"w": w(24, 10)})


def pool_model(op):
    attrs = {} if op == "GlobalAveragePool" else {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    out = [1, 4, 1, 1] if op == "GlobalAveragePool" else [1, 4, 6, 6]
    nodes = [helper.make_node(op, ["x"], ["y"], name="pool", **attrs)]
    return make_model(nodes, [("x", [1, 4, 12, 12])], [("y", out)])


def add_concat_softmax_model():
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Concat", ["s", "a"], ["c"], name="cat", axis=1),
        helper.make_node("Softmax", ["c"], ["y"], name="softmax", axis=-1),
    ]
    return make_model(nodes, [("a", [2, 3, 8]), ("b", [2, 3, 8])], [("y", [2, 6, 8])])


CASES = {
    "conv": lambda: conv_model(1, 4, 8),
    "conv_stride2_relu": lambda: conv_model(1, 4, 8, stride=2, act="relu"),
    "conv_grouped": lambda: conv_model(2, 8, 8),
    "conv_depthwise_clip": lambda: conv_model(8, 8, 8, act="clip"),
    "conv_pointwise": lambda: conv_model(1, 8, 16, k=1, pads=0),
    "conv_batchnorm": batchnorm_model,
    "gemm": gemm_model,
    "matmul": matmul_model,
    "maxpool": lambda: pool_model("MaxPool"),
    "averagepool": lambda: pool_model("AveragePool"),
    "globalaveragepool": lambda: pool_model("GlobalAveragePool"),
    "add_concat_softmax": add_concat_softmax_model,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case, tmp_path):
    model = CASES[case]()
    feed = {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
            for vi in model.graph.input}
    expected = ort_run(model, feed)
    path = qcompiler.compile(model, target="x86").export(tmp_path / f"{case}.so")
    actual = qcompiler.load(path).run(feed)
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape
        assert_close_rel(actual[name], expected[name], rtol=1e-4)


def test_runtime_shape_arithmetic_is_folded(tmp_path):
    """Shape → Slice → Cast → Concat → Reshape (as Paddle exports flatten) compiles and matches."""
    from onnx import TensorProto, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
        helper.make_node("Shape", ["g"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "starts", "ends"], ["s0"], name="slice"),
        helper.make_node("Cast", ["s0"], ["s0f"], name="cast", to=TensorProto.INT64),
        helper.make_node("Concat", ["s0f", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["g", "target"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes, "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([1], np.int64), "ends"),
         numpy_helper.from_array(np.array([-1], np.int64), "minus1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    path = qcompiler.compile(model, input_shapes={"x": x.shape}).export(tmp_path / "flat.so")
    actual = qcompiler.load(path).run({"x": x})["y"]
    assert_close_rel(actual, ort_run(model, {"x": x})["y"])
