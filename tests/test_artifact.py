"""Export (atomic, with metadata), loading (hash-checked), input checks, fresh-process reload, ARM."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import assert_close_rel, have, make_model, ort_run
from qcompiler.elf import ElfFile
from qcompiler.errors import QCompilerError
from qcompiler.signature import read_signature


def two_in_two_out():
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["sum out"], name="add"),
        helper.make_node("Relu", ["m"], ["relu"], name="relu"),
    ]
    return make_model(nodes, [("a", [2, 8]), ("b", [2, 4])], [("sum out", [2, 4]), ("relu", [2, 4])],
                      {"w": np.arange(32, dtype=np.float32).reshape(8, 4) / 10})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("art") / "two.so"
    qcompiler.compile(two_in_two_out(), target="x86").export(path)
    return path


def feed():
    rng = np.random.default_rng(0)
    return {"a": rng.standard_normal((2, 8)).astype(np.float32), "b": rng.standard_normal((2, 4)).astype(np.float32)}


def test_metadata_contents(exported):
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["inputs"] == [{"name": "a", "shape": [2, 8], "dtype": "float32"},
                              {"name": "b", "shape": [2, 4], "dtype": "float32"}]
    assert [o["name"] for o in meta["outputs"]] == ["sum out", "relu"]
    assert meta["target"]["preset"] == "x86" and meta["target"]["tvm_target"]["kind"] == "llvm"
    assert meta["versions"]["apache-tvm"] == "0.27.0.post1" and meta["versions"]["onnx_opset"] == 17
    assert meta["artifact"]["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert meta["artifact"]["bytes"] == exported.stat().st_size
    assert meta["source_model"]["sha256"] == hashlib.sha256(two_in_two_out().SerializeToString()).hexdigest()
    assert meta["quantization"] == {"mode": "none"}


def test_embedded_signature(exported):
    sig = read_signature(exported)
    assert sig.device == "cpu"
    assert [(s.name, s.shape) for s in sig.inputs] == [("a", (2, 8)), ("b", (2, 4))]
    assert [s.name for s in sig.outputs] == ["sum out", "relu"]


def test_run_matches_onnxruntime(exported):
    expected = ort_run(two_in_two_out(), feed())
    actual = qcompiler.load(exported).run(feed())
    for name in expected:
        assert_close_rel(actual[name], expected[name])


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda f: {**f, "c": f["a"]}, "unknown input name(s) 'c'"),
        (lambda f: {"a": f["a"]}, "missing input(s) 'b'"),
        (lambda f: {**f, "a": f["a"][:1]}, "expects float32[2,8], got float32[1,8]"),
        (lambda f: {**f, "a": f["a"].astype(np.float64)}, "expects float32[2,8], got float64[2,8]"),
    ],
)
def test_input_checks(exported, change, message):
    model = qcompiler.load(exported)
    with pytest.raises(QCompilerError) as err:
        model.run(change(feed()))
    assert message in str(err.value)


def test_entry_function_checks_inputs_without_kernel_asserts(exported):
    """Kernels are built without TIR asserts; the VM's entry function still refuses wrong inputs
    when the artifact is driven by TVM directly, bypassing qcompiler's runtime checks."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(exported)), tvm.cpu())
    from qcompiler.weights import read as read_weights

    # main's parameters after the inputs: the weights, then the VM's workspace (made once per VM)
    weights = [tvm.runtime.tensor(w) for w in read_weights(exported)] + list(vm["qc_workspace"]())
    assert weights
    good = feed()
    for bad, message in (({**good, "a": good["a"][:1]}, r"shape\[0\] mismatch"),
                         ({**good, "b": good["b"].astype(np.float64)}, "dtype float32")):
        with pytest.raises(Exception, match=message):
            vm["main"](*[tvm.runtime.tensor(bad[name]) for name in ("a", "b")], *weights)
    out = vm["main"](*[tvm.runtime.tensor(good[name]) for name in ("a", "b")], *weights)
    np.testing.assert_allclose(out[1].numpy(), qcompiler.load(exported).run(good)["relu"], rtol=1e-6)


