"""The CLI end to end: compile → inspect → run → bench, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from onnx import helper

from conftest import assert_close_rel, make_model, ort_run


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qcompiler", *map(str, args)], capture_output=True, text=True)


def model_file(tmp_path):
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    rng = np.random.default_rng(5)
    model = make_model(nodes, [("x", ["n", 16])], [("y", ["n", 4])],
                       {"w": rng.standard_normal((4, 16)), "b": rng.standard_normal(4)})
    path = tmp_path / "fc.onnx"
    onnx.save(model, path)
    return model, path


def test_compile_inspect_run_bench(tmp_path):
    model, path = model_file(tmp_path)
    out = tmp_path / "fc.so"
    proc = cli("compile", path, "-o", out, "--input-shape", "x=3x16")
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and out.with_suffix(".json").exists()

    inspected = cli("inspect", path)
    assert inspected.returncode == 0 and "Gemm" in inspected.stdout and "parameters: 68" in inspected.stdout
    inspected = cli("inspect", out)
    assert inspected.returncode == 0 and "input  x float32[3,16]" in inspected.stdout

    x = np.random.default_rng(6).standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ran = cli("run", out, "--input", f"x={tmp_path / 'x.npy'}", "--output", tmp_path / "y.npz")
    assert ran.returncode == 0, ran.stderr
    assert_close_rel(np.load(tmp_path / "y.npz")["y"], ort_run(model, {"x": x})["y"])

    bench = cli("bench", out, "--repeat", 5, "--threads", 1, "--json")
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout)
    assert result["repeat"] == 5 and result["threads"] == 1
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["peak_rss_mb"] >= result["rss_before_load_mb"] > 0


def test_targets_lists_one_line_each():
    proc = cli("targets")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert {"x86", "arm64-a72", "cuda-sm90"} <= set(names)


def test_errors_are_one_line_without_traceback(tmp_path):
    _, path = model_file(tmp_path)
    cases = [
        cli("compile", tmp_path / "missing.onnx", "-o", tmp_path / "m.so"),
        cli("compile", path, "-o", tmp_path / "m.so", "--target", "nope"),
        cli("compile", path, "-o", tmp_path / "m.so", "--input-shape", "y=1x16"),
        cli("run", tmp_path / "m.so", "--input", "x=x.npy"),
        cli("inspect", tmp_path / "nothing.onnx"),
    ]
    for proc in cases:
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("qcompiler: error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "m.so").exists()


def test_verbose_shows_traceback(tmp_path):
    proc = cli("--verbose", "compile", tmp_path / "missing.onnx", "-o", tmp_path / "m.so")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_run_input_errors(tmp_path):
    model, path = model_file(tmp_path)
    out = tmp_path / "fc.so"
    assert cli("compile", path, "-o", out).returncode == 0
    np.save(tmp_path / "bad.npy", np.zeros((2, 16), np.float32))
    proc = cli("run", out, "--input", f"x={tmp_path / 'bad.npy'}")
    assert proc.returncode == 2 and "expects float32[1,16], got float32[2,16]" in proc.stderr
    proc = cli("run", out)
    assert proc.returncode == 2 and "--input x=FILE.npy" in proc.stderr


def test_compile_quantized_with_report_and_cache(tmp_path):
    from test_quantize import residual_net, samples

    model = residual_net()
    onnx.save(model, tmp_path / "net.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate([s["x"] for s in samples(12)]))
    out = tmp_path / "net_int8.so"
    args = ["compile", tmp_path / "net.onnx", "-o", out, "--quantize", "int8", "--calib", tmp_path / "calib.npz",
            "--calib-cache", tmp_path / "cache.json", "--report", tmp_path / "report.json", "--skip", "fc",
            "--calib-method", "mse"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "SQNR dB" in proc.stdout and (tmp_path / "cache.json").exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["quantization"]["mode"] == "int8" and meta["quantization"]["skipped"] == ["fc"]
    assert meta["quantization"]["calibration"] == "mse"
    report = json.loads((tmp_path / "report.json").read_text())
    assert "fc" not in {layer["name"] for layer in report["layers"]}
    x = samples(1, seed=8)[0]["x"]
    np.save(tmp_path / "x.npy", x)
    ran = cli("run", out, "--input", f"x={tmp_path / 'x.npy'}", "--output", tmp_path / "y.npz")
    assert ran.returncode == 0, ran.stderr
    reference = ort_run(model, {"x": x})["y"]
    got = np.load(tmp_path / "y.npz")["y"]
    assert np.dot(got.ravel(), reference.ravel()) / np.linalg.norm(got) / np.linalg.norm(reference) > 0.99


def test_quantization_flag_errors(tmp_path):
    _, path = model_file(tmp_path)
    cases = {
        ("--calib", "x.npz"): "need --quantize int8",
        ("--quantize", "int8", "--skip", "NoSuchNode"): "not an op type or node name",
        ("--quantize", "int8"): "needs calibration data",
        ("--quantize", "int8", "--calib", str(tmp_path / "missing.npz")): "calibration data not found",
        ("--quantize", "int8", "--calib", str(path), "--percentile", "20"): "percentile must be",
        ("--quantize", "int8", "--calib", str(path), "--calib-method", "mse", "--percentile", "99"):
            "--percentile applies to --calib-method percentile, not mse",
        ("--quantize", "int8", "--calib", str(path), "--adaround", "--seed", "-1"): "seed must be an integer from 0",
        ("--quantize", "int8", "--calib", str(path), "--num-samples", "0"): "num_samples must be at least 1",
    }
    for extra, message in cases.items():
        proc = cli("compile", path, "-o", tmp_path / "q.so", *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("qcompiler: error:")
    assert not (tmp_path / "q.so").exists()
