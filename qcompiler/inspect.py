"""`qcompiler inspect`: what is in an ONNX model or an exported artifact."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import onnx

from .disasm import BF16_MAC, DOT_PRODUCT_MAC, compute_kernel_usage
from .elf import ElfFile
from .errors import QCompilerError
from .frontend import read_model
from .metadata import ArtifactMetadata, metadata_path
from .signature import read_signature


def onnx_graph(proto: onnx.ModelProto) -> nx.DiGraph:
    """Nodes of the ONNX graph as a DAG; an edge u → v when v consumes a tensor u produces."""
    graph = nx.DiGraph()
    producer = {}
    for index, node in enumerate(proto.graph.node):
        key = node.name or f"{node.op_type}_{index}"
        graph.add_node(key, op_type=node.op_type)
        for out in node.output:
            producer[out] = key
    for index, node in enumerate(proto.graph.node):
        key = node.name or f"{node.op_type}_{index}"
        for tensor in node.input:
            if tensor in producer:
                graph.add_edge(producer[tensor], key)
    return graph


@dataclass
class ModelSummary:
    """Op-type counts, parameter bytes, and the DAG's depth (longest path) and width (widest level)."""

    op_counts: Counter
    parameter_count: int
    parameter_bytes: int
    depth: int
    width: int
    inputs: list[str]
    outputs: list[str]

    def render(self) -> str:
        lines = [f"{'op type':<24}{'count':>7}"]
        lines += [f"{op:<24}{n:>7}" for op, n in self.op_counts.most_common()]
        lines.append(f"{'total':<24}{sum(self.op_counts.values()):>7}")
        lines.append(f"parameters: {self.parameter_count:,} ({self.parameter_bytes / 1e6:.2f} MB)")
        lines.append(f"graph depth: {self.depth} nodes on the longest path; width: {self.width} nodes at the widest level")
        lines.append(f"inputs: {', '.join(self.inputs)}")
        lines.append(f"outputs: {', '.join(self.outputs)}")
        return "\n".join(lines)


def _parameter_sizes(proto: onnx.ModelProto) -> tuple[int, int]:
    count = nbytes = 0
    tensors = list(proto.graph.initializer)
    tensors += [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for tensor in tensors:
        elements = int(np.prod(tensor.dims)) if tensor.dims else 1
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        count += elements
        nbytes += elements * itemsize
    return count, nbytes


def summarize_onnx(proto: onnx.ModelProto) -> ModelSummary:
    graph = onnx_graph(proto)
    levels: Counter = Counter()
    level = {}
    for node in nx.topological_sort(graph):
        level[node] = 1 + max((level[p] for p in graph.predecessors(node)), default=0)
        levels[level[node]] += 1
    count, nbytes = _parameter_sizes(proto)
    initializers = {i.name for i in proto.graph.initializer}

    def describe(vi):
        dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        return f"{vi.name} {dtype}[{','.join(dims)}]"

    return ModelSummary(
        op_counts=Counter(n.op_type for n in proto.graph.node),
        parameter_count=count,
        parameter_bytes=nbytes,
        depth=max(level.values(), default=0),
        width=max(levels.values(), default=0),
        inputs=[describe(vi) for vi in proto.graph.input if vi.name not in initializers],
        outputs=[describe(vi) for vi in proto.graph.output],
    )


def describe_artifact(so_path: Path) -> str:
    """Signature, metadata, architecture and kernel count of an exported `.so`."""
    elf = ElfFile(so_path)
    signature = read_signature(so_path)
    kernels = sorted(
        name[len("__tvm_ffi_"):]
        for name in elf.dynamic_symbols()
        if name.startswith("__tvm_ffi_") and name != "__tvm_ffi__library_bin"
    )
    kernel_kinds = Counter(re.sub(r"(?<=[a-z])\d+(?=_|$)", "", name) for name in kernels)
    lines = [f"artifact: {so_path} ({so_path.stat().st_size / 1e6:.2f} MB, ELF {elf.machine})"]
    json_path = metadata_path(so_path)
    if json_path.exists():
        meta = ArtifactMetadata.read(json_path)
        lines.append(f"target: {meta.target_preset} {meta.tvm_target}")
        lines.append(f"built with: {', '.join(f'{k} {v}' for k, v in meta.versions.items())}, onnx opset {meta.onnx_opset}")
        lines.append(f"source model sha256: {meta.source_model_sha256}")
        lines.append(f"quantization: {meta.quantization.get('mode', 'none')}")
    else:
        lines.append(f"(no {json_path.name} beside it: showing the embedded signature only)")
    lines.append(f"device: {signature.device}")
    lines += [f"input  {s.name} {s.describe()}" for s in signature.inputs]
    lines += [f"output {s.name} {s.describe()}" for s in signature.outputs]
    lines.append(f"host kernels: {len(kernels)}")
    lines += [f"  {kind:<40}{n:>5}" for kind, n in kernel_kinds.most_common()]
    if json_path.exists():
        lines += schedule_lines(meta.kernels)
    lines += _dot_product_lines(so_path, elf.machine)
    return "\n".join(lines)


def schedule_lines(kernels: dict[str, str]) -> list[str]:
    """Per kernel: where its schedule came from (a tuning record, qcompiler's default kernel for
    the op, the generic parallel loop nest, a hand-written kernel, or TVM's naive loop nest)."""
    if not kernels:
        return ["kernel schedules: not recorded (a CUDA artifact, or one built before qcompiler recorded them)"]
    counts = Counter(kernels.values())
    lines = ["kernel schedules: " + ", ".join(f"{n} {source}" for source, n in counts.most_common())]
    lines += [f"  {name[:72]:<74}{source}" for name, source in kernels.items()]
    return lines


def _dot_product_lines(so_path: Path, machine: str) -> list[str]:
    """Per conv/dense/matmul kernel: the int8 (or bfloat16) multiply-accumulate instructions its
    code contains."""
    try:
        usage = compute_kernel_usage(so_path, machine)
    except QCompilerError as err:
        return [f"int8 multiply-accumulate instructions: not checked ({err})"]
    if not usage:
        return []
    kind = "bfloat16" if any(m in BF16_MAC for _, mnemonics in usage for m in mnemonics) else "int8"
    using = sum(1 for _, mnemonics in usage if mnemonics)
    lines = [f"compute kernels using {kind} multiply-accumulate instructions: {using} of {len(usage)}"]
    for name, mnemonics in usage:
        by_isa: dict[str, list[str]] = {}
        for m in mnemonics:
            by_isa.setdefault(DOT_PRODUCT_MAC[m], []).append(m)
        isa = "; ".join(f"{', '.join(ms)} ({name})" for name, ms in by_isa.items()) if mnemonics else "none"
        lines.append(f"  {name[:60]:<62}{isa}")
    return lines


def inspect_path(path: str | Path) -> str:
    """The text `qcompiler inspect` prints for an ONNX model or a `.so` artifact."""
    path = Path(path)
    if not path.is_file():
        raise QCompilerError(f"file not found: {path}")
    if path.suffix == ".so":
        return describe_artifact(path)
    proto, _, _ = read_model(path)
    return summarize_onnx(proto).render()
