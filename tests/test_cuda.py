"""CUDA presets compile and export without a GPU; the .so embeds device binary, not CUDA source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import qcompiler
from conftest import make_model
from qcompiler import cuda_binary
from qcompiler.errors import QCompilerError
from qcompiler.signature import read_signature


def conv_net():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    rng = np.random.default_rng(0)
    return make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 5])],
                      {"w": rng.standard_normal((8, 3, 3, 3)), "fc": rng.standard_normal((5, 8))})


def compiler_available(which: str) -> bool:
    try:
        cuda_binary.find_cuda_compiler(which)
        return True
    except RuntimeError:
        return False


needs_compiler = pytest.mark.skipif(
    not compiler_available("auto"),
    reason=f"no CUDA compiler: install nvcc or `pip install {cuda_binary.NVRTC_PIP_PACKAGES}`",
)


@needs_compiler
@pytest.mark.parametrize("preset,arch", [("cuda-sm80", "sm_80"), ("cuda-sm90", "sm_90")])
def test_cuda_artifact_embeds_device_binary(preset, arch, tmp_path):
    path = qcompiler.compile(conv_net(), target=preset).export(tmp_path / "gpu.so")
    payload = cuda_binary.describe_cuda_payload(path)
    assert payload["device_module"] == "cuda"
    assert payload["format"] in ("fatbin", "cubin")
    assert payload["contains_cuda_source"] is False
    assert payload["binary_bytes"] > 1000
    assert payload["arch"] == arch
    assert len(payload["functions"]) >= 3
    assert b"__global__" not in path.read_bytes() and b"extern \"C\" __global__" not in path.read_bytes()
    assert read_signature(path).device == "cuda"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["target"]["device"] == "cuda" and meta["target"]["tvm_target"]["arch"] == arch


@pytest.mark.skipif(not compiler_available("nvrtc"),
                    reason=f"NVRTC unavailable: `pip install {cuda_binary.NVRTC_PIP_PACKAGES}`")
def test_nvrtc_route_without_toolkit(tmp_path):
    import tvm
    from tvm import relax

    from qcompiler.frontend import load_onnx
    from qcompiler.targets import resolve

    target = resolve("cuda-sm86").target()
    with target:
        lowered = relax.get_default_pipeline(target)(load_onnx(conv_net()).mod)
    executable = cuda_binary.embed_device_binary(tvm.compile(lowered, target), target, compiler="nvrtc")
    assert [b.compiler for b in executable.device_binaries] == ["nvrtc"]
    executable.export_library(str(tmp_path / "nvrtc.so"))
    payload = cuda_binary.describe_cuda_payload(tmp_path / "nvrtc.so")
    assert payload["format"] == "cubin" and payload["arch"] == "sm_86" and not payload["contains_cuda_source"]


def test_cpu_artifact_has_no_cuda_module(tmp_path):
    path = qcompiler.compile(conv_net(), target="x86").export(tmp_path / "cpu.so")
    assert cuda_binary.describe_cuda_payload(path)["device_module"] is None


def test_missing_cuda_compiler_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cuda_binary, "_nvrtc_missing", lambda: "cuda-bindings is not installed")
    with pytest.raises(QCompilerError) as err:
        qcompiler.compile(conv_net(), target="cuda-sm80")
    text = str(err.value)
    assert "\n" not in text and "no CUDA compiler" in text and "nvidia-cuda-nvrtc" in text


@needs_compiler
def test_loading_cuda_artifact_without_gpu_is_refused(tmp_path):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    path = qcompiler.compile(conv_net(), target="cuda-sm80").export(tmp_path / "gpu.so")
    with pytest.raises(QCompilerError) as err:
        qcompiler.load(path)
    assert "no CUDA device" in str(err.value)


@needs_compiler
def test_cuda_deploy_bundle_carries_the_cuda_runtime(tmp_path):
    """A GPU machine needs only the driver: TVM's CUDA runtime and libcudart.so.13 are in the bundle."""
    from qcompiler.bundle import deploy_bundle

    path = qcompiler.compile(conv_net(), target="cuda-sm90").export(tmp_path / "gpu.so")
    bundle = deploy_bundle(path, tmp_path / "bundle", log=lambda _: None)
    names = {p.name for p in bundle.iterdir()}
    assert {"gpu.so", "qc_run", "libtvm_runtime.so", "libtvm_ffi.so", "libtvm_runtime_cuda.so", "libcudart.so.13"} <= names
    assert "(x86_64, cuda)" in (bundle / "README.txt").read_text()


def cuda_kernels(model) -> dict[str, str]:
    """The CUDA source of each kernel of `model` quantized to int8 and built for sm_80."""
    import re

    import tvm

    from qcompiler.frontend import load_onnx
    from qcompiler.quantize import quantize
    from qcompiler.targets import resolve
    from qcompiler.tuning import gpu_pipeline
    from test_quantize import samples

    quantized = quantize(load_onnx(model), qcompiler.QConfig(), samples(8))
    target = resolve("cuda-sm80").target()
    executable = tvm.compile(gpu_pipeline(target)(quantized.mod), target)

    def modules(m):
        yield m
        for child in m.imports:
            yield from modules(child)

    source = next(m for m in modules(executable.mod) if m.kind == "cuda").inspect_source()
    chunks = source.split('extern "C" __global__ void ')[1:]
    return {re.search(r"\) (\w+)\(", chunk).group(1): chunk for chunk in chunks}


def assert_dp4a_accumulation(kernels: dict[str, str]) -> None:
    import re

    for name, body in kernels.items():
        # the int32 accumulator's only update: acc = acc + __dp4a(4 activation bytes, 4 weight bytes, 0)
        updates = re.findall(r"(\w+_local_ptr)\[0\] = \(\1\[0\] \+ (.*?)\);\n", body)
        assert updates and all(re.fullmatch(r"__dp4a\(\*\(int\*\)\(.*\), \*\(int\*\)\(.*\), 0\)", u[1])
                               for u in updates), name


def test_int8_cuda_kernels_use_dp4a():
    """Every int8 conv/dense kernel of the CUDA module multiplies 4 bytes at a time with `__dp4a`,
    reading each operand as one 32-bit word; nothing is widened to float."""
    from test_quantize import residual_net

    int8 = {name: body for name, body in cuda_kernels(residual_net()).items() if "_dp4a" in name}
    assert sorted(name.split("_dp4a")[0] for name in int8) == \
        ["fused_conv2d_nhwc_s8s8", "fused_conv2d_nhwc_s8s8", "fused_dense_s8s8"]
    assert_dp4a_accumulation(int8)


def test_cuda_mobile_block_kernels():
    """Depthwise convolutions: one thread per output (no block-wide reduction in shared memory).
    Table lookups (hardswish, hardsigmoid) run in the kernels that compute their indices, and the
    squeeze-excitation gate multiplies its map in the thread that computed it: one kernel per
    fused function, no intermediate in global memory."""
    from test_quantize import mobile_net

    kernels = cuda_kernels(mobile_net())
    depthwise = [body for name, body in kernels.items() if "depthwise" in name]
    assert len(depthwise) == 1 and "__shared__" not in depthwise[0]
    assert not any(name.startswith("take") for name in kernels)
    assert sum("take" in name for name in kernels) >= 3
    assert_dp4a_accumulation({name: body for name, body in kernels.items() if "_dp4a" in name})
    assert not any(name.endswith("_kernel_1") for name in kernels)
