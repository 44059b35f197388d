"""export-qdq: the calibrated model as standard ONNX QDQ (QuantizeLinear / DequantizeLinear).

The graph written is the one qcompiler imported (input shapes bound, BatchNorm folded into its
convolution), with what quantization decided:

* every quantized activation tensor T (an observer key's tensor that is an ONNX graph input or
  the single output of a node) becomes DequantizeLinear(QuantizeLinear(T)) with its calibrated
  scale and zero point (uint8 or int8, per tensor); its consumers read the dequantized value,
  except float ops reading a tensor computed in float (a graph input, a float op's output),
  which read T itself, as in the integer artifact (passes/simulate.py);
* every quantized conv / matmul weight becomes DequantizeLinear(int8 initializer, scales, 0)
  per output channel (axis 0 for Conv and Gemm with transB, 1 for MatMul and plain Gemm), with
  the int8 values the integer artifact uses (after AdaRound, when on);
* every embedding table that realize stores as int8 rows (a Gather of a float constant of
  ≥ 256 elements) becomes DequantizeLinear(int8 rows, scale per row, 0) on axis 0;
* weights and biases take the values of qcompiler's float model: equalized (when on), and
  biases shifted by bias correction (when on; a Conv or Gemm without a bias gets one);
* an equalized ReLU6 becomes Relu then Min with its per-channel bound;
* a smoothed matmul input X (--smooth) becomes Mul(X, 1/s) before its QDQ, the weights' rows
  multiplied by s;
* an input on an 8-bit grid (passes/input_grid.py) becomes what qcompiler computes: its
  convolution reads the grid index u = (Pad(x, the conv's pads, 0) · 1/step − centre/step),
  quantized as uint8 with scale 1 and zero point 128 (exact on every real value), with pads 0,
  the weights multiplied by step per input channel and the bias shifted (as the integer
  artifact's); the Pad, Mul and Add run in float before the QDQ;
* ops kept in fp32 (--skip, the accuracy search) get no QDQ of their own.

onnxruntime and TensorRT run such a model with their int8 kernels; its outputs agree with the
qcompiler artifact's up to where requantization rounds differently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import QCompilerError
from .frontend import ImportedModel
from .passes.graph import FunctionView, op_name
from .passes.simulate import float_readers_of, quantized_weight
from .passes.smooth import SUFFIX as SMOOTHED
from .passes.smooth import smoothing_multiplies
from .passes.weight_only import embedding_table, int8_rows
from .quantize import Quantized

# Per-channel QuantizeLinear / DequantizeLinear (`axis`) arrived in opset 13.
MIN_OPSET = 13


def _onnx_weight(node: onnx.NodeProto, weight: np.ndarray, kernel_layout: str | None) -> tuple[np.ndarray, int]:
    """A Relax conv/matmul weight in the layout of the ONNX node's weight input, and the axis of
    its output channels there."""
    if node.op_type == "Conv":
        return (np.transpose(weight, (0, 3, 1, 2)) if kernel_layout == "OHWI" else weight), 0
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0):
            raise QCompilerError(f"export-qdq: Gemm node {node.name!r} has alpha != 1 or transA: not supported")
        return (weight.T, 0) if attrs.get("transB", 0) else (weight, 1)
    return weight, 1  # MatMul: [K, N]


class _Writer:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.initializers: list[onnx.TensorProto] = []
        self.before: list[onnx.NodeProto] = []  # nodes with constant inputs only (weight dequantization)
        self.after: dict[str, list[onnx.NodeProto]] = {}  # tensor → nodes to insert after its producer
        self.names = {t for n in self.graph.node for t in [*n.input, *n.output]} | {i.name for i in self.graph.initializer}

    def fresh(self, base: str) -> str:
        name, index = base, 0
        while name in self.names:
            index += 1
            name = f"{base}_{index}"
        self.names.add(name)
        return name

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def dequantized(self, base: str, int8: np.ndarray, scales: np.ndarray, axis: int, node_name: str) -> str:
        """DequantizeLinear(int8, scales, 0) along `axis` (a weight or table named `base`); its output's name."""
        out = self.fresh(f"{base}_dequantized")
        self.before.append(helper.make_node(
            "DequantizeLinear",
            [self.constant(f"{base}_int8", np.ascontiguousarray(int8)), self.constant(f"{base}_scale", scales.astype(np.float32)),
             self.constant(f"{base}_zero_point", np.zeros(scales.shape, np.int8))],
            [out], name=self.fresh(node_name), axis=axis))
        return out


