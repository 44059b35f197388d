"""Throughput of one loaded model run by 1, 2, 4 concurrent callers (Python threads; C pthreads).

    .venv/bin/python benchmarks/bench_concurrency.py [--callers 1 2 4] [--seconds 2]
        [--intra-threads 1] [--artifact M.so] [--no-c]

One artifact (default: a small int8 conv model compiled here, about 19 M multiply-accumulates;
or --artifact) is loaded once per measurement and run by N callers at once, each on its own VM
from the model's pool:
  python   N `threading` threads calling `Model.run` (inputs checked and copied, outputs copied
           back) for --seconds;
  C        deploy/build/qc_threads: N pthreads calling `qc_infer` (built with `make -C deploy
           tests`; skipped with --no-c or when it cannot be built);
  C procs  the control: N separate qc_threads processes with one caller each, run at the same
           time (their runs/s summed): what the machine gives N independent callers. When
           "C" matches "C procs", callers in one process do not hold each other up.
Each measurement runs in its own process with TVM_NUM_THREADS=--intra-threads (default 1: each
run single-threaded, so that the callers are what scales). Printed: runs/s, and the speedup over
one caller. On a machine with C cores, N <= C callers can scale up to N x; beyond that they share
the cores.

It also probes the GIL: a pure-Python thread counts during a long TVM-FFI call (a 256 MB copy,
made through the same `tvm_ffi.Function.__call__` as `main`) with `release_gil` True and False:
holding the GIL, the counter cannot advance during the call. `Model` sets
`release_gil = True` on `main` (TVM-FFI's default, unless TVM_FFI_RELEASE_GIL_BY_DEFAULT=0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

_PY_WORKER = r"""
import sys, threading, time
import numpy as np
import qcompiler
path, callers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
model = qcompiler.load(path)
rng = np.random.default_rng(0)
feeds = [{s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in model.inputs} for _ in range(callers)]
for feed in feeds:  # warm up: one VM per caller exists before timing, thread pools started
    model.run(feed)
counts = [0] * callers
start = threading.Barrier(callers + 1)
stop = time.perf_counter() + 1e9
def work(t):
    start.wait()
    n = 0
    while time.perf_counter() < stop:
        model.run(feeds[t])
        n += 1
    counts[t] = n
threads = [threading.Thread(target=work, args=(t,)) for t in range(callers)]
for thread in threads:
    thread.start()
t0 = time.perf_counter()
stop = t0 + seconds
start.wait()
for thread in threads:
    thread.join()
elapsed = time.perf_counter() - t0
print(sum(counts) / elapsed)
"""

_GIL_PROBE = r"""
import ctypes, sys, threading, time
import numpy as np
import qcompiler
model = qcompiler.load(sys.argv[1])
runtime = model._runtime
# A TVM-FFI call long enough to see the GIL: a 256 MB host-to-tensor copy (tens of ms), called
# like `main` (tvm_ffi.Function.__call__, which releases the GIL when `release_gil` is set).
n = 1 << 28
src = np.ones(n, np.uint8)
tensor = runtime.alloc(runtime.ffi.Shape((n,)), runtime.ffi.dtype("uint8"), model._device, None)
copy = runtime.ffi.get_global_func("runtime.TVMTensorCopyFromBytes")

def counts_per_ms_during_call(release_gil, calls=2):
    # A pure-Python thread counts; its progress per ms *during* the calls. Holding the GIL
    # through a call, the counter cannot run meanwhile.
    count, busy = [0], [True]
    def counter():
        while busy[0]:
            count[0] += 1
    thread = threading.Thread(target=counter)
    thread.start()
    time.sleep(0.01)  # the counter holds the GIL; take it back
    copy.release_gil = release_gil
    advanced = spent = 0.0
    for _ in range(calls):
        before, t0 = count[0], time.perf_counter()
        copy(tensor, src.ctypes.data_as(ctypes.c_void_p), n)
        spent += time.perf_counter() - t0
        advanced += count[0] - before
    busy[0] = False
    thread.join()
    return advanced / (spent * 1e3)

sys.setswitchinterval(1.0)  # no forced GIL hand-over within a call: only a released GIL lets the counter run
with model._pool.vm() as vm:
    default = vm.main.release_gil
