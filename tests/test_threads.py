"""Thread count: without TVM_NUM_THREADS, models run on one thread per physical core (TVM's own
default is half the logical CPUs on x86), in Python, in the C runtime and when tuning."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import REPO, have, make_model
from qcompiler.errors import QCompilerError
from qcompiler.runtime import physical_cores


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", [1, 8, 16, 16])], [("y", [1, 16, 16, 16])],
                       {"w": np.random.default_rng(0).standard_normal((16, 8, 3, 3))})
    path = tmp_path_factory.mktemp("threads") / "conv.so"
    qcompiler.compile(model).export(path)
    return path


def _env_without_threads(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    return {**env, **extra}


@pytest.mark.skipif(not have("lscpu"), reason="lscpu (util-linux) is not installed")
def test_physical_cores_equals_lscpu():
    listing = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    allowed = os.sched_getaffinity(0)
    cores = {tuple(line.split(",")[1:]) for line in listing.splitlines()
             if line and not line.startswith("#") and int(line.split(",")[0]) in allowed}
    assert physical_cores() == len(cores)


@pytest.mark.parametrize("preset", [None, "1"])
def test_python_runtime_thread_pool_size(conv_model, preset):
    """TVM's pool, as TVM reports it after a run: one thread per physical core, or the user's."""
    script = ("import numpy as np, tvm, qcompiler\n"
              f"m = qcompiler.load({str(conv_model)!r})\n"
              "m.run({'x': np.ones((1, 8, 16, 16), np.float32)})\n"
              "print(tvm.get_global_func('runtime.NumThreads')())\n")
    env = _env_without_threads(**({"TVM_NUM_THREADS": preset} if preset else {}))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) == (int(preset) if preset else physical_cores())


@pytest.mark.parametrize("preset", [None, "1"])
def test_c_runtime_thread_count(qc_run_binary, conv_model, preset):
    env = _env_without_threads(**({"TVM_NUM_THREADS": preset} if preset else {}))
    proc = subprocess.run([str(qc_run_binary), str(conv_model), "--zero-inputs", "--repeat", "2"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"threads={preset or physical_cores()}" in proc.stderr.splitlines()[-1]


def test_tune_refuses_negative_threads(tmp_path):
    from qcompiler.frontend import load_onnx
    from qcompiler.targets import resolve
    from qcompiler.tuning import tune

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])
    with pytest.raises(QCompilerError, match="--threads -1: expected 0"):
        tune(load_onnx(model).mod, resolve("x86"), tmp_path / "log", trials=1, threads=-1)
    assert not (tmp_path / "log").exists()


def test_bench_cli_defaults_to_one_thread_per_core(conv_model):
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "bench", str(conv_model), "--repeat", "2"],
                          capture_output=True, text=True, env=_env_without_threads(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"{physical_cores()} thread(s)" in proc.stdout
