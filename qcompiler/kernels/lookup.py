"""Byte table lookups on x86 with AVX-512 VBMI: 64 lookups in three instructions.

realize.py computes hardswish, hardsigmoid and other activations of an 8-bit tensor as
`out[i] = table[q[i]]`: a 256-entry table of 8-bit results indexed by the 8-bit q. Legalized,
that is a gather, which LLVM compiles to one scalar load per element. With VBMI the table fits
in four 64-byte registers t0..t3 and

    lo  = vpermi2b(t0, q, t1)      table[q] for q < 128   (the low 7 bits of q pick one of 128 bytes)
    hi  = vpermi2b(t2, q, t3)      table[q] for q ≥ 128
    out = q ≥ 128 ? hi : lo        (the sign bit of q as int8 selects)

look up 64 elements at once. `byte_lookup_kernel` replaces such a lookup PrimFunc by this loop
(over chunks of 64, then a scalar tail), with the same parameters. Measured on Zen 4, 1 thread:
38,400 lookups take 0.7 µs, against 10.8 µs for the vectorized gather of the default schedule.

Without VBMI but with AVX-512BW (Skylake-SP, Cascade Lake: the `x86-avx512` and `x86-avx512-vnni`
presets), `word_lookup_kernel` does the same on 16-bit words, 32 elements per register: the table
widened to 16 bits fills eight registers w0..w7, q is zero-extended to words, and

    p_j = vpermi2w(w_2j, q, w_2j+1)     table[q] for 64·j ≤ q < 64·(j + 1)    j = 0..3
    out = truncate(bit 7 of q ? (bit 6 ? p3 : p2) : (bit 6 ? p1 : p0))
"""

from __future__ import annotations

import math

import tvm
from tvm import tirx
from tvm.script import tirx as T
from tvm.target import codegen

from ..fusion import is_table_lookup

FEATURE = "avx512vbmi"
CHUNK = 64  # bytes per 512-bit register
PERMUTE = "llvm.x86.avx512.vpermi2var.qi.512"
WORD_FEATURE = "avx512bw"
WORD_CHUNK = 32  # 16-bit words per 512-bit register
WORD_PERMUTE = "llvm.x86.avx512.vpermi2var.hi.512"
# Bytes read and written from which a lookup runs its chunks in parallel: it moves tens of bytes
# per ns on one core, so smaller ones take less time than waking the other threads.
PARALLEL_BYTES = 1 << 18


