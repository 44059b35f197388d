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
from typing import Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .canonicalize import fold_batchnorm_into_conv
from .errors import QCompilerError
from .shape_folding import fold_shape_computations
from .tensor_spec import TensorSpec

# Ops handled by the importer itself rather than its converter map.
_IMPORTER_BUILTIN_OPS = frozenset({"If", "Constant"})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


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
        what = "truncated or corrupt ONNX model" if data[:1] == b"\x08" else "not an ONNX model"
        raise QCompilerError(f"{path} is a {what}: cannot parse it as ONNX protobuf ({err})") from None
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


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Every op type in the graph that the Relax ONNX importer cannot convert → its node names."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | _IMPORTER_BUILTIN_OPS
    found: dict[str, list[str]] = {}
    for index, node in enumerate(proto.graph.node):
        op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in supported:
            found.setdefault(op, []).append(node.name or f"#{index}")
    return found


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in initializers]


def _dtype_of(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))


def bind_input_shapes(
    proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, where: str
) -> tuple[list[TensorSpec], list[str]]:
    """Static shapes for every graph input, and notes on dynamic batch dims defaulted to 1.

    A dim given in `input_shapes` must agree with a static dim in the model. A dynamic batch
    (first) dim not given defaults to 1; any other dynamic dim must be given.
    """
    given = dict(input_shapes or {})
    inputs = _graph_inputs(proto)
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
        model_dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
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
    """A copy of the model whose graph inputs carry the bound static shapes."""
    static = onnx.ModelProto()
    static.CopyFrom(proto)
    by_name = {spec.name: spec for spec in inputs}
    for vi in static.graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        for dim, size in zip(vi.type.tensor_type.shape.dim, spec.shape):
            dim.Clear()
            dim.dim_value = size
    # Stale intermediate shapes (with symbolic dims) would shadow the freshly inferred ones.
    del static.graph.value_info[:]
    return static


_VAR_NAME_UNSAFE = re.compile(r"[^0-9A-Za-z_]")


def relax_var_name(node_name: str) -> str:
    """The Relax variable name used for an ONNX node's result (a valid identifier)."""
    name = _VAR_NAME_UNSAFE.sub("_", node_name)
    return name if name and not name[0].isdigit() else f"n_{name}"


def _clip_as_relax_clip(inputs, attrs):
    """`relax.clip` for a float Clip with constant scalar bounds (TVM's converter emits opaque
    TE maximum/minimum kernels, which later passes cannot see through); None otherwise."""
    import tvm
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
        if not isinstance(bound, tvm.ir.expr.Constant):
            return None
        value = bound.value.numpy() if hasattr(bound.value, "numpy") else np.asarray(bound.value)
        if value.size != 1:
            return None
        value = float(value.reshape(()))
        bounds.append(default if np.isnan(value) else value)
    return relax.op.clip(x, max(bounds[0], -3.4e38), min(bounds[1], 3.4e38))


def _import(static: onnx.ModelProto, inputs: Sequence[TensorSpec], opset: int, where: str):
    """Run TVM's ONNX importer, binding each node's result to a variable named after the node."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    node_names: dict[str, str] = {}
    node_op_types: dict[str, str] = {}

    class TracingImporter(onnx_frontend.ONNXGraphImporter):
        def _convert_operator(self, op_name, inputs, attrs, opset):
            result = _clip_as_relax_clip(inputs, attrs) if op_name == "Clip" else None
            if result is None:
                result = super()._convert_operator(op_name, inputs, attrs, opset)
            else:
                result = self.bb.normalize(result)
            node_name = attrs["tvm_custom"]["name"]
            if isinstance(result, relax.Call) and node_name:
                var_name = relax_var_name(node_name)
                node_names[var_name] = node_name
                result = self.bb.emit(result, name_hint=var_name)
            return result

    for index, node in enumerate(static.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        node_op_types[node.name] = node.op_type
    importer = TracingImporter(
        {spec.name: list(spec.shape) for spec in inputs},
        {spec.name: spec.dtype for spec in inputs},
        keep_params_in_input=False,
        sanitize=True,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importer.from_onnx(static.graph, opset)
    except Exception as err:  # the importer raises many exception types
        message = str(err).strip().splitlines()
        raise QCompilerError(
            f"{where}: ONNX import failed: {type(err).__name__}: {message[-1] if message else ''}"
        ) from err
    return mod, node_names, node_op_types


def _output_specs(mod, proto: onnx.ModelProto, where: str) -> list[TensorSpec]:
    """Static output specs, read from the imported function's return type."""
    from tvm import relax

    ret = mod["main"].ret_ty if hasattr(mod["main"], "ret_ty") else mod["main"].ret_struct_info
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    names = [out.name for out in proto.graph.output]
    if len(fields) != len(names):
        raise QCompilerError(f"{where}: the imported function returns {len(fields)} values for {len(names)} outputs")
    specs = []
    for name, ty in zip(names, fields):
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise QCompilerError(f"{where}: output {name!r} is not a tensor of known shape after import")
        try:
            shape = tuple(int(d) for d in ty.shape.values)
        except (TypeError, ValueError):
            raise QCompilerError(
                f"{where}: output {name!r} has a data-dependent shape {ty.shape}; only static shapes are supported"
            ) from None
        specs.append(TensorSpec(name, shape, str(ty.dtype)))
    return specs


def load_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    on_note=None,
) -> ImportedModel:
    """Load, check and import an ONNX model with every input shape bound to static dims.

    `on_note(str)` receives notes such as dynamic dims defaulted to 1.
    """
    proto, data, path = read_model(model)
    where = path or "model"
    if proto.ir_version < 3:
        raise QCompilerError(f"{where}: ONNX IR version {proto.ir_version} is too old: expected 3 or newer")
    missing_ops = unsupported_ops(proto)
    if missing_ops:
        listed = "; ".join(
            f"{op} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {', '.join(nodes[:3])}{', ...' if len(nodes) > 3 else ''})"
            for op, nodes in sorted(missing_ops.items())
        )
        raise QCompilerError(f"{where}: unsupported ONNX ops: {listed}")
    checked = _check(proto, where)
    inputs, notes = bind_input_shapes(checked, input_shapes, where)
    for note in notes:
        if on_note is not None:
            on_note(note)
    opset = _opset(checked)
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
        node_op_types=node_op_types,
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
