"""Weights in the artifact's `.qc_weights` section: never mapped with the code, copied to the
device once at load by the Python and the C runtime, corrupt sections refused in one line.
Intermediate tensors made once per VM (`qc_workspace`): a run allocates only its outputs."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import REPO, make_model, ort_run
from qcompiler.errors import QCompilerError
from qcompiler.runtime import find_section
from qcompiler.weights import SECTION
from qcompiler.weights import read as read_weights

ROWS, COLS = 1024, 2048  # an 8 MiB float32 weight


def dense_model():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    bias = rng.standard_normal(COLS).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    return make_model(nodes, [("x", [4, ROWS])], [("y", [4, COLS])], {"w": w, "bias": bias}), w


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model, w = dense_model()
    path = tmp_path_factory.mktemp("weights") / "dense.so"
    qcompiler.compile(model, target="x86").export(path)
    return path, model, w


def feed():
    return {"x": np.random.default_rng(4).standard_normal((4, ROWS)).astype(np.float32)}


def loaded_ranges(data: bytes) -> list[tuple[int, int]]:
    (phoff,) = struct.unpack_from("<Q", data, 32)
    (phnum,) = struct.unpack_from("<H", data, 56)
    ranges = []
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * 56)
        if p_type == 1:
            ranges.append((offset, offset + filesz))
    return ranges


def test_weights_are_in_a_section_the_loader_does_not_map(artifact):
    path, _, w = artifact
    data = path.read_bytes()
    offset, size = find_section(data, SECTION, path)
    assert size >= w.nbytes
    assert all(offset >= end or offset + size <= start for start, end in loaded_ranges(data))
    weights = read_weights(path)
    packed = max(weights, key=lambda a: a.size)  # the weight in its compile-time packed layout
    assert packed.dtype == np.float32 and packed.size >= w.size
    assert np.isin(w, packed).all()  # packing permutes (and may pad) the values
    sample = packed.reshape(-1)[1000:1016].tobytes()  # 64 bytes of weight data
    assert data.count(sample) == 1  # only in the section: the executable holds no second copy
    assert all(data.find(sample, start, end) < 0 for start, end in loaded_ranges(data))


def test_python_and_c_runtime_run_with_the_weights(artifact, qc_run_binary, tmp_path):
    path, model, _ = artifact
    x = feed()
    expected = ort_run(model, x)["y"]
    out = qcompiler.load(path).run(x)["y"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.save(tmp_path / "x.npy", x["x"])
    np.save(tmp_path / "y.npy", out)
    proc = subprocess.run([str(qc_run_binary), str(path), str(tmp_path / "x.npy"), "--expect", f"y={tmp_path / 'y.npy'}",
                           "--tolerance", "0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_loading_holds_one_copy_of_the_weights(artifact, tmp_path):
    """Peak memory of `load` in a fresh process: the file's bytes, then the weights' tensors,
    and no more (a library that embedded its constants held four copies at its peak)."""
    path, _, w = artifact
    small = tmp_path / "small.so"  # loaded first: libtvm_runtime's own memory is not counted
    qcompiler.compile(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], [("y", [4])]),
                      target="x86").export(small)
    script = textwrap.dedent(f"""
        import qcompiler
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        qcompiler.load({str(small)!r})
        before = hwm()
        qcompiler.load({str(path)!r})
        print(hwm() - before)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    growth, size = int(proc.stdout), path.stat().st_size
    assert size >= w.nbytes
    assert growth <= 2.5 * size, f"loading a {size}-byte artifact raised the peak by {growth} bytes"


def corrupted(path, tmp_path, change) -> str:
    data = bytearray(path.read_bytes())
    offset, _ = find_section(bytes(data), SECTION, path)
    change(data, offset)
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(data))
    return str(bad)


def _magic(data, offset):
    data[offset] ^= 0xFF


def _nbytes(data, offset):
    struct.pack_into("<Q", data, offset + 16 + 8, 12345)


def _bounds(data, offset):
    struct.pack_into("<Q", data, offset + 16, 1 << 40)


def _allocated(data, offset):
    """Mark the section SHF_ALLOC in its header."""
    (shoff,) = struct.unpack_from("<Q", data, 40)
    (shnum,) = struct.unpack_from("<H", data, 60)
    for i in range(shnum):
        if struct.unpack_from("<Q", data, shoff + i * 64 + 24)[0] == offset:
            flags_at = shoff + i * 64 + 8
            struct.pack_into("<Q", data, flags_at, struct.unpack_from("<Q", data, flags_at)[0] | 2)
            return
    raise AssertionError("no section header at the weights' offset")


@pytest.mark.parametrize("change, message", [
    (_magic, "section is corrupt"),
    (_nbytes, "section is corrupt"),
    (_bounds, "section is corrupt"),
    (_allocated, "overlaps the code"),
])
def test_corrupt_weights_section_is_refused_in_one_line(artifact, qc_run_binary, tmp_path, change, message):
    path, _, _ = artifact
    bad = corrupted(path, tmp_path, change)
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(bad, verify=False)
    assert message in str(err.value) and SECTION in str(err.value) and "\n" not in str(err.value)
    proc = subprocess.run([str(qc_run_binary), bad, "--no-verify", "--zero-inputs"], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.returncode > 0  # an error, not a signal
    line = proc.stderr.strip()
    assert "\n" not in line and message in line and SECTION in line, line
    (tmp_path / "bad.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(QCompilerError, match="does not match"):  # verified, the hash refuses it first
        qcompiler.load(bad)


def conv_stack():
    rng = np.random.default_rng(5)
    nodes, initializers, prev = [], {}, "x"
    for i in range(3):
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        initializers[f"w{i}"] = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
        prev = f"r{i}"
    nodes.append(helper.make_node("ReduceMax", ["r1"], ["side"], axes=[2, 3], keepdims=0))
    return make_model(nodes, [("x", [1, 8, 12, 12])], [("r2", [1, 8, 12, 12]), ("side", [1, 8])], initializers,
                      opset=17)


def test_a_run_allocates_only_its_outputs(tmp_path, qc_run_binary):
    model = conv_stack()
    path = qcompiler.compile(model, target="x86").export(tmp_path / "stack.so")
    loaded = qcompiler.load(path)
    x = {"x": np.random.default_rng(6).standard_normal((1, 8, 12, 12)).astype(np.float32)}
    calls = {row.name: row.calls for row in loaded.profile(x, repeat=3).rows}
    assert calls.get("vm.builtin.alloc_storage") == 2 and calls.get("vm.builtin.alloc_tensor") == 2, calls
    expected = ort_run(model, x)
    first = loaded.run(x)
    second = loaded.run({"x": -x["x"]})  # a second run does not write into the first run's outputs
    for name in ("r2", "side"):
        np.testing.assert_allclose(first[name], expected[name], rtol=1e-4, atol=1e-5)
    assert not np.array_equal(first["r2"], second["r2"])
    np.save(tmp_path / "x.npy", x["x"])
    np.save(tmp_path / "r2.npy", first["r2"])
    proc = subprocess.run([str(qc_run_binary), str(path), str(tmp_path / "x.npy"), "--repeat", "3",
                           "--expect", f"r2={tmp_path / 'r2.npy'}", "--tolerance", "0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
