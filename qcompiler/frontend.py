"""ONNX → Relax import: load, check, bind input shapes, convert, keep node names traceable.

Every failure is a `QCompilerError` whose one line names the file, input, or op at fault.
Each ONNX node's result is bound to a Relax variable named after the node (see
`onnx_node_of`), so later passes can take skip lists by ONNX node name.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .block_quantization import convert_blocked
from .canonicalize import fold_batchnorm_into_conv
from .errors import QCompilerError
from .passes.graph import Constant, const, constant_value, shape_of
from .attention import convert_attention
from .qoperator import QOPERATOR_OPS, conv_integer, matmul_integer, qlinear_conv, qlinear_matmul
from .recurrent import GATES, convert_recurrent
from .resize import convert_resize
from .shape_folding import fold_shape_computations
from .tensor_spec import TensorSpec

# Ops handled by the importer itself rather than its converter map.
_IMPORTER_BUILTIN_OPS = frozenset({"If", "Constant"})
# Ops converted here (TracingImporter._convert_operator): recurrent layers, the QOperator integer
# ops (qoperator.py) and opset-23 Attention (attention.py), which TVM's importer lacks (or widens
# to int32: MatMulInteger; or fails on: Attention), and RMSNormalization, whose TVM converter
# refuses 6 of ONNX's 38 cases.
_QCOMPILER_CONVERTED_OPS = frozenset({"RMSNormalization", "Attention", *GATES, *QOPERATOR_OPS})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
# ONNX element types TVM cannot hold or converts differently from ONNX: strings, complex numbers,
# floats narrower than 16 bits and integers narrower than 8 (conformance: wrong values or crashes).
_UNSUPPORTED_ELEM_TYPES = frozenset(
    getattr(onnx.TensorProto, name) for name in (
        "STRING", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0", "FLOAT6E2M3", "FLOAT6E3M2", "FLOAT4E2M1", "INT4", "UINT4", "INT2", "UINT2",
    ) if hasattr(onnx.TensorProto, name)
)


@dataclass
class ImportedModel:
    """An ONNX model imported into Relax, with everything later stages need to know about it."""

    mod: "object"  # tvm.IRModule
    onnx_model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source_sha256: str
    source_path: str | None
    opset: int
    # Relax variable name → ONNX node name, for every node that produced a new binding.
    node_names: dict[str, str] = field(default_factory=dict)
    # ONNX node name → op type (unnamed nodes are named OpType_index).
    node_op_types: dict[str, str] = field(default_factory=dict)
    # Graph inputs given a value at compile time (`constant_inputs`) → SHA-256 of that value's bytes.
    constant_inputs: dict[str, str] = field(default_factory=dict)
    # The graph `mod` was imported from: input shapes bound, shape computations and BatchNorm
    # folded, every node named (node_label). `node_names` names its nodes.
    imported_graph: onnx.ModelProto | None = None


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` (the `--input-shape` syntax) into (name, dims)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise QCompilerError(f"--input-shape {text!r}: expected NAME=DIMS, e.g. x=1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise QCompilerError(f"--input-shape {text!r}: dims must be positive integers joined by 'x'") from None
    if any(d <= 0 for d in shape):
        raise QCompilerError(f"--input-shape {text!r}: dims must be positive integers joined by 'x'")
    return name, shape


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, bytes, str | None]:
    """Parse the model; return it with its serialized bytes (for hashing) and its path."""
    if isinstance(model, onnx.ModelProto):
        return model, model.SerializeToString(), None
    path = Path(model)
    if not path.exists():
        raise QCompilerError(f"model file not found: {path}")
    if not path.is_file():
        raise QCompilerError(f"model path is not a file: {path}")
    data = path.read_bytes()
    if not data:
        raise QCompilerError(f"{path} is empty: expected an ONNX model")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        # A serialized ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
        what = "a truncated or corrupt ONNX model" if data[:1] == b"\x08" else "not an ONNX model"
        raise QCompilerError(f"{path} is {what}: cannot parse it as ONNX protobuf ({err})") from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise QCompilerError(f"{path} is not an ONNX model: it parses as protobuf but has no graph or ir_version")
    _load_external_data(proto, path)
    return proto, data, str(path)


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read tensors stored outside the model file, after checking every referenced file exists."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            if not (path.parent / location).is_file():
                raise QCompilerError(
                    f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing "
                    f"(expected at {path.parent / location})"
                )
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise QCompilerError(f"{path}: cannot read external data: {str(err).splitlines()[0]}") from None


def _check(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """ONNX checker, then shape inference (which also validates node types and attributes)."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise QCompilerError(f"{where} fails the ONNX checker (corrupt or invalid model): {first}") from None
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise QCompilerError(f"{where} fails ONNX shape inference: {first}") from None


