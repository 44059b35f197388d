"""fp16 and bf16 (passes/reduced_precision.py): half-width weights and conv/matmul operands,
float32 sums; bf16 on `vdpbf16ps` where the target has AVX-512 BF16 (kernels/bf16.py)."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from conftest import REPO, assert_close_rel, make_model, ort_run
from qcompiler.disasm import dot_product_counts
from qcompiler.errors import QCompilerError
from qcompiler.weights import read as read_weights
from test_weight_only import VOCAB, model_with_every_kind, weights

HALF = {"fp16": (np.float16, TensorProto.FLOAT16), "bf16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16)}


def host_has(flag: str) -> bool:
    with open("/proc/cpuinfo") as f:
        return flag in f.read().split()


def with_rounded_operands(model, strategy: str, rounded: dict[str, np.ndarray]):
    """`model` as the strategy computes it, for onnxruntime: the initializers `rounded` rounded to
    the half type (and back to float32), a Cast to it and back before each MatMul and Conv input."""
    numpy_type, onnx_type = HALF[strategy]

    for init in model.graph.initializer:
        if init.name in rounded:
            init.CopyFrom(numpy_helper.from_array(rounded[init.name].astype(numpy_type).astype(np.float32), init.name))
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Conv"):
            source = node.input[0]
            nodes += [helper.make_node("Cast", [source], [source + "_half"], to=onnx_type),
                      helper.make_node("Cast", [source + "_half"], [source + "_rounded"], to=TensorProto.FLOAT)]
            node.input[0] = source + "_rounded"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def conv_and_matmul_model(w: dict[str, np.ndarray], rows: int = 7):
    """A 3×3 stride-2 Conv with 3 input and 20 output channels (neither a multiple of the
    instruction's 2 × 16), Relu, then a MatMul of rank-3 rows [2, rows] by w["w"] (a reduction of 33, odd, in
    most tests)."""
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    return make_model(nodes, [("x", [1, 3, 17, 17]), ("m", [2, rows, w["w"].shape[0]])],
                      [("r", [1, 20, 9, 9]), ("y", [2, rows, w["w"].shape[1]])], w)


@pytest.mark.parametrize("strategy", ["bf16", "fp16"])
def test_products_of_rounded_operands(tmp_path, strategy):
    """Against onnxruntime running the model with the weights and the conv/matmul inputs rounded
    to the half type: float32 summation order only. The artifact stores half-width weights."""
    rng = np.random.default_rng(3)
    w = {"k": rng.standard_normal((20, 3, 3, 3)).astype(np.float32) * 0.3,
         "w": rng.standard_normal((33, 40)).astype(np.float32) * 0.2}
    model = conv_and_matmul_model(w)
    artifact = qcompiler.compile(model, quantize=strategy)
    assert artifact.metadata.quantization["mode"] == strategy
    assert artifact.metadata.quantization["quantized_layers"] == 2
    so = artifact.export(tmp_path / f"{strategy}.so")
    stored = read_weights(so)
    half_elements = sum(a.size for a in stored if a.dtype in (np.float16, np.uint16))  # bfloat16 as its bits
    assert half_elements >= sum(v.size for v in w.values())
    assert not [a for a in stored if a.dtype == np.float32 and a.size >= 100]
    feed = {"x": rng.standard_normal((1, 3, 17, 17)).astype(np.float32),
            "m": rng.standard_normal((2, 7, 33)).astype(np.float32)}
    got = qcompiler.load(so).run(feed)
    reference = ort_run(with_rounded_operands(conv_and_matmul_model(w), strategy, w), feed)
    for name in ("r", "y"):
        assert_close_rel(got[name], reference[name], rtol=2e-6 * 33 * 9)
    exact = ort_run(model, feed)
    assert np.abs(got["y"] - exact["y"]).max() > 0  # really rounded: not float32 in disguise


@pytest.mark.parametrize("strategy", ["bf16", "fp16"])
def test_embedding_table_matmul_and_conv(tmp_path, strategy):
    """int64 ids → a half-width embedding table → MatMul → Conv, against the rounded reference."""
    w = weights()
    artifact = qcompiler.compile(model_with_every_kind(w), quantize=strategy)
    assert artifact.metadata.quantization["quantized_layers"] == 3  # the table, the matmul, the conv
    feed = {"ids": np.random.default_rng(4).integers(0, VOCAB, (1, 16)).astype(np.int64)}
    got = qcompiler.load(artifact.export(tmp_path / "m.so")).run(feed)["y"]
    reference = ort_run(with_rounded_operands(model_with_every_kind(w), strategy, w), feed)["y"]
    assert_close_rel(got, reference, rtol=1e-5)


@pytest.mark.skipif(not host_has("avx512_bf16"), reason="this CPU has no AVX-512 BF16")
def test_bf16_runs_vdpbf16ps_on_this_host(tmp_path):
    so = qcompiler.compile(model_with_every_kind(weights()), quantize="bf16").export(tmp_path / "m.so")
    _assert_bf16_kernels(so)


def test_bf16_artifact_for_another_cpu_runs_bf16_instructions(tmp_path):
    """Cross-compiled for `x86-amx` (Sapphire Rapids: AVX-512 BF16 and AMX-BF16) on any host: the
    3×3 convolution (20 output channels) on `vdpbf16ps`, the matmul (2 × 48 rows, K = 72, 64 output
    channels) on `tdpbf16ps` tiles."""
    rng = np.random.default_rng(5)
    w = {"k": rng.standard_normal((20, 3, 3, 3)).astype(np.float32), "w": rng.standard_normal((72, 64)).astype(np.float32)}
    model = conv_and_matmul_model(w, rows=48)
    so = qcompiler.compile(model, target="x86-amx", quantize="bf16").export(tmp_path / "m.so")
    counts = dot_product_counts(so)
    products = {name: c for name, c in counts.items() if "dense" in name or "conv2d" in name}
    assert sorted(tuple(sorted(c)) for c in products.values()) == [("tdpbf16ps",), ("vdpbf16ps",)], products


def _assert_bf16_kernels(so):
    counts = dot_product_counts(so)
    products = {name: c for name, c in counts.items() if "dense" in name or "conv2d" in name}
    assert len(products) == 2 and all(c["vdpbf16ps"] > 0 for c in products.values()), products


def test_bf16_without_avx512_bf16_computes_the_same(tmp_path):
    """An AVX2 target has no bfloat16 dot product: the float32 kernels convert the operands, same numerics."""
    w = weights()
    artifact = qcompiler.compile(model_with_every_kind(w), target="x86-avx2", quantize="bf16")
    assert not [name for name in artifact.metadata.kernels if "bf16" in name]
    feed = {"ids": np.arange(16, dtype=np.int64)[None]}
    got = qcompiler.load(artifact.export(tmp_path / "m.so")).run(feed)["y"]
    reference = ort_run(with_rounded_operands(model_with_every_kind(w), "bf16", w), feed)["y"]
    assert_close_rel(got, reference, rtol=1e-5)


def test_fp16_refuses_weights_beyond_its_range():
    w = weights()
    w["w"][3, 5] = 1e5
    with pytest.raises(QCompilerError, match=r"beyond float16's range .*use --quantize bf16"):
        qcompiler.compile(model_with_every_kind(w), quantize="fp16")
    qcompiler.compile(model_with_every_kind(w), quantize="bf16")  # float32's range


def test_cli_bf16_and_fp16(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(model_with_every_kind(weights()).SerializeToString())
    sizes = {}
    for strategy in ("bf16", "fp16", None):
        out = tmp_path / f"{strategy}.so"
        proc = subprocess.run([sys.executable, "-m", "qcompiler", "compile", str(path), "-o", str(out),
                               *(["--quantize", strategy] if strategy else [])], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        sizes[strategy] = out.stat().st_size
    assert sizes["bf16"] < sizes[None] and sizes["fp16"] < sizes[None]
