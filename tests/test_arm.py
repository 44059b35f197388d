"""ARM artifacts run: deploy bundles (TVM's aarch64 runtime from the pinned wheels, the C runtime
cross-built) executed under qemu-aarch64 user emulation, against the x86 build of the same model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qcompiler
from conftest import assert_close_rel
from qcompiler.bundle import C_CROSS_COMPILERS, MANIFEST, deploy_bundle
from qcompiler.errors import QCompilerError
from test_quantize import residual_net, samples

QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
SYSROOT = Path("/usr/aarch64-linux-gnu")
needs_qemu = pytest.mark.skipif(
    QEMU is None or not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists()
    or shutil.which(C_CROSS_COMPILERS["aarch64"].executable) is None,
    reason="ARM emulation needs Debian packages qemu-user-static and gcc-aarch64-linux-gnu "
           "(`make test` installs them when run as root)",
)


def run_under_qemu(bundle: Path, model: str, inputs: dict[str, np.ndarray], out: Path) -> dict[str, np.ndarray]:
    """Run `model` of `bundle` through its qc_run under qemu; outputs by name."""
    out.mkdir(parents=True, exist_ok=True)
    args = []
    for name, array in inputs.items():
        np.save(out / f"in_{name}.npy", array)
        args += ["--input", f"{name}={out / f'in_{name}.npy'}"]
    proc = subprocess.run([QEMU, "-L", str(SYSROOT), "./qc_run", model, *args, "--output-dir", str(out)],
                          cwd=bundle, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {p.stem: np.load(p) for p in out.glob("*.npy") if not p.name.startswith("in_")}


@pytest.fixture(scope="module")
def model_and_input():
    x = samples(1, seed=11)[0]["x"]
    return residual_net(), x


@pytest.fixture(scope="module")
def x86_outputs(model_and_input, tmp_path_factory):
    model, x = model_and_input
    work = tmp_path_factory.mktemp("x86")
    fp32 = qcompiler.compile(model, target="x86").export(work / "fp32.so")
    int8 = qcompiler.compile(model, target="x86", quantize="int8", calib=samples()).export(work / "int8.so")
    return {kind: qcompiler.load(path).run({"x": x})["y"] for kind, path in (("fp32", fp32), ("int8", int8))}


@needs_qemu
@pytest.mark.parametrize("preset", ["arm64", "arm64-a72", "arm64-a76-dotprod"])
def test_arm_bundles_match_the_x86_build(preset, model_and_input, x86_outputs, tmp_path):
    """fp32 within 1e-4 (relative to the output's scale); int8 bit-identical (integer arithmetic)."""
    model, x = model_and_input
    fp32 = qcompiler.compile(model, target=preset).export(tmp_path / "fp32.so")
    int8 = qcompiler.compile(model, target=preset, quantize="int8", calib=samples()).export(tmp_path / "int8.so")
    for kind, artifact in (("fp32", fp32), ("int8", int8)):
        bundle = deploy_bundle(artifact, tmp_path / f"bundle_{kind}", log=lambda _: None)
        got = run_under_qemu(bundle, artifact.name, {"x": x}, tmp_path / f"out_{kind}")["y"]
        if kind == "fp32":
            assert_close_rel(got, x86_outputs["fp32"], 1e-4)
        else:
            np.testing.assert_array_equal(got, x86_outputs["int8"])


@needs_qemu
def test_bundle_contents_and_manifest(model_and_input, tmp_path):
    model, _ = model_and_input
    artifact = qcompiler.compile(model, target="arm64").export(tmp_path / "m.so")
    bundle = deploy_bundle(artifact, tmp_path / "b", log=lambda _: None)
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert set(manifest["files"]) == {"m.so", "m.json", "libtvm_runtime.so", "libtvm_ffi.so", "qc_run",
                                      "libqc_runtime.so", "qc_runtime.h", "README.txt"}
    assert manifest["arch"] == "aarch64" and manifest["runtime_versions"]["apache-tvm"] == "0.27.0.post1"
    for name in ("qc_run", "libtvm_runtime.so", "libtvm_ffi.so", "libqc_runtime.so"):
        assert (bundle / name).read_bytes()[18:20] == (183).to_bytes(2, "little"), f"{name} is not aarch64"  # EM_AARCH64
    assert "./qc_run m.so" in (bundle / "README.txt").read_text()
    # Bundling again replaces the earlier bundle.
    assert deploy_bundle(artifact, bundle, log=lambda _: None) == bundle


def test_bundle_refuses_bad_input_and_leaves_nothing(model_and_input, tmp_path, monkeypatch):
    model, _ = model_and_input
    artifact = qcompiler.compile(model, target="arm64").export(tmp_path / "m.so")
    # A folder that is not a bundle is never overwritten.
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(QCompilerError, match="exists and is not a deploy bundle"):
        deploy_bundle(artifact, tmp_path / "taken", log=lambda _: None)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    # Offline, without the wheels: the error names them and how to get them.
    with pytest.raises(QCompilerError) as err:
        deploy_bundle(artifact, tmp_path / "b1", wheel_dir=tmp_path, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert "apache-tvm==0.27.0.post1" in str(err.value) and "pip download" in str(err.value)
    # No cross compiler: the error names the Debian package.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(QCompilerError, match="gcc-aarch64-linux-gnu"):
        deploy_bundle(artifact, tmp_path / "b2", log=lambda _: None)
    monkeypatch.undo()
    # A modified artifact is refused.
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(QCompilerError, match="does not match"):
        deploy_bundle(artifact, tmp_path / "b3", log=lambda _: None)
    assert not any(p.name.startswith(("b1", "b2", "b3", ".b")) for p in tmp_path.iterdir())


def test_cli_deploy_bundle_checks_the_target(model_and_input, tmp_path):
    model, _ = model_and_input
    artifact = qcompiler.compile(model, target="arm64").export(tmp_path / "m.so")
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "deploy-bundle", str(artifact), "--target", "arm64-a72",
                           "-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"qcompiler: error: {artifact} was compiled for target arm64, not arm64-a72"]
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None,
                    reason="aarch64-linux-gnu-objdump (Debian binutils-aarch64-linux-gnu) not installed")
def test_arm_int8_kernels_use_sdot_or_neon_widening_multiplies(model_and_input, tmp_path):
    """+dotprod: every conv/dense kernel runs `sdot`; plain NEON: `smlal`/`smull` (LLVM's choice
    per loop: a reduction over too few channels may stay scalar, so at least one kernel)."""
    from qcompiler.disasm import compute_kernel_usage

    model, _ = model_and_input
    usage = {}
    for preset in ("arm64-a76-dotprod", "arm64"):
        so = qcompiler.compile(model, target=preset, quantize="int8", calib=samples()).export(tmp_path / f"{preset}.so")
        usage[preset] = dict(compute_kernel_usage(so, "aarch64"))
    dot = {name: m for name, m in usage["arm64-a76-dotprod"].items() if "_sdot" in name}
    assert len(dot) == 3 and all("sdot" in m for m in dot.values())
    neon = {name: m for name, m in usage["arm64"].items() if "_neon" in name}
    assert len(neon) == 3 and any({"smlal", "smull"} & set(m) for m in neon.values())


@needs_qemu
def test_runtime_libraries_from_a_wheel_folder_offline(tmp_path):
    """--wheel-dir: the pinned aarch64 wheels in a folder serve without any download."""
    from qcompiler.bundle import WHEEL_PLATFORMS, runtime_libraries, runtime_versions
    from qcompiler.elf import ElfFile
    from qcompiler.wheels import download_wheels

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    download_wheels([f"{n}=={v}" for n, v in runtime_versions().items()], wheels, WHEEL_PLATFORMS["aarch64"])
    said = []
    libs = runtime_libraries("aarch64", wheel_dir=wheels, cache_dir=tmp_path / "cache", log=said.append)
    assert said == []  # nothing downloaded
    for lib in (libs.tvm_lib_dir / "libtvm_runtime.so", libs.ffi_lib_dir / "libtvm_ffi.so"):
        assert ElfFile(lib).machine == "aarch64"
    assert (libs.ffi_include / "tvm" / "ffi" / "c_api.h").exists()