def test_tampered_so_is_refused(exported, tmp_path):
    copy = tmp_path / "t.so"
    data = bytearray(exported.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    copy.with_suffix(".json").write_text(exported.with_suffix(".json").read_text())
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(copy)
    assert "does not match t.json" in str(err.value) and "SHA-256" in str(err.value)


def test_missing_metadata(exported, tmp_path):
    copy = tmp_path / "bare.so"
    copy.write_bytes(exported.read_bytes())
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(copy)
    assert "artifact metadata not found" in str(err.value)
    model = qcompiler.load(copy, verify=False)  # falls back to the embedded signature
    assert [s.name for s in model.inputs] == ["a", "b"]
    assert set(model.run(feed())) == {"sum out", "relu"}


def test_reload_in_fresh_process(exported, tmp_path):
    """A fresh process runs the artifact with TVM's runtime library alone: neither the `tvm`
    package (its compiler) nor onnx is imported."""
    np.savez(tmp_path / "feed.npz", **feed())
    script = (
        "import sys, numpy as np, qcompiler\n"
        "feed = dict(np.load(sys.argv[2]))\n"
        "np.savez(sys.argv[3], **qcompiler.load(sys.argv[1]).run(feed))\n"
        "heavy = sorted({'tvm', 'onnx'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script, str(exported), str(tmp_path / "feed.npz"), str(tmp_path / "o.npz")],
                   check=True)
    fresh = np.load(tmp_path / "o.npz")
    here = qcompiler.load(exported).run(feed())
    for name in here:
        np.testing.assert_array_equal(fresh[name], here[name])


def test_failed_export_leaves_no_files(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    compiler = fake / "aarch64-linux-gnu-g++"
    compiler.write_text("#!/bin/sh\necho 'linker exploded' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.so").write_bytes(b"previous artifact")
    artifact = qcompiler.compile(two_in_two_out(), target="arm64")
    with pytest.raises(QCompilerError) as err:
        artifact.export(out / "m.so")
    assert "exporting" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["m.so"]
    assert (out / "m.so").read_bytes() == b"previous artifact"


def test_missing_cross_compiler_fails_before_compiling(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QCompilerError) as err:
        qcompiler.compile(two_in_two_out(), target="arm64-a72")
    assert "g++-aarch64-linux-gnu" in str(err.value)


def test_output_must_be_so(tmp_path):
    artifact = qcompiler.compile(two_in_two_out())
    with pytest.raises(QCompilerError):
        artifact.export(tmp_path / "m.dll")


@pytest.mark.skipif(not have("aarch64-linux-gnu-g++"),
                    reason="aarch64-linux-gnu-g++ not found: install Debian package g++-aarch64-linux-gnu")
@pytest.mark.parametrize("preset", ["arm64", "arm64-a72", "arm64-a76-dotprod"])
def test_arm_artifact_is_aarch64_elf(preset, tmp_path):
    path = qcompiler.compile(two_in_two_out(), target=preset).export(tmp_path / "arm.so")
    assert ElfFile(path).machine == "aarch64"
    assert read_signature(path).inputs[0].name == "a"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["target"]["arch"] == "aarch64"
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(path)
    assert "built for aarch64" in str(err.value)


def test_inspect_without_objdump_says_what_is_missing(exported, monkeypatch):
    from qcompiler import disasm
    from qcompiler.inspect import inspect_path

    monkeypatch.setattr(disasm.shutil, "which", lambda tool: None)
    text = inspect_path(exported)
    assert "int8 multiply-accumulate instructions: not checked (disassembling x86_64 code needs objdump " \
           "(Debian package binutils))" in text
    assert "host kernels:" in text  # the rest of the description is still there
