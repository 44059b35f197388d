"""Intel AMX as TIR tensor intrinsics: one panel of a matrix product, 32 rows by a multiple of 32
columns, over the whole reduction, its accumulators in tile registers, for two tile products
(`TileProduct`):

  U8S8  `tdpbusd`    C int32   += Σ_k int32(A uint8[i, k]) · int32(B int8 ...)        K by 64
  BF16  `tdpbf16ps`  C float32 += Σ_k float32(A bfloat16[i, k]) · float32(B bfloat16 ...)   K by 32

    C[i, j] += Σ_{k<K} A[i, k] · B[j / 16, k / r, j % 16, k % r]    i < 32, j < N,  r = 4 (U8S8) or 2 (BF16)

A: 32 rows × K (row stride: any), B: N/16 blocks of 16 weight columns packed as for the vector
dot products ([N/16, K/r, 16, r], compute.pack_dense_weight: VNNI's and vdpbf16ps's packings are
the AMX B layouts), C: 32 × N (row stride: any). A tile row is 64 bytes: 64 int8 or 32 bfloat16
elements of K; the intrinsic is registered per K, a multiple of that, and per N, a multiple of 32.

The panel loads its tile configuration once (palette 1, every tile 16 rows × 64 bytes), then
computes its 32 × 32 blocks one after the other, each in 2 × 2 tiles: C in tiles 0–3, the two
16-row halves of A in tiles 4–5, the block's two 16-column blocks of B in tiles 6–7; per 64 bytes
of K, 4 tile loads and 4 products (each 16·16·64 bytes' multiply-adds); C loaded before and stored
after. Then it releases the tiles: tile state is per thread, and a panel never leaves it
configured. `ldtilecfg` has a high latency, and `tilerelease` forces the next one: once per panel,
not per block.

Tile operations are emitted through a backend: `HARDWARE` calls the LLVM intrinsics
(`llvm.x86.ldtilecfg`, `tileloadd64`, `tdpbusd` / `tdpbf16ps`, `tilestored64`, `tilerelease`);
`EMULATED` executes the same operations, with the same configuration bytes, addresses and
strides, on a tile file in memory, as the instructions are specified (Intel SDM: rows and bytes
per row from the configuration; `tdpbusd` multiplies 4 unsigned bytes of A's row by 4 signed
bytes of B's row k/4 at column j; `tdpbf16ps` adds the products of the 2 bfloat16 pairs one after
the other, each rounded to float32 — the products are exact; the hardware also flushes denormal
inputs and results to zero, which the emulation does not). Kernels built with EMULATED run on
any x86 host: the tests check the kernels' schedule, packing and addressing there, and the
hardware numerics where the host has AMX.

A target without the AMX features must never get the HARDWARE form: LLVM cannot select the
intrinsics and aborts the process when the module is first used.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

ROWS = 16           # rows per tile
ROW_BYTES = 64      # bytes per tile row: 16 32-bit accumulators, or 64 bytes of operands
BLOCK = 2 * ROWS    # a block is 2 × 2 tiles: 32 rows × 32 columns; a panel, 32 rows × blocks of 32 columns
LANES = ROW_BYTES // 4  # output columns per tile: 16

TILES = 8           # tile registers tmm0-7: C blocks (h, j) in 2h + j, A halves in 4 + h, B blocks in 6 + j


@dataclass(frozen=True)
class TileProduct:
    """What one tile instruction multiplies: A and B element types, the accumulator type, and
    `reduce`, the A elements multiplied into one accumulator per B row (4 bytes of B per column)."""

    name: str
    a_dtype: str
    b_dtype: str
    c_dtype: str
    reduce: int
    instruction: str
    feature: str  # the LLVM target feature beside amx-tile

    @property
    def row_elements(self) -> int:
        """Elements of K in one 64-byte tile row (the multiple K is padded to)."""
        return LANES * self.reduce

    @property
    def element_bytes(self) -> int:
        return 4 // self.reduce


U8S8 = TileProduct("u8s8", "uint8", "int8", "int32", 4, "tdpbusd", "amx-int8")
BF16 = TileProduct("bf16", "bfloat16", "bfloat16", "float32", 2, "tdpbf16ps", "amx-bf16")
PRODUCTS = (U8S8, BF16)


@dataclass(frozen=True)
class TileBackend:
    """How tile operations become TIR: `emulated` False for the instructions, True for their
    specification executed on a tile file in memory."""

    name: str
    emulated: bool

    def dense_block(self, product: TileProduct) -> str:
        """Name of the dense block compute.dense_matrix_tiles builds for this backend and product."""
        return f"dense_{self.name}_{product.name}"


HARDWARE = TileBackend("amx", False)
EMULATED = TileBackend("amx_emulated", True)
BACKENDS = (HARDWARE, EMULATED)


def intrinsic_name(backend: TileBackend, product: TileProduct, depth: int, columns: int) -> str:
    return f"qcompiler_{backend.name}_{product.name}_{BLOCK}x{columns}x{depth}"


def gemm_panel_intrinsic(depth: int, columns: int, backend: TileBackend, product: TileProduct = U8S8):
    """(description, implementation) of the panel product above for K = `depth`, N = `columns`."""
    per_row = product.row_elements  # K elements per tile row
    if depth % per_row:
        raise ValueError(f"AMX panel product: K = {depth} is not a multiple of {per_row}")
    if columns % BLOCK:
        raise ValueError(f"AMX panel product: N = {columns} is not a multiple of {BLOCK}")
    steps = depth // per_row
    blocks = columns // BLOCK
    reduce = product.reduce
    b_shape = (columns // LANES, depth // reduce, LANES, reduce)
    b_block = depth * LANES  # elements of one 16-column block of B
    a_dtype, b_dtype, c_dtype = product.a_dtype, product.b_dtype, product.c_dtype
    a_stride_bytes = product.element_bytes  # bytes per element of A's rows

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((BLOCK, depth), a_dtype, offset_factor=1),
        B: T.Buffer(b_shape, b_dtype, offset_factor=1),
        C: T.Buffer((BLOCK, columns), c_dtype, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:BLOCK, 0:columns], A[0:BLOCK, 0:depth], B[0:columns // LANES, 0:depth // reduce, 0:LANES, 0:reduce])
            T.writes(C[0:BLOCK, 0:columns])
            for i, j, k in T.grid(BLOCK, columns, depth):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], c_dtype) * T.cast(
                        B[vj // LANES, vk // reduce, vj % LANES, vk % reduce], c_dtype)

    a_rs = T.int32()
    c_rs = T.int32()

    emulated = backend.emulated
    instruction = f"llvm.x86.{product.instruction}"

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (BLOCK, depth), a_dtype, offset_factor=1, strides=[a_rs, 1])
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1)
        C = T.match_buffer(c, (BLOCK, columns), c_dtype, offset_factor=1, strides=[c_rs, 1])
        with T.sblock("root"):
            T.reads(C[0:BLOCK, 0:columns], A[0:BLOCK, 0:depth], B[0:columns // LANES, 0:depth // reduce, 0:LANES, 0:reduce])
            T.writes(C[0:BLOCK, 0:columns])
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
                data = T.alloc_buffer((TILES, ROWS, per_row), c_dtype, scope="local")  # elements of A / B tiles
                acc = T.alloc_buffer((TILES, ROWS, LANES), c_dtype, scope="local")  # accumulators of C tiles
                # ldtilecfg: rows and bytes per row of each tile, from the configuration
                for tile in T.serial(TILES):
                    rows[tile] = T.Cast("int32", cfg[48 + tile])
                    colsb[tile] = T.Cast("int32", cfg[16 + 2 * tile]) + T.Cast("int32", cfg[17 + 2 * tile]) * 256
                for block in T.serial(blocks):
                    # tileloadd64 C tiles: element offset h·16·c_rs + block·32 + j·16, row stride c_rs * 4 bytes
                    for h, j in T.grid(2, 2):
                        for r, col in T.grid(ROWS, LANES):
                            if r < rows[h * 2 + j] and col * 4 < colsb[h * 2 + j]:
                                acc[h * 2 + j, r, col] = C[(h * ROWS * c_rs + block * BLOCK + j * LANES + r * c_rs + col) // c_rs,
                                                           (h * ROWS * c_rs + block * BLOCK + j * LANES + r * c_rs + col) % c_rs]
                    for step in T.serial(steps):
                        # tileloadd64 A halves (tiles 4, 5): element offset h·16·a_rs + step·per_row, stride a_rs
                        for h in T.serial(2):
                            for r, e in T.grid(ROWS, per_row):
                                if r < rows[4 + h] and e * a_stride_bytes < colsb[4 + h]:
                                    data[4 + h, r, e] = T.Cast(c_dtype, A[(h * ROWS * a_rs + step * per_row + r * a_rs + e) // a_rs,
                                                                          (h * ROWS * a_rs + step * per_row + r * a_rs + e) % a_rs])
                        # tileloadd64 B blocks (tiles 6, 7): element offset (2·block + j)·K·16 + step·16·per_row, stride 64 bytes
                        for j in T.serial(2):
                            for r, e in T.grid(ROWS, per_row):
                                if r < rows[6 + j] and e * a_stride_bytes < colsb[6 + j]:
                                    data[6 + j, r, e] = T.Cast(c_dtype, B[
                                        ((2 * block + j) * b_block + step * ROWS * per_row + r * per_row + e) // b_block,
                                        ((2 * block + j) * b_block + step * ROWS * per_row + r * per_row + e) // per_row % (depth // reduce),
                                        ((2 * block + j) * b_block + step * ROWS * per_row + r * per_row + e) // reduce % LANES,
                                        ((2 * block + j) * b_block + step * ROWS * per_row + r * per_row + e) % reduce])
                        # the product C[h, j] += A[h] · B[j]: per 4 bytes kk of A's row, its `reduce`
                        # elements' products added one after the other
                        for h, j in T.grid(2, 2):
                            for m, kk, n, t in T.grid(ROWS, ROWS, LANES, reduce):
                                if m < rows[h * 2 + j] and n * 4 < colsb[h * 2 + j] and kk * 4 < colsb[4 + h]:
                                    acc[h * 2 + j, m, n] = acc[h * 2 + j, m, n] + data[4 + h, m, kk * reduce + t] * data[6 + j, kk, n * reduce + t]
                    # tilestored64 C tiles
                    for h, j in T.grid(2, 2):
                        for r, col in T.grid(ROWS, LANES):
                            if r < rows[h * 2 + j] and col * 4 < colsb[h * 2 + j]:
                                C[(h * ROWS * c_rs + block * BLOCK + j * LANES + r * c_rs + col) // c_rs,
                                  (h * ROWS * c_rs + block * BLOCK + j * LANES + r * c_rs + col) % c_rs] = acc[h * 2 + j, r, col]
            else:
                T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0]))
                for block in T.serial(blocks):
                    at = block * BLOCK
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(0), T.address_of(C[0, at]), T.int64(c_rs * 4))
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1), T.address_of(C[0, at + LANES]), T.int64(c_rs * 4))
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(2), T.address_of(C[ROWS, at]), T.int64(c_rs * 4))
                    T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(3), T.address_of(C[ROWS, at + LANES]), T.int64(c_rs * 4))
                    for step in T.serial(steps):
                        T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(4), T.address_of(A[0, step * per_row]),
                                           T.int64(a_rs * a_stride_bytes))
                        T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(5), T.address_of(A[ROWS, step * per_row]),
                                           T.int64(a_rs * a_stride_bytes))
                        T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(6), T.address_of(B[2 * block, step * ROWS, 0, 0]),
                                           T.int64(ROW_BYTES))
                        T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(7), T.address_of(B[2 * block + 1, step * ROWS, 0, 0]),
                                           T.int64(ROW_BYTES))
                        T.call_llvm_intrin("void", instruction, T.uint8(0), T.uint8(4), T.uint8(6))
                        T.call_llvm_intrin("void", instruction, T.uint8(1), T.uint8(4), T.uint8(7))
                        T.call_llvm_intrin("void", instruction, T.uint8(2), T.uint8(5), T.uint8(6))
                        T.call_llvm_intrin("void", instruction, T.uint8(3), T.uint8(5), T.uint8(7))
                    T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(0), T.address_of(C[0, at]), T.int64(c_rs * 4))
                    T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(1), T.address_of(C[0, at + LANES]), T.int64(c_rs * 4))
                    T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(2), T.address_of(C[ROWS, at]), T.int64(c_rs * 4))
                    T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(3), T.address_of(C[ROWS, at + LANES]), T.int64(c_rs * 4))
                T.call_llvm_intrin("void", "llvm.x86.tilerelease")

    return description, implementation


def register(backend: TileBackend, depth: int, columns: int, product: TileProduct = U8S8) -> str:
    """Register the panel product for K = `depth`, N = `columns` with `backend` (idempotent);
    return its name."""
    name = intrinsic_name(backend, product, depth, columns)
    TensorIntrin.register(name, *gemm_panel_intrinsic(depth, columns, backend, product), override=True)
    return name