def _opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    return 1


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or `OpType_INDEX` (its position in the model's graph) for an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Every op type in the graph that the Relax ONNX importer cannot convert → its node names."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | _IMPORTER_BUILTIN_OPS | _QCOMPILER_CONVERTED_OPS
    found: dict[str, list[str]] = {}
    for index, node in enumerate(proto.graph.node):
        op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in supported:
            found.setdefault(op, []).append(node_label(node, index))
    return found


def _refusal(node: onnx.NodeProto) -> str | None:
    """Why qcompiler refuses a node that TVM's importer would convert into something other than
    what ONNX specifies (None: no objection)."""
    if node.domain not in _DEFAULT_DOMAINS:
        return None
    if node.op_type == "NonMaxSuppression":
        return ("its output [num_selected, 3] has a data-dependent shape, and compiled models have static "
                "output shapes (TVM's importer would return a fixed-size result instead)")
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    if node.op_type == "SpaceToDepth" and attrs.get("mode", b"DCR") != b"DCR":
        return f"mode {attrs['mode'].decode()!r} is not supported (TVM's importer implements only DCR)"
    if node.op_type == "RoiAlign" and attrs.get("mode", b"avg") == b"max":
        return ("mode 'max' is not supported (TVM's importer pools it differently from ONNX's reference: "
                "wrong values in ONNX's own case)")
    return None


def refused_ops(proto: onnx.ModelProto) -> dict[str, tuple[str, list[str]]]:
    """Every op type in the graph that qcompiler refuses (see `_refusal`) → (why, its node names)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for index, node in enumerate(proto.graph.node):
        reason = _refusal(node)
        if reason is not None:
            found.setdefault(node.op_type, (reason, []))[1].append(node_label(node, index))
    return found


def _unsupported_message(proto: onnx.ModelProto) -> str | None:
    """One line listing every unsupported or refused op with its nodes (and why), or None."""
    entries = {op: ("", nodes) for op, nodes in unsupported_ops(proto).items()}
    entries.update(refused_ops(proto))
    if not entries:
        return None
    return "; ".join(
        f"{op} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {', '.join(nodes[:3])}"
        f"{', ...' if len(nodes) > 3 else ''}){f': {reason}' if reason else ''}"
        for op, (reason, nodes) in sorted(entries.items())
    )


def unsupported_dtype(proto: onnx.ModelProto) -> str | None:
    """Where the graph uses an element type in `_UNSUPPORTED_ELEM_TYPES` (a graph input or output,
    an initializer, or a Cast's target), as one phrase naming the first such tensor or node; else None."""
    def named(elem: int) -> str:
        return onnx.TensorProto.DataType.Name(elem)

    graph = proto.graph
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in _UNSUPPORTED_ELEM_TYPES:
                return f"node {node_label(node, index)!r} (Cast) casts to {named(attr.i)}"
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for vi in values:
            elem = vi.type.tensor_type.elem_type
            if elem in _UNSUPPORTED_ELEM_TYPES:
                return f"graph {kind} {vi.name!r} has element type {named(elem)}"
    for init in graph.initializer:
        if init.data_type in _UNSUPPORTED_ELEM_TYPES:
            return f"initializer {init.name!r} has element type {named(init.data_type)}"
    return None


def _graph_inputs(proto: onnx.ModelProto, initializers_as_inputs: bool = False) -> list[onnx.ValueInfoProto]:
    """The graph inputs that become the artifact's inputs, in graph order.

    A graph input that also has an initializer (as exporters for ONNX IR < 4 list every weight)
    is a constant, not an input, unless `initializers_as_inputs`.
    """
    if initializers_as_inputs:
        return list(proto.graph.input)
    initializers = {init.name for init in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in initializers]


def with_constant_inputs(proto: onnx.ModelProto, values: Mapping[str, np.ndarray], where: str) -> onnx.ModelProto:
    """A copy of `proto` in which each named graph input is an initializer holding its given value.

    For exports that feed shape-like values (Resize scales, Reshape shapes, Reduce axes, Slice
    bounds) as graph inputs: once constant they fold at compile time, and the artifact no longer
    takes them. The value must have the input's element type and agree with its static dims.
    """
    from onnx import numpy_helper

    declared = {vi.name: vi for vi in proto.graph.input}
    initializers = {init.name: init for init in proto.graph.initializer}
    frozen = onnx.ModelProto()
    frozen.CopyFrom(proto)
    for name, value in values.items():
        if name not in declared:
            raise QCompilerError(f"{where}: --constant-input {name!r} is not a graph input: the model's inputs are "
                                 f"{', '.join(repr(vi.name) for vi in proto.graph.input)}")
        array = np.asarray(value)
        if not declared[name].type.HasField("tensor_type"):
            raise QCompilerError(f"{where}: --constant-input {name!r}: the input is not a tensor")
        want = _dtype_of(declared[name])
        if str(array.dtype) != want:
            raise QCompilerError(f"{where}: --constant-input {name!r} is {array.dtype}, the model declares {want}")
        dims = _declared_dims(declared[name], initializers.get(name))
        if not declared[name].type.tensor_type.HasField("shape") and name not in initializers:
            dims = [None] * array.ndim
        if len(dims) != array.ndim or any(d is not None and d != n for d, n in zip(dims, array.shape)):
            shown = "x".join("?" if d is None else str(d) for d in dims)
            raise QCompilerError(f"{where}: --constant-input {name!r} has shape {'x'.join(map(str, array.shape))}, "
                                 f"the model declares {shown}")
        kept = [init for init in frozen.graph.initializer if init.name != name]
        del frozen.graph.initializer[:]
        frozen.graph.initializer.extend(kept + [numpy_helper.from_array(np.ascontiguousarray(array), name)])
    remaining = [vi for vi in frozen.graph.input if vi.name not in values]
    del frozen.graph.input[:]
    frozen.graph.input.extend(remaining)
    return frozen


# Op type → the input slots whose values decide output shapes (or are attributes in other
# opsets); any op whose name starts with "Reduce" has `axes` too.
COMPILE_TIME_SLOTS: Mapping[str, frozenset] = MappingProxyType({
    "Resize": frozenset({"roi", "scales", "sizes"}), "Upsample": frozenset({"scales"}),
    "Reshape": frozenset({"shape"}), "Expand": frozenset({"shape"}), "Tile": frozenset({"repeats"}),
    "ConstantOfShape": frozenset({"input"}), "Slice": frozenset({"starts", "ends", "axes", "steps"}),
    "Split": frozenset({"split"}), "Squeeze": frozenset({"axes"}), "Unsqueeze": frozenset({"axes"}),
    "Pad": frozenset({"pads", "axes", "constant_value"}), "TopK": frozenset({"K"}), "Range": frozenset({"start", "limit", "delta"}),
    "OneHot": frozenset({"depth", "values"}), "CenterCropPad": frozenset({"shape"}), "Trilu": frozenset({"k"}),
    "CumSum": frozenset({"axis"}), "CumProd": frozenset({"axis"}), "Col2Im": frozenset({"image_shape", "block_shape"}),
    "DFT": frozenset({"dft_length", "axis"}), "STFT": frozenset({"frame_step", "frame_length"}),
    "HannWindow": frozenset({"size"}), "HammingWindow": frozenset({"size"}), "BlackmanWindow": frozenset({"size"}),
    "If": frozenset({"cond"}),
})


# Element types TVM's sort kernels (TopK) accept at run time; others fail in the artifact.
SORTABLE_DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int32", "int64")


def compile_time_operands(node: onnx.NodeProto, opset: int) -> list[str]:
    """The tensors `node` takes in a `COMPILE_TIME_SLOTS` slot (by its schema at `opset`)."""
    slots = COMPILE_TIME_SLOTS.get(node.op_type, frozenset())
    if node.op_type.startswith("Reduce"):
        slots = slots | {"axes"}
    if not slots or node.domain not in ("", "ai.onnx"):
        return []
    try:
        formal = [slot.name for slot in onnx.defs.get_schema(node.op_type, opset).inputs]
    except onnx.defs.SchemaError:
        return []
    return [name for name, slot in zip(node.input, formal) if name and slot in slots]


def _dtype_of(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))


def _declared_dims(value: onnx.ValueInfoProto, initializer: onnx.TensorProto | None) -> list[int | None]:
    """The input's dims as the model declares them (None where dynamic); an input with an
    initializer has its initializer's dims."""
    if initializer is not None:
        return [int(d) for d in initializer.dims]
    dims = value.type.tensor_type.shape.dim
    # 0 is a size, as in onnxruntime; a negative dim (-1, as some exporters write) is dynamic.
    return [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in dims]


def bind_input_shapes(
    proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, where: str,
    initializers_as_inputs: bool = False,
) -> tuple[list[TensorSpec], list[str]]:
    """Static shapes for every artifact input (see `_graph_inputs`), and notes on dynamic batch
    dims defaulted to 1.

    A dim given in `input_shapes` must agree with a static dim in the model. A dynamic batch
    (first) dim not given defaults to 1; any other dynamic dim must be given.
    """
    given = dict(input_shapes or {})
    inputs = _graph_inputs(proto, initializers_as_inputs)
    initializers = {init.name: init for init in proto.graph.initializer}
    names = [vi.name for vi in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise QCompilerError(
            f"{where}: unknown input name(s) {', '.join(map(repr, unknown))}: the model's inputs are {', '.join(map(repr, names))}"
        )
    specs, notes = [], []
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise QCompilerError(f"{where}: input {vi.name!r} is not a tensor; only tensor inputs are supported")
        dims = vi.type.tensor_type.shape.dim
        model_dims = _declared_dims(vi, initializers.get(vi.name))
        shown = "x".join(str(d) if d is not None else (dims[i].dim_param or "?") for i, d in enumerate(model_dims))
        if vi.name in given:
            shape = tuple(int(d) for d in given[vi.name])
            if len(shape) != len(model_dims):
                raise QCompilerError(
                    f"{where}: input {vi.name!r} has rank {len(model_dims)} ({shown}), "
                    f"but the given shape {'x'.join(map(str, shape))} has rank {len(shape)}"
                )
            for axis, (want, got) in enumerate(zip(model_dims, shape)):
                if want is not None and want != got:
                    raise QCompilerError(
                        f"{where}: input {vi.name!r} dim {axis} is {want} in the model ({shown}), "
                        f"but the given shape has {got}"
                    )
        else:
            if None in model_dims[1:]:
                raise QCompilerError(
                    f"{where}: input {vi.name!r} has dynamic dims beyond the batch axis ({shown}): "
                    f"bind them with --input-shape {vi.name}=DIMS (input_shapes= in Python)"
                )
            shape = tuple(d if d is not None else 1 for d in model_dims)
            if None in model_dims:
                notes.append(
                    f"input {vi.name!r} has dynamic dims ({shown}); using {'x'.join(map(str, shape))} "
                    f"(set with --input-shape {vi.name}=...)"
                )
        specs.append(TensorSpec(vi.name, shape, _dtype_of(vi)))
    return specs, notes


def _static_copy(proto: onnx.ModelProto, inputs: Sequence[TensorSpec]) -> onnx.ModelProto:
    """A copy of the model whose graph inputs are exactly `inputs`, with their bound static shapes.

    Every other graph input has an initializer (see `_graph_inputs`) and is dropped from the
    inputs, so that it is a constant to shape inference, folding and TVM's importer alike; an
    initializer of a name in `inputs` is dropped, so that the input is not mistaken for a constant.
    """
    static = onnx.ModelProto()
    static.CopyFrom(proto)
    for index, node in enumerate(static.graph.node):
        node.name = node_label(node, index)  # before folding removes nodes: labels stay as in the model
    by_name = {spec.name: spec for spec in inputs}
    kept = [vi for vi in static.graph.input if vi.name in by_name]
    if len(kept) < len(static.graph.input):
        # The checker requires IR >= 4 for initializers that are not graph inputs.
        static.ir_version = max(static.ir_version, 4)
    del static.graph.input[:]
    static.graph.input.extend(kept)
    weights = [init for init in static.graph.initializer if init.name not in by_name]
    del static.graph.initializer[:]
    static.graph.initializer.extend(weights)
    for vi in static.graph.input:
        spec = by_name[vi.name]
        vi.type.tensor_type.shape.Clear()
        vi.type.tensor_type.shape.SetInParent()  # a scalar keeps its (empty) shape: rank 0, not unknown
        for size in spec.shape:
            vi.type.tensor_type.shape.dim.add().dim_value = size
    # Stale intermediate shapes (with symbolic dims) would shadow the freshly inferred ones; output
    # dims are inferred afresh too (declared ones may be symbolic), to check the import against.
    del static.graph.value_info[:]
    for out in static.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()
    return static


_VAR_NAME_UNSAFE = re.compile(r"[^0-9A-Za-z_]")


def relax_var_name(node_name: str) -> str:
    """The Relax variable name used for an ONNX node's result (a valid identifier)."""
    name = _VAR_NAME_UNSAFE.sub("_", node_name)
    return name if name and not name[0].isdigit() else f"n_{name}"


def _clip_as_relax_clip(inputs, attrs):
    """`relax.clip` for a float Clip with constant scalar bounds (TVM's converter emits opaque
    TE maximum/minimum kernels, which later passes cannot see through); None otherwise."""
    from tvm import relax

    x = inputs[0]
    if not isinstance(getattr(x, "ty", None), relax.TensorType) or not str(x.ty.dtype).startswith("float"):
        return None
    bounds = []
    for index, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        bound = inputs[index] if len(inputs) > index else None
        if bound is None:
            bounds.append(float(attrs.get(key, default)))
            continue
        if not isinstance(bound, Constant):
            return None
        value = constant_value(bound)
        if value.size != 1:
            return None
        value = float(value.reshape(()))
        bounds.append(default if np.isnan(value) else value)
    return relax.op.clip(x, max(bounds[0], -3.4e38), min(bounds[1], 3.4e38))


def _in_stash_type(x, attrs):
    """(x in the normalization's stash type, the axes [axis, rank), stash dtype, x's dtype): what
    LayerNormalization and RMSNormalization's function bodies compute their statistics in."""
    from tvm import relax

    rank = len(x.ty.shape)
    axis = int(attrs.get("axis", -1))
    axes = list(range(axis + rank if axis < 0 else axis, rank))
    dtype = str(x.ty.dtype)
    stash = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs.get("stash_type", onnx.TensorProto.FLOAT)))))
    return (x if stash == dtype else relax.op.astype(x, stash)), axes, stash, dtype


