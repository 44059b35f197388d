"""The x86 VNNI dot product `vpdpbusd` as a TIR tensor intrinsic, in a form the bundled LLVM accepts.

    C[i] += Σ_{k<4} int32(A[k]) · int32(B[i, k])     for i < 16
    A: 4 uint8 (one pixel's 4 consecutive input channels), B: 16×4 int8 (16 output channels),
    C: 16 int32 accumulators = one 512-bit register.

TVM registers `dot_16x4_vnni` with this description, but its implementation passes the operands
of `llvm.x86.avx512.vpdpbusd.512` as `<16 x i32>`, while the LLVM inside the wheel declares
`(<16 x i32>, <64 x i8>, <64 x i8>)`: every tensorized kernel then fails LLVM verification, and
MetaSchedule silently drops those candidates. The implementation here passes the 4 activation
bytes broadcast to 64 and the 64 weight bytes, both as byte vectors. It is registered

* under qcompiler's own name (`register`), for the default schedules: cheap, because importing
  TVM's intrinsic library takes about 16 s;
* under TVM's name, replacing the broken one (`repair_tvm_intrinsics`), before tuning and before
  applying tuning records that tensorize, so MetaSchedule's own x86 design space works.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

INTRIN = "qcompiler_dot_16x4_u8i8i32_vnni"
TVM_INTRIN = "dot_16x4_vnni"  # tvm.s_tir.tensor_intrin.x86.VNNI_DOT_16x4_INTRIN
LANES, REDUCE = 16, 4         # int32 outputs per register, uint8·int8 products summed into each


# TVM's own description (tvm.s_tir.tensor_intrin.x86), restated: importing it costs the 16 s above.
@T.prim_func(s_tir=True)
def dot_product_16x4_u8i8i32_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dot_product_16x4_u8i8i32_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        A_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(A_i32, 16), dtype="uint8x64"),
            B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16",
        )


def register() -> str:
    """Register the intrinsic under qcompiler's name (idempotent) and return the name."""
    TensorIntrin.register(INTRIN, dot_product_16x4_u8i8i32_desc, dot_product_16x4_u8i8i32_vnni, override=True)
    return INTRIN


def repair_tvm_intrinsics() -> None:
    """Load TVM's tensor intrinsics (what MetaSchedule and tuning records refer to by name) and
    replace TVM's broken `dot_16x4_vnni` by the working implementation."""
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers every TVM intrinsic)

    TensorIntrin.register(TVM_INTRIN, dot_product_16x4_u8i8i32_desc, dot_product_16x4_u8i8i32_vnni, override=True)
