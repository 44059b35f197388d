"""The ARM dot product `sdot` (Armv8.2 +dotprod) as a TIR tensor intrinsic.

    C[i] += Σ_{k<4} int32(A[k]) · int32(B[i, k])     for i < 4
    A: 4 int8 (one pixel's 4 consecutive input channels), B: 4×4 int8 (4 output channels),
    C: 4 int32 accumulators = one 128-bit NEON register.

TVM registers the same computation as `dot_4x4_i8i8s32_sdot` (tvm.s_tir.tensor_intrin.arm_cpu);
it is restated and registered under qcompiler's own name because importing TVM's intrinsic
library takes about 16 s.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

INTRIN = "qcompiler_dot_4x4_i8i8i32_sdot"


@T.prim_func(s_tir=True)
def dot_product_4x4_i8i8i32_desc(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def dot_product_4x4_i8i8i32_sdot(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        A_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            T.reinterpret(T.broadcast(A_i32, 4), dtype="int8x16"),
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


def register() -> str:
    """Register the intrinsic under qcompiler's name (idempotent) and return the name."""
    TensorIntrin.register(INTRIN, dot_product_4x4_i8i8i32_desc, dot_product_4x4_i8i8i32_sdot, override=True)
    return INTRIN
