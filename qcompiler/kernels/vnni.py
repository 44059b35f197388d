"""The x86 VNNI dot product `vpdpbusd` as a TIR tensor intrinsic, in a form the bundled LLVM accepts.

    C[i] += Σ_{k<4} int32(A[k]) · int32(B[i, k])     for i < 16
    A: 4 uint8 (one pixel's 4 consecutive input channels), B: 16×4 int8 (16 output channels),
    C: 16 int32 accumulators = one 512-bit register.

TVM registers `dot_16x4_vnni` with this description, but its implementation passes the operands
of `llvm.x86.avx512.vpdpbusd.512` as `<16 x i32>`, while the LLVM inside the wheel declares
`(<16 x i32>, <64 x i8>, <64 x i8>)`: every tensorized kernel then fails LLVM verification, and
MetaSchedule silently drops those candidates. The implementation here (dot_intrinsic.py) passes
the 4 activation bytes broadcast to 64 and the 64 weight bytes, both as byte vectors. It is
registered

* under qcompiler's own name (`register`), for the default schedules: cheap, because importing
  TVM's intrinsic library takes about 16 s;
* under TVM's name, replacing the broken one (`repair_tvm_intrinsics`), before tuning and before
  applying tuning records that tensorize, so MetaSchedule's own x86 design space works.
"""

from __future__ import annotations

from . import dot_intrinsic

INTRIN = "qcompiler_dot_16x4_u8i8i32_vnni"
LANEWISE_INTRIN = "qcompiler_lanewise_dot_16x4_u8i8i32_vnni"  # depthwise: 4 bytes of its own per lane
TVM_INTRIN = "dot_16x4_vnni"  # tvm.s_tir.tensor_intrin.x86.VNNI_DOT_16x4_INTRIN
LANES, REDUCE = 16, dot_intrinsic.REDUCE  # int32 outputs per register, uint8·int8 products summed into each
LLVM_INTRINSIC = "llvm.x86.avx512.vpdpbusd.512"
# The 256-bit form (AVX-512 VL): 8 lanes, for channel counts that are a multiple of 8 but not of
# 16, which the 512-bit form would compute padded and then drop (see isa.DotProduct.narrow).
YMM_INTRIN = "qcompiler_dot_8x4_u8i8i32_vnni"
YMM_LANEWISE_INTRIN = "qcompiler_lanewise_dot_8x4_u8i8i32_vnni"
YMM_LANES = 8
YMM_LLVM_INTRINSIC = "llvm.x86.avx512.vpdpbusd.256"


def register(name: str = INTRIN) -> str:
    """Register the intrinsic under `name` (idempotent) and return the name."""
    return dot_intrinsic.register(name, LANES, "uint8", LLVM_INTRINSIC)


def register_lanewise(name: str = LANEWISE_INTRIN) -> str:
    """Register the lane-wise variant (dot_intrinsic.py) under `name` and return the name."""
    return dot_intrinsic.register(name, LANES, "uint8", LLVM_INTRINSIC, lanewise=True)


def register_ymm() -> str:
    """Register the 8-lane (256-bit) intrinsic and return its name."""
    return dot_intrinsic.register(YMM_INTRIN, YMM_LANES, "uint8", YMM_LLVM_INTRINSIC)


def register_ymm_lanewise() -> str:
    """Register the 8-lane lane-wise variant and return its name."""
    return dot_intrinsic.register(YMM_LANEWISE_INTRIN, YMM_LANES, "uint8", YMM_LLVM_INTRINSIC, lanewise=True)


def repair_tvm_intrinsics() -> None:
    """Load TVM's tensor intrinsics (what MetaSchedule and tuning records refer to by name) and
    replace TVM's broken `dot_16x4_vnni` by the working implementation."""
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers every TVM intrinsic)

    register(TVM_INTRIN)