def has_byte_permute(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and codegen.target_has_features(FEATURE, target)


def has_word_permute(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and codegen.target_has_features(WORD_FEATURE, target)


def lookup_kernels(target: tvm.target.Target) -> list:
    """The table-lookup kernel for `target` (a list of at most one): VBMI's, else AVX-512BW's."""
    if has_byte_permute(target):
        return [byte_lookup_kernel]
    return [word_lookup_kernel] if has_word_permute(target) else []


def _lookup_buffers(func: tirx.PrimFunc):
    """(table, index, out) buffers of a 256-entry byte-table lookup with a uint8 index, else None."""
    if len(func.params) != 3 or not is_table_lookup(func):
        return None
    table, index, out = (param.ty for param in func.params)  # buffer types: shape, dtype
    shape = [int(d) for d in out.shape]
    if ([int(d) for d in table.shape] != [256] or str(table.dtype) not in ("uint8", "int8")
            or out.dtype != table.dtype or str(index.dtype) != "uint8" or [int(d) for d in index.shape] != shape
            or math.prod(shape) < CHUNK):
        return None
    return table, index, out


def _chunked_lookup(func: tirx.PrimFunc, chunk: int, lookup_chunk) -> tirx.PrimFunc | None:
    """The kernel for `func` if it is a byte-table lookup (see `_lookup_buffers`), else None:
    `lookup_chunk(table, flat_index, start, dtype)` is the vector expression of the `chunk`
    results from `start`; a scalar loop does the tail. Same parameters as `func`."""
    buffers = _lookup_buffers(func)
    if buffers is None:
        return None
    table_buffer, _, out_buffer = buffers
    shape, dtype = tuple(int(d) for d in out_buffer.shape), str(table_buffer.dtype)
    size = math.prod(shape)
    chunks = size // chunk
    chunk_loop = T.parallel if size * 2 >= PARALLEL_BYTES else T.serial

    @T.prim_func(private=True, s_tir=True)
    def kernel(table: T.Buffer((256,), dtype), index: T.Buffer(shape, "uint8"), out: T.Buffer(shape, dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):  # TVM's Relax passes expect a root block
            flat_index = T.decl_buffer((size,), "uint8", data=index.data)
            flat_out = T.decl_buffer((size,), dtype, data=out.data)
            for c in chunk_loop(chunks):
                # One expression (the indices repeated): TVMScript would keep named vector values
                # in workspace buffers allocated per iteration.
                flat_out[T.ramp(c * chunk, 1, chunk)] = lookup_chunk(table, flat_index, c * chunk, dtype)
            for i in range(chunks * chunk, size):
                flat_out[i] = table[flat_index[i]]

    return kernel


def _byte_permute_chunk(table, index, start, dtype):
    """table[q] for the 64 indices q from `start`, on vpermi2b (module docstring)."""
    vector = f"int8x{CHUNK}"

    def bytes_at(buffer, at):
        """64 bytes of `buffer` from `at`, as int8x64 (LLVM's operand type)."""
        return T.reinterpret(vector, buffer.vload([at], f"{buffer.dtype}x{CHUNK}"))

    def permute(low_table, q, high_table):
        """vpermi2b: low_table[q & 63] where bit 6 of q is 0, high_table[q & 63] where it is 1."""
        return T.call_llvm_pure_intrin(vector, PERMUTE, low_table, q, high_table)

    q = bytes_at(index, start)
    return T.reinterpret(f"{dtype}x{CHUNK}", T.Select(
        q < T.broadcast(T.int8(0), CHUNK),
        permute(bytes_at(table, 2 * CHUNK), q, bytes_at(table, 3 * CHUNK)),
        permute(bytes_at(table, 0), q, bytes_at(table, CHUNK))))


def _word_permute_chunk(table, index, start, dtype):
    """table[q] for the 32 indices q from `start`, on vpermi2w over the table widened to 16 bits
    (module docstring)."""
    words = f"int16x{WORD_CHUNK}"

    def table_words(j):
        """Table entries 32·j .. 32·j + 31 widened to int16 (the sign kept for an int8 table)."""
        return T.Cast(words, table.vload([j * WORD_CHUNK], f"{dtype}x{WORD_CHUNK}"))

    def permute(j, q):
        """vpermi2w: table[64·j + (q & 63)]."""
        return T.call_llvm_pure_intrin(words, WORD_PERMUTE, table_words(2 * j), q, table_words(2 * j + 1))

    def bit(q, value):
        return T.bitwise_and(q, T.broadcast(T.int16(value), WORD_CHUNK)) != T.broadcast(T.int16(0), WORD_CHUNK)

    q = T.Cast(words, index.vload([start], f"uint8x{WORD_CHUNK}"))
    return T.Cast(f"{dtype}x{WORD_CHUNK}", T.Select(bit(q, 128),
                                                  T.Select(bit(q, 64), permute(3, q), permute(2, q)),
                                                  T.Select(bit(q, 64), permute(1, q), permute(0, q))))


def byte_lookup_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The VBMI kernel for `func` if it is a byte-table lookup (see `_lookup_buffers`), else None."""
    return _chunked_lookup(func, CHUNK, _byte_permute_chunk)


def word_lookup_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The AVX-512BW kernel for `func` if it is a byte-table lookup (see `_lookup_buffers`), else
    None: 32 lookups per chunk on the table widened to 16-bit words (module docstring)."""
    return _chunked_lookup(func, WORD_CHUNK, _word_permute_chunk)
