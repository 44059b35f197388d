"""annotate: decide which ops run in int8 and which tensors need observers.

Quantized ops (Relax op → role):
  conv2d with constant weights (any groups, so also depthwise)   anchor with weights
  matmul with constant 2-D weights (ONNX Gemm / MatMul)          anchor with weights
  matmul of two activations (batch matmul)                       anchor, both inputs quantized
  add / multiply of two activations (residuals, gating)          anchor, both inputs quantized,
                                                                 where a quantized op reads its output
  concat, mean over H and W (global average pooling)             anchor
  max_pool2d                                                     carries its input's quantization
  reshape, permute_dims, squeeze, expand_dims, strided_slice     carry their input's quantization

A conv/matmul anchor absorbs its epilogue: a per-channel constant bias `add`, then `relu`
or `clip`, each bound to a single user; its quantized output is the end of that chain. An
add/multiply anchor absorbs a following `relu` or `clip` the same way (residual add + relu
requantizes once).
A chain of elementwise ops fed by a single quantized tensor (and scalar constants) — e.g.
HardSwish, x · clip(x + 3, 0, 6) / 6 — is a unary region: its end is quantized, its inside
is not (realize turns it into one lookup table).
Every activation input and output of an anchor gets an observer (one per tensor; a carried
tensor shares its source's observer), except an anchor output that no quantized op reads:
that stays float (its int32 sum dequantized, not rounded to 8 bits on the way out of the
model). Ops skipped by ONNX op type or node name stay fp32, and so do ops outside this list
(e.g. windowed average pooling, softmax), between a dequantize and a quantize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .graph import FunctionView, along_axis, conv_channel_axis, expose, op_name, shape_of
from .qconfig import QConfig

CARRY_OPS = frozenset({
    "relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.strided_slice",
    "relax.nn.max_pool2d",
})
ACTIVATION_OPS = frozenset({"relax.nn.relu", "relax.clip"})
# Elementwise ops that, applied to one quantized tensor (and scalar constants), realize as a
# 256-entry lookup table: hardswish, hardsigmoid, sigmoid, tanh, GELU's erf, ... chains of them;
# each with its function on float64 arrays (realize computes the table with it), and clip.
UNARY_FUNCTIONS = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "relax.nn.relu": lambda v: np.maximum(v, 0.0), "relax.sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "relax.tanh": np.tanh, "relax.exp": np.exp, "relax.erf": np.vectorize(math.erf, otypes=[np.float64]),
}
UNARY_OPS = frozenset({*UNARY_FUNCTIONS, "relax.clip"})


@dataclass
class QuantizedOp:
    """One anchor op that will run in integer arithmetic."""

    var: relax.Var  # the anchor's binding
    op: str  # Relax op name
    node: str | None  # ONNX node it came from
    inputs: list[relax.Var]  # activation inputs to quantize
    output: relax.Var  # quantized result (after the absorbed epilogue)
    weight: np.ndarray | None = None
    weight_axis: int | None = None  # output-channel axis of the weight
    epilogue: list[relax.Var] = field(default_factory=list)
    macs: int = 0
    kernel_layout: str | None = None  # conv2d's weight layout (OIHW, OHWI)
    groups: int = 1
    conv_geometry: tuple | None = None  # conv2d's (strides, dilation, padding top/left/bottom/right)


@dataclass
class AnnotationPlan:
    """What annotate decided: the quantized ops and an observer key per quantized tensor."""

    ops: list[QuantizedOp]
    keys: dict  # relax.Var → observer key
    skipped: list[tuple[str, str]]  # (ONNX node, reason) of anchors left in fp32
    total_macs: int

    @property
    def observer_keys(self) -> list[str]:
        return list(dict.fromkeys(self.keys.values()))

    def tensors_of(self, key: str) -> list:
        return [var for var, k in self.keys.items() if k == key]


def _macs(binding_var, value, weight) -> int:
    out = shape_of(binding_var)
    if op_name(value) == "relax.nn.conv2d":
        return int(np.prod(out)) * int(np.prod(weight.shape[1:]))
    if op_name(value) == "relax.matmul":
        k = shape_of(value.args[0])[-1]
        return int(np.prod(out)) * int(k)
    return 0


def _conv_attributes(call) -> tuple:
    """(kernel layout, groups, geometry) of a conv2d; (None, 1, None) for other ops."""
    if op_name(call) != "relax.nn.conv2d":
        return None, 1, None
    attrs = call.attrs
    geometry = tuple(tuple(int(v) for v in values) for values in (attrs.strides, attrs.dilation, attrs.padding))
    return str(attrs.kernel_layout), int(attrs.groups), geometry


def _is_global_pool(call) -> bool:
    """mean over H and W of an NCHW or NHWC tensor (ONNX GlobalAveragePool); not LayerNorm statistics."""
    axes = call.attrs.axis
    rank = len(shape_of(call.args[0]))
    return rank == 4 and axes is not None and sorted(int(a) % rank for a in axes) in ([2, 3], [1, 2])


def _is_activation(view: FunctionView, expr) -> bool:
    return isinstance(expr, relax.Var) and view.constant(expr) is None and isinstance(expr.ty, relax.TensorType) \
        and str(expr.ty.dtype) == "float32"


def _epilogue(view: FunctionView, anchor, channels: int, channel_axis: int) -> list:
    """The absorbed bias add and activation after a conv/matmul anchor."""
    chain, current = [], anchor
    user = view.single_user(current)
    if user is not None and op_name(view.value[user]) == "relax.add":
        args = view.value[user].args
        other = args[1] if args[0].same_as(current) else args[0]
        bias = view.constant(other)
        if bias is not None and bias.size == channels and bias.ndim <= len(shape_of(anchor)) \
                and (bias.ndim == 0 or bias.shape[channel_axis] == channels or bias.ndim == 1):
            chain.append(user)
            current = user
    chain += _activation_after(view, current)
    if chain and op_name(view.value[chain[-1]]) == "relax.nn.relu":
        chain += _channel_bound_after(view, chain[-1], channels, channel_axis)
    return chain


def _channel_bound_after(view: FunctionView, var, channels: int, channel_axis: int) -> list:
    """[minimum(var, per-channel constant)] if that is the single user of `var` (the upper bound
    of an equalized ReLU6, passes/equalize.py), else []."""
    user = view.single_user(var)
    if user is None or op_name(view.value[user]) != "relax.minimum":
        return []
    args = view.value[user].args
    bound = view.constant(args[1]) if args[0].same_as(var) else None
    shape = shape_of(var)
    return [user] if bound is not None and shape[channel_axis] == channels and along_axis(bound, channel_axis, shape) \
        else []


def _activation_after(view: FunctionView, var) -> list:
    """[relu or clip] if that is the single user of `var`, else []."""
    user = view.single_user(var)
    return [user] if user is not None and op_name(view.value[user]) in ACTIVATION_OPS else []


def annotate(mod: tvm.IRModule, config: QConfig, node_of: dict, op_type_of: dict) -> AnnotationPlan:
    """Plan the quantization of `mod["main"]` (after FoldConstant, weights as constants).

    `node_of` maps bound vars to ONNX node names (frontend.onnx_node_of); `op_type_of` maps
    ONNX node names to op types.
    """
    view = FunctionView(mod["main"])
    keys: dict = {}
    ops: list[QuantizedOp] = []
    skipped: list[tuple[str, str]] = []
    total_macs = 0
    absorbed: set = set()

    def key_for(var) -> str:
        if var not in keys:
            keys[var] = f"{len(dict.fromkeys(keys.values()))}:{var.name}"
        return keys[var]

    unary_source = unary_sources(view)

    def region_source(expr):
        return unary_source.get(expr, expr)

    for binding in view.bindings:
        var, value = binding.var, binding.value
        name = op_name(value)
        if name is None or var in absorbed:
            continue
        node = node_of.get(var)
        if name in CARRY_OPS:
            source = value.args[0]
            if source in keys and var not in keys:
                keys[var] = keys[source]
            continue
        weight = weight_axis = None
        inputs: list = []
        if name == "relax.nn.conv2d":
            weight = view.constant(value.args[1])
            if weight is None or conv_channel_axis(value) is None:
                continue
            weight_axis, inputs = 0, [value.args[0]]
        elif name == "relax.matmul":
            weight = view.constant(value.args[1])
            if weight is not None and weight.ndim == 2:
                weight_axis, inputs = 1, [value.args[0]]
            elif weight is None and view.constant(value.args[0]) is None:
                inputs = [value.args[0], value.args[1]]
            else:
                continue
        elif name in ("relax.add", "relax.multiply"):
            if not all(_is_activation(view, a) for a in value.args):
                continue
            if region_source(value.args[0]).same_as(region_source(value.args[1])):
                continue  # inside a unary region
            inputs = list(value.args)
        elif name == "relax.concat":
            fields = value.args[0].fields if isinstance(value.args[0], relax.Tuple) else None
            if fields is None or not all(_is_activation(view, f) for f in fields):
                continue
            inputs = list(fields)
        elif name == "relax.mean" and _is_global_pool(value):
            inputs = [value.args[0]]
        else:
            continue
        if weight is not None:
            total_macs += _macs(var, value, weight)
        if not all(_is_activation(view, a) for a in inputs):
            continue
        op_type = op_type_of.get(node, "") if node else ""
        if node in config.skip_nodes or op_type in config.skip_op_types:
            skipped.append((node or var.name, f"skipped by configuration ({op_type})"))
            continue
        epilogue = []
        if weight is not None:
            channels = weight.shape[weight_axis]
            epilogue = _epilogue(view, var, channels, conv_channel_axis(value) if name == "relax.nn.conv2d" else -1)
        elif name in ("relax.add", "relax.multiply"):
            epilogue = _activation_after(view, var)
        absorbed.update(epilogue)
        output = epilogue[-1] if epilogue else var
        for tensor in inputs:
            key_for(tensor)
        key_for(output)
        ops.append(QuantizedOp(var, name, node, list(inputs), output, weight, weight_axis, epilogue,
                               _macs(var, value, weight) if weight is not None else 0,
                               *_conv_attributes(value)))
    ops, keys = _without_unread_elementwise(ops, keys, unary_source)
    # The end of each unary region fed by a quantized tensor is quantized too.
    for var, src in unary_source.items():
        users = view.users.get(var, [])
        inside = users and all(unary_source.get(u) is not None and unary_source[u].same_as(src) for u in users)
        if src in keys and (var in view.outputs or not inside):
            key_for(var)
    return AnnotationPlan(ops, _read_by_integer_ops(keys, ops, unary_source), skipped, total_macs)


def _read_keys(ops: list[QuantizedOp], keys: dict, unary_source: dict) -> set:
    """The observer keys that run on integers downstream: the quantized ops' inputs and the
    unary regions' sources (their tables)."""
    return {keys[var] for op in ops for var in op.inputs} | {keys[src] for src in unary_source.values() if src in keys}


