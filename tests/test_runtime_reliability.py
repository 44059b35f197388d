"""Runtime reliability (Python `qcompiler.load` and the C runtime in deploy/):

- one loaded model runs correctly from many threads at once (a VM per concurrent run);
- loading maps exactly the bytes that were checked (a private in-memory copy), so re-exporting
  to the same path and loading again in one process runs the new code;
- the C runtime checks the SHA-256 against NAME.json (and bundle.json) before loading, and a
  tampered, truncated, empty, non-ELF or foreign-architecture file is a one-line error with a
  non-zero exit, never a signal, from Python, the `qcompiler run` CLI and `qc_run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import REPO, have, make_model
from qcompiler.cli import main as cli_main
from qcompiler.errors import QCompilerError

THREADS, RUNS = 8, 200
X_SHAPE = (1, 8, 16, 16)


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c_tools():
    """deploy/build with the runtime, qc_run and the test programs, rebuilt if sources changed."""
    proc = subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}", "tests"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return REPO / "deploy" / "build"


@pytest.fixture(scope="module")
def int8_conv(tmp_path_factory):
    """A small two-conv model quantized to int8 (calibrated), exported once."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, [("x", list(X_SHAPE))], [("y", list(X_SHAPE))],
                       {"w": rng.standard_normal((16, 8, 3, 3)) * 0.2, "b": rng.standard_normal(16) * 0.1,
                        "w2": rng.standard_normal((8, 16, 3, 3)) * 0.2})
    calib = [{"x": rng.standard_normal(X_SHAPE).astype(np.float32)} for _ in range(4)]
    path = tmp_path_factory.mktemp("int8") / "conv.so"
    qcompiler.compile(model, quantize="int8", calib=calib).export(path)
    return path


def unary_model(op: str):
    return make_model([helper.make_node(op, ["x"], ["y"], name=op.lower())], [("x", [2, 8])], [("y", [2, 8])])


@pytest.fixture(scope="module")
def relu_and_neg():
    """Compiled (not yet exported) artifacts of y = relu(x) and y = -x: same signature, other code."""
    return qcompiler.compile(unary_model("Relu")), qcompiler.compile(unary_model("Neg"))


def thread_feeds():
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal(X_SHAPE).astype(np.float32)} for _ in range(THREADS)]


def one_line_error(text: str, prefix: str) -> str:
    line = text.strip()
    assert line.startswith(prefix) and "\n" not in line, text
    return line


# ------------------------------------------------------------------------------------------
# 1. concurrent runs
# ------------------------------------------------------------------------------------------


def test_python_model_runs_from_8_threads_bit_identical(int8_conv):
    model = qcompiler.load(int8_conv)
    feeds = thread_feeds()
    serial = [model.run(feed)["y"] for feed in feeds]
    failures: list[str] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        start.wait()
        for _ in range(RUNS):
            try:
                out = model.run(feeds[t])["y"]
            except Exception as err:  # noqa: BLE001 - collected and reported below
                failures.append(f"thread {t}: {type(err).__name__}: {err}")
                return
            if not np.array_equal(out, serial[t]):
                failures.append(f"thread {t}: output differs from the serial run")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert model._pool.created >= 2  # runs did overlap, each on its own VM


