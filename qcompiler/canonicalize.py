"""ONNX-level canonicalization before import: fold inference BatchNormalization into its Conv.

    W' = W · γ / √(σ² + ε)          (per output channel)
    B' = (B − μ) · γ / √(σ² + ε) + β

The fused Conv keeps the Conv node's name, so skip lists by node name keep working; the
BatchNormalization node disappears. Only a BatchNormalization that is the sole consumer of
a Conv with constant weights, and has a single output (inference mode), is folded.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper


def _constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    return tensors


def fold_batchnorm_into_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every foldable Conv → BatchNormalization pair fused into one Conv."""
    graph = model.graph
    tensors = _constant_tensors(model)
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(out.name for out in graph.output)
    producer = {out: node for node in graph.node for out in node.output}

    fused_convs: dict[int, tuple[onnx.NodeProto, list[onnx.TensorProto]]] = {}
    removed: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or uses[conv.output[0]] != 1 or id(conv) in fused_convs:
            continue
        names = [conv.input[1], *bn.input[1:5]] + ([conv.input[2]] if len(conv.input) > 2 and conv.input[2] else [])
        if not all(name in tensors for name in names):
            continue
        weight = numpy_helper.to_array(tensors[conv.input[1]]).astype(np.float64)
        gamma, beta, mean, var = (numpy_helper.to_array(tensors[n]).astype(np.float64) for n in bn.input[1:5])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        bias = (numpy_helper.to_array(tensors[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0]))
        factor = gamma / np.sqrt(var + epsilon)
        dtype = numpy_helper.to_array(tensors[conv.input[1]]).dtype
        new_weight = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(dtype)
        new_bias = ((bias - mean) * factor + beta).astype(dtype)
        prefix = conv.name or conv.output[0]
        fused = onnx.NodeProto()
        fused.CopyFrom(conv)
        del fused.input[:]
        fused.input.extend([conv.input[0], f"{prefix}::bn_folded_weight", f"{prefix}::bn_folded_bias"])
        fused.output[0] = bn.output[0]
        fused_convs[id(conv)] = (fused, [numpy_helper.from_array(new_weight, fused.input[1]),
                                         numpy_helper.from_array(new_bias, fused.input[2])])
        removed.add(id(bn))
    if not fused_convs:
        return model

    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.graph.node[:]
    for node in graph.node:
        if id(node) in removed:
            continue
        if id(node) in fused_convs:
            fused, inits = fused_convs[id(node)]
            new.graph.node.append(fused)
            new.graph.initializer.extend(inits)
        else:
            new.graph.node.append(node)
    # Drop the now-unused original weights (initializers and Constant nodes), and any graph input
    # that only declared a dropped initializer (IR < 4 lists weights as inputs): left behind, it
    # would become a real input of the compiled model.
    used = {name for node in new.graph.node for name in node.input} | {o.name for o in new.graph.output}
    keep = [init for init in new.graph.initializer if init.name in used]
    dropped = {init.name for init in new.graph.initializer} - used
    del new.graph.initializer[:]
    new.graph.initializer.extend(keep)
    inputs = [vi for vi in new.graph.input if vi.name not in dropped]
    del new.graph.input[:]
    new.graph.input.extend(inputs)
    nodes = [n for n in new.graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    return new
