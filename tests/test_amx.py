"""AMX kernels (kernels/amx.py): int8 bit-exact against the integer reference and bf16 in
`tdpbf16ps`'s order of additions, through their emulation on any x86 host, on the hardware where
the host has AMX; `tdpbusd` / `tdpbf16ps` in the machine code of an `x86-amx` artifact everywhere;
never AMX for a target without it."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import te

import qcompiler
from conftest import make_model
from qcompiler.disasm import compute_kernel_usage
from qcompiler.errors import QCompilerError
from qcompiler.inspect import inspect_path
from qcompiler.kernels import amx
from qcompiler.kernels.compute import dense_matrix_tiles, pack_dense_weight, round_up, shape64
from qcompiler.kernels.isa import VNNI, tile_engine_of
from qcompiler.kernels.schedules import DEFAULT_KERNEL, apply_default_schedule
from qcompiler.targets import resolve
from qcompiler.targets.x86 import read_cpu_flags

EMULATED_TARGET = {"kind": "llvm", "mcpu": "znver4", "keys": ["cpu", "qc-amx-emulated"]}
HOST_HAS_AMX = {"amx_tile", "amx_int8"} <= read_cpu_flags()[1]
needs_amx = pytest.mark.skipif(not HOST_HAS_AMX, reason="this CPU has no AMX (amx_int8 not in /proc/cpuinfo)")
needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (Debian binutils) not installed")
rng = np.random.default_rng(0)


def scheduled_tile_kernel(rows: int, depth: int, out_channels: int, engine: amx.TileBackend,
                          product: amx.TileProduct = amx.U8S8):
    """The tile engine's dense kernel alone, scheduled by the default schedule: padded data
    [M', K'] × packed weights → [rows, out_channels] in the product's accumulator type."""
    per_row, reduce = product.row_elements, product.reduce
    data = te.placeholder(shape64(round_up(rows, amx.BLOCK), round_up(depth, per_row)), product.a_dtype, "x")
    packed = te.placeholder(shape64(round_up(out_channels, amx.BLOCK) // 16, round_up(depth, per_row) // reduce, 16,
                                    reduce), product.b_dtype, "w")
    out = dense_matrix_tiles(data, packed, engine.dense_block(product), [rows], out_channels, product.c_dtype)
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, packed, out]))
    assert apply_default_schedule(sch) == DEFAULT_KERNEL
    return sch.mod


def windows_reference(x: np.ndarray, kh: int, kw: int, strides, dilation, row_multiple: int, depth_multiple: int):
    """The windows of NHWC `x` as matrix rows, (r, s, c) along K, zero-padded: by slicing."""
    n, height, width, channels = x.shape
    (sh, sw), (dh, dw) = strides, dilation
    out_h, out_w = (height - (kh - 1) * dh - 1) // sh + 1, (width - (kw - 1) * dw - 1) // sw + 1
    cols = np.stack([x[:, r * dh:r * dh + (out_h - 1) * sh + 1:sh, s * dw:s * dw + (out_w - 1) * sw + 1:sw]
                     for r in range(kh) for s in range(kw)], axis=3).reshape(n * out_h * out_w, -1)
    out = np.zeros((round_up(len(cols), row_multiple), round_up(cols.shape[1], depth_multiple)), x.dtype)
    out[:len(cols), :cols.shape[1]] = cols
    return out


