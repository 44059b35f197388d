"""Fuzzing what users hand qcompiler: mutated ONNX models, calibration `.npz` files, `.npy` inputs
and tuning databases, each fed to the CLI (`qcompiler compile / run`) and the C runtime (`qc_run`)
as a user would, each outcome classified.

A case is a command over files written by `make_cases` from a seeded generator (the same seed
gives the same cases). Outcomes:

  ok            the command succeeded and wrote what it should
  error         a one-line `qcompiler: error:` (`qc_run: error:`), a non-zero exit, nothing written
  internal      the CLI caught an unexpected exception ("internal error"): a bug, though no traceback
  traceback     an exception escaped the CLI
  crash         the process died of a signal
  hang          no result within the time limit
  half-written  a failed command left output files behind

Everything but ok and error is a failure. The Python cases run in one worker process (TVM is
imported once) supervised by `run_cases`: a crash or hang kills only the worker, which restarts
at the next case.

Mutations. ONNX, on bytes: bit flips, truncation, a zeroed run, inserted random bytes, a splice
of two models; on the protobuf: an input dim of 0, −3 or 2³¹, a dangling node input, a cycle, a
Reshape to 2⁴⁰ elements, an initializer's dtype changed under its bytes, an empty graph, a
missing initializer, an unknown op, a kernel_shape of [0, −1], duplicate node outputs, opset
1000, an output nobody produces, a string-typed input. Calibration: wrong shape, wrong dtype
(int64, complex, object), a missing or extra key, NaN and inf, zero samples, truncation, bit
flips, random bytes. `.npy` inputs: truncation, header bit flips, wrong dtype or shape, Fortran
order, object dtype, big-endian, trailing bytes, an empty file. Tuning databases: truncated or
bit-flipped lines, invalid JSON, a record of a workload that does not exist, an empty or
missing records file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FAILURES = ("internal", "traceback", "crash", "hang", "half-written")
INPUT_SHAPE = (1, 3, 16, 16)


@dataclass
class Case:
    name: str         # kind and mutation, e.g. "onnx/bitflip"
    argv: list[str]   # qcompiler CLI arguments, or a qc_run command line (argv[0] = qc_run)
    outputs: list[str]  # files a successful run writes (none may exist after a failure)
    c_runtime: bool = False


@dataclass
class Outcome:
    name: str
    kind: str         # ok, error or one of FAILURES
    detail: str = ""  # the error line, or what went wrong


# ------------------------------------------------------------------------------------------
# seed models
# ------------------------------------------------------------------------------------------


def seed_models(rng: np.random.Generator):
    """Three small valid models: a CNN (Conv, Relu, GlobalAveragePool, Gemm), an MLP with Softmax,
    and a model of layout ops (Reshape, Transpose, Concat)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, inputs, outputs, weights, name):
        graph = helper.make_graph(
            nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            [numpy_helper.from_array(np.asarray(v, np.float32) if v.dtype.kind == "f" else v, k) for k, v in weights.items()])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        onnx.checker.check_model(proto)
        return proto

    def r(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    cnn = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                 helper.make_node("Flatten", ["p"], ["f"]),
                 helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)],
                [("x", list(INPUT_SHAPE))], [("y", [1, 5])],
                {"w": r(8, 3, 3, 3), "b": r(8), "fc": r(5, 8), "fb": r(5)}, "cnn")
    mlp = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
                 helper.make_node("Softmax", ["a"], ["y"], axis=-1)],
                [("x", [1, 32])], [("y", [1, 10])], {"w": r(32, 10), "b": r(10)}, "mlp")
    layout = model([helper.make_node("Reshape", ["x", "shape"], ["s"]),
                    helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
                    helper.make_node("Concat", ["t", "t"], ["y"], axis=1)],
                   [("x", [2, 12])], [("y", [2, 8, 3])], {"shape": np.array([2, 3, 4], np.int64)}, "layout")
    return {"cnn": cnn, "mlp": mlp, "layout": layout}


# ------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------