def test_c_qc_infer_from_8_threads_bit_identical(c_tools, int8_conv, tmp_path):
    feeds = thread_feeds()
    files = []
    for t, feed in enumerate(feeds):
        files.append(tmp_path / f"in{t}.bin")
        files[-1].write_bytes(feed["x"].tobytes())
    proc = subprocess.run([str(c_tools / "qc_threads"), str(int8_conv), str(THREADS), str(RUNS),
                           f"{tmp_path}/ref_", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"threads={THREADS} runs={RUNS} mismatches=0 errors=0" in proc.stdout
    vms = int(proc.stdout.split("vms=")[1].split()[0])
    assert vms >= 3  # the stateful API's VM plus at least two concurrent qc_infer VMs
    model = qcompiler.load(int8_conv)
    for t, feed in enumerate(feeds):  # the C runtime's serial outputs are the Python runtime's
        c_out = np.frombuffer((tmp_path / f"ref_t{t}_o0.bin").read_bytes(), np.float32).reshape(X_SHAPE)
        np.testing.assert_array_equal(c_out, model.run(feed)["y"])


# ------------------------------------------------------------------------------------------
# 2. what is loaded is what was checked
# ------------------------------------------------------------------------------------------


def test_python_reexport_to_same_path_loads_new_code(relu_and_neg, tmp_path):
    relu, neg = relu_and_neg
    path = tmp_path / "m.so"
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    relu.export(path)
    first = qcompiler.load(path)
    np.testing.assert_array_equal(first.run({"x": x})["y"], np.maximum(x, 0))
    neg.export(path)
    second = qcompiler.load(path)
    np.testing.assert_array_equal(second.run({"x": x})["y"], -x)
    np.testing.assert_array_equal(first.run({"x": x})["y"], np.maximum(x, 0))  # still its own code
    del first
    third = qcompiler.load(path)  # the first copy's fd number is free again: its name must not match
    np.testing.assert_array_equal(third.run({"x": x})["y"], -x)


def test_c_reload_of_replaced_file_loads_new_code(c_tools, relu_and_neg, tmp_path):
    relu, neg = relu_and_neg
    a = relu.export(tmp_path / "a" / "relu.so")
    b = neg.export(tmp_path / "b" / "neg.so")
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(c_tools / "qc_reload"), str(tmp_path / "m.so"), str(a), str(b),
                           str(tmp_path / "x.bin"), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = np.frombuffer((tmp_path / "first.bin").read_bytes(), np.float32).reshape(2, 8)
    second = np.frombuffer((tmp_path / "second.bin").read_bytes(), np.float32).reshape(2, 8)
    np.testing.assert_array_equal(first, np.maximum(x, 0))
    np.testing.assert_array_equal(second, -x)


def test_python_load_without_memfd_uses_a_removed_temp_file(int8_conv, tmp_path, monkeypatch):
    def no_memfd(*_args):
        raise OSError(38, "Function not implemented")  # ENOSYS

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    model = qcompiler.load(int8_conv)
    assert model.run(thread_feeds()[0])["y"].shape == X_SHAPE
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# 3. verified loading, and bad files as errors
# ------------------------------------------------------------------------------------------


def test_c_sha256_matches_hashlib(c_tools, int8_conv, tmp_path):
    rng = np.random.default_rng(3)
    files = []
    for size in [*range(0, 130), 1000, 4096, 65536 + 7, 300_001]:
        files.append(tmp_path / f"r{size}.bin")
        files[-1].write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    files.append(int8_conv)
    for mode in ([], ["--chunks"]):
        proc = subprocess.run([str(c_tools / "qc_sha256sum"), *mode, *map(str, files)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        got = dict(line.split("  ", 1)[::-1] for line in proc.stdout.splitlines())
        for path in files:
            assert got[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest(), (mode, path.name)


def _aarch64_elf(data: bytes) -> bytes:
    patched = bytearray(data)
    patched[18:20] = (183).to_bytes(2, "little")  # e_machine = EM_AARCH64
    return bytes(patched)


def _tampered(data: bytes) -> bytes:
    """Two bytes changed in the .comment section: the hash differs, the code is intact (so that
    the unverified load may run it)."""
    import struct

    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in sections:
        if data[names_at + name:].startswith(b".comment\0") and size >= 3:
            changed = bytearray(data)
            changed[offset + 1] ^= 0x20
            changed[offset + 2] ^= 0x20
            return bytes(changed)
    raise AssertionError("the artifact has no .comment section")


# name → (new bytes, message with verification, message with --no-verify or None if it loads)
BAD_FILES = {
    "tampered": (_tampered, "does not match bad.json: SHA-256", None),
    "truncated": (lambda d: d[: len(d) // 2], "does not match bad.json: SHA-256", "is truncated"),
    "truncated_tail": (lambda d: d[:-8], "does not match bad.json: SHA-256", "is truncated"),
    "empty": (lambda d: b"", "does not match bad.json: SHA-256", "is empty"),
    "not_elf": (lambda d: b"#!/bin/sh\necho not a library\n" * 40, "does not match bad.json: SHA-256",
                "is not an ELF shared object"),
    "aarch64_machine": (_aarch64_elf, "does not match bad.json: SHA-256", "is built for aarch64"),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, int8_conv, tmp_path):
    make, verified_msg, unverified_msg = BAD_FILES[request.param]
    path = tmp_path / "bad.so"
    path.write_bytes(make(int8_conv.read_bytes()))
    shutil.copy(int8_conv.with_suffix(".json"), tmp_path / "bad.json")
    np.save(tmp_path / "x.npy", np.zeros(X_SHAPE, np.float32))
    return path, verified_msg, unverified_msg


def test_bad_file_python_load(bad_file):
    path, verified_msg, unverified_msg = bad_file
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(path)
    assert verified_msg in str(err.value) and "\n" not in str(err.value)
    if unverified_msg is None:
        assert qcompiler.load(path, verify=False).run({"x": np.zeros(X_SHAPE, np.float32)})["y"].shape == X_SHAPE
        return
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(path, verify=False)
    assert unverified_msg in str(err.value) and "\n" not in str(err.value)


def test_bad_file_cli_run(bad_file, capsys):
    path, verified_msg, unverified_msg = bad_file
    x = f"x={path.parent / 'x.npy'}"
    assert cli_main(["run", str(path), "--input", x]) == 2
    assert verified_msg in one_line_error(capsys.readouterr().err, "qcompiler: error:")
    if unverified_msg is not None:
        assert cli_main(["run", str(path), "--no-verify", "--input", x]) == 2
        assert unverified_msg in one_line_error(capsys.readouterr().err, "qcompiler: error:")


def test_bad_file_qc_run(c_tools, bad_file):
    path, verified_msg, unverified_msg = bad_file
    for args, message in (([], verified_msg), (["--no-verify"], unverified_msg)):
        proc = subprocess.run([str(c_tools / "qc_run"), str(path), "--zero-inputs", *args],
                              capture_output=True, text=True, timeout=60)
        if message is None:
            assert proc.returncode == 0, proc.stderr
            continue
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr)  # an error, not a signal
        assert message in one_line_error(proc.stderr, "qc_run: error:")


def test_truncated_file_cli_subprocess_exits_cleanly(int8_conv, tmp_path):
    """The SIGBUS the user met, in a real process: the CLI exits 2 with one line."""
    path = tmp_path / "cut.so"
    path.write_bytes(int8_conv.read_bytes()[:5000])
    np.save(tmp_path / "x.npy", np.zeros(X_SHAPE, np.float32))
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "run", str(path), "--no-verify", "--input",
                           f"x={tmp_path / 'x.npy'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "is truncated" in one_line_error(proc.stderr, "qcompiler: error:")


def test_missing_metadata_needs_no_verify(c_tools, int8_conv, tmp_path):
    bare = tmp_path / "bare.so"
    shutil.copy(int8_conv, bare)
    proc = subprocess.run([str(c_tools / "qc_run"), str(bare), "--zero-inputs"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "artifact metadata not found" in one_line_error(proc.stderr, "qc_run: error:")
    proc = subprocess.run([str(c_tools / "qc_run"), str(bare), "--zero-inputs", "--no-verify"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_bundle_manifest_is_checked_too(c_tools, int8_conv, tmp_path):
    """In a deploy bundle's folder, NAME.so must also match its entry in bundle.json."""
    shutil.copy(int8_conv, tmp_path / "conv.so")
    shutil.copy(int8_conv.with_suffix(".json"), tmp_path / "conv.json")
    digest = hashlib.sha256(int8_conv.read_bytes()).hexdigest()
    qc_run = [str(c_tools / "qc_run"), str(tmp_path / "conv.so"), "--zero-inputs"]
    for listed, ok in ((digest, True), ("0" * 64, False)):
        (tmp_path / "bundle.json").write_text(json.dumps({"model": "conv.so", "files": {"conv.so": listed}}))
        proc = subprocess.run(qc_run, capture_output=True, text=True)
        if ok:
            assert proc.returncode == 0, proc.stderr
            qcompiler.load(tmp_path / "conv.so")
        else:
            assert proc.returncode == 1
            assert "does not match bundle.json" in one_line_error(proc.stderr, "qc_run: error:")
            with pytest.raises(QCompilerError, match="does not match bundle.json"):
                qcompiler.load(tmp_path / "conv.so")
    (tmp_path / "bundle.json").write_text("{not json")
    proc = subprocess.run(qc_run, capture_output=True, text=True)
    assert proc.returncode == 1 and "bundle.json is not valid JSON" in proc.stderr


@pytest.mark.skipif(not have("aarch64-linux-gnu-g++"),
                    reason="aarch64-linux-gnu-g++ not found: install Debian package g++-aarch64-linux-gnu")
def test_genuine_aarch64_artifact_is_refused_by_qc_run(c_tools, tmp_path):
    """Its hash matches its NAME.json; the ELF machine check refuses it, with and without verification."""
    path = qcompiler.compile(unary_model("Relu"), target="arm64").export(tmp_path / "arm.so")
    for args in ([], ["--no-verify"]):
        proc = subprocess.run([str(c_tools / "qc_run"), str(path), "--zero-inputs", *args], capture_output=True,
                              text=True)
        assert proc.returncode == 1
        assert "is built for aarch64" in one_line_error(proc.stderr, "qc_run: error:")
    with pytest.raises(QCompilerError, match="built for aarch64"):
        qcompiler.load(path, verify=False)


def test_an_artifact_that_cannot_fit_in_memory_is_refused_before_loading(relu_and_neg, tmp_path, monkeypatch):
    """Told in advance (MemAvailable of /proc/meminfo): a one-line error, not the OOM killer."""
    from qcompiler import runtime

    path = relu_and_neg[0].export(tmp_path / "relu.so")
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: path.stat().st_size)
    with pytest.raises(QCompilerError, match=r"needs about \d+ MB of memory to load .* MB is available"):
        qcompiler.load(path)
    monkeypatch.setattr(runtime, "available_memory_bytes", lambda: 4 * path.stat().st_size)
    assert qcompiler.load(path).run({"x": np.ones((2, 8), np.float32)})["y"].shape == (2, 8)
