"""Target presets: listing, lookup, raw JSON, host detection, cross-compiler errors."""

from __future__ import annotations

import pytest

from qcompiler.errors import QCompilerError
from qcompiler.targets import DeviceKind, all_presets, resolve
from qcompiler.targets.x86 import best_mcpu, read_cpu_flags

REQUIRED = ["x86", "x86-avx2", "x86-avx512", "arm64", "arm64-a72", "arm64-a76-dotprod",
            "cuda-sm75", "cuda-sm80", "cuda-sm86", "cuda-sm89", "cuda-sm90"]


def test_required_presets_exist_and_make_tvm_targets():
    names = [p.name for p in all_presets()]
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))
    for preset in all_presets():
        target = preset.target()
        assert target.kind.name == preset.tvm_target["kind"]
        assert "\n" not in preset.summary()


def test_arm_presets_cross_compile_for_aarch64():
    for name in ["arm64", "arm64-a72", "arm64-a76-dotprod"]:
        preset = resolve(name)
        assert preset.arch == "aarch64"
        assert preset.cross_compiler.executable == "aarch64-linux-gnu-g++"
        assert preset.tuning.runner == "rpc"
    assert "+dotprod" in resolve("arm64-a76-dotprod").tvm_target["mattr"]


def test_cuda_presets():
    for suffix in ["75", "80", "86", "89", "90"]:
        preset = resolve(f"cuda-sm{suffix}")
        assert preset.device is DeviceKind.CUDA
        assert preset.target().attrs["arch"] == f"sm_{suffix}"


def test_unknown_preset_lists_presets():
    with pytest.raises(QCompilerError) as err:
        resolve("x87")
    text = str(err.value)
    assert "unknown target 'x87'" in text and all(name in text for name in REQUIRED)


def test_raw_target_json():
    preset = resolve('{"kind": "llvm", "mcpu": "haswell"}')
    assert preset.name == "custom" and preset.device is DeviceKind.CPU and preset.arch == "x86_64"
    arm = resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')
    assert arm.arch == "aarch64" and arm.cross_compiler is not None
    for bad in ['{"mcpu": "haswell"}', '{"kind": "llvm"', '{"kind": "opencl"}']:
        with pytest.raises(QCompilerError):
            resolve(bad)


@pytest.mark.parametrize(
    "vendor,flags,mcpu",
    [
        ("AuthenticAMD", {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}, "znver4"),
        ("GenuineIntel", {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, "cascadelake"),
        ("GenuineIntel", {"avx2", "fma", "avx512f", "avx512bw"}, "skylake-avx512"),
        ("GenuineIntel", {"avx2", "fma"}, "haswell"),
        ("AuthenticAMD", {"avx2", "fma"}, "znver2"),
        ("", set(), "x86-64"),
    ],
)
def test_best_mcpu(vendor, flags, mcpu):
    assert best_mcpu(vendor, frozenset(flags)) == mcpu


def test_host_detection_reads_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n")
    vendor, flags = read_cpu_flags(cpuinfo)
    assert vendor == "GenuineIntel" and {"avx2", "fma"} <= flags
    assert read_cpu_flags(tmp_path / "missing") == ("", frozenset())
    assert resolve("x86").tvm_target["mcpu"] == best_mcpu(*read_cpu_flags())


def test_missing_cross_compiler_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QCompilerError) as err:
        resolve("arm64").cross_compiler.require()
    assert "aarch64-linux-gnu-g++" in str(err.value) and "g++-aarch64-linux-gnu" in str(err.value)
