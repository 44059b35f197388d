"""The per-kernel profiler (`Model.profile`, `qcompiler bench --profile`) and the schedule
provenance `inspect` reports per kernel."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import make_model


def slow_conv_model():
    """Cheap element-wise ops around one conv that dominates the run (64 → 64 channels, 3×3, 32²)."""
    r = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["c"], name="big_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
        helper.make_node("Add", ["s", "x"], ["y"], name="residual"),
    ]
    return make_model(nodes, [("x", [1, 64, 32, 32])], [("y", [1, 64, 32, 32])],
                      {"w": r.standard_normal((64, 64, 3, 3)) * 0.05})


@pytest.fixture(scope="module")
def naive_artifact(tmp_path_factory):
    """The model with TVM's naive loop nests, so that its conv is a known slow kernel."""
    path = tmp_path_factory.mktemp("profile") / "naive.so"
    return qcompiler.compile(slow_conv_model(), default_schedules=False).export(path)


def test_profile_shows_the_slow_kernel_first_and_adds_up_to_the_run(naive_artifact):
    model = qcompiler.load(naive_artifact)
    feed = {"x": np.random.default_rng(1).standard_normal((1, 64, 32, 32)).astype(np.float32)}
    profile = model.profile(feed, repeat=5)
    assert "conv2d" in profile.rows[0].name and profile.rows[0].kind == "kernel"
    assert profile.rows[0].calls == 1
    assert profile.rows[0].share > 0.5
    # Everything the VM calls is a row; allocations are rows of their own.
    assert any(row.kind == "memory" and row.name == "vm.builtin.alloc_storage" for row in profile.rows)
    assert [row.total_us for row in profile.rows] == sorted((row.total_us for row in profile.rows), reverse=True)
    assert abs(profile.total_us - profile.run_us) <= 0.1 * profile.run_us, profile.render()
    # Profiling leaves the model as it was: the next run is uninstrumented and still correct.
    np.testing.assert_array_equal(model.run(feed)["y"], model.run(feed)["y"])


def test_bench_profile_cli_table_and_json(naive_artifact):
    cmd = [sys.executable, "-m", "qcompiler", "bench", str(naive_artifact), "--profile", "--repeat", "3"]
    table = subprocess.run(cmd + ["--top", "3"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "calls", "total", "us", "share"]
    assert "conv2d" in lines[1] and "more)" in lines[4] and lines[5].startswith("total")
    result = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["repeat"] == 3 and payload["rows"][0]["kind"] == "kernel"
    assert {"name", "kind", "calls", "total_us", "share"} <= set(payload["rows"][0])
    bad = subprocess.run(cmd[:-1] + ["0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "qcompiler: error: --repeat must be at least 1, got 0"


def test_inspect_reports_where_each_kernel_schedule_came_from(naive_artifact, tmp_path):
    naive = qcompiler.load(naive_artifact).metadata.kernels
    assert naive and set(naive.values()) == {"naive"}
    default = qcompiler.compile(slow_conv_model()).export(tmp_path / "default.so")
    kernels = qcompiler.load(default).metadata.kernels
    assert "naive" not in kernels.values()
    assert set(kernels) == set(naive)  # the same kernels, now scheduled
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 64, 32, 32)).astype(np.float32)} for i in range(6)]
    int8 = qcompiler.compile(slow_conv_model(), quantize="int8", calib=calib).export(tmp_path / "int8.so")
    int8_kernels = qcompiler.load(int8).metadata.kernels
    assert [source for name, source in int8_kernels.items() if "conv2d" in name] == ["default"]
    text = subprocess.run([sys.executable, "-m", "qcompiler", "inspect", str(int8)], capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert "kernel schedules:" in text.stdout and "default" in text.stdout
