"""Weights outside the code: lifted out of `main` at compile time, stored in the artifact's
`.qc_weights` section, read once by the runtime and passed to `main` after the model's inputs.

Why: a constant left in a Relax module is serialized into the library's executable blob, which
is mapped with the code and then deserialized into a second copy (and a transient third) while
the library loads. A non-allocated ELF section is not mapped by the dynamic loader at all: the
runtime reads it from the bytes it already read for the hash, copies each tensor once to its
device, and maps the code from a copy of the file in which the section is a hole.

Section layout (little-endian), written by `pack`, read by `parse` and by deploy/qc_runtime.c::

    header   8s magic b"QCWEIGHT", u32 version (1), u32 count
    entries  count x (u64 offset, u64 nbytes, u8 DLPack type code, u8 bits, u16 lanes,
             u32 ndim, i64 dims[8])             offset: from the start of the section
    data     each tensor at its offset, aligned to 64 bytes

`main`'s parameters are the model's inputs followed by the weights in entry order.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

from .errors import QCompilerError

SECTION = ".qc_weights"
MAGIC = b"QCWEIGHT"
VERSION = 1
MAX_NDIM = 8
ALIGNMENT = 64
MIN_LIFTED_BYTES = 64  # smaller constants (scalars, tiny shape tables) stay in the executable

_HEADER = struct.Struct("<8sII")
_ENTRY = struct.Struct(f"<QQBBHI{MAX_NDIM}q")


@dataclass(frozen=True)
class WeightEntry:
    """One tensor of the section: where its bytes are (relative to the section) and what they are."""

    offset: int
    nbytes: int
    type_code: int  # DLPack: 0 int, 1 uint, 2 float, 4 bfloat, 6 bool
    bits: int
    lanes: int
    shape: tuple[int, ...]

    @property
    def dtype(self) -> str:
        """The TVM dtype string ("float32", "int8", "bfloat16", "bool", ...)."""
        if self.type_code == 6:
            return "bool"
        name = {0: "int", 1: "uint", 2: "float", 4: "bfloat"}[self.type_code]
        return f"{name}{self.bits}" + (f"x{self.lanes}" if self.lanes != 1 else "")


def _dlpack_type(dtype: str) -> tuple[int, int, int]:
    import tvm

    t = tvm.DataType(dtype)
    return int(t.type_code), int(t.bits), int(t.lanes)


def pack(tensors: list[tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """The section's bytes for `tensors`, each (TVM dtype, shape, raw C-order bytes)."""
    table_end = _HEADER.size + _ENTRY.size * len(tensors)
    offset = _align(table_end)
    entries, chunks = [], []
    for dtype, shape, raw in tensors:
        if len(shape) > MAX_NDIM:
            raise QCompilerError(f"a weight of rank {len(shape)} cannot be stored (at most {MAX_NDIM} dims)")
        code, bits, lanes = _dlpack_type(dtype)
        dims = list(shape) + [0] * (MAX_NDIM - len(shape))
        entries.append(_ENTRY.pack(offset, len(raw), code, bits, lanes, len(shape), *dims))
        chunks.append((offset, raw))
        offset = _align(offset + len(raw))
    out = bytearray(offset)
    out[: _HEADER.size] = _HEADER.pack(MAGIC, VERSION, len(tensors))
    for i, entry in enumerate(entries):
        start = _HEADER.size + i * _ENTRY.size
        out[start : start + _ENTRY.size] = entry
    for start, raw in chunks:
        out[start : start + len(raw)] = raw
    return bytes(out)


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def parse(section: bytes | memoryview, where: str) -> list[WeightEntry]:
    """The entries of a `.qc_weights` section, every one checked to lie inside it and to hold
    exactly its shape's bytes; a `QCompilerError` naming `where` otherwise."""

    def corrupt(why: str) -> QCompilerError:
        return QCompilerError(f"{where}: its {SECTION} section is corrupt ({why})")

    if len(section) < _HEADER.size:
        raise corrupt(f"{len(section)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, count = _HEADER.unpack_from(section, 0)
    if magic != MAGIC:
        raise corrupt(f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise QCompilerError(f"{where}: {SECTION} version {version} is not supported (expected {VERSION}); "
                             f"recompile the model with this qcompiler")
    if _HEADER.size + count * _ENTRY.size > len(section):
        raise corrupt(f"a table of {count} entries does not fit in {len(section)} bytes")
    entries = []
    for i in range(count):
        offset, nbytes, code, bits, lanes, ndim, *dims = _ENTRY.unpack_from(section, _HEADER.size + i * _ENTRY.size)
        if ndim > MAX_NDIM or any(d < 0 for d in dims[:ndim]):
            raise corrupt(f"weight {i} has rank {ndim} or a negative dim")
        if code not in (0, 1, 2, 4, 6) or bits not in (8, 16, 32, 64) or lanes != 1:
            raise corrupt(f"weight {i} has an unknown dtype (code {code}, {bits} bits, {lanes} lanes)")
        shape = tuple(dims[:ndim])
        if math.prod(shape) * bits // 8 != nbytes:
            raise corrupt(f"weight {i} of shape {shape} and {bits}-bit elements has {nbytes} bytes")
        if offset > len(section) or nbytes > len(section) - offset:
            raise corrupt(f"weight {i} ends at byte {offset + nbytes}, the section has {len(section)}")
        entries.append(WeightEntry(offset, nbytes, code, bits, lanes, shape))
    return entries


def assembly_source(bin_path: str) -> str:
    """An assembler file that puts the bytes of `bin_path` into the non-allocated section
    `.qc_weights` (kept in the file, never mapped by the dynamic loader)."""
    quoted = bin_path.replace("\\", "\\\\").replace('"', '\\"')
    return f'\t.section {SECTION},"",%progbits\n\t.balign {ALIGNMENT}\n\t.incbin "{quoted}"\n'


def lift_weights(mod) -> tuple[object, list[tuple[str, tuple[int, ...], bytes]]]:
    """`mod` with every tensor constant of `main` of at least MIN_LIFTED_BYTES made a new
    parameter of `main` after its inputs (constants of equal dtype, shape and bytes are one
    parameter), and those constants as (dtype, shape, bytes) in parameter order."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Lift(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.params: list = []
            self.weights: list[tuple[str, tuple[int, ...], bytes]] = []
            self._lifted: dict = {}
            self._by_value: dict = {}

        def visit_generic_const_(self, op):
            value = op.value
            if not isinstance(value, tvm.runtime.Tensor):
                return op
            shape = tuple(int(d) for d in value.shape)
            dtype = str(value.dtype)
            nbytes = math.prod(shape) * tvm.DataType(dtype).bits // 8
            if nbytes < MIN_LIFTED_BYTES:
                return op
            if op in self._lifted:
                return self._lifted[op]
            raw = _tensor_bytes(value)
            key = (dtype, shape, hashlib.sha256(raw).digest())
            var = self._by_value.get(key)
            if var is None:  # constants of equal value (a weight packed once per use) are one parameter
                var = relax.Var(f"weight{len(self.params)}", op.ty)
                self._by_value[key] = var
                self.params.append(var)
                self.weights.append((dtype, shape, raw))
            self._lifted[op] = var
            return var

    from .passes.graph import with_main

    func = mod["main"]
    lift = _Lift(mod)
    body = lift.visit_expr(func.body)
    if not lift.params:
        return mod, []
    lifted = relax.Function(list(func.params) + lift.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    return with_main(mod, lifted), lift.weights


def _tensor_bytes(value) -> bytes:
    """The raw C-order bytes of a CPU tensor of any dtype (bfloat16 as ml_dtypes' numpy type)."""
    return np.ascontiguousarray(value.numpy()).tobytes()


def read(so_path) -> list[np.ndarray]:
    """The weights of the artifact `so_path` as numpy arrays, in the order `main` takes them
    after the inputs (bfloat16 as its uint16 bit patterns). For inspection, and for driving an
    artifact through TVM's own VirtualMachine."""
    from .elf import ElfFile

    elf = ElfFile(so_path)
    section = next((s for s in elf.sections if s.name == SECTION), None)
    if section is None:
        return []
    raw = elf.data[section.offset : section.offset + section.size]
    arrays = []
    for e in parse(raw, str(so_path)):
        dtype = "uint16" if e.dtype == "bfloat16" else e.dtype
        arrays.append(np.frombuffer(raw, dtype=dtype, count=math.prod(e.shape), offset=e.offset).reshape(e.shape).copy())
    return arrays