def _without_unread_elementwise(ops: list[QuantizedOp], keys: dict, unary_source: dict) -> tuple[list, dict]:
    """`ops` without the add / multiply anchors whose output no quantized op (or unary region)
    reads, and `keys` without the tensors only they read. Such an add saves nothing in int8 (its
    result is dequantized at once), and it would round both its inputs to 8 bits: a transformer's
    residual add before LayerNorm would quantize the residual stream itself, outliers and all.
    Repeated until none is left (dropping one can leave another unread)."""
    while True:
        read = _read_keys(ops, keys, unary_source)
        kept = [op for op in ops if op.op not in ("relax.add", "relax.multiply") or keys[op.output] in read]
        if len(kept) == len(ops):
            break
        ops = kept
    used = {keys[var] for op in ops for var in (*op.inputs, op.output)}
    return ops, {var: key for var, key in keys.items() if key in used}


def _read_by_integer_ops(keys: dict, ops: list[QuantizedOp], unary_source: dict) -> dict:
    """`keys` without the anchor outputs that no quantized op reads: an output that only float
    ops or the caller read (logits, a box regression before a float decode) stays float, its
    int32 sum dequantized directly instead of rounded to 8 bits first. A concat's output keeps
    its key (its inputs are requantized to the output's parameters), and so does the end of a
    unary region (its table is read by a max pool or layout op that runs on the integers)."""
    unread = {keys[op.output] for op in ops if op.op != "relax.concat"} - _read_keys(ops, keys, unary_source)
    return {var: key for var, key in keys.items() if key not in unread}


def unary_sources(view: FunctionView) -> dict:
    """For each var computed by UNARY_OPS from one activation and scalar constants: that activation."""
    sources: dict = {}
    for binding in view.bindings:
        value = binding.value
        if op_name(value) not in UNARY_OPS:
            continue
        found = None
        for arg in value.args:
            if isinstance(arg, relax.Var) and view.constant(arg) is None:
                src = sources.get(arg, arg)
                if found is not None and not found.same_as(src):
                    found = None
                    break
                found = src
            elif isinstance(arg, relax.Var) or isinstance(arg, tvm.ir.expr.Constant):
                constant = view.constant(arg)
                if constant is None or constant.size != 1:
                    found = None
                    break
        if found is not None and _is_activation(view, found):
            sources[binding.var] = found
    return sources


def observed_module(mod: tvm.IRModule, plan: AnnotationPlan) -> tuple[tvm.IRModule, list[str]]:
    """`mod` whose `main` returns its outputs followed by one tensor per observer key.

    Returns the module and the observer keys in the order they are appended.
    """
    keys = plan.observer_keys
    representative = {}
    for var, key in plan.keys.items():
        representative.setdefault(key, var)
    return expose(mod, [representative[k] for k in keys]), keys