@pytest.mark.parametrize("shape,kernel,strides,dilation", [
    ((1, 11, 11, 28), (3, 3), (1, 1), (1, 1)),   # MTCNN's 3×3 over 28 channels: K 252 → 256
    ((2, 9, 10, 5), (3, 2), (2, 1), (1, 1)),     # batch 2, strided, non-square
    ((1, 13, 13, 8), (3, 3), (1, 2), (2, 2)),    # dilated: one run per tap
    ((1, 40, 40, 64), (3, 3), (1, 1), (1, 1)),   # large enough for the parallel loop
])
@pytest.mark.parametrize("dtype", ["uint8", "bfloat16"])
def test_im2col_kernel_writes_padded_windows(shape, kernel, strides, dilation, dtype):
    """im2col.py's run copies give the windows of each output pixel as one row of the padded
    matrix, zeros in the padded rows and K, whatever the output buffer held before."""
    import ml_dtypes

    from qcompiler.kernels.im2col import im2col_kernel

    numpy_dtype = np.uint8 if dtype == "uint8" else ml_dtypes.bfloat16
    x = (rng.integers(1, 256, shape) if dtype == "uint8" else rng.standard_normal(shape)).astype(numpy_dtype)
    func = im2col_kernel(shape, dtype, *kernel, strides, dilation, amx.BLOCK, 64)
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"}))
    expected = windows_reference(x, *kernel, strides, dilation, amx.BLOCK, 64)
    out = tvm.runtime.tensor(np.full(expected.shape, 7, numpy_dtype))
    lib(tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("rows,depth,out_channels", [
    *((rows, depth, out_channels) for rows in (1, 7, 17, 100) for depth, out_channels in ((64, 32), (200, 40))),
    (300, 64, 100),   # 10 row panels: each panel product computes all 4 column blocks
    (100, 128, 300),  # 4 row panels: the 10 column blocks in 2 groups of 5
])
def test_emulated_tile_kernel_is_exact(rows, depth, out_channels):
    """M tails (1, 7, 17, 100 rows), K and N not multiples of the tile, panels of several column
    blocks: the kernel against numpy's int64 product; the emulation executes the instructions'
    specification with the hardware kernel's configuration, addresses and strides."""
    lib = tvm.tirx.build(scheduled_tile_kernel(rows, depth, out_channels, amx.EMULATED), tvm.target.Target(EMULATED_TARGET))
    x = rng.integers(0, 256, (rows, depth), dtype=np.uint8)
    w = rng.integers(-128, 128, (depth, out_channels), dtype=np.int8)
    padded = np.zeros((round_up(rows, amx.BLOCK), round_up(depth, amx.ROW_BYTES)), np.uint8)
    padded[:rows, :depth] = x
    packed = pack_dense_weight(w, VNNI, n_multiple=amx.BLOCK, k_multiple=amx.ROW_BYTES)
    out = tvm.runtime.tensor(np.zeros((rows, out_channels), np.int32))
    lib(tvm.runtime.tensor(padded), tvm.runtime.tensor(packed), out)
    np.testing.assert_array_equal(out.numpy(), x.astype(np.int64) @ w.astype(np.int64))


def tdpbf16ps_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float32 x [M, K] · w [K, N] (bfloat16 values) as `tdpbf16ps` adds: per pair of K, the
    product of the even element then of the odd one, each added to the float32 sum and rounded
    (the products of bfloat16 values are exact in float32)."""
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    acc = np.zeros((x.shape[0], w.shape[1]), np.float32)
    for k in range(x.shape[1]):
        acc = acc + x32[:, k:k + 1] * w32[k:k + 1, :]
    return acc


@pytest.mark.parametrize("rows", [1, 17, 100])
@pytest.mark.parametrize("depth,out_channels", [(32, 32), (100, 40)])
def test_emulated_bf16_tile_kernel_adds_as_tdpbf16ps(rows, depth, out_channels):
    """AMX-BF16: M tails, K (by 32) and N not multiples of the tile: the emulated kernel equals
    tdpbf16ps's order of float32 additions bit for bit, and float64's product within 1e-5."""
    import ml_dtypes

    from qcompiler.kernels.isa import BF16_DOT

    lib = tvm.tirx.build(scheduled_tile_kernel(rows, depth, out_channels, amx.EMULATED, amx.BF16),
                         tvm.target.Target(EMULATED_TARGET))
    x = rng.standard_normal((rows, depth)).astype(ml_dtypes.bfloat16)
    w = (rng.standard_normal((depth, out_channels)) * 0.1).astype(ml_dtypes.bfloat16)
    padded = np.zeros((round_up(rows, amx.BLOCK), round_up(depth, amx.BF16.row_elements)), ml_dtypes.bfloat16)
    padded[:rows, :depth] = x
    packed = pack_dense_weight(w, BF16_DOT, n_multiple=amx.BLOCK, k_multiple=amx.BF16.row_elements)
    out = tvm.runtime.tensor(np.zeros((rows, out_channels), np.float32))
    lib(tvm.runtime.tensor(padded), tvm.runtime.tensor(packed), out)
    np.testing.assert_array_equal(out.numpy(), tdpbf16ps_reference(x, w))
    exact = x.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(out.numpy(), exact, rtol=1e-5, atol=1e-5)


def test_hardware_tile_kernel_code():
    """The hardware form: per 64 bytes of K, 4 tile loads and 4 `tdpbusd`; configured, stored
    and released once per 32 × 32 block."""
    lib = tvm.tirx.build(scheduled_tile_kernel(64, 128, 64, amx.HARDWARE), resolve("x86-amx").target())
    asm = lib.inspect_source("asm")
    mnemonics = [line.split()[0] for line in asm.splitlines() if line.strip() and not line.strip().startswith((".", "#"))]
    assert mnemonics.count("tdpbusd") == 8 and mnemonics.count("ldtilecfg") == 1
    assert mnemonics.count("tilestored") == 4 and mnemonics.count("tilerelease") == 1
    assert "vpdpbusd" not in mnemonics


def test_hardware_bf16_tile_kernel_code():
    """AMX-BF16's hardware form: per 32 bfloat16 of K, 4 `tdpbf16ps`; no vector bf16 dot product."""
    lib = tvm.tirx.build(scheduled_tile_kernel(64, 64, 64, amx.HARDWARE, amx.BF16), resolve("x86-amx").target())
    asm = lib.inspect_source("asm")
    mnemonics = [line.split()[0] for line in asm.splitlines() if line.strip() and not line.strip().startswith((".", "#"))]
    assert mnemonics.count("tdpbf16ps") == 8 and mnemonics.count("ldtilecfg") == 1
    assert mnemonics.count("tilestored") == 4 and "vdpbf16ps" not in mnemonics and "tdpbusd" not in mnemonics


def matmul_model(shape, depth, out_channels):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    return make_model(nodes, [("x", [*shape, depth])], [("z", [*shape, out_channels])],
                      {"w": rng.standard_normal((depth, out_channels)) * 0.1})


def pointwise_conv_model(channels, out_channels, height, width):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1]), helper.make_node("Relu", ["y"], ["z"])]
    return make_model(nodes, [("x", [1, channels, height, width])], [("z", [1, out_channels, height, width])],
                      {"w": rng.standard_normal((out_channels, channels, 1, 1)) * 0.1})


