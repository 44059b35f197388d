"""A small CNN trained on real Fashion-MNIST (Debian `dataset-fashion-mnist`), in numpy, exported as ONNX.

    .venv/bin/python benchmarks/fashion_mnist.py [--epochs 3]

conv 3x3/2 (1→16) → relu → conv 3x3/2 (16→32) → relu → flatten → fc (1568→10), trained with
Adam on the 60k training images; the ONNX file is cached beside the other models
(`~/.cache/qcompiler/models/fashion-cnn.onnx`). Used by bench_accuracy.py.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 1, 28, 28] float32 normalized, labels [N] int64) of "train" or "t10k"."""
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(DATA / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(DATA / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32), labels


def im2col(x: np.ndarray, k: int = 3, stride: int = 2, pad: int = 1) -> tuple[np.ndarray, int, int]:
    n, c, h, w = x.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, c, k, k, oh, ow), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * k * k), oh, ow


def col2im(cols: np.ndarray, shape, k: int = 3, stride: int = 2, pad: int = 1) -> np.ndarray:
    n, c, h, w = shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = cols.reshape(n, oh, ow, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[:, :, i, j]
    return xp[:, :, pad:pad + h, pad:pad + w]


class CNN:
    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        he = lambda fan_in, *shape: (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.params = {"w1": he(9, 16, 1, 3, 3), "b1": np.zeros(16, np.float32),
                       "w2": he(144, 32, 16, 3, 3), "b2": np.zeros(32, np.float32),
                       "w3": he(1568, 10, 1568), "b3": np.zeros(10, np.float32)}

    def forward(self, x):
        p = self.params
        c1, oh1, ow1 = im2col(x)
        a1 = np.maximum(c1 @ p["w1"].reshape(16, -1).T + p["b1"], 0)
        h1 = a1.reshape(len(x), oh1, ow1, 16).transpose(0, 3, 1, 2)
        c2, oh2, ow2 = im2col(h1)
        a2 = np.maximum(c2 @ p["w2"].reshape(32, -1).T + p["b2"], 0)
        h2 = a2.reshape(len(x), oh2, ow2, 32).transpose(0, 3, 1, 2).reshape(len(x), -1)
        logits = h2 @ p["w3"].T + p["b3"]
        return logits, (x, c1, a1, h1, c2, a2, h2)

    def step(self, x, y, state, lr=1e-3, t=1):
        p = self.params
        logits, (x, c1, a1, h1, c2, a2, h2) = self.forward(x)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        loss = -np.log(prob[np.arange(len(y)), y] + 1e-12).mean()
        d = prob
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        grads = {"w3": d.T @ h2, "b3": d.sum(0)}
        dh2 = (d @ p["w3"]).reshape(len(x), 32, 7, 7).transpose(0, 2, 3, 1).reshape(-1, 32) * (a2 > 0)
        grads["w2"] = (dh2.T @ c2).reshape(p["w2"].shape)
        grads["b2"] = dh2.sum(0)
        dh1 = col2im(dh2 @ p["w2"].reshape(32, -1), h1.shape)
        da1 = dh1.transpose(0, 2, 3, 1).reshape(-1, 16) * (a1 > 0)
        grads["w1"] = (da1.T @ c1).reshape(p["w1"].shape)
        grads["b1"] = da1.sum(0)
        for name, g in grads.items():  # Adam
            m, v = state.setdefault(name, (np.zeros_like(g), np.zeros_like(g)))
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            state[name] = (m, v)
            p[name] -= (lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)).astype(np.float32)
        return loss

    def to_onnx(self) -> onnx.ModelProto:
        p = self.params
        nodes = [
            helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        ]
        graph = helper.make_graph(
            nodes, "fashion_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
            [numpy_helper.from_array(v, k) for k, v in p.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def trained_model(epochs: int = 5, cache: Path | None = None) -> Path:
    """The trained CNN's ONNX path, training it first if it is not cached."""
    from qcompiler.models import default_cache_dir

    path = (cache or default_cache_dir() / "models") / f"fashion-cnn-e{epochs}.onnx"
    if path.exists():
        return path
    x, y = load("train")
    cnn, state, step = CNN(), {}, 0
    rng = np.random.default_rng(1)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        start, losses = time.perf_counter(), []
        for i in range(0, len(x), 128):
            step += 1
            batch = order[i:i + 128]
            losses.append(cnn.step(x[batch], y[batch], state, t=step))
        tx, ty = load("t10k")
        accuracy = np.mean(cnn.forward(tx)[0].argmax(1) == ty)
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.3f}, test accuracy {accuracy:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    onnx.save(cnn.to_onnx(), tmp)
    tmp.replace(path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    print(trained_model(parser.parse_args().epochs))