def _layer_norm_with_statistics(inputs, attrs):
    """LayerNormalization with all three outputs (Y, Mean, InvStdDev), as ONNX's function body
    computes them: statistics over axes [axis, rank) in the stash type (float32 unless
    `stash_type` says otherwise), kept as dims of size 1; Y = cast(D · InvStdDev) · Scale + B."""
    from tvm import relax

    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    xs, axes, stash, dtype = _in_stash_type(x, attrs)
    mean = relax.op.mean(xs, axes, keepdims=True)
    centered = relax.op.subtract(xs, mean)
    variance = relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True)
    epsilon = relax.const(float(attrs.get("epsilon", 1e-5)), stash)
    inv_std = relax.op.divide(relax.const(1.0, stash), relax.op.sqrt(relax.op.add(variance, epsilon)))
    normalized = relax.op.multiply(centered, inv_std)
    y = relax.op.multiply(normalized if stash == dtype else relax.op.astype(normalized, dtype), scale)
    if bias is not None:
        y = relax.op.add(y, bias)
    return relax.Tuple([y, mean, inv_std])


def _rms_normalization(inputs, attrs):
    """RMSNormalization (opset 23) as ONNX's function body: Y = cast(X / √(mean(X²) + ε)) · Scale,
    the mean over axes [axis, rank) in the stash type."""
    from tvm import relax

    x, scale = inputs[0], inputs[1]
    xs, axes, stash, dtype = _in_stash_type(x, attrs)
    mean_square = relax.op.mean(relax.op.multiply(xs, xs), axes, keepdims=True)
    epsilon = relax.const(float(attrs.get("epsilon", 1e-5)), stash)
    normalized = relax.op.divide(xs, relax.op.sqrt(relax.op.add(mean_square, epsilon)))
    return relax.op.multiply(normalized if stash == dtype else relax.op.astype(normalized, dtype), scale)


