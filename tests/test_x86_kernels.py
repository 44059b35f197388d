"""x86 int8 kernels: VNNI conv/dense and depthwise, bit-exact against numpy; default schedules;
`vpdpbusd` present in exported artifacts; the channels-last layout pass keeps fp32 numerics."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax

import qcompiler
from conftest import make_model
from qcompiler.disasm import compute_kernel_usage
from qcompiler.frontend import load_onnx
from qcompiler.inspect import inspect_path
from qcompiler.kernels.dispatch import dispatch_int8_kernels
from qcompiler.kernels.isa import VNNI, dot_product_of
from qcompiler.kernels.lookup import lookup_kernels, word_lookup_kernel
from qcompiler.kernels.schedules import MIN_PARALLEL_WORK, SCHEDULE_SOURCE, SCHEDULED
from qcompiler.passes.graph import const
from qcompiler.passes.layout import channels_last
from qcompiler.quantize import quantize
from qcompiler.targets import resolve
from qcompiler.targets.x86 import read_cpu_flags
from qcompiler.tuning import cpu_pipeline, fused_module, with_default_schedules
from test_quantize import residual_net, samples

TARGET = resolve("x86").target()
pytestmark = pytest.mark.skipif(dot_product_of(TARGET) is not VNNI, reason="this CPU has no AVX-512 VNNI")
rng = np.random.default_rng(7)


def relax_main(func_body, specs: list[tuple[tuple[int, ...], str]]) -> tvm.IRModule:
    """A module whose `main` takes tensors of `specs` (shape, dtype) and returns `func_body(*vars)`."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(list(shape), dtype)) for i, (shape, dtype) in enumerate(specs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(func_body(*params))
        bb.emit_func_output(out)
    return bb.get()


def default_scheduled(mod: tvm.IRModule, target: tvm.target.Target = TARGET) -> tvm.IRModule:
    """`mod` fused for `target`, every kernel with its default schedule."""
    with target:
        return with_default_schedules(fused_module(mod, target), target)


def run_relax(func_body, inputs: list[np.ndarray], default_schedules: bool = True,
              target: tvm.target.Target = TARGET) -> np.ndarray:
    """Build `func_body(*vars)` as `main` through qcompiler's CPU pipeline for `target` (one this
    host runs) and run it."""
    mod = relax_main(func_body, [(a.shape, str(a.dtype)) for a in inputs])
    with target:
        lowered = cpu_pipeline(target, None, default_schedules)(mod)
    vm = relax.VirtualMachine(tvm.compile(lowered, target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def conv_reference(x, w, stride, padding, groups):
    """int64 NHWC/OHWI convolution, zero padding."""
    top, left, bottom, right = padding
    x = np.pad(x.astype(np.int64), [(0, 0), (top, bottom), (left, right), (0, 0)])
    out_c, kh, kw, per_group = w.shape
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, out_c), np.int64)
    out_per_group = out_c // groups
    for o in range(out_c):
        g = o // out_per_group
        for r in range(kh):
            for s in range(kw):
                patch = x[:, r:r + stride * oh:stride, s:s + stride * ow:stride, g * per_group:(g + 1) * per_group]
                out[..., o] += patch @ w[o, r, s].astype(np.int64)
    return out


CONVS = [  # (H, in channels, out channels, kernel, stride, padding, groups)
    (9, 16, 32, 3, 1, (1, 1, 1, 1), 1),    # regular 3×3
    (8, 3, 8, 3, 2, (1, 1, 1, 1), 1),      # 3 input channels (padded to 4), 8 outputs (256-bit form)
    (7, 64, 20, 1, 1, (0, 0, 0, 0), 1),    # pointwise
    (5, 32, 200, 1, 1, (0, 0, 0, 0), 1),   # pointwise, 200 outputs: 25 × 8 lanes (256-bit form), none padded
    (10, 32, 32, 3, 2, (1, 1, 1, 1), 32),  # depthwise, stride 2
    (6, 24, 24, 5, 1, (2, 2, 2, 2), 24),   # depthwise 5×5, channels not a multiple of 16 (8 lanes)
    (8, 16, 32, 3, 1, (1, 1, 1, 1), 2),    # grouped: 8 → 16 channels per group
    (7, 12, 24, 3, 2, (1, 0, 1, 0), 3),    # grouped: 4 → 8 per group (outputs padded per group)
    (6, 6, 12, 1, 1, (0, 0, 0, 0), 2),     # grouped pointwise: 3 → 6 per group (inputs padded per group)
]


