"""Tuning: records are written, applied in a fresh process, resumable, robust to damage; RPC loopback.

The tuning runs here add up to 16 measurements (8 local, 8 through RPC).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import helper

import qcompiler
from conftest import make_model
from qcompiler.errors import QCompilerError
from qcompiler.frontend import load_onnx
from qcompiler.targets import resolve
from qcompiler.tuning import RECORDS, WORKLOADS, coverage, round_budget, tune


def conv_model():
    """One conv + relu: its tasks are the conv and the transpose back from channels-last."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return make_model(nodes, [("x", [1, 16, 28, 28])], [("y", [1, 16, 28, 28])],
                      {"w": rng.standard_normal((16, 16, 3, 3))})


def test_time_budget_shortens_rounds_to_the_measured_pace():
    assert round_budget(42, 0, 0.0, None) == 42
    assert round_budget(42, 0, 0.0, 540.0) == 42            # first round: no pace yet
    assert round_budget(42, 100, 300.0, 540.0) == 42        # 3 s per trial, 240 s left: 80 fit
    assert round_budget(42, 100, 480.0, 540.0) == 12        # 4.8 s per trial, 60 s left
    assert round_budget(42, 100, 539.0, 540.0) == 0         # less than one trial left
    assert round_budget(42, 100, 600.0, 540.0) == 0


@pytest.fixture(scope="module")
def tuned_log(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tune") / "log"
    tasks = tune(load_onnx(conv_model()).mod, resolve("x86"), log_dir, trials=8)
    return log_dir, tasks


def test_records_written(tuned_log):
    log_dir, tasks = tuned_log
    assert (log_dir / WORKLOADS).exists() and len((log_dir / RECORDS).read_text().splitlines()) == 8
    conv = [task for task in tasks if "conv2d" in task.name]
    assert len(conv) == 1 and conv[0].best_seconds is not None and conv[0].best_seconds > 0
    assert all(task.best_seconds is not None for task in tasks)


def test_default_schedule_is_measured_first(tuned_log):
    """Each task's default schedule is measured first, whatever the search picks, so the best record is
    never slower than it as measured; a resumed run does not measure it first again. (The
    evolutionary search may still pick the same schedule later: it seeds its population with
    measured records.)"""
    from qcompiler.kernels.schedules import DEFAULT_CANDIDATE
    from qcompiler.tuning import _default_candidates_measured, extract_tasks

    log_dir, _ = tuned_log
    records = (log_dir / RECORDS).read_text().splitlines()
    assert DEFAULT_CANDIDATE in records[0]
    tasks = extract_tasks(load_onnx(conv_model()).mod, resolve("x86").target())
    assert _default_candidates_measured(tasks, log_dir) == set(range(len(tasks)))


def test_records_applied_in_fresh_process_and_beat_naive(tuned_log, tmp_path):
    log_dir, _ = tuned_log
    onnx.save(conv_model(), tmp_path / "conv.onnx")
    before = {name: (log_dir / name).read_bytes() for name in (WORKLOADS, RECORDS)}
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "compile", tmp_path / "conv.onnx", "-o",
                           tmp_path / "tuned.so", "--tuning-log", log_dir], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {name: (log_dir / name).read_bytes() for name in before} == before  # nothing new was measured
    naive = qcompiler.load(qcompiler.compile(conv_model(), default_schedules=False).export(tmp_path / "naive.so"))
    tuned = qcompiler.load(tmp_path / "tuned.so")
    feed = {"x": np.random.default_rng(1).standard_normal((1, 16, 28, 28)).astype(np.float32)}
    np.testing.assert_allclose(tuned.run(feed)["y"], naive.run(feed)["y"], rtol=1e-5, atol=1e-4)
    assert np.median(tuned.time_run(feed, 20)) < np.median(naive.time_run(feed, 20))


def test_weights_are_layout_free_and_their_tuned_layout_is_applied_at_compile_time(tuned_log, tmp_path):
    """Tuning may store the conv weight in the layout its schedule reads (MetaSchedule's
    RewriteLayout, recorded as TransformLayout); compile rewrites the constant weight once, so the
    compiled model runs one kernel, on the prepacked weight, and no layout rewrite at run time.
    Checked for each record on its own: whichever wins, compile builds its schedule as recorded
    (a default schedule laid over a record once undid its layout rewrite)."""
    import tvm

    from qcompiler.tuning import cpu_pipeline, databases_for

    log_dir, _ = tuned_log
    records = (log_dir / RECORDS).read_text().splitlines()
    preset = resolve("x86")
    target = preset.target()
    for i, record in enumerate(records):
        single = tmp_path / f"record{i}"
        single.mkdir()
        (single / WORKLOADS).write_bytes((log_dir / WORKLOADS).read_bytes())
        (single / RECORDS).write_text(record + "\n")
        database = databases_for(preset, [single], tmp_path, committed=False)
        with target:
            lowered = cpu_pipeline(target, database)(load_onnx(conv_model()).mod)
        kernels = [gvar.name_hint for gvar, func in lowered.functions.items() if isinstance(func, tvm.tirx.PrimFunc)]
        convs = [name for name in kernels if "conv2d" in name]
        assert len(convs) == 1, (i, kernels)
        if '"TransformLayout"' in record:  # (the FMA kernel's packed weight is often read as it is)
            assert convs[0].endswith("_prepacked"), (i, kernels)


