"""CUDA's `__dp4a` (sm_61 and newer) as a TIR tensor intrinsic.

    C[0] += Σ_{k<4} int32(A[k]) · int32(B[k])
    A: 4 int8 activations (4 consecutive input channels), B: 4 int8 weights, C: one int32
    accumulator in a register.

TVM registers the same computation as `dp4a_s8s8s32` with A and B in shared memory; qcompiler's
kernels read them from global memory (the L1 cache serves the reuse), so it is restated here
with that scope. Each operand is loaded as one 32-bit word: the kernels keep the 4 bytes
4-aligned (channels padded to a multiple of 4).

The packed weights put LANES output channels' words side by side (compute.py's layout with
L = LANES): the threads of a warp, one per output channel, then read whole 32-byte sectors.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

INTRIN = "qcompiler_dp4a_s8s8s32_global"
LANES = 8  # output channels whose 4-byte weight words are contiguous: 32 bytes, one memory sector


@T.prim_func(s_tir=True)
def dp4a_desc(
    A: T.Buffer((4,), "int8", offset_factor=1, align=4),
    B: T.Buffer((4,), "int8", offset_factor=1, align=4),
    C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        for k in range(4):
            with T.sblock("update"):
                vk = T.axis.remap("R", [k])
                C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")


@T.prim_func(s_tir=True)
def dp4a_impl(
    A: T.Buffer((4,), "int8", offset_factor=1, align=4),
    B: T.Buffer((4,), "int8", offset_factor=1, align=4),
    C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        C[0] += T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                   dtype="int32")


def register() -> str:
    """Register the intrinsic under qcompiler's name (idempotent) and return the name."""
    TensorIntrin.register(INTRIN, dp4a_desc, dp4a_impl, override=True)
    return INTRIN