VARIADIC_ELEMENTWISE = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}


def _variadic_pairwise(bb, op_name: str, inputs):
    """ONNX's variadic Max, Min, Sum and Mean folded pairwise, each step broadcasting as numpy:
    one elementwise op per extra input (Mean then divides by the count). TVM's converter instead
    broadcasts every input to the output's shape, stacks the copies and reduces over the stack,
    which moves each input twice and leaves the layout pass a stack it cannot keep channels-last."""
    from tvm import relax

    binary = getattr(relax.op, VARIADIC_ELEMENTWISE[op_name])
    result = inputs[0]
    for operand in inputs[1:]:
        result = bb.normalize(binary(result, operand))
    if op_name == "Mean":
        result = relax.op.divide(result, relax.const(len(inputs), str(result.ty.dtype)))
    return result


def _float16_matmul(inputs):
    """A float16 MatMul with float32 sums, rounded once (as numpy and onnxruntime compute it;
    TVM's sums a float16 product in float16). None for other dtypes."""
    from tvm import relax

    a, b = inputs[:2]
    if not all(isinstance(getattr(x, "ty", None), relax.TensorType) and str(x.ty.dtype) == "float16" for x in (a, b)):
        return None
    return relax.op.astype(relax.op.matmul(relax.op.astype(a, "float32"), relax.op.astype(b, "float32")), "float16")