def conv_model(channels, out_channels, height, width, kernel, stride=1, pad=0, dilation=1):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                              pads=[pad] * 4, dilations=[dilation, dilation]),
             helper.make_node("Relu", ["y"], ["z"])]
    size = lambda n: (n + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1  # noqa: E731
    return make_model(nodes, [("x", [1, channels, height, width])], [("z", [1, out_channels, size(height), size(width)])],
                      {"w": rng.standard_normal((out_channels, channels, kernel, kernel)) * 0.1})


# Each at least one 32-row block, 128 bytes of K and 64 output channels (tiles_worthwhile), with
# tails: rows, K and channels not multiples of the 32 × 32 block or the 64-byte tile row.
MODELS = {
    "matmul 2x17x136 * 136x72": lambda: matmul_model([2, 17], 136, 72),
    "matmul 33x128 * 128x80": lambda: matmul_model([33], 128, 80),
    "1x1 conv 136 -> 72 on 7x9": lambda: pointwise_conv_model(136, 72, 7, 9),
    "3x3 conv 32 -> 72 on 9x11, pad 1": lambda: conv_model(32, 72, 9, 11, 3, pad=1),
    "3x3/2 conv 16 -> 64 on 16x17": lambda: conv_model(16, 64, 16, 17, 3, stride=2),
    "3x3 dilated 2 conv 24 -> 64 on 10x10": lambda: conv_model(24, 64, 10, 10, 3, pad=2, dilation=2),
}


def calibration(model, count=6):
    (name, shape), = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    samples = np.random.default_rng(3).standard_normal((count, *shape)).astype(np.float32)
    return [{name: sample} for sample in samples], name, shape


@pytest.mark.parametrize("activations", list(qcompiler.ActivationDType))
@pytest.mark.parametrize("case", list(MODELS))
def test_tile_engine_artifact_equals_vnni_artifact(tmp_path, case, activations):
    """Matmuls (rows of any rank) and convolutions (1×1 directly; k×k, strided, dilated, padded
    over im2col columns) on the emulated tile engine, with their epilogue fused, give the VNNI
    kernels' outputs bit for bit (uint8 and int8 activations)."""
    model = MODELS[case]()
    calib, name, shape = calibration(model)
    config = qcompiler.QConfig(activation_dtype=activations)
    emulated = qcompiler.compile(model, target=json.dumps(EMULATED_TARGET), quantize="int8", calib=calib, config=config)
    vnni = qcompiler.compile(model, target="x86", quantize="int8", calib=calib, config=config)
    assert "naive" not in vnni.metadata.kernels.values()  # rows of rank 3 included
    tiles = [kernel for kernel in emulated.metadata.kernels if "_amx_emulated" in kernel]
    assert len(tiles) == 1 and "relu" not in " ".join(emulated.metadata.kernels).replace(tiles[0], "")  # the epilogue is fused
    x = {name: np.random.default_rng(4).standard_normal(shape).astype(np.float32)}
    got = qcompiler.load(emulated.export(tmp_path / "amx.so")).run(x)["z"]
    np.testing.assert_array_equal(got, qcompiler.load(vnni.export(tmp_path / "vnni.so")).run(x)["z"])


def test_small_products_stay_on_vnni():
    """Fewer than 32 rows, 128 bytes of K or 64 output channels: the vector kernels (on tiles
    these ran slower on AMX hardware)."""
    for model in (matmul_model([20], 256, 128), matmul_model([40], 96, 128), pointwise_conv_model(136, 48, 7, 9),
                  conv_model(12, 96, 9, 9, 3)):  # K = 108 bytes
        calib, _, _ = calibration(model)
        artifact = qcompiler.compile(model, target=json.dumps(EMULATED_TARGET), quantize="int8", calib=calib)
        assert not [k for k in artifact.metadata.kernels if "amx" in k] and [k for k in artifact.metadata.kernels if "vnni" in k]
    matmul = matmul_model([40], 96, 128)  # bfloat16: 192 bytes of K
    assert [k for k in qcompiler.compile(matmul, target=json.dumps(EMULATED_TARGET), quantize="bf16").metadata.kernels
            if "_amx" in k]


def test_only_amx_targets_get_amx_kernels():
    assert tile_engine_of(resolve("x86-amx").target()) is amx.HARDWARE
    assert tile_engine_of(tvm.target.Target(EMULATED_TARGET)) is amx.EMULATED
    for preset in ("x86-avx2", "x86-avx512", "x86-avx512-vnni", "arm64-a72"):
        assert tile_engine_of(resolve(preset).target()) is None
    assert (tile_engine_of(resolve("x86").target()) is amx.HARDWARE) == HOST_HAS_AMX


def qc_run_zero_inputs(binary, so) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), str(so), "--zero-inputs"], capture_output=True, text=True)


