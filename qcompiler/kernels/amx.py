"""Intel AMX int8 (`tdpbusd`) as a TIR tensor intrinsic: one 32×32 block of a uint8 × int8 matrix
product over the whole reduction, its accumulators in tile registers.

    C[i, j] += Σ_{k<K} int32(A[i, k]) · int32(B[j / 16, k / 4, j % 16, k % 4])    i, j < 32

A: 32 rows × K uint8 (row stride: any), B: two 16-column blocks of weights packed as for VNNI
([N/16, K/4, 16, 4], compute.pack_dense_weight), C: 32 × 32 int32 (row stride: any). K is a
multiple of 64 (one tile row of bytes); the intrinsic is registered per K.

The implementation blocks 2 × 2 tiles: C in tiles 0–3,
the two 16-row halves of A in tiles 4–5, the two 16-column blocks of B in tiles 6–7; per 64 bytes
of K, 4 tile loads and 4 `tdpbusd` (each 16·16·64 multiply-adds). Each block loads its tile
configuration (palette 1, every tile 16 rows × 64 bytes), loads C, accumulates, stores C and
releases the tiles: tile state is per thread, and a block never leaves it configured.

Tile operations are emitted through a backend: `HARDWARE` calls the LLVM intrinsics
(`llvm.x86.ldtilecfg`, `tileloadd64`, `tdpbusd`, `tilestored64`, `tilerelease`); `EMULATED`
executes the same operations, with the same configuration bytes, addresses and strides, on a
tile file in memory, as the instructions are specified (Intel SDM: rows and bytes per row from
the configuration; `tdpbusd` multiplies 4 unsigned bytes of A's row by 4 signed bytes of B's
row k/4 at column j). Kernels built with EMULATED run on any x86 host: the tests check the
kernels' schedule, packing and addressing bit-exactly there, and the hardware numerics where
the host has AMX.

A target without the AMX features must never get the HARDWARE form: LLVM cannot select the
intrinsics and aborts the process when the module is first used.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

ROWS = 16           # rows per tile
ROW_BYTES = 64      # bytes per tile row: 16 int32 accumulators, or 64 uint8 / int8
BLOCK = 2 * ROWS    # a block is 2 × 2 tiles: 32 rows × 32 columns
REDUCE = 4          # bytes of a B row per output column (its VNNI packing)
LANES = ROW_BYTES // REDUCE  # output columns per tile: 16

TILES = 8           # tile registers tmm0-7: C blocks (h, j) in 2h + j, A halves in 4 + h, B blocks in 6 + j


@dataclass(frozen=True)
class TileBackend:
    """How tile operations become TIR: `emulated` False for the instructions, True for their
    specification executed on a tile file in memory."""

    name: str
    emulated: bool

    def dense_block(self) -> str:
        """Name of the dense block compute.dense_matrix_tiles builds for this backend."""
        return f"dense_{self.name}"


HARDWARE = TileBackend("amx", False)
EMULATED = TileBackend("amx_emulated", True)
BACKENDS = (HARDWARE, EMULATED)


def intrinsic_name(backend: TileBackend, depth: int) -> str:
    return f"qcompiler_{backend.name}_u8s8_{BLOCK}x{BLOCK}x{depth}"


def gemm_block_intrinsic(depth: int, backend: TileBackend):
    """(description, implementation) of the block product above for K = `depth`."""
    if depth % ROW_BYTES:
        raise ValueError(f"AMX block product: K = {depth} is not a multiple of {ROW_BYTES}")
    steps = depth // ROW_BYTES
    b_shape = (2, depth // REDUCE, LANES, REDUCE)

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((BLOCK, depth), "uint8", offset_factor=1),
        B: T.Buffer(b_shape, "int8", offset_factor=1),
        C: T.Buffer((BLOCK, BLOCK), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:BLOCK, 0:BLOCK], A[0:BLOCK, 0:depth], B[0:2, 0:depth // REDUCE, 0:LANES, 0:REDUCE])
            T.writes(C[0:BLOCK, 0:BLOCK])
            for i, j, k in T.grid(BLOCK, BLOCK, depth):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(
                        B[vj // LANES, vk // REDUCE, vj % LANES, vk % REDUCE], "int32")

    a_rs = T.int32()
    c_rs = T.int32()

    emulated = backend.emulated

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (BLOCK, depth), "uint8", offset_factor=1, strides=[a_rs, 1])
        B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
        C = T.match_buffer(c, (BLOCK, BLOCK), "int32", offset_factor=1, strides=[c_rs, 1])
        with T.sblock("root"):
            T.reads(C[0:BLOCK, 0:BLOCK], A[0:BLOCK, 0:depth], B[0:2, 0:depth // REDUCE, 0:LANES, 0:REDUCE])
            T.writes(C[0:BLOCK, 0:BLOCK])
            # The tile configuration (palette 1): byte 0 the palette, the uint16 at 16 + 2t the
            # bytes per row of tile t, byte 48 + t its rows.
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for byte in T.serial(64):
                cfg[byte] = T.uint8(0)
            cfg[0] = T.uint8(1)
            for tile in T.serial(TILES):
                cfg[16 + 2 * tile] = T.uint8(ROW_BYTES)
                cfg[48 + tile] = T.uint8(ROWS)
            if emulated:
                rows = T.alloc_buffer((TILES,), "int32", scope="local")
                colsb = T.alloc_buffer((TILES,), "int32", scope="local")
                data = T.alloc_buffer((TILES, ROWS, ROW_BYTES), "int32", scope="local")  # bytes of A / B tiles
                acc = T.alloc_buffer((TILES, ROWS, LANES), "int32", scope="local")  # int32 of C tiles
                # ldtilecfg: rows and bytes per row of each tile, from the configuration
                for tile in T.serial(TILES):
                    rows[tile] = T.Cast("int32", cfg[48 + tile])
                    colsb[tile] = T.Cast("int32", cfg[16 + 2 * tile]) + T.Cast("int32", cfg[17 + 2 * tile]) * 256
                # tileloadd64 C tiles: row stride c_rs * 4 bytes
                for h, j in T.grid(2, 2):
                    for r, col in T.grid(ROWS, LANES):
                        if r < rows[h * 2 + j] and col * 4 < colsb[h * 2 + j]:
                            acc[h * 2 + j, r, col] = C[(h * ROWS * c_rs + j * LANES + r * c_rs + col) // c_rs,
                                                       (h * ROWS * c_rs + j * LANES + r * c_rs + col) % c_rs]
                for step in T.serial(steps):
                    # tileloadd64 A halves (tiles 4, 5): offset h·16·a_rs + 64·step, stride a_rs bytes
                    for h in T.serial(2):
                        for r, byte in T.grid(ROWS, ROW_BYTES):
                            if r < rows[4 + h] and byte < colsb[4 + h]:
                                data[4 + h, r, byte] = T.Cast("int32", A[(h * ROWS * a_rs + step * ROW_BYTES + r * a_rs + byte) // a_rs,
                                                                        (h * ROWS * a_rs + step * ROW_BYTES + r * a_rs + byte) % a_rs])
                    # tileloadd64 B blocks (tiles 6, 7): offset j·(K/4)·64 + step·16·64, stride 64 bytes
                    for j in T.serial(2):
                        for r, byte in T.grid(ROWS, ROW_BYTES):
                            if r < rows[6 + j] and byte < colsb[6 + j]:
                                data[6 + j, r, byte] = T.Cast("int32", B[
                                    (j * depth * LANES + step * ROWS * ROW_BYTES + r * ROW_BYTES + byte) // (depth * LANES),
                                    (j * depth * LANES + step * ROWS * ROW_BYTES + r * ROW_BYTES + byte) // ROW_BYTES % (depth // REDUCE),
                                    (j * depth * LANES + step * ROWS * ROW_BYTES + r * ROW_BYTES + byte) // REDUCE % LANES,
                                    (j * depth * LANES + step * ROWS * ROW_BYTES + r * ROW_BYTES + byte) % REDUCE])
                    # tdpbusd C[h, j] += A[h] · B[j]
                    for h, j in T.grid(2, 2):
                        for m, n, kk, t in T.grid(ROWS, LANES, ROWS, REDUCE):
                            if m < rows[h * 2 + j] and n * 4 < colsb[h * 2 + j] and kk * 4 < colsb[4 + h]:
                                acc[h * 2 + j, m, n] = acc[h * 2 + j, m, n] + data[4 + h, m, kk * 4 + t] * data[6 + j, kk, n * 4 + t]
                # tilestored64 C tiles
                for h, j in T.grid(2, 2):
                    for r, col in T.grid(ROWS, LANES):
                        if r < rows[h * 2 + j] and col * 4 < colsb[h * 2 + j]:
                            C[(h * ROWS * c_rs + j * LANES + r * c_rs + col) // c_rs,
                              (h * ROWS * c_rs + j * LANES + r * c_rs + col) % c_rs] = acc[h * 2 + j, r, col]
            else:
                T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0]))
                T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(0), T.address_of(C[0, 0]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1), T.address_of(C[0, LANES]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(2), T.address_of(C[ROWS, 0]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(3), T.address_of(C[ROWS, LANES]), T.int64(c_rs * 4))
                for step in T.serial(steps):
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(4), T.address_of(A[0, step * ROW_BYTES]), T.int64(a_rs))
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(5), T.address_of(A[ROWS, step * ROW_BYTES]), T.int64(a_rs))
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(6), T.address_of(B[0, step * ROWS, 0, 0]), T.int64(ROW_BYTES))
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(7), T.address_of(B[1, step * ROWS, 0, 0]), T.int64(ROW_BYTES))
                    T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.uint8(0), T.uint8(4), T.uint8(6))
                    T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.uint8(1), T.uint8(4), T.uint8(7))
                    T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.uint8(2), T.uint8(5), T.uint8(6))
                    T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.uint8(3), T.uint8(5), T.uint8(7))
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(0), T.address_of(C[0, 0]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(1), T.address_of(C[0, LANES]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(2), T.address_of(C[ROWS, 0]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(3), T.address_of(C[ROWS, LANES]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tilerelease")

    return description, implementation


def register(backend: TileBackend, depth: int) -> str:
    """Register the block product for K = `depth` with `backend` (idempotent); return its name."""
    name = intrinsic_name(backend, depth)
    TensorIntrin.register(name, *gemm_block_intrinsic(depth, backend), override=True)
    return name