def _half_softmax(bb, x, axis: int):
    """Softmax (opset 13+) of float16 as ONNX's reference computes it: each step in float32,
    rounded to float16 (TVM's float16 softmax differs by a float16 step); None for other dtypes.
    bfloat16 is refused: TVM computes it in float32 and drops the roundings between fused steps."""
    from tvm import relax

    dtype = str(x.ty.dtype) if isinstance(getattr(x, "ty", None), relax.TensorType) else ""
    if dtype == "bfloat16":
        raise QCompilerError("bfloat16 Softmax is not supported (TVM computes bfloat16 in float32 without "
                             "rounding between steps: results differ from ONNX's by a bfloat16 step)")
    if dtype != "float16":
        return None

    def rounded(value):
        return bb.normalize(relax.op.astype(relax.op.astype(value, "float16"), "float32"))

    wide = bb.normalize(relax.op.astype(x, "float32"))
    exps = rounded(relax.op.exp(rounded(relax.op.subtract(wide, relax.op.max(wide, axis=[axis], keepdims=True)))))
    total = rounded(relax.op.sum(exps, axis=[axis], keepdims=True))
    return relax.op.astype(relax.op.divide(exps, total), "float16")


def _mixed_power(inputs):
    """Pow of integers (TVM's `power` takes floats only: computed in float64 and rounded back,
    exact while |result| < 2^53) or of a float base with an exponent of another type (converted
    to the base's); None when both are the same float type."""
    from tvm import relax

    base, exponent = inputs[:2]
    if not all(isinstance(getattr(x, "ty", None), relax.TensorType) for x in (base, exponent)):
        return None
    dtype, exponent_dtype = str(base.ty.dtype), str(exponent.ty.dtype)
    if dtype.startswith(("int", "uint")):
        wide = relax.op.power(relax.op.astype(base, "float64"), relax.op.astype(exponent, "float64"))
        return relax.op.astype(relax.op.round(wide), dtype)
    if exponent_dtype != dtype:
        return relax.op.power(base, relax.op.astype(exponent, dtype))
    return None


def _infinite_extremes(bb, op_name: str, result):
    """ReduceMax (ReduceMin) of floats with −∞ (+∞) where TVM's reduction returned its start
    value, the lowest (highest) finite float: every element −∞ (+∞), or none at all, where ONNX
    says ∓∞. (A true extreme exactly at the finite limit reads as infinite too.)"""
    import numpy as np
    from tvm import relax

    result = bb.normalize(result)
    dtype = str(result.ty.dtype) if isinstance(result.ty, relax.TensorType) else ""
    if dtype not in ("float16", "float32", "float64"):
        return result
    info = np.finfo(dtype)
    limit, infinite = (info.min, -np.inf) if op_name == "ReduceMax" else (info.max, np.inf)
    return relax.op.where(relax.op.equal(result, relax.const(limit, dtype)), relax.const(infinite, dtype), result)


def _isinf_one_sign(inputs, attrs):
    """IsInf with detect_positive=0 or detect_negative=0 (TVM's converter ignores both); None
    when both are set, the case TVM's `isinf` covers."""
    from tvm import relax

    positive, negative = int(attrs.get("detect_positive", 1)), int(attrs.get("detect_negative", 1))
    if positive and negative:
        return None
    x = inputs[0]
    infinite = relax.op.isinf(x)
    zero = relax.const(0, str(x.ty.dtype))
    if positive:
        return relax.op.logical_and(infinite, relax.op.greater(x, zero))
    if negative:
        return relax.op.logical_and(infinite, relax.op.less(x, zero))
    return relax.op.logical_and(infinite, relax.op.logical_not(infinite))


def _float_floor_mod(inputs, attrs):
    """Mod with fmod=0 on floats as numpy's `mod` (which ONNX specifies): TVM's floor_mod computes
    a − ⌊a/b⌋·b, NaN for a finite a and an infinite b, where the result is a (a of b's sign, or
    0) or b; and a zero result takes b's sign. None for fmod=1 or integers (TVM's is right)."""
    from tvm import relax

    a, b = inputs[0], inputs[1]
    if int(attrs.get("fmod", 0)) or not str(a.ty.dtype).startswith(("float", "bfloat")):
        return None
    zero = relax.const(0, str(a.ty.dtype))
    rest = relax.op.floor_mod(a, b)
    finite_a = relax.op.logical_not(relax.op.logical_or(relax.op.isinf(a), relax.op.isnan(a)))
    same_sign = relax.op.logical_not(relax.op.logical_xor(relax.op.less(a, zero), relax.op.less(b, zero)))
    keeps_a = relax.op.logical_or(same_sign, relax.op.equal(a, zero))
    by_infinity = relax.op.where(keeps_a, a, b)
    result = relax.op.where(relax.op.logical_and(finite_a, relax.op.isinf(b)), by_infinity, rest)
    return relax.op.where(relax.op.equal(result, zero), relax.op.multiply(zero, relax.op.sign(b)), result)


