"""Frontend: every bad-input path gets one clear line; shapes bind; node names stay traceable."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import make_model
from qcompiler.errors import QCompilerError
from qcompiler.frontend import load_onnx, onnx_node_of, parse_shape


def small_model():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="stem/conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="stem/relu"),
    ]
    return make_model(nodes, [("x", ["batch", 3, 8, 8])], [("y", ["batch", 4, 8, 8])],
                      {"w": np.ones((4, 3, 3, 3), np.float32)})


def write(tmp_path, data: bytes, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_missing_file(tmp_path):
    with pytest.raises(QCompilerError) as err:
        load_onnx(tmp_path / "nope.onnx")
    assert "model file not found" in one_line(err) and "nope.onnx" in str(err.value)


def test_not_onnx(tmp_path):
    path = write(tmp_path, b"this is a text file, not a model\n" * 4)
    with pytest.raises(QCompilerError) as err:
        load_onnx(path)
    assert f"{path} is not an ONNX model: cannot parse it as ONNX protobuf" in one_line(err)


def test_truncated(tmp_path):
    data = small_model().SerializeToString()
    path = write(tmp_path, data[: len(data) // 2])
    with pytest.raises(QCompilerError) as err:
        load_onnx(path)
    assert f"{path} is a truncated or corrupt ONNX model: cannot parse it" in one_line(err)


def test_bit_flipped(tmp_path):
    model = small_model()
    data = bytearray(model.SerializeToString())
    # Flip bits inside the first node's op_type string: the file still parses, but is invalid.
    pos = bytes(data).index(b"Conv")
    data[pos] ^= 0x20 | 0x04
    path = write(tmp_path, bytes(data))
    with pytest.raises(QCompilerError) as err:
        load_onnx(path)
    text = one_line(err)
    assert str(path) in text
    assert "unsupported ONNX ops" in text or "ONNX checker" in text or "corrupt" in text


def test_missing_external_data(tmp_path):
    model = small_model()
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.weights", size_threshold=0)
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(QCompilerError) as err:
        load_onnx(tmp_path / "ext.onnx")
    assert "external data" in one_line(err) and "ext.weights" in str(err.value)


def test_external_data_present_loads(tmp_path):
    onnx.save_model(small_model(), tmp_path / "ext.onnx", save_as_external_data=True,
                    location="ext.weights", size_threshold=0)
    imported = load_onnx(tmp_path / "ext.onnx")
    assert imported.inputs[0].shape == (1, 3, 8, 8)


def test_unknown_input_name():
    with pytest.raises(QCompilerError) as err:
        load_onnx(small_model(), {"image": (1, 3, 8, 8)})
    assert "unknown input name(s) 'image'" in one_line(err) and "'x'" in str(err.value)


def test_wrong_rank():
    with pytest.raises(QCompilerError) as err:
        load_onnx(small_model(), {"x": (1, 3, 8)})
    assert "rank 4" in one_line(err) and "rank 3" in str(err.value)


def test_conflicting_static_dim():
    with pytest.raises(QCompilerError) as err:
        load_onnx(small_model(), {"x": (1, 5, 8, 8)})
    assert "dim 1 is 3" in one_line(err)


def test_unsupported_ops_listed_all_at_once():
    nodes = [
        helper.make_node("CenterCropPad", ["x", "shape"], ["a"], name="crop1"),
        helper.make_node("CenterCropPad", ["a", "shape"], ["b"], name="crop2"),
        helper.make_node("Relu", ["b"], ["c"], name="relu"),
        helper.make_node("MyCustomOp", ["c"], ["y"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [numpy_helper.from_array(np.array([1, 1, 4, 4], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("com.example", 1)])
    with pytest.raises(QCompilerError) as err:
        load_onnx(model)
    text = one_line(err)
    assert "CenterCropPad (2 nodes: crop1, crop2)" in text
    assert "com.example::MyCustomOp (1 node: custom)" in text
    assert "Relu" not in text


def test_dynamic_dims_default_to_one_with_a_note():
    notes = []
    imported = load_onnx(small_model(), on_note=notes.append)
    assert imported.inputs[0].shape == (1, 3, 8, 8)
    assert imported.outputs[0].shape == (1, 4, 8, 8)
    assert len(notes) == 1 and "'x'" in notes[0] and "batch" in notes[0]


def test_dynamic_spatial_dims_must_be_given():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [("x", ["n", 3, "h", "w"])], [("y", ["n", 3, "h", "w"])])
    with pytest.raises(QCompilerError) as err:
        load_onnx(model)
    assert "dynamic dims beyond the batch axis (nx3xhxw)" in one_line(err) and "--input-shape x=" in str(err.value)
    assert load_onnx(model, {"x": (2, 3, 5, 7)}).outputs[0].shape == (2, 3, 5, 7)


def test_input_shape_binding():
    imported = load_onnx(small_model(), {"x": (4, 3, 8, 8)})
    assert imported.inputs[0].shape == (4, 3, 8, 8)
    assert imported.outputs[0].shape == (4, 4, 8, 8)


def test_parse_shape():
    assert parse_shape("x=1x3x224x224") == ("x", (1, 3, 224, 224))
    assert parse_shape("a=b=2x2") == ("a=b", (2, 2))
    for bad in ["x", "=1x2", "x=1xx2", "x=0x3", "x=ax3"]:
        with pytest.raises(QCompilerError):
            parse_shape(bad)


def test_onnx_node_names_traceable():
    imported = load_onnx(small_model())
    names = {v.name: n for v, n in onnx_node_of(imported).items()}
    assert names["stem_conv"] == "stem/conv"
    assert names["stem_relu"] == "stem/relu"
    ops = {v.name: b.value.op.name for b in imported.mod["main"].body.blocks[0].bindings
           for v in [b.var] if hasattr(b.value, "op")}
    assert ops["stem_conv"] == "relax.nn.conv2d" and ops["stem_relu"] == "relax.nn.relu"


def test_model_proto_and_path_hash_equal(tmp_path):
    model = small_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert load_onnx(path).source_sha256 == load_onnx(onnx.load(path)).source_sha256