print(default, counts_per_ms_during_call(True), counts_per_ms_during_call(False))
"""


def make_model(out_dir: Path) -> Path:
    """A small int8 conv model (1x32x32x32, two 3x3 convs 32->32), compiled and exported."""
    from onnx import TensorProto, helper, numpy_helper

    import qcompiler

    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((32, 32, 3, 3)) * 0.1, "b1": rng.standard_normal(32) * 0.1,
               "w2": rng.standard_normal((32, 32, 3, 3)) * 0.1}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    shape = [1, 32, 32, 32]
    graph = helper.make_graph(nodes, "bench_concurrency",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    return qcompiler.compile(model, quantize="int8", calib=calib).export(out_dir / "bench_concurrency.so")


def env_with_threads(intra: int) -> dict[str, str]:
    env = dict(os.environ)
    env["TVM_NUM_THREADS"] = str(intra)
    return env


def python_throughput(path: Path, callers: int, seconds: float, intra: int) -> float:
    proc = subprocess.run([sys.executable, "-c", _PY_WORKER, str(path), str(callers), str(seconds)],
                          capture_output=True, text=True, env=env_with_threads(intra), check=True)
    return float(proc.stdout.split()[-1])


def c_tool() -> Path | None:
    proc = subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}", "tests"],
                          capture_output=True, text=True)
    tool = REPO / "deploy" / "build" / "qc_threads"
    return tool if proc.returncode == 0 and tool.exists() else None


def c_throughput(tool: Path, path: Path, callers: int, seconds: float, intra: int, tmp: Path) -> float:
    """qc_threads' runs/s; the run count is sized from a short first run to take about `seconds`."""
    def run(runs: int) -> tuple[float, float]:
        proc = subprocess.run([str(tool), str(path), str(callers), str(runs), f"{tmp}/c_"], capture_output=True,
                              text=True, env=env_with_threads(intra))
        if proc.returncode != 0:
            raise RuntimeError(f"qc_threads failed: {proc.stdout.strip()} {proc.stderr.strip()}")
        fields = dict(f.split("=") for f in proc.stdout.split())
        return float(fields["runs_per_s"]), float(fields["seconds"])

    rate, _ = run(20)
    return run(max(20, int(rate * seconds / callers)))[0]


def c_processes_throughput(tool: Path, path: Path, procs: int, seconds: float, intra: int, tmp: Path) -> float:
    """Summed runs/s of `procs` concurrent qc_threads processes with one caller each."""
    rate = c_throughput(tool, path, 1, 0.3, intra, tmp)
    runs = str(max(20, int(rate * seconds)))
    running = [subprocess.Popen([str(tool), str(path), "1", runs, f"{tmp}/p{i}_"], stdout=subprocess.PIPE,
                                text=True, env=env_with_threads(intra)) for i in range(procs)]
    total = 0.0
    for proc in running:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"qc_threads failed: {out.strip()}")
        total += float(dict(f.split("=") for f in out.split())["runs_per_s"])
    return total


def gil_probe(path: Path, intra: int) -> str:
    proc = subprocess.run([sys.executable, "-c", _GIL_PROBE, str(path)], capture_output=True, text=True,
                          env=env_with_threads(intra), check=True)
    default, released, held = proc.stdout.split()
    return (f"Model's main has release_gil={default}; during a long TVM-FFI call a pure-Python thread counted "
            f"{float(released):.0f}/ms with release_gil=True, {float(held):.0f}/ms with release_gil=False")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--intra-threads", type=int, default=1, help="TVM_NUM_THREADS of each run (default 1)")
    parser.add_argument("--artifact", type=Path, help="an exported .so (default: compile a small int8 conv model)")
    parser.add_argument("--no-c", action="store_true", help="skip the C runtime")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        path = args.artifact or make_model(tmp)
        tool = None if args.no_c else c_tool()
        print(f"artifact {path.name}; {os.cpu_count()} cores; TVM_NUM_THREADS={args.intra_threads}; "
              f"{args.seconds:g} s per measurement")
        print(f"{'callers':>7}  {'python runs/s':>13}  {'speedup':>7}  {'C runs/s':>9}  {'speedup':>7}"
              f"  {'C procs runs/s':>14}")
        base_py = base_c = None
        for callers in args.callers:
            py = python_throughput(path, callers, args.seconds, args.intra_threads)
            base_py = base_py or py
            row = f"{callers:>7}  {py:>13.1f}  {py / base_py:>6.2f}x"
            if tool is not None:
                c = c_throughput(tool, path, callers, args.seconds, args.intra_threads, tmp)
                base_c = base_c or c
                procs = c_processes_throughput(tool, path, callers, args.seconds, args.intra_threads, tmp)
                row += f"  {c:>9.1f}  {c / base_c:>6.2f}x  {procs:>14.1f}"
            print(row, flush=True)
        if tool is None and not args.no_c:
            print("(C runtime skipped: `make -C deploy tests` failed)")
        print("GIL: " + gil_probe(path, args.intra_threads))


if __name__ == "__main__":
    main()