def _one_hot(inputs, attrs):
    """OneHot with a constant depth (a scalar or the 1-element tensor exporters write) and constant
    [off, on] values: out = on where index (+ depth if negative) equals the position along `axis`,
    else off; an index out of [-depth, depth) gives a row of off. TVM's converter takes only a
    scalar depth."""
    from tvm import relax

    indices, depth, values = inputs
    if not isinstance(depth, Constant) or not isinstance(values, Constant):
        raise QCompilerError("OneHot needs depth and values known at compile time")
    size = int(constant_value(depth).reshape(-1)[0])
    off, on = constant_value(values).reshape(-1)[:2]
    rank = len(shape_of(indices)) + 1
    axis = int(attrs.get("axis", -1)) % rank
    index = relax.op.astype(indices, "int64")
    index = relax.op.where(relax.op.less(index, relax.const(0, "int64")),
                           relax.op.add(index, relax.const(size, "int64")), index)
    positions = np.arange(size, dtype=np.int64).reshape([size] + [1] * (rank - 1 - axis))
    hit = relax.op.equal(relax.op.expand_dims(index, axis), const(positions))
    dtype = str(values.ty.dtype)
    return relax.op.where(hit, const(np.asarray(on), dtype), const(np.asarray(off), dtype))


def _hyperbolic(op_name, inputs):
    """Cosh and Sinh as (eˣ ± e⁻ˣ) / 2: TVM's converter emits intrinsics its LLVM code
    generator does not know (`tirx.cosh`, `tirx.sinh`)."""
    from tvm import relax

    x = inputs[0]
    grow, decay = relax.op.exp(x), relax.op.exp(relax.op.negative(x))
    both = relax.op.add(grow, decay) if op_name == "Cosh" else relax.op.subtract(grow, decay)
    return relax.op.multiply(both, relax.const(0.5, str(x.ty.dtype)))


def _out_of_range_shifts(inputs, attrs, shifted):
    """BitShift's result where the shift is negative or at least the bit width replaced as ONNX
    specifies: 0, or for a right shift of a signed integer its sign (-1 or 0); TVM's converter
    leaves those lanes to the machine's shift instruction."""
    from tvm import relax

    x, shift = inputs[0], inputs[1]
    dtype, shift_dtype = str(x.ty.dtype), str(shift.ty.dtype)
    bits = np.iinfo(np.dtype(dtype)).bits
    out_of_range = relax.op.logical_or(relax.op.less(shift, relax.const(0, shift_dtype)),
                                       relax.op.greater_equal(shift, relax.const(bits, shift_dtype)))
    fill = relax.const(0, dtype)
    direction = attrs.get("direction", b"")
    if (direction.decode() if isinstance(direction, bytes) else direction) == "RIGHT" and dtype.startswith("int"):
        fill = relax.op.where(relax.op.less(x, fill), relax.const(-1, dtype), fill)
    return relax.op.where(out_of_range, fill, shifted)


class _OneNode:
    """A stand-in graph holding one node: TVM's `_construct_nodes` reads only `graph.node`."""

    def __init__(self, node: onnx.NodeProto):
        self.node = [node]


def _constant_input_hint(node: onnx.NodeProto, opset: int, input_names: set[str]) -> str:
    """For a node refused while it takes a graph input where a compile-time value is needed
    (`compile_time_operands`): how to fix that input; else ''."""
    fed = [name for name in compile_time_operands(node, opset) if name in input_names]
    if not fed:
        return ""
    shown = ", ".join(repr(name) for name in fed)
    return (f" (its input{'s' if len(fed) > 1 else ''} {shown} {'are graph inputs' if len(fed) > 1 else 'is a graph input'}: "
            f"if fixed, give {'them' if len(fed) > 1 else 'it'} at compile time with --constant-input NAME=FILE.npy)")