def random_activations(shape, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape, dtype=dtype)


def conv_body(w, stride, padding, groups):
    def body(data):
        return relax.op.nn.conv2d(data, const(w), strides=[stride, stride], padding=list(padding), groups=groups,
                                  data_layout="NHWC", kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")
    return body


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("h,cin,cout,k,stride,padding,groups", CONVS)
def test_int8_conv_kernels_bit_exact(h, cin, cout, k, stride, padding, groups, dtype):
    x = random_activations((1, h, h, cin), dtype)
    w = rng.integers(-127, 128, (cout, k, k, cin // groups), dtype=np.int8)
    expected = conv_reference(x, w, stride, padding, groups)
    np.testing.assert_array_equal(run_relax(conv_body(w, stride, padding, groups), [x]), expected)


def depthwise_reference(x, taps, stride, dilation, padding):
    """int64 NHWC depthwise convolution with taps [kh, kw, C], zero padding; `stride` one int
    or (rows, columns)."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    top, left, bottom, right = padding
    x = np.pad(x.astype(np.int64), [(0, 0), (top, bottom), (left, right), (0, 0)])
    kh, kw, _ = taps.shape
    oh = (x.shape[1] - (kh - 1) * dilation - 1) // sh + 1
    ow = (x.shape[2] - (kw - 1) * dilation - 1) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.int64)
    for r in range(kh):
        for s in range(kw):
            rows, cols = r * dilation, s * dilation
            out += x[:, rows:rows + sh * (oh - 1) + 1:sh, cols:cols + sw * (ow - 1) + 1:sw] * taps[r, s]
    return out


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("size,channels,kernel,stride,dilation,lanewise", [
    (11, 40, 5, 2, 1, True),    # stride 2, sliding groups 2 positions apart; a last block of 8 channels
    (9, 16, 3, 1, 2, True),     # dilated: taps 2 columns apart, groups 8 positions apart
    (12, 200, 7, 1, 1, True),   # aligned groups, 3 per phase (the sliding layout takes 2)
    (10, 40, 5, 1, 1, True),    # aligned groups, 4 phases of 2 groups; a last block of 8 channels
    (7, 24, 5, (2, 1), 1, True),  # aligned groups, rows strided (MobileNetV3 for text lines)
    (13, 16, 9, 1, 1, True),    # aligned groups, 3 per phase
    (9, 24, 3, 3, 1, False),    # stride 3: groups would start between positions, int32 kernel
    (8, 8, 3, 1, 1, True),      # 8 channels: the 8-lane (256-bit) form
    (8, 4, 3, 1, 1, False),     # fewer channels than the narrowest vector: int32 kernel
])
def test_depthwise_kernels_bit_exact(size, channels, kernel, stride, dilation, lanewise, dtype):
    """Depthwise convolutions on interleaved taps and the lane-wise `vpdpbusd` where the layout
    applies (aligned taps for stride-1 kernels, sliding ones otherwise), on 32-bit multiplies
    elsewhere: all equal numpy's integer convolution."""
    x = random_activations((1, size, size + 3, channels), dtype)
    w = rng.integers(-128, 128, (channels, kernel, kernel, 1), dtype=np.int8)
    pad = dilation * (kernel - 1) // 2
    padding = (pad, pad, pad, pad)
    strides = [stride, stride] if isinstance(stride, int) else list(stride)

    def body(data):
        return relax.op.nn.conv2d(data, const(w), strides=strides, padding=list(padding),
                                  dilation=[dilation, dilation], groups=channels, data_layout="NHWC",
                                  kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")

    expected = depthwise_reference(x, w[..., 0].transpose(1, 2, 0), stride, dilation, padding)
    np.testing.assert_array_equal(run_relax(body, [x]), expected)
    scheduled = default_scheduled(relax_main(body, [(x.shape, dtype)]))
    kernels = {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert any("depthwise_taps" in name for name in kernels) == lanewise
    depthwise = [f for name, f in kernels.items() if "depthwise_nhwc" in name]
    assert len(depthwise) == 1 and ("vpdpbusd" in depthwise[0].script()) == lanewise
    if lanewise:  # the aligned layout holds each input column once, the sliding one 4 times
        (taps,) = [f for name, f in kernels.items() if "depthwise_taps" in name]
        positions = int(taps.params[1].ty.shape[2])
        aligned = strides[1] == dilation == 1
        assert (4 * positions <= size + 3 + 2 * pad + 4) == aligned, positions


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_taps_write_a_zero_point_border_themselves(stride, dtype):
    """realize pads asymmetric activations with their zero point before a convolution; the tap
    interleaving reads the unpadded input and writes that border itself (no pad kernel is left),
    and the convolution still equals numpy's on the padded input."""
    x = random_activations((1, 7, 11, 40), dtype)
    w = rng.integers(-128, 128, (40, 3, 5, 1), dtype=np.int8)
    zero_point = 37 if dtype == "uint8" else -21

    def body(data):
        padded = relax.op.nn.pad(data, [0, 0, 1, 1, 2, 2, 0, 0], pad_value=float(zero_point))
        return conv_body(w, stride, (0, 0, 0, 0), 40)(padded)

    padded = np.pad(x, [(0, 0), (1, 1), (2, 2), (0, 0)], constant_values=zero_point)
    expected = depthwise_reference(padded, w[..., 0].transpose(1, 2, 0), stride, 1, (0, 0, 0, 0))
    np.testing.assert_array_equal(run_relax(body, [x]), expected)
    scheduled = default_scheduled(relax_main(body, [(x.shape, dtype)]))
    names = [gv.name_hint for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("depthwise_taps" in name for name in names) and not any("pad" in name for name in names), names


@pytest.mark.parametrize("channels,narrow", [(200, True), (88, True), (48, False), (20, False)])
def test_channel_counts_of_8_mod_16_take_the_256_bit_form(channels, narrow):
    """Output channels that 8 lanes divide and 16 do not run on the 256-bit `vpdpbusd` (no
    padded channels to drop after the kernel); others on the 512-bit one."""
    w = rng.integers(-127, 128, (channels, 1, 1, 16), dtype=np.int8)
    depthwise = rng.integers(-127, 128, (channels, 5, 5, 1), dtype=np.int8)

    def body(data):
        pointwise = conv_body(w, 1, (0, 0, 0, 0), 1)(data)
        return conv_body(depthwise, 1, (2, 2, 2, 2), channels)(relax.op.astype(pointwise, "uint8"))

    scheduled = default_scheduled(relax_main(body, [((1, 4, 12, 16), "uint8")]))
    kernels = {gv.name_hint: f.script() for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    dot_kernels = [name for name in kernels if "conv2d_nhwc" in name or "depthwise_nhwc" in name]
    assert len(dot_kernels) == 2, dot_kernels
    wanted, other = ("vpdpbusd.256", "vpdpbusd.512") if narrow else ("vpdpbusd.512", "vpdpbusd.256")
    assert all(wanted in kernels[name] and other not in kernels[name] for name in dot_kernels)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("m,k,n", [(1, 64, 10), (3, 30, 48), (2, 16, 40)])
def test_int8_dense_kernel_bit_exact(m, k, n, dtype):
    a = random_activations((m, k), dtype)
    b = rng.integers(-127, 128, (k, n), dtype=np.int8)
    out = run_relax(lambda data: relax.op.matmul(data, const(b), out_dtype="int32"), [a])
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 7, 16), (2, 3, 16, 7)), ((1, 12, 32, 64), (1, 12, 64, 32)),
                                              ((5, 9), (3, 9, 20))])
def test_int32_batch_matmul_kernel_exact(a_shape, b_shape):
    """A quantized attention's QKᵀ / PV: (q − zero point) operands in int32, on the register-tile
    kernel (not TVM's loop nest), exactly the integer product; batch axes broadcast."""
    a = rng.integers(-255, 256, a_shape).astype(np.int32)
    b = rng.integers(-255, 256, b_shape).astype(np.int32)
    mod = relax_main(lambda x, y: relax.op.matmul(x, y, out_dtype="int32"), [(a_shape, "int32"), (b_shape, "int32")])
    sources = {gvar.name_hint: f.attrs.get(SCHEDULE_SOURCE) for gvar, f in default_scheduled(mod).functions.items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    assert [source for name, source in sources.items() if "batch_matmul_i32" in name] == ["default"], sources
    out = run_relax(lambda x, y: relax.op.matmul(x, y, out_dtype="int32"), [a, b])
    np.testing.assert_array_equal(out, np.matmul(a.astype(np.int64), b.astype(np.int64)))


@pytest.mark.parametrize("shape,dtype,vbmi", [
    ((1, 2, 96, 200), "uint8", True),   # 600 chunks of 64
    ((1, 40, 64, 64), "uint8", True),   # 256 KiB read and written: chunks in parallel
    ((1, 3, 7, 13), "int8", True),      # 4 chunks and a tail of 17
    ((64,), "uint8", True),
    ((1, 5, 9), "uint8", False),        # under one register: the default schedule
])
def test_byte_table_lookups_are_exact(shape, dtype, vbmi):
    """A 256-entry byte table read with uint8 indices (realize's activations) gets the `vpermi2b`
    kernel where it holds a register of indices; both paths equal numpy's table[q]."""
    q = rng.integers(0, 256, shape).astype(np.uint8)
    table = rng.integers(-128, 128, 256).astype(dtype) if dtype == "int8" else rng.integers(0, 256, 256).astype(dtype)
    body = lambda x: relax.op.take(const(table), x, axis=0, mode="clip")  # noqa: E731
    np.testing.assert_array_equal(run_relax(body, [q]), table[q])
    kernel = single_kernel(body, shape, "uint8")
    assert ("vpermi2var" in kernel.script()) == vbmi


@pytest.mark.skipif("avx512bw" not in read_cpu_flags()[1], reason="this CPU has no AVX-512BW")
@pytest.mark.parametrize("shape,dtype", [((1, 2, 96, 200), "uint8"), ((1, 3, 7, 13), "int8"), ((96,), "int8")])
def test_byte_table_lookups_without_vbmi_are_exact(shape, dtype):
    """For an AVX-512 target without VBMI (Cascade Lake: `x86-avx512-vnni`), the lookup runs on
    `vpermi2w` over the table widened to 16 bits (32 per chunk, then a scalar tail) and equals
    numpy's table[q]."""
    target = resolve("x86-avx512-vnni").target()
    assert lookup_kernels(target) == [word_lookup_kernel]
    q = rng.integers(0, 256, shape).astype(np.uint8)
    table = rng.integers(-128, 128, 256).astype(dtype) if dtype == "int8" else rng.integers(0, 256, 256).astype(dtype)
    body = lambda x: relax.op.take(const(table), x, axis=0, mode="clip")  # noqa: E731
    np.testing.assert_array_equal(run_relax(body, [q], target=target), table[q])
    assert "vpermi2var.hi" in single_kernel(body, shape, "uint8", target).script()


def single_kernel(body, shape, dtype, target: tvm.target.Target = TARGET) -> tvm.tirx.PrimFunc:
    """The one kernel `body` of a [shape] `dtype` tensor gets from the default schedules."""
    scheduled = default_scheduled(relax_main(body, [(shape, dtype)]), target)
    (kernel,) = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    return kernel


@pytest.mark.parametrize("shape,pads,dtype,rows", [
    ((1, 24, 96, 8), [0, 0, 1, 1, 1, 1, 0, 0], "uint8", True),
    ((2, 7, 9, 16), [0, 0, 2, 0, 0, 3, 0, 0], "int8", True),
    ((1, 3, 5, 4), [0, 0, 0, 0, 1, 0, 0, 0], "float32", True),
    ((2, 40, 36, 32), [0, 0, 1, 2, 2, 1, 0, 0], "float32", True),  # 430 KB: rows written in parallel
    ((1, 7, 9, 16), [0, 0, 2, 1, 0, 3, 0, 1], "int8", False),  # pads channels too: the default schedule
])
def test_channels_last_pads_are_exact(shape, pads, dtype, rows):
    """Pads of H and W of an [N, H, W, C] tensor run as row copies (in parallel from
    MIN_PARALLEL_WORK bytes of output), other pads as a fill and a copy of the interior (neither
    with a per-element test); both equal numpy's pad."""
    x = (rng.standard_normal(shape) * 50).astype(dtype)
    body = lambda t: relax.op.nn.pad(t, pads, pad_value=7.0)  # noqa: E731
    expected = np.pad(x, list(zip(pads[0::2], pads[1::2])), constant_values=7)
    np.testing.assert_array_equal(run_relax(body, [x]), expected)
    kernel = single_kernel(body, shape, dtype).script()
    assert ("flat_out" in kernel) == rows  # pad.py's row copies
    if rows:
        out_bytes = np.prod(expected.shape) * expected.itemsize
        assert ("T.parallel" in kernel) == (out_bytes >= MIN_PARALLEL_WORK), kernel
    assert "if_then_else" not in kernel  # else the default schedule: a fill, then the interior


@pytest.mark.parametrize("widths,partitioned", [
    ((24, 24), True),       # vectors of 8, partitioned at 24
    ((20, 12, 16), True),   # vectors of 4, at 20 and 32
    ((32, 16), True),       # vectors of 16, at 32
    ((3, 5), True),         # too narrow for vectors: vectors along the rows, per segment
    ((40, 3), False),       # wider than a vector, segments of 3: as before
])
def test_concatenations_along_the_innermost_axis_are_vectorized_per_segment(widths, partitioned):
    """A residual add concatenated with other branches along the channels (CSP blocks): the
    channel loop is partitioned at the segment starts, in vectors of the widest width (4 to 16)
    that divides them, or, for segments too narrow (a space-to-depth's), with vectors along the
    next axis inside each; so that no vector selects its input per lane; equal to numpy."""
    xs = [rng.integers(0, 100, (1, 5, 16, width)).astype(np.uint8) for width in widths]
    extra = rng.integers(0, 100, xs[0].shape).astype(np.uint8)

    def body(*tensors):
        return relax.op.concat([relax.op.add(tensors[0], tensors[-1]), *tensors[1:-1]], axis=3)

    expected = np.concatenate([xs[0] + extra, *xs[1:]], axis=3)
    np.testing.assert_array_equal(run_relax(body, [*xs, extra]), expected)
    scheduled = default_scheduled(relax_main(body, [(x.shape, "uint8") for x in (*xs, extra)]))
    (kernel,) = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert ("_partition" in kernel.script()) == partitioned


@pytest.mark.parametrize("dtype,groups", [("int8", 1), ("uint8", 2), ("int8", 3)])
def test_int8_activations_and_grouped_convs_are_tensorized(dtype, groups):
    """int8 (shifted to uint8) and grouped convolutions reach `vpdpbusd` through the default schedule."""
    w = rng.integers(-127, 128, (24, 3, 3, 12 // groups), dtype=np.int8)
    scheduled = default_scheduled(relax_main(conv_body(w, 1, (1, 1, 1, 1), groups), [((1, 8, 8, 12), dtype)]))
    convs = [f for gv, f in scheduled.functions.items() if "conv2d_nhwc_u8s8_vnni" in gv.name_hint]
    assert len(convs) == 1 and "vpdpbusd" in convs[0].script()


def test_dispatch_replaces_int8_ops_and_every_kernel_gets_a_default_schedule():
    quantized = quantize(load_onnx(residual_net()), qcompiler.QConfig(), samples())
    dispatched = dispatch_int8_kernels(quantized.mod, TARGET)
    kernels = sorted(gv.name_hint for gv, f in dispatched.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    # 8 channels: the 256-bit form, and the depthwise conv on interleaved taps
    assert kernels == ["conv2d_nhwc_u8s8_vnni8", "conv2d_nhwc_u8s8_vnni81", "dense_u8s8_vnni", "depthwise_nhwc_u8s8_vnni8",
                       "depthwise_taps"]
    scheduled = default_scheduled(quantized.mod)
    unscheduled = [gv.name_hint for gv, f in scheduled.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc) and not f.attrs.get(SCHEDULED)]
    assert unscheduled == []
    # A non-VNNI target keeps TVM's own kernels.
    assert dispatch_int8_kernels(quantized.mod, resolve("x86-avx2").target()).same_as(quantized.mod)


def test_input_quantization_pads_once_and_vectorizes_the_interior():
    """NCHW float → uint8 NHWC with the zero-point border and the 4th (zero-weight) channel: one
    pad, written as a fill and a vectorized interior without per-element border tests. Its
    results are checked bit-exact by the artifact test below."""
    scheduled = default_scheduled(quantize(load_onnx(residual_net()), qcompiler.QConfig(), samples()).mod)
    (name, kernel), = [(gv.name_hint, f) for gv, f in scheduled.functions.items() if "transpose_quantize" in gv.name_hint]
    assert name.count("pad") == 1
    script = kernel.script()
    assert "if_then_else" not in script and "T.vectorized" in script


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (Debian binutils) not installed")
@pytest.mark.parametrize("activations", list(qcompiler.ActivationDType))
def test_int8_artifact_runs_vpdpbusd_and_matches_generic_kernels(tmp_path, activations):
    model = residual_net()
    config = qcompiler.QConfig(activation_dtype=activations)
    artifact = qcompiler.compile(model, target="x86-avx512-vnni", quantize="int8", calib=samples(), config=config)
    so = artifact.export(tmp_path / "int8.so")
    usage = dict(compute_kernel_usage(so))
    convs = [name for name in usage if "u8s8_vnni" in name]
    assert len(convs) == 4 and all(usage[name] == ["vpdpbusd"] for name in convs)  # 2 convs, depthwise, dense
    # The same quantized module through TVM's generic int8 kernels gives bit-identical outputs.
    quantized = quantize(load_onnx(model), config, samples())
    generic = tvm.compile(cpu_pipeline(resolve("x86-avx2").target(), None, False)(quantized.mod),
                          resolve("x86-avx2").target())
    x = samples(1, seed=9)[0]["x"]
    expected = relax.VirtualMachine(generic, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(qcompiler.load(so).run({"x": x})["y"], expected)
    assert "vpdpbusd (x86 AVX-512 VNNI)" in inspect_path(so)


def test_channels_last_keeps_fp32_numerics_and_adds_two_transposes():
    from qcompiler.passes.graph import FunctionView, op_name

    nodes = residual_net().graph.node
    assert any(n.op_type == "Concat" for n in nodes)
    mod = relax.transform.FoldConstant()(load_onnx(residual_net()).mod)
    converted, renamed = channels_last(mod)
    ops = [op_name(b.value) for b in FunctionView(converted["main"]).bindings]
    assert ops.count("relax.permute_dims") == 2  # at the input and before Flatten
    assert all(str(b.value.attrs.data_layout) == "NHWC" for b in FunctionView(converted["main"]).bindings
               if op_name(b.value) == "relax.nn.conv2d")
    assert set(renamed) == {b.var for b in FunctionView(mod["main"]).bindings}
    x = samples(1)[0]["x"]
    run = lambda m: relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(run(converted), run(mod), rtol=1e-5, atol=1e-5)


def test_channels_last_absorbs_an_nhwc_models_transposes():
    """x NHWC → Transpose to NCHW → Conv → PRelu → Transpose to NHWC → Flatten → MatMul (a Keras
    export): the model's transposes are the layout's own, so none is left; fp32 as onnxruntime."""
    from conftest import ort_run
    from qcompiler.passes.graph import FunctionView, op_name

    rng = np.random.default_rng(0)
    nodes = [onnx_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             onnx_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
             onnx_node("PRelu", ["c", "slope"], ["p"]),
             onnx_node("Transpose", ["p"], ["back"], perm=[0, 2, 3, 1]),
             onnx_node("Flatten", ["back"], ["flat"]),
             onnx_node("MatMul", ["flat", "m"], ["y"])]
    model = make_model(nodes, [("x", [1, 8, 8, 3])], [("y", [1, 5])],
                       {"w": rng.normal(size=(4, 3, 3, 3)), "slope": rng.uniform(0.1, 0.5, (4, 1, 1)),
                        "m": rng.normal(size=(256, 5))})
    converted, _ = channels_last(relax.transform.FoldConstant()(load_onnx(model).mod))
    ops = [op_name(b.value) for b in FunctionView(converted["main"]).bindings]
    assert "relax.permute_dims" not in ops
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    got = relax.VirtualMachine(tvm.compile(converted, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-4)


def test_channels_last_leaves_non_convolution_models_alone():
    model = make_model([onnx_node("Relu", ["x"], ["y"])], [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])])
    mod = load_onnx(model).mod
    converted, _ = channels_last(mod)
    tvm.ir.assert_structural_equal(converted["main"], mod["main"])


def onnx_node(op, inputs, outputs, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, **attrs)


@pytest.mark.parametrize("rows, n", [(40, 50), (3, 18)])
def test_int8_dense_with_padded_output_channels_gets_its_kernel(tmp_path, rows, n):
    """A quantized MatMul whose output channels are no multiple of the vector lanes (a CTC
    head's 18710 classes, say): the padded channels are dropped per row tile, the requantizing
    epilogue fused, and the kernel keeps its default schedule (it once fell back to the naive
    loop nest, 60x slower). Outputs within 5% of the output's range of onnxruntime fp32."""
    from onnx import helper

    from conftest import ort_run

    k = 64
    weight = rng.standard_normal((k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    model = make_model(nodes, [("x", [1, rows, k])], [("y", [1, rows, n])],
                       {"w": weight, "b": rng.standard_normal(n).astype(np.float32)})
    calib = [{"x": rng.standard_normal((1, rows, k)).astype(np.float32)} for _ in range(8)]
    artifact = qcompiler.compile(model, quantize="int8", calib=calib, committed_logs=False)
    dense = {name: source for name, source in artifact.metadata.kernels.items() if "dense" in name}
    assert dense and all(source == "default" for source in dense.values()), artifact.metadata.kernels
    feed = calib[0]
    got = qcompiler.load(artifact.export(tmp_path / "d.so")).run(feed)["y"]
    expected = ort_run(model, feed)["y"]
    assert np.abs(got - expected).max() <= 0.05 * np.ptp(expected)


@pytest.mark.parametrize("activations", list(qcompiler.ActivationDType))
@pytest.mark.parametrize("shape", [(2, 9, 24, 13), (1, 7, 13, 24), (3, 32, 64, 16)])
def test_int8_batch_matmul_of_two_activations_on_vpdpbusd(tmp_path, activations, shape):
    """Attention's QKᵀ / PV with both operands quantized activations: the second packed at run
    time, zero points by row and column sums; bit-exact against TVM's int32 kernels (x86-avx2),
    K not a multiple of 4 and N of 8 (mod 16) included."""
    heads, rows, depth, columns = shape
    model = make_model([helper.make_node("MatMul", ["q", "k"], ["s"])],
                       [("q", [1, heads, rows, depth]), ("k", [1, heads, depth, columns])],
                       [("s", [1, heads, rows, columns])])
    data = np.random.default_rng(7)

    def feed():
        return {"q": data.standard_normal((1, heads, rows, depth)).astype(np.float32) + 0.5,
                "k": data.standard_normal((1, heads, depth, columns)).astype(np.float32)}

    calib, x = [feed() for _ in range(4)], feed()
    config = qcompiler.QConfig(activation_dtype=activations)
    vnni = qcompiler.compile(model, target="x86", quantize="int8", calib=calib, config=config)
    generic = qcompiler.compile(model, target="x86-avx2", quantize="int8", calib=calib, config=config)
    assert [k for k in vnni.metadata.kernels if "batch_dense_u8s8_vnni" in k]
    assert not [k for k in vnni.metadata.kernels if "batch_matmul_i32" in k]
    assert "naive" not in vnni.metadata.kernels.values()
    np.testing.assert_array_equal(qcompiler.load(vnni.export(tmp_path / "vnni.so")).run(x)["s"],
                                  qcompiler.load(generic.export(tmp_path / "generic.so")).run(x)["s"])


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_channels_last_max_pool_reading_its_padding_is_vectorized(dtype):
    """A 2×2 max pool, stride 1, padded bottom and right (a "same" pool of an even window): the
    channels innermost and vectorized, the window's reads of the padding tested per tap (LLVM
    left the conditional loads scalar, 6x slower); equal to numpy."""
    shape = (1, 20, 18, 24)
    x = (rng.standard_normal(shape) * 50).astype(np.float32).clip(0 if dtype == "uint8" else -1e9, 255).astype(dtype)
    body = lambda t: relax.op.nn.max_pool2d(t, pool_size=(2, 2), strides=(1, 1), padding=(0, 0, 1, 1),  # noqa: E731
                                            layout="NHWC")
    low = np.finfo(np.float32).min if dtype == "float32" else 0
    padded = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)], constant_values=low)
    expected = np.max([padded[:, i:i + shape[1], j:j + shape[2]] for i in (0, 1) for j in (0, 1)], axis=0)
    np.testing.assert_array_equal(run_relax(body, [x]), expected)
    assert "T.vectorized" in single_kernel(body, shape, dtype).script()