def _flip_bits(data: bytes, rng, count: int = 8, start: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = int(rng.integers(start, len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def byte_mutations(data: bytes, other: bytes, rng) -> dict:
    """name → mutated bytes, one per byte-level mutation."""
    cut = int(rng.integers(1, len(data)))
    start = int(rng.integers(0, len(data) - 1))
    zeroed = bytearray(data)
    zeroed[start:start + int(rng.integers(1, 64))] = bytes(min(64, len(data) - start))
    at = int(rng.integers(0, len(data)))
    return {
        "bitflip": _flip_bits(data, rng, int(rng.integers(1, 16))),
        "truncate": data[:cut],
        "zero-run": bytes(zeroed[:len(data)]),
        "insert": data[:at] + rng.bytes(int(rng.integers(1, 32))) + data[at:],
        "splice": data[:cut] + other[int(rng.integers(0, len(other))):],
    }


def proto_mutations(proto, rng) -> dict:
    """name → mutated ModelProto, one per structural mutation applicable to `proto`."""
    from onnx import TensorProto, helper

    out = {}

    def variant(name, change):
        copy = type(proto)()
        copy.CopyFrom(proto)
        if change(copy) is not False:
            out[name] = copy

    def set_dim(value):
        def change(m):
            dims = m.graph.input[0].type.tensor_type.shape.dim
            dims[int(rng.integers(len(dims)))].dim_value = value
        return change

    variant("dim-zero", set_dim(0))
    variant("dim-negative", set_dim(-3))
    variant("dim-huge", set_dim(2 ** 31))

    def dangling(m):
        m.graph.node[int(rng.integers(len(m.graph.node)))].input[0] = "nobody_makes_this"
    variant("dangling-input", dangling)

    def cycle(m):
        nodes = m.graph.node
        if len(nodes) < 2:
            return False
        nodes[0].input[0] = nodes[-1].output[0]
    variant("cycle", cycle)

    def huge_reshape(m):
        m.graph.node.append(helper.make_node("Reshape", [m.graph.output[0].name, "huge_shape"], ["huge"]))
        m.graph.initializer.append(helper.make_tensor("huge_shape", TensorProto.INT64, [2], [2 ** 20, 2 ** 20]))
        m.graph.output[0].name = "huge"
    variant("huge-shape", huge_reshape)

    def wrong_dtype(m):
        if not m.graph.initializer:
            return False
        init = m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
        init.data_type = int(rng.choice([TensorProto.FLOAT16, TensorProto.INT64, TensorProto.STRING, TensorProto.BOOL]))
    variant("initializer-dtype", wrong_dtype)

    variant("empty-graph", lambda m: m.graph.ClearField("node"))

    def missing_initializer(m):
        if not m.graph.initializer:
            return False
        del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
    variant("missing-initializer", missing_initializer)

    def unknown_op(m):
        m.graph.node[int(rng.integers(len(m.graph.node)))].op_type = "NoSuchOp"
    variant("unknown-op", unknown_op)

    def bad_attribute(m):
        conv = next((n for n in m.graph.node if n.op_type == "Conv"), None)
        if conv is None:
            return False
        for attr in conv.attribute:
            if attr.name == "kernel_shape":
                del attr.ints[:]
                attr.ints.extend([0, -1])
    variant("bad-attribute", bad_attribute)

    def duplicate_outputs(m):
        if len(m.graph.node) < 2:
            return False
        m.graph.node[1].output[0] = m.graph.node[0].output[0]
    variant("duplicate-output", duplicate_outputs)

    def bogus_opset(m):
        m.opset_import[0].version = 1000
    variant("opset-1000", bogus_opset)

    def orphan_output(m):
        m.graph.output[0].name = "orphan"
    variant("orphan-output", orphan_output)

    def string_input(m):
        m.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    variant("string-input", string_input)
    return out


def npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def calibration_mutations(rng) -> dict:
    """name → bytes of a calibration file for the CNN seed (input "x" of INPUT_SHAPE)."""
    good = rng.standard_normal((4, *INPUT_SHAPE[1:])).astype(np.float32)
    with_nan = good.copy()
    with_nan.flat[:5] = [np.nan, np.inf, -np.inf, np.nan, 1e38]
    valid = npz_bytes({"x": good})
    return {
        "wrong-shape": npz_bytes({"x": good[:, :2]}),
        "wrong-dtype": npz_bytes({"x": good.astype(np.int64)}),
        "complex": npz_bytes({"x": good.astype(np.complex64)}),
        "object": npz_bytes({"x": np.array([good, "text"], dtype=object)}),
        "missing-key": npz_bytes({"y": good}),
        "extra-key": npz_bytes({"x": good, "z": good}),
        "nan-inf": npz_bytes({"x": with_nan}),
        "no-samples": npz_bytes({"x": good[:0]}),
        "one-dim": npz_bytes({"x": good.ravel()}),
        "truncate": valid[:int(rng.integers(1, len(valid)))],
        "bitflip": _flip_bits(valid, rng, 8),
        "random-bytes": rng.bytes(256),
    }


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def input_mutations(rng, shape: tuple[int, ...]) -> dict:
    """name → bytes of a .npy input for a float32 input of `shape`."""
    good = rng.standard_normal(shape).astype(np.float32)
    valid = npy_bytes(good)
    return {
        "truncate": valid[:int(rng.integers(1, len(valid)))],
        "header-bitflip": _flip_bits(valid[:128], rng, 4) + valid[128:],
        "wrong-dtype": npy_bytes(good.astype(np.float64)),
        "wrong-shape": npy_bytes(good.reshape(-1)),
        "fortran": npy_bytes(np.asfortranarray(good.reshape(good.shape[0], -1))),
        "object": npy_bytes(np.array([1, "a"], dtype=object)),
        "big-endian": npy_bytes(good.astype(">f4")),
        "trailing": valid + rng.bytes(16),
        "empty": b"",
        "bitflip": _flip_bits(valid, rng, 8),
    }


def tuning_mutations(workloads: list[str], records: list[str], rng) -> dict:
    """name → (workload lines, record lines) of a mutated tuning database."""
    def flip_line(lines):
        i = int(rng.integers(len(lines)))
        return [*lines[:i], _flip_bits(lines[i].encode(), rng, 4).decode("utf-8", "replace"), *lines[i + 1:]]

    def truncate_line(lines):
        i = int(rng.integers(len(lines)))
        return [*lines[:i], lines[i][:int(rng.integers(1, max(2, len(lines[i]))))], *lines[i + 1:]]

    bad_index = [json.dumps([len(workloads) + 7, json.loads(records[0])[1]])] + records[1:] if records else records
    return {
        "record-bitflip": (workloads, flip_line(records)),
        "workload-bitflip": (flip_line(workloads), records),
        "record-truncated": (workloads, truncate_line(records)),
        "workload-truncated": (truncate_line(workloads), records),
        "not-json": (workloads, ["{not json"] + records),
        "unknown-workload": (workloads, bad_index),
        "empty-records": (workloads, []),
        "no-records-file": (workloads, None),
    }


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------


def make_cases(folder: Path, count: int, seed: int, artifact: Path | None = None, qc_run: Path | None = None,
               tuning_log: Path | None = None) -> list[Case]:
    """`count` cases (files written under `folder`) cycling through every kind and mutation.
    `artifact` (a compiled CNN seed, input x of INPUT_SHAPE) enables the .npy input cases,
    `qc_run` their C-runtime twins, `tuning_log` (a valid database folder) the tuning cases."""
    rng = np.random.default_rng(seed)
    seeds = seed_models(rng)
    names = list(seeds)
    generators = ["onnx-bytes", "onnx-proto", "calibration"]
    if artifact is not None:
        generators.append("input")
        if qc_run is not None:
            generators.append("input-c")
    if tuning_log is not None:
        generators.append("tuning")
    tuning_lines = None
    if tuning_log is not None:
        from .tuning import RECORDS, WORKLOADS

        tuning_lines = ((tuning_log / WORKLOADS).read_text().splitlines(),
                        (tuning_log / RECORDS).read_text().splitlines())
    cases: list[Case] = []
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        kind = generators[index % len(generators)]
        case_dir = folder / f"case{index:04d}"
        case_dir.mkdir(exist_ok=True)
        out = case_dir / "out" / "m.so"
        out.parent.mkdir(exist_ok=True)
        outputs = [str(out), str(out.with_suffix(".json"))]
        seed_name = names[int(rng.integers(len(names)))]
        model = seeds[seed_name]
        if kind == "onnx-bytes":
            other = seeds[names[int(rng.integers(len(names)))]].SerializeToString()
            mutations = byte_mutations(model.SerializeToString(), other, rng)
            name = list(mutations)[int(rng.integers(len(mutations)))]
            (case_dir / "m.onnx").write_bytes(mutations[name])
            cases.append(Case(f"onnx/{name}", ["compile", str(case_dir / "m.onnx"), "-o", str(out)], outputs))
        elif kind == "onnx-proto":
            mutations = proto_mutations(model, rng)
            name = list(mutations)[int(rng.integers(len(mutations)))]
            (case_dir / "m.onnx").write_bytes(mutations[name].SerializeToString())
            cases.append(Case(f"onnx/{name}", ["compile", str(case_dir / "m.onnx"), "-o", str(out)], outputs))
        elif kind == "calibration":
            (case_dir / "m.onnx").write_bytes(seeds["cnn"].SerializeToString())
            mutations = calibration_mutations(rng)
            name = list(mutations)[int(rng.integers(len(mutations)))]
            (case_dir / "calib.npz").write_bytes(mutations[name])
            cases.append(Case(f"calibration/{name}", ["compile", str(case_dir / "m.onnx"), "-o", str(out),
                                                      "--quantize", "int8", "--calib", str(case_dir / "calib.npz")],
                              outputs))
        elif kind in ("input", "input-c"):
            mutations = input_mutations(rng, INPUT_SHAPE)
            name = list(mutations)[int(rng.integers(len(mutations)))]
            (case_dir / "x.npy").write_bytes(mutations[name])
            result = case_dir / "out" / "y.npz"
            if kind == "input":
                cases.append(Case(f"input/{name}", ["run", str(artifact), "--input", f"x={case_dir / 'x.npy'}",
                                                    "--output", str(result)], [str(result)]))
            else:
                cases.append(Case(f"input-c/{name}", [str(qc_run), str(artifact), "--input", f"x={case_dir / 'x.npy'}",
                                                      "--output-dir", str(out.parent)], [], c_runtime=True))
        else:
            from .tuning import RECORDS, WORKLOADS

            mutations = tuning_mutations(*tuning_lines, rng)
            name = list(mutations)[int(rng.integers(len(mutations)))]
            workloads, records = mutations[name]
            log = case_dir / "log"
            log.mkdir(exist_ok=True)
            (log / WORKLOADS).write_text("\n".join(workloads) + "\n")
            if records is not None:
                (log / RECORDS).write_text("\n".join(records) + ("\n" if records else ""))
            (case_dir / "m.onnx").write_bytes(seeds["cnn"].SerializeToString())
            cases.append(Case(f"tuning/{name}", ["compile", str(case_dir / "m.onnx"), "-o", str(out),
                                                 "--tuning-log", str(log)], outputs))
    return cases


def small_tuning_log(source: Path, folder: Path, workloads: int = 3) -> Path:
    """A valid database in `folder`: the first `workloads` workloads of `source` and their records."""
    from .tuning import RECORDS, WORKLOADS

    folder.mkdir(parents=True, exist_ok=True)
    kept = (source / WORKLOADS).read_text().splitlines()[:workloads]
    records = [line for line in (source / RECORDS).read_text().splitlines() if json.loads(line)[0] < workloads]
    (folder / WORKLOADS).write_text("\n".join(kept) + "\n")
    (folder / RECORDS).write_text("\n".join(records) + "\n")
    return folder


def prepare(folder: Path, count: int, seed: int, qc_run: Path | None = None) -> list[Case]:
    """`count` cases of every kind under `folder`: the CNN seed compiled for the input cases, a
    small database cut from the committed tuning logs for the tuning cases (where there is one),
    and `qc_run` (if given) for the C runtime's input cases."""
    from . import compile as compile_model
    from .tuning import TUNING_LOGS, WORKLOADS

    artifact = compile_model(seed_models(np.random.default_rng(seed))["cnn"]).export(folder / "cnn.so")
    sources = sorted(p.parent for p in TUNING_LOGS.glob(f"*/*/{WORKLOADS}"))
    log = small_tuning_log(sources[0], folder / "tuning-log") if sources else None
    return make_cases(folder / "cases", count, seed, artifact, qc_run, log)


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------


def _left_behind(case: Case) -> list[str]:
    """Files a failed case must not leave: its outputs, and anything in the output folder."""
    left = [p for p in case.outputs if Path(p).exists()]
    for path in case.outputs:
        folder = Path(path).parent
        if folder.is_dir():
            left += [str(p) for p in folder.iterdir() if str(p) not in left]
    return left


def classify(case: Case, code: int, stderr: str) -> Outcome:
    """The outcome of a finished command (exit `code`, its standard error)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if code < 0:
        return Outcome(case.name, "crash", f"signal {-code}")
    if "Traceback (most recent call last)" in stderr:
        return Outcome(case.name, "traceback", lines[-1] if lines else "")
    if code == 0:
        missing = [p for p in case.outputs if not Path(p).exists()]
        return Outcome(case.name, "half-written" if missing else "ok", f"missing {missing}" if missing else "")
    left = _left_behind(case)
    if left:
        return Outcome(case.name, "half-written", f"left {left}")
    prefix = "qc_run: error:" if case.c_runtime else "qcompiler: error:"
    errors = [line for line in lines if line.startswith(prefix)]
    if "internal error" in stderr or not errors:
        return Outcome(case.name, "internal", lines[-1] if lines else f"exit {code}, no message")
    return Outcome(case.name, "error", errors[-1])


def _worker(spec_path: str) -> None:
    """Run the Python cases of `spec_path` in order: "start N" before case N, then its outcome as
    one JSON line."""
    from . import cli

    cases = [Case(**c) for c in json.loads(Path(spec_path).read_text())]
    first = int(os.environ.get("QC_FUZZ_FIRST", "0"))
    real_stdout = sys.stdout
    for index in range(first, len(cases)):
        case = cases[index]
        print(f"start {index}", file=real_stdout, flush=True)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(case.argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException:  # noqa: BLE001 - an exception escaping the CLI is what we look for
            import traceback

            code, stderr = 1, io.StringIO(traceback.format_exc())
        print(json.dumps(asdict(classify(case, code, stderr.getvalue()))), file=real_stdout, flush=True)


def _run_c_case(case: Case, timeout: float) -> Outcome:
    try:
        proc = subprocess.run(case.argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(case.name, "hang", f"no result in {timeout:.0f} s")
    return classify(case, proc.returncode, proc.stderr)


def run_cases(cases: list[Case], spec_path: Path, timeout: float = 60.0, progress=None) -> list[Outcome]:
    """Every case's outcome, in order. Python cases run in a worker process that is restarted
    after a crash or a hang (killed after `timeout` seconds on one case)."""
    outcomes: dict[int, Outcome] = {}
    python_cases = [i for i, c in enumerate(cases) if not c.c_runtime]
    for index, case in enumerate(cases):
        if case.c_runtime:
            outcomes[index] = _run_c_case(case, timeout)
    spec_path.write_text(json.dumps([asdict(cases[i]) for i in python_cases]))
    position = 0
    while position < len(python_cases):
        env = dict(os.environ, QC_FUZZ_FIRST=str(position))
        worker = subprocess.Popen(
            [sys.executable, "-c", "import sys; from qcompiler.fuzzing import _worker; _worker(sys.argv[1])", str(spec_path)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        current, deadline = None, None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([worker.stdout], [], [], wait)
            if not ready:  # the case in progress ran past the limit
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
                case = cases[python_cases[current]]
                outcomes[python_cases[current]] = Outcome(case.name, "hang", f"no result in {timeout:.0f} s")
                shutil.rmtree(Path(case.outputs[0]).parent, ignore_errors=True)
                position = current + 1
                break
            line = worker.stdout.readline()
            if not line:  # the worker exited: done, or died during case `current`
                code = worker.wait()
                if current is None:
                    position = len(python_cases)
                else:
                    outcomes[python_cases[current]] = Outcome(cases[python_cases[current]].name, "crash",
                                                              f"worker exit {code}")
                    position = current + 1
                break
            if line.startswith("start "):
                current = int(line.split()[1])
                deadline = time.monotonic() + timeout
                continue
            outcomes[python_cases[current]] = Outcome(**json.loads(line))
            if progress is not None:
                progress(current + 1, len(python_cases), outcomes[python_cases[current]])
            current, deadline = None, None
    return [outcomes.get(i, Outcome(c.name, "crash", "never ran")) for i, c in enumerate(cases)]


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    return counts