def _one_line(err: BaseException) -> str:
    """The last non-empty line of an exception's message (TVM puts its reason there), shortened."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[-1] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def _import(static: onnx.ModelProto, inputs: Sequence[TensorSpec], opset: int, where: str):
    """Run TVM's ONNX importer, binding each node's result to a variable named after the node.

    A node TVM cannot convert raises a `QCompilerError` naming the node, its op and TVM's reason.
    """
    import contextlib
    import io

    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    node_names: dict[str, str] = {}
    node_op_types: dict[str, str] = {}
    input_names = {spec.name for spec in inputs}

    class TracingImporter(onnx_frontend.ONNXGraphImporter):
        current: onnx.NodeProto | None = None

        def _construct_nodes(self, graph):
            for node in graph.node:
                self.current = node
                unknown = [name for name in node.input if name and name not in self._nodes]
                if unknown:
                    raise QCompilerError(
                        f"{where}: node {node.name!r} ({node.op_type}): input {unknown[0]!r} is not a graph "
                        f"input, an initializer or the output of an earlier node"
                    )
                if node.op_type == "If" and not isinstance(self._nodes[node.input[0]], Constant):
                    raise QCompilerError(
                        f"{where}: node {node.name!r} (If) cannot be imported: its condition is computed at run "
                        f"time, and data-dependent control flow is not supported (a condition known at compile "
                        f"time folds){_constant_input_hint(node, opset, input_names)}")
                try:
                    super()._construct_nodes(_OneNode(node))
                except QCompilerError:
                    raise
                except Exception as err:  # the importer raises many exception types
                    raise QCompilerError(
                        f"{where}: node {node.name!r} ({node.op_type}) cannot be imported: {_one_line(err)}"
                        f"{_constant_input_hint(node, opset, input_names)}"
                    ) from err

        def _check_for_unsupported_ops(self, graph):
            """TVM's check, minus the ops converted here (unsupported_ops has named the rest)."""
            ours = onnx.GraphProto()
            ours.node.extend(node for node in graph.node if node.op_type not in _QCOMPILER_CONVERTED_OPS)
            super()._check_for_unsupported_ops(ours)

        def _convert_here(self, op_name, inputs, attrs, opset):
            """The ops qcompiler converts itself (or differently from TVM's converter), or None
            for TVM's converter to do."""
            if op_name == "Clip":
                return _clip_as_relax_clip(inputs, attrs)
            if op_name == "LayerNormalization" and self.current is not None and any(self.current.output[1:]):
                return _layer_norm_with_statistics(inputs, attrs)
            if op_name == "RMSNormalization":
                return _rms_normalization(inputs, attrs)
            if op_name in GATES:
                return convert_recurrent(op_name, list(inputs), attrs)
            if op_name == "QLinearConv":
                return qlinear_conv(self.bb, list(inputs), lambda conv_inputs: onnx_frontend.ONNXGraphImporter._convert_operator(
                    self, "Conv", conv_inputs, attrs, opset))
            if op_name == "QLinearMatMul":
                return qlinear_matmul(self.bb, list(inputs))
            if op_name == "MatMulInteger":
                return matmul_integer(self.bb, list(inputs))
            if op_name == "ConvInteger":
                return conv_integer(self.bb, list(inputs), attrs)
            if op_name in ("QuantizeLinear", "DequantizeLinear") and int(attrs.get("block_size", 0)):
                return convert_blocked(self.bb, op_name, list(inputs), attrs)
            if op_name == "TopK" and str(inputs[0].ty.dtype) not in SORTABLE_DTYPES:
                raise QCompilerError(f"TopK of {inputs[0].ty.dtype} is not supported (TVM's sort kernel takes "
                                     f"{', '.join(SORTABLE_DTYPES)})")
            if op_name == "Resize" and opset >= 11:
                return convert_resize(self.bb, list(inputs), attrs)
            if op_name == "Attention":
                return convert_attention(self.bb, list(inputs), attrs, len(self.current.output))
            if op_name == "OneHot":
                return _one_hot(list(inputs), attrs)
            if op_name in ("Cosh", "Sinh"):
                return _hyperbolic(op_name, inputs)
            if op_name == "Mod":
                return _float_floor_mod(inputs, attrs)
            if op_name == "IsInf":
                return _isinf_one_sign(inputs, attrs)
            if op_name == "MatMul":
                return _float16_matmul(inputs)
            if op_name == "Pow":
                return _mixed_power(inputs)
            if op_name == "Softmax" and opset >= 13:
                return _half_softmax(self.bb, inputs[0], int(attrs.get("axis", -1)))
            if op_name in VARIADIC_ELEMENTWISE and inputs and all(
                    x is not None and isinstance(getattr(x, "ty", None), relax.TensorType) for x in inputs):
                return _variadic_pairwise(self.bb, op_name, list(inputs))
            return None

        def _convert_operator(self, op_name, inputs, attrs, opset):
            try:
                result = self._convert_here(op_name, inputs, attrs, opset)
            except QCompilerError as err:  # a one-line reason: with the node and its op
                node = self.current.name if self.current is not None else ""
                raise QCompilerError(f"{where}: node {node!r} ({op_name}) cannot be imported: {err}") from None
            if result is None:
                result = super()._convert_operator(op_name, inputs, attrs, opset)
                if op_name == "BitShift":
                    result = self.bb.normalize(_out_of_range_shifts(inputs, attrs, self.bb.emit(result)))
                elif op_name in ("ReduceMax", "ReduceMin"):
                    result = self.bb.normalize(_infinite_extremes(self.bb, op_name, result))
            else:
                result = self.bb.normalize(result)
            node_name = attrs["tvm_custom"]["name"]
            if isinstance(result, relax.Call) and node_name:
                var_name = relax_var_name(node_name)
                node_names[var_name] = node_name
                result = self.bb.emit(result, name_hint=var_name)
            elif isinstance(result, relax.Tuple) and result.fields and isinstance(result.fields[0], relax.Var) \
                    and node_name and result.fields[0].name not in node_names:
                # e.g. LayerNormalization: (Y, placeholders for its optional outputs), Y bound by
                # TVM's converter under a name of its own: that binding is the node's
                node_names[result.fields[0].name] = node_name
            return result

    for index, node in enumerate(static.graph.node):
        node.name = node_label(node, index)  # named by `_static_copy`; a node folding added may not be
        node_op_types[node.name] = node.op_type
    importer = TracingImporter(
        {spec.name: list(spec.shape) for spec in inputs},
        {spec.name: spec.dtype for spec in inputs},
        keep_params_in_input=False,
        sanitize=True,
    )
    try:
        # TVM prints every failing node's inputs to stdout before re-raising: the error says it all.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = importer.from_onnx(static.graph, opset)
    except QCompilerError:
        raise
    except Exception as err:  # the importer raises many exception types
        raise QCompilerError(f"{where}: ONNX import failed: {_one_line(err)}") from err
    return mod, node_names, node_op_types


def _onnx_output_types(proto: onnx.ModelProto) -> dict[str, tuple[str | None, tuple[int | None, ...] | None]]:
    """Output name → (dtype, dims) as ONNX's shape inference gives them (None where unknown)."""
    types = {}
    for out in proto.graph.output:
        tensor = out.type.tensor_type
        dtype = _dtype_of(out) if out.type.HasField("tensor_type") and tensor.elem_type else None
        dims = None
        if out.type.HasField("tensor_type") and tensor.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor.shape.dim)
        types[out.name] = (dtype, dims)
    return types