def test_inspect_reports_coverage(tuned_log, tmp_path):
    log_dir, _ = tuned_log
    onnx.save(conv_model(), tmp_path / "conv.onnx")
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "inspect", tmp_path / "conv.onnx", "--target", "x86",
                           "--tuning-log", log_dir], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2/2 tasks have tuning records" in proc.stdout


def test_inspect_reports_the_coverage_of_int8_kernels(tmp_path):
    """With --quantize int8, inspect lists the kernels of the realized int8 model (what tune
    --quantize int8 tunes), and refuses it where no coverage is reported."""
    onnx.save(conv_model(), tmp_path / "conv.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((4, 16, 28, 28)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "inspect", tmp_path / "conv.onnx", "--target", "x86",
                           "--quantize", "int8", "--calib", tmp_path / "calib.npz"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "u8s8" in proc.stdout and re.search(r"\d+/\d+ tasks have tuning records", proc.stdout), proc.stdout
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "inspect", tmp_path / "conv.onnx", "--quantize", "int8",
                           "--calib", tmp_path / "calib.npz"], capture_output=True, text=True)
    assert proc.returncode != 0 and "needs an ONNX model and --target" in proc.stderr, proc.stderr


def test_resume_after_interrupted_run(tuned_log, tmp_path):
    log_dir, _ = tuned_log
    copy = tmp_path / "log"
    copy.mkdir()
    for name in (WORKLOADS, RECORDS):
        (copy / name).write_bytes((log_dir / name).read_bytes())
    with (copy / RECORDS).open("a") as f:  # a run killed in the middle of writing a record
        f.write('[0, [[["b1", 3], [')
    tasks = tune(load_onnx(conv_model()).mod, resolve("x86"), copy, trials=0)
    assert len((copy / RECORDS).read_text().splitlines()) == 8  # the cut line is dropped, the rest kept
    assert tasks[0].best_seconds is not None


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_damaged_databases(tuned_log, tmp_path):
    log_dir, _ = tuned_log
    collect = Collect()
    logging.getLogger("qcompiler").addHandler(collect)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / WORKLOADS).write_text((log_dir / WORKLOADS).read_text() + "garbage{\n")
    (damaged / RECORDS).write_text((log_dir / RECORDS).read_text() + "[7, []]\n" + "\x00\x01 not json\n")
    try:
        tasks = coverage(load_onnx(conv_model()).mod, resolve("x86"), [damaged])
    finally:
        logging.getLogger("qcompiler").removeHandler(collect)
    assert tasks[0].best_seconds is not None
    assert any("skipped 1 unreadable workload line(s) and 2 record(s)" in m for m in collect.messages)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QCompilerError, match="not a MetaSchedule database"):
        qcompiler.compile(conv_model(), tuning_logs=[empty])
    invalid = tmp_path / "invalid"
    invalid.mkdir()
    (invalid / WORKLOADS).write_text('["not a hash", {"bad": "workload"}]\n')
    (invalid / RECORDS).write_text("")
    with pytest.raises(QCompilerError, match="is corrupt"):
        qcompiler.compile(conv_model(), tuning_logs=[invalid])


