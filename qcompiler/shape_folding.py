"""Fold ONNX shape arithmetic into constants once every input shape is static.

Exporters (Paddle, PyTorch) often compute reshape targets at run time: `Shape → Slice →
Concat → Reshape`. TVM's importer only accepts such a target when it is a constant, so with
the input shapes bound we evaluate these small subgraphs ahead of time with ONNX's reference
evaluator: `Shape` of a statically shaped tensor becomes its dims, and any node from
`FOLDABLE_OPS` whose inputs are all small constants becomes an initializer. Weights are left
alone (inputs above `MAX_FOLD_ELEMENTS` are not folded).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import onnx
from onnx import numpy_helper

FOLDABLE_OPS = frozenset({
    "Cast", "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze", "Identity", "Add", "Sub", "Mul", "Div",
    "Floor", "Ceil", "Range", "ConstantOfShape", "Equal", "Where", "Reshape", "ReduceProd", "Min", "Max", "Abs", "Neg",
    "Size",
    # the arithmetic and masks of ops given as expanded function bodies (Attention's: its scale,
    # causal and window masks from the static sequence lengths)
    "Mod", "Sqrt", "Pow", "Sign", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "CastLike", "Expand", "Tile", "Transpose", "Flatten", "Trilu", "ReduceMax", "ReduceMin", "ReduceSum",
})
# Constant's list and scalar attribute forms (TVM's importer reads only `value`) → numpy dtype.
_CONSTANT_FORMS = MappingProxyType({"value_float": np.float32, "value_floats": np.float32,
                                    "value_int": np.int64, "value_ints": np.int64})
MAX_FOLD_ELEMENTS = 4096
MAX_FOLDED_ELEMENTS = 1 << 20  # a folded result larger than this (an expanded mask) stays a node


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _constant_form(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant given as value_float(s) / value_int(s), else None."""
    for attr in node.attribute:
        if attr.name in _CONSTANT_FORMS:
            value = onnx.helper.get_attribute_value(attr)
            return np.array(value, dtype=_CONSTANT_FORMS[attr.name])
    return None


def _shape_of(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(shape)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (s + rank if s < 0 else s for s in (start, end))
    return np.array(shape[max(start, 0) : min(end, rank)], dtype=np.int64)


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [name for name in node.input if name]
    feeds = {name: value for name, value in zip(node.input, inputs) if name}
    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
         for n in dict.fromkeys(names)],
        [onnx.helper.make_empty_tensor_value_info(out) for out in node.output],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def fold_shape_computations(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """A copy of `model` (shape-inferred, static inputs) with shape arithmetic folded to initializers."""
    shapes = _static_shapes(model)
    constants: dict[str, np.ndarray] = {init.name: None for init in model.graph.initializer}
    initializers = {init.name: init for init in model.graph.initializer}

    def value(name: str) -> np.ndarray:
        if constants[name] is None:
            constants[name] = numpy_helper.to_array(initializers[name])
        return constants[name]

    def small(name: str) -> bool:
        if name in initializers:
            return int(np.prod(initializers[name].dims, dtype=np.int64)) <= MAX_FOLD_ELEMENTS
        return constants[name].size <= MAX_FOLD_ELEMENTS

    folded: dict[str, np.ndarray] = {}
    kept: list[onnx.NodeProto] = []
    graph_outputs = {out.name for out in model.graph.output}
    for node in model.graph.node:
        results = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                initializers[node.output[0]] = attr["value"].t
                constants[node.output[0]] = None
                if small(node.output[0]):
                    results = [value(node.output[0])]
            else:
                form = _constant_form(node)
                results = None if form is None else [form]
        elif node.op_type == "Shape" and node.input[0] in shapes:
            results = [_shape_of(node, shapes[node.input[0]])]
        elif (
            node.op_type in FOLDABLE_OPS
            and node.domain in ("", "ai.onnx")
            and all(not name or (name in constants and small(name)) for name in node.input)
        ):
            try:
                results = _evaluate(node, [value(n) if n else None for n in node.input], opset)
            except Exception:  # the reference evaluator lacks some op versions: leave the node to TVM
                results = None
            if results is not None and any(np.asarray(r).size > MAX_FOLDED_ELEMENTS for r in results):
                results = None
        if results is None or any(out in graph_outputs for out in node.output):
            kept.append(node)
            continue
        for out, result in zip(node.output, results):
            constants[out] = result
            folded[out] = result
    if not folded:
        return model
    used = {name for node in kept for name in node.input} | graph_outputs
    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.graph.node[:]
    new.graph.node.extend(kept)
    existing = {init.name for init in new.graph.initializer}
    new.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(result), name)
        for name, result in folded.items()
        if name in used and name not in existing
    )
    return new