def qdq_model(imported: ImportedModel, q: Quantized) -> onnx.ModelProto:
    """The ONNX QDQ model of `q` (see the module docstring)."""
    if q.plan is None:
        raise QCompilerError("export-qdq: the model is already quantized (QDQ); there is nothing to export")
    model = onnx.ModelProto()
    model.CopyFrom(imported.imported_graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:  # the converter raises many kinds
            raise QCompilerError(f"export-qdq: per-channel QDQ needs ONNX opset >= {MIN_OPSET}; converting this "
                                 f"opset-{opset} model failed: {str(err).splitlines()[0][:200]}") from None
    writer = _Writer(model)
    nodes = {n.name: n for n in model.graph.node}
    view = FunctionView(q.fp32["main"])
    quantized = {op.var: op for op in q.plan.ops}
    layouts = {op.var: op.kernel_layout for op in q.plan.ops}

    for binding in view.bindings:
        var, call = binding.var, binding.value
        if op_name(call) not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        weight = view.constant(call.args[1])
        node = nodes.get(q.node_of.get(var, ""))
        if weight is None or node is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        layout = layouts.get(var) or (str(call.attrs.kernel_layout) if op_name(call) == "relax.nn.conv2d" else None)
        op = quantized.get(var)
        if op is not None:
            wq, scales = quantized_weight(op.weight, op.weight_axis, q.config.per_channel)
            wq = q.corrections.weights.get(var, wq)
            int8, axis = _onnx_weight(node, wq, layout)
            node.input[1] = writer.dequantized(node.input[1], int8, scales, axis, f"{node.name}_weight_dequantize")
        else:
            node.input[1] = writer.constant(f"{node.input[1]}_float", np.ascontiguousarray(_onnx_weight(node, weight, layout)[0]))
        _write_bias(writer, view, q, node, var, op)

    for binding in view.bindings:  # embedding tables, stored as int8 rows by realize
        node = nodes.get(q.node_of.get(binding.var, ""))
        table = embedding_table(binding.value) if op_name(binding.value) == "relax.take" else None
        if table is not None and node is not None and node.op_type == "Gather":
            rows, scales = int8_rows(table)
            node.input[0] = writer.dequantized(node.input[0], rows, scales, 0, f"{node.name}_table_dequantize")

    for binding in view.bindings:
        node = nodes.get(q.node_of.get(binding.var, ""))
        if op_name(binding.value) == "relax.minimum" and node is not None and node.op_type == "Clip":
            _write_channel_bound(writer, node, view.constant(binding.value.args[1]))

    qparams = q.calibration.qparams(q.config)
    for index in q.grid_indices.values():
        _write_grid_index(writer, view, q, nodes, index, qparams)
    graph_inputs = {i.name for i in model.graph.input}
    last_binding = {}
    for binding in view.bindings:
        if binding.var in q.node_of:
            last_binding[q.node_of[binding.var]] = binding.var
    smoothings = smoothing_multiplies(q.fp32)
    tensor_of = {var: _onnx_tensor(view, q.node_of, nodes, last_binding, graph_inputs, var)
                 for var in [*q.plan.keys, *(data for _, data, _ in smoothings)]}
    names = {}  # quantized ONNX tensor T → (the name its consumers read: DQ(Q(T)), the name of T's float value)
    for var, key in q.plan.keys.items():
        tensor = tensor_of[var]
        if tensor is not None and tensor not in names:
            names[tensor] = _quantize_tensor(writer, model.graph, tensor, qparams[key], from_input=tensor in graph_inputs)
    source_of = {dequantized: tensor for tensor, (dequantized, _) in names.items()}
    for smoothed, data, inverse in smoothings:  # X / s (passes/smooth.py), then its QDQ
        matmuls = [node for user in view.users.get(smoothed, []) if (node := nodes.get(q.node_of.get(user, "")))]
        source = tensor_of[data] or (source_of.get(matmuls[0].input[0], matmuls[0].input[0]) if matmuls else None)
        if source is None:
            raise QCompilerError(f"export-qdq: the input of smoothed matmuls {data.name} is no ONNX tensor here; "
                                 "export without smoothing")
        out = writer.fresh(f"{source}{SMOOTHED}")
        float_value = names.get(source, (source, source))[1]  # X itself, also where X is quantized for other ops
        writer.after.setdefault(float_value, []).append(helper.make_node(
            "Mul", [float_value, writer.constant(f"{source}_smoothing", inverse)], [out], name=writer.fresh(f"{source}_smooth")))
        for node in matmuls:
            node.input[0] = out
        if smoothed in q.plan.keys:
            names[out] = _quantize_tensor(writer, model.graph, out, qparams[q.plan.keys[smoothed]], from_input=False)
    for reader, tensors in float_readers_of(q.fp32, q.plan).items():
        node = nodes.get(q.node_of.get(reader, ""))
        exact = dict(names[tensor_of[var]] for var in tensors if tensor_of[var] in names)
        if node is not None:
            node.input[:] = [exact.get(name, name) for name in node.input]

    ordered = list(writer.before)

    def emit_after(tensor: str) -> None:
        for inserted in writer.after.get(tensor, []):
            ordered.append(inserted)
            for output in inserted.output:
                emit_after(output)

    for tensor in graph_inputs:
        emit_after(tensor)
    for node in list(model.graph.node):
        ordered.append(node)
        for output in node.output:
            emit_after(output)
    del model.graph.node[:]
    model.graph.node.extend(_live(ordered, {o.name for o in model.graph.output}))
    used = {t for n in model.graph.node for t in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + [i for i in writer.initializers if i.name in used])
    model.producer_name = "qcompiler export-qdq"
    return model


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` (in order) without those whose outputs nothing reads: what computed a replaced
    embedding table, say."""
    live, needed = [], set(outputs)
    for node in reversed(nodes):
        if any(output in needed for output in node.output):
            live.append(node)
            needed.update(_reads(node))
    return live[::-1]


def _reads(node: onnx.NodeProto) -> set[str]:
    """The tensors `node` reads: its inputs, and what the nodes of its subgraphs (If, Loop) read."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names |= _reads(inner)
    return names


def _onnx_tensor(view: FunctionView, node_of: dict, nodes: dict, last_binding: dict, graph_inputs: set, var):
    """The ONNX tensor a Relax var holds: a graph input (or its layout transform, which
    channels_last adds), or the single output of the node whose last binding it is."""
    if var not in view.value:
        return var.name if var.name in graph_inputs else None
    node = nodes.get(node_of.get(var, ""))
    if node is None:
        value = view.value[var]
        if op_name(value) in ("relax.permute_dims", "relax.reshape") and value.args[0] not in view.value:
            return value.args[0].name if value.args[0].name in graph_inputs else None
        return None
    last = last_binding.get(node.name)
    return node.output[0] if last is not None and last.same_as(var) and len(node.output) == 1 else None


def _write_channel_bound(writer: _Writer, node: onnx.NodeProto, bound: np.ndarray | None) -> None:
    """An equalized ReLU6 (passes/equalize.py: min(relu(x), per-channel bound)) in place of the
    node's Clip(x, 0, 6): Relu, then Min with the bound shaped [C, 1, 1] (NCHW) or [C]."""
    if bound is None:
        return
    rank = 4 if bound.ndim == 4 else bound.ndim
    channels = bound.reshape(-1)
    shaped = channels.reshape(-1, 1, 1) if rank == 4 else channels
    output = node.output[0]
    node.op_type = "Relu"
    del node.input[1:]
    node.output[0] = writer.fresh(f"{output}_relu")
    writer.after.setdefault(node.output[0], []).append(helper.make_node(
        "Min", [node.output[0], writer.constant(f"{node.name}_channel_bound", shaped.astype(np.float32))], [output],
        name=writer.fresh(f"{node.name}_channel_bound")))


def _write_grid_index(writer: _Writer, view: FunctionView, q: Quantized, nodes: dict, index, qparams) -> None:
    """The grid index u of an input on an 8-bit grid (passes/input_grid.py) in front of the
    convolution it feeds: Pad (the conv's padding, value 0), Mul by 1/step and Add −centre/step per
    channel (the Relax constants), then u's QDQ where u is quantized; the conv's own pads become 0
    (its weights and bias are the aligned ones of qcompiler's float model)."""
    conv_var = view.single_user(index)
    node = nodes.get(q.node_of.get(conv_var, ""))
    if node is None or node.op_type != "Conv":
        raise QCompilerError("export-qdq: the grid index of an input feeds no ONNX Conv here; export with "
                             "--no-input-grid")
    added = view.value[index]  # add(multiply(data, 1/step), −centre/step), data = pad(x) or x
    multiplied = view.value[added.args[0]]
    data = view.value.get(multiplied.args[0])
    layout = str(view.value[conv_var].attrs.data_layout)
    rank = len(layout)
    pads = [0] * (2 * rank)
    if op_name(data) == "relax.nn.pad":
        width = [int(w) for w in data.attrs.pad_width]
        for onnx_axis, letter in enumerate("NCHW"):
            axis = layout.index(letter)
            pads[onnx_axis], pads[rank + onnx_axis] = width[2 * axis], width[2 * axis + 1]

    def channel(constant) -> np.ndarray:  # a per-channel Relax constant, shaped for ONNX NCHW
        return view.constant(constant).reshape(1, -1, 1, 1).astype(np.float32)

    source, base = node.input[0], node.input[0]
    steps = []
    if any(pads):
        steps.append(("Pad", [writer.constant(f"{base}_grid_pads", np.array(pads, np.int64)),
                              writer.constant(f"{base}_grid_pad_value", np.array(0.0, np.float32))]))
    steps += [("Mul", [writer.constant(f"{base}_grid_inverse_step", channel(multiplied.args[1]))]),
              ("Add", [writer.constant(f"{base}_grid_offset", channel(added.args[1]))])]
    for op_type, constants in steps:
        out = writer.fresh(f"{base}_grid_{op_type.lower()}")
        writer.after.setdefault(source, []).append(helper.make_node(
            op_type, [source, *constants], [out], name=writer.fresh(f"{node.name}_grid_{op_type.lower()}")))
        source = out
    node.input[0] = source
    if index in q.plan.keys:
        params = qparams[q.plan.keys[index]]
        node.input[0] = _quantize_tensor(writer, writer.graph, source, params, from_input=False)[0]
    for attribute in list(node.attribute):
        if attribute.name in ("pads", "auto_pad"):
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute("pads", [0, 0, 0, 0]))


def _write_bias(writer: _Writer, view: FunctionView, q: Quantized, node: onnx.NodeProto, var, op) -> None:
    """The node's bias from qcompiler's float model (equalized), plus bias correction's shift."""
    user = view.single_user(var)
    bias_var = user if user is not None and op_name(view.value[user]) == "relax.add" \
        and q.node_of.get(user, node.name) == node.name else None  # (no node: input_grid's bias add)
    bias = None
    if bias_var is not None:
        args = view.value[bias_var].args
        bias = view.constant(args[1] if args[0].same_as(var) else args[0])
    shift = q.corrections.bias.get(var) if op is not None else None
    if bias is None and shift is None:
        return
    channels = op.weight.shape[op.weight_axis] if op is not None else bias.size
    total = np.zeros(channels, np.float64) if bias is None else np.broadcast_to(bias.reshape(-1), (channels,)).astype(np.float64)
    if shift is not None:
        total = total + shift
    if node.op_type in ("Conv", "Gemm"):
        name = writer.constant(f"{node.name}_bias", total.astype(np.float32))
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
        return
    # MatMul: the bias is an Add node (whose constant operand is replaced) or, for a shift alone, a new Add.
    if bias_var is not None:
        return  # the Add belongs to another node; the float model's value is the ONNX one
    raw = node.output[0]
    node.output[0] = writer.fresh(f"{raw}_before_bias_correction")
    writer.after.setdefault(node.output[0], []).append(helper.make_node(
        "Add", [node.output[0], writer.constant(f"{node.name}_bias_correction", total.astype(np.float32))], [raw],
        name=writer.fresh(f"{node.name}_bias_correction")))


def _quantize_tensor(writer: _Writer, graph: onnx.GraphProto, tensor: str, params, from_input: bool) -> tuple[str, str]:
    """T → DequantizeLinear(QuantizeLinear(T)) for every consumer of T; the names of the
    dequantized value and of the float value."""
    scale = writer.constant(f"{tensor}_scale", np.array(params.scale, np.float32))
    zero_point = writer.constant(f"{tensor}_zero_point", np.array(params.zero_point, params.dtype))
    quantized = writer.fresh(f"{tensor}_quantized")
    if from_input:
        source, dequantized = tensor, writer.fresh(f"{tensor}_dequantized")
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = dequantized
        anchor = tensor
    else:  # the producer writes a new name; the dequantized value takes the tensor's name
        inserted = [n for nodes in writer.after.values() for n in nodes]
        producer = next(n for n in [*graph.node, *inserted] if tensor in n.output)
        source = writer.fresh(f"{tensor}_float")
        producer.output[list(producer.output).index(tensor)] = source
        dequantized, anchor = tensor, source
    writer.after.setdefault(anchor, []).extend([
        helper.make_node("QuantizeLinear", [source, scale, zero_point], [quantized],
                         name=writer.fresh(f"{tensor}_quantize")),
        helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [dequantized],
                         name=writer.fresh(f"{tensor}_dequantize")),
    ])
    return dequantized, source


def write_qdq(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write `model` atomically (a temporary name, renamed when complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