def test_fail_fast_without_a_device(tmp_path):
    mod = load_onnx(conv_model()).mod
    with pytest.raises(QCompilerError, match="--rpc-tracker"):
        tune(mod, resolve("arm64-a72"), tmp_path / "a", trials=4)
    import tvm

    if not tvm.cuda(0).exist:
        with pytest.raises(QCompilerError, match="needs a GPU"):
            tune(mod, resolve("cuda-sm80"), tmp_path / "c", trials=4)
    with pytest.raises(QCompilerError, match="HOST:PORT"):
        tune(mod, resolve("x86"), tmp_path / "r", trials=4, rpc_tracker="nohost", rpc_key="k")
    assert not (tmp_path / "a").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_loopback(tmp_path):
    """A tracker and two servers on 127.0.0.1; tuning through them measures on both."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)]
    logs = [tmp_path / "server0.log", tmp_path / "server1.log"]
    try:
        time.sleep(2)
        for i, log in enumerate(logs):
            server_port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", "qc-loopback",
                 "--host", "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 1)],
                stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True))
        deadline = time.time() + 30
        while time.time() < deadline and not all("bind to" in log.read_text() for log in logs):
            time.sleep(0.5)
        time.sleep(2)  # registration with the tracker
        tasks = tune(load_onnx(conv_model()).mod, resolve("x86"), tmp_path / "log", trials=8,
                     rpc_tracker=f"127.0.0.1:{port}", rpc_key="qc-loopback")
        assert tasks[0].best_seconds is not None
        measured = [log.read_text().count("load_module") for log in logs]
        assert all(n > 0 for n in measured), measured
    finally:
        for proc in procs:  # each in its own session: stop the workers it started too
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=10)


def test_int8_tasks_skip_prescheduled_kernels_and_default_traces_print():
    """An int8 model with a lane-wise depthwise conv, a hard-swish and a 3-channel input: the tap
    interleaving (written already scheduled), the hard-swish's byte-table lookup (compile gives
    it the VBMI kernel, whatever the records) and the input quantization into the first conv's
    padded input (compile splits its pad, which no record can) are no tasks, and every task's
    default-schedule candidate has a trace MetaSchedule can print (it prints each one it records)."""
    from tvm.s_tir import Schedule

    from qcompiler.kernels.schedules import default_space
    from qcompiler.quantize import quantize
    from qcompiler.tuning import extract_tasks, fused_module

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("Conv", ["h", "dw"], ["y"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16)]
    model = make_model(nodes, [("x", [1, 3, 12, 12])], [("y", [1, 16, 12, 12])],
                       {"w": rng.standard_normal((16, 3, 3, 3)), "dw": rng.standard_normal((16, 1, 3, 3))})
    samples = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(2)]
    quantized = quantize(load_onnx(model), qcompiler.QConfig(), samples)
    tasks = extract_tasks(quantized.mod, resolve("x86").target())
    names = [task.task_name for task in tasks]
    assert any("depthwise_nhwc" in name for name in names) and not any("taps" in name for name in names)
    assert not any(name.startswith("take") for name in names), names
    fused = fused_module(quantized.mod, resolve("x86").target())
    input_quantization = [gvar.name_hint for gvar in fused.functions if "transpose_quantize_pad" in gvar.name_hint]
    assert input_quantization and not set(input_quantization) & set(names), names
    for task in tasks:
        for candidate in default_space(Schedule(task.dispatched[0])):
            assert candidate.trace.as_python()


def test_records_follow_their_workload_when_an_unreadable_workload_is_dropped(tmp_path):
    """A record names its workload by line position: dropping a damaged workload line renumbers
    the records of the workloads after it, and drops the records of the damaged one."""
    import json

    from qcompiler.tuning import RECORDS, WORKLOADS, _readable_lines

    workloads = [json.dumps([f"hash{i}", {"mod": i}]) for i in range(3)]
    workloads[1] = workloads[1][:10]  # cut by a kill in mid-write
    (tmp_path / WORKLOADS).write_text("\n".join(workloads) + "\n")
    records = [json.dumps([i, {"trace": f"of workload {i}"}]) for i in (0, 1, 2, 2)]
    (tmp_path / RECORDS).write_text("\n".join(records) + "\n{\"truncated\n")
    kept_workloads, kept_records = _readable_lines(tmp_path)
    assert [json.loads(w)[1]["mod"] for w in kept_workloads] == [0, 2]
    assert [json.loads(r) for r in kept_records] == [[0, {"trace": "of workload 0"}], [1, {"trace": "of workload 2"}],
                                                     [1, {"trace": "of workload 2"}]]


def test_tune_killed_at_three_points_resumes_and_compiles(tmp_path):
    """`qcompiler tune` killed with SIGKILL (with its measurement workers) at three points: while
    starting, once its first records are written (the default schedules measured, a round in
    flight) and in the middle of a later round. Each next `tune` resumes the database and keeps
    every record written before the kill; `compile` reads it and builds a model that matches
    onnxruntime."""
    import onnx

    from conftest import assert_close_rel, ort_run

    model = conv_model()
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    log_dir = tmp_path / "log"

    def complete_records() -> int:
        records = log_dir / RECORDS
        return sum(line.endswith("]") for line in records.read_text().splitlines()) if records.exists() else 0

    def tune_until(condition, limit_s: float = 180.0) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "qcompiler", "tune", str(path), "--log", str(log_dir),
                                 "--trials", "400"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + limit_s
        while not condition() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # killed, not finished or failed

    started = time.monotonic()
    tune_until(lambda: time.monotonic() - started > 3)
    tune_until(lambda: complete_records() > 0)
    first = complete_records()
    tune_until(lambda: complete_records() > first)
    kept = complete_records()
    assert kept > first
    tasks = tune(load_onnx(model).mod, resolve("x86"), log_dir, trials=0)
    assert all(task.best_seconds is not None for task in tasks)
    assert len((log_dir / RECORDS).read_text().splitlines()) >= kept  # only a cut line may go
    artifact = qcompiler.compile(model, tuning_logs=[log_dir], committed_logs=False)
    assert "tuning record" in artifact.metadata.kernels.values(), artifact.metadata.kernels
    feed = {"x": np.random.default_rng(1).standard_normal((1, 16, 28, 28)).astype(np.float32)}
    got = qcompiler.load(artifact.export(tmp_path / "m.so")).run(feed)["y"]
    assert_close_rel(got, ort_run(model, feed)["y"], rtol=1e-4)