def assert_refused_without_amx(so, qc_run_binary) -> None:
    """Both runtimes refuse the artifact with one line, before any kernel runs (no SIGILL)."""
    with pytest.raises(QCompilerError, match="has AMX kernels and this CPU has no AMX"):
        qcompiler.load(so)
    proc = qc_run_zero_inputs(qc_run_binary, so)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("qc_run: error:") and proc.stderr.strip().count("\n") == 0
    assert "has AMX kernels and this CPU has no AMX" in proc.stderr


@needs_objdump
def test_amx_artifact_runs_tdpbusd(tmp_path, qc_run_binary):
    """Cross-compiled for `x86-amx` (on any host): the tile kernel executes `tdpbusd` and no
    VNNI; where the host has AMX, its outputs equal the emulation's, else loading it (from Python
    or the C runtime) is a one-line error (not a SIGILL)."""
    model = MODELS["matmul 2x17x136 * 136x72"]()
    calib, name, shape = calibration(model)
    so = qcompiler.compile(model, target="x86-amx", quantize="int8", calib=calib).export(tmp_path / "amx.so")
    usage = dict(compute_kernel_usage(so))
    (tile_kernel,) = [k for k in usage if "_amx" in k]
    assert usage[tile_kernel] == ["tdpbusd"]
    assert "tdpbusd (x86 AMX)" in inspect_path(so)
    if not HOST_HAS_AMX:
        assert_refused_without_amx(so, qc_run_binary)
        return
    assert qc_run_zero_inputs(qc_run_binary, so).returncode == 0
    x = {name: np.random.default_rng(5).standard_normal(shape).astype(np.float32)}
    emulated = qcompiler.compile(model, target=json.dumps(EMULATED_TARGET), quantize="int8", calib=calib)
    np.testing.assert_array_equal(qcompiler.load(so).run(x)["z"],
                                  qcompiler.load(emulated.export(tmp_path / "emulated.so")).run(x)["z"])


