"""The ARM dot product `sdot` (Armv8.2 +dotprod) as a TIR tensor intrinsic.

    C[i] += Σ_{k<4} int32(A[k]) · int32(B[i, k])     for i < 4
    A: 4 int8 (one pixel's 4 consecutive input channels), B: 4×4 int8 (4 output channels),
    C: 4 int32 accumulators = one 128-bit NEON register.

TVM registers the same computation as `dot_4x4_i8i8s32_sdot` (tvm.s_tir.tensor_intrin.arm_cpu);
qcompiler registers its own (dot_intrinsic.py) because importing TVM's intrinsic library takes
about 16 s.
"""

from __future__ import annotations

from . import dot_intrinsic

INTRIN = "qcompiler_dot_4x4_i8i8i32_sdot"
LANES = 4
LLVM_INTRINSIC = "llvm.aarch64.neon.sdot.v4i32.v16i8"


def register() -> str:
    """Register the intrinsic under qcompiler's name (idempotent) and return the name."""
    return dot_intrinsic.register(INTRIN, LANES, "int8", LLVM_INTRINSIC)