def _output_specs(mod, proto: onnx.ModelProto, where: str) -> list[TensorSpec]:
    """Static output specs, read from the imported function's return type.

    Each must be static and agree with what ONNX's shape inference says of that output (dtype,
    rank and every dim it knows): a disagreement means TVM's importer converted the producing
    node into something other than what ONNX specifies, and is refused naming that node.
    """
    from tvm import relax

    ret = mod["main"].ret_ty if hasattr(mod["main"], "ret_ty") else mod["main"].ret_struct_info
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    names = [out.name for out in proto.graph.output]
    producers = {out: node for node in proto.graph.node for out in node.output}
    if len(fields) != len(names):
        made_by = ", ".join(f"{name!r} of node {producers[name].name!r} ({producers[name].op_type})"
                            if name in producers else repr(name) for name in names)
        raise QCompilerError(
            f"{where}: the imported function returns {len(fields)} values for {len(names)} outputs ({made_by}): "
            f"only tensor outputs are supported"
        )
    onnx_types = _onnx_output_types(proto)
    kinds = {out.name: out.type.WhichOneof("value") for out in proto.graph.output}
    specs = []
    for name, ty in zip(names, fields):
        node = producers.get(name)
        source = f"output {name!r}" + (f" of node {node.name!r} ({node.op_type})" if node is not None else "")
        if kinds.get(name) not in (None, "tensor_type"):
            raise QCompilerError(f"{where}: {source} is a {kinds[name].removesuffix('_type')} in ONNX; only tensor "
                                 f"outputs are supported")
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise QCompilerError(f"{where}: {source} is not a tensor of known shape after import")
        try:
            shape = tuple(int(d) for d in ty.shape.values)
        except (TypeError, ValueError):
            raise QCompilerError(
                f"{where}: {source} has a data-dependent shape {ty.shape}; only static shapes are supported"
            ) from None
        spec = TensorSpec(name, shape, str(ty.dtype))
        want_dtype, want_dims = onnx_types.get(name, (None, None))
        agrees = (want_dtype is None or want_dtype == spec.dtype) and (
            want_dims is None or (len(want_dims) == len(shape) and all(w in (None, d) for w, d in zip(want_dims, shape)))
        )
        if not agrees:
            want = ",".join("?" if d is None else str(d) for d in want_dims) if want_dims is not None else "?"
            raise QCompilerError(
                f"{where}: {source} imports as {spec.describe()}, but ONNX specifies {want_dtype or '?'}[{want}]: "
                f"TVM's importer does not convert this {node.op_type if node is not None else 'output'} as ONNX specifies"
            )
        specs.append(spec)
    return specs


def load_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    on_note=None,
    initializers_as_inputs: bool = False,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
) -> ImportedModel:
    """Load, check and import an ONNX model with every input shape bound to static dims.

    `on_note(str)` receives notes such as dynamic dims defaulted to 1. A graph input that has
    an initializer (every weight, in exports for ONNX IR < 4) is a constant embedded in the
    module; with `initializers_as_inputs` it stays an input of the module instead (which the
    caller must then feed, e.g. with the initializer's value or a replacement of its shape).
    Each graph input named in `constant_inputs` is that value, embedded (`with_constant_inputs`).
    """
    proto, data, path = read_model(model)
    where = path or "model"
    constant_inputs = dict(constant_inputs or {})
    if constant_inputs:
        proto = with_constant_inputs(proto, constant_inputs, where)
    if proto.ir_version < 3:
        raise QCompilerError(f"{where}: ONNX IR version {proto.ir_version} is too old: expected 3 or newer")
    listed = _unsupported_message(proto)
    if listed is not None:
        raise QCompilerError(f"{where}: unsupported ONNX ops: {listed}")
    dtype_use = unsupported_dtype(proto)
    if dtype_use is not None:
        raise QCompilerError(
            f"{where}: {dtype_use}: not supported (strings, complex numbers, floats under 16 bits and "
            f"integers under 8 bits)"
        )
    checked = _check(proto, where)
    inputs, notes = bind_input_shapes(checked, input_shapes, where, initializers_as_inputs)
    for note in notes:
        if on_note is not None:
            on_note(note)
    opset = _opset(checked)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise QCompilerError(f"{where}: the model declares ONNX opset {opset}; the newest this installation knows is "
                             f"{newest} (onnx {onnx.__version__})")
    static = fold_shape_computations(_check(_static_copy(checked, inputs), where), opset)
    static = fold_batchnorm_into_conv(static)
    mod, node_names, node_op_types = _import(static, inputs, opset, where)
    outputs = _output_specs(mod, static, where)
    return ImportedModel(
        mod=mod,
        onnx_model=proto,
        inputs=inputs,
        outputs=outputs,
        source_sha256=sha256_of(data),
        source_path=path,
        opset=opset,
        node_names=node_names,
        imported_graph=static,
        node_op_types=node_op_types,
        constant_inputs={name: sha256_of(np.ascontiguousarray(value).tobytes())
                         for name, value in constant_inputs.items()},
    )


def onnx_node_of(imported: ImportedModel) -> dict:
    """Map every bound `relax.Var` of `main` to the name of the ONNX node that produced it.

    Each node's conversion emits a contiguous run of bindings ending in the one named after
    the node, so a binding belongs to the first node-named binding at or after it.
    """
    from tvm import relax

    owner = {}
    pending = []
    for block in imported.mod["main"].body.blocks:
        for binding in block.bindings:
            pending.append(binding.var)
            name = binding.var.name
            if name in imported.node_names and isinstance(binding.value, relax.Call):
                for var in pending:
                    owner[var] = imported.node_names[name]
                pending = []
    return owner