@needs_amx
@pytest.mark.parametrize("case", list(MODELS))
def test_host_preset_uses_amx_and_equals_emulation(tmp_path, case):
    model = MODELS[case]()
    calib, name, shape = calibration(model)
    host = qcompiler.compile(model, target="x86", quantize="int8", calib=calib)
    assert [k for k in host.metadata.kernels if "_amx" in k]
    emulated = qcompiler.compile(model, target=json.dumps(EMULATED_TARGET), quantize="int8", calib=calib)
    x = {name: np.random.default_rng(6).standard_normal(shape).astype(np.float32)}
    np.testing.assert_array_equal(qcompiler.load(host.export(tmp_path / "host.so")).run(x)["z"],
                                  qcompiler.load(emulated.export(tmp_path / "emulated.so")).run(x)["z"])


@pytest.mark.parametrize("case", list(MODELS))
def test_bf16_tile_artifact_matches_vdpbf16ps_artifact(tmp_path, case):
    """--quantize bf16 on the emulated AMX-BF16 engine: each matmul / 1×1 convolution is one tile
    kernel with its epilogue fused, and its outputs equal the `vdpbf16ps` artifact's up to the
    order of float32 additions (the same bfloat16 products)."""
    model = MODELS[case]()
    _, name, shape = calibration(model)
    emulated = qcompiler.compile(model, target=json.dumps(EMULATED_TARGET), quantize="bf16")
    vector = qcompiler.compile(model, target="x86-avx512-vnni", quantize="bf16")
    tiles = [kernel for kernel in emulated.metadata.kernels if "bf16_amx_emulated" in kernel]
    assert len(tiles) == 1 and "relu" not in " ".join(emulated.metadata.kernels).replace(tiles[0], "")
    x = {name: np.random.default_rng(7).standard_normal(shape).astype(np.float32)}
    got = qcompiler.load(emulated.export(tmp_path / "amx.so")).run(x)["z"]
    want = qcompiler.load(vector.export(tmp_path / "vector.so")).run(x)["z"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@needs_objdump
def test_amx_bf16_artifact_runs_tdpbf16ps(tmp_path, qc_run_binary):
    """Cross-compiled for `x86-amx` with --quantize bf16: the tile kernel executes `tdpbf16ps`
    only; on a host without AMX-BF16 loading it is a one-line error, with it it matches the
    emulation."""
    model = MODELS["1x1 conv 136 -> 72 on 7x9"]()
    _, name, shape = calibration(model)
    so = qcompiler.compile(model, target="x86-amx", quantize="bf16").export(tmp_path / "amx.so")
    usage = dict(compute_kernel_usage(so))
    (tile_kernel,) = [k for k in usage if "_amx" in k]
    assert usage[tile_kernel] == ["tdpbf16ps"]
    assert "tdpbf16ps (x86 AMX-BF16)" in inspect_path(so)
    if not {"amx_tile", "amx_bf16"} <= read_cpu_flags()[1]:
        assert_refused_without_amx(so, qc_run_binary)
        return
    x = {name: np.random.default_rng(8).standard_normal(shape).astype(np.float32)}
    emulated = qcompiler.compile(model, target=json.dumps(EMULATED_TARGET), quantize="bf16")
    want = qcompiler.load(emulated.export(tmp_path / "emulated.so")).run(x)["z"]
    # the emulation follows the SDM's order of additions; denormals (flushed by the hardware) aside
    np.testing.assert_allclose(qcompiler.load(so).run(x)["z"], want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
