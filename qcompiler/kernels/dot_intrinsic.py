"""CPU dot-product instructions as TIR tensor intrinsics: one LLVM intrinsic call per `lanes`
int32 accumulators, each adding 4 products of activation bytes and int8 weight bytes.

    C[i] += Σ_{k<4} int32(A[k]) · int32(B[i, k])     for i < lanes
    A: 4 activation bytes (one pixel's 4 consecutive input channels), B: lanes × 4 int8 weights,
    C: `lanes` int32 accumulators = one vector register.

The implementation broadcasts A's 4 bytes (as one int32) to every lane and passes A and B as
byte vectors, which is how LLVM declares these intrinsics (`vpdpbusd`: <16 x i32>, <64 x i8>,
<64 x i8>; `sdot`: <4 x i32>, <16 x i8>, <16 x i8>).

The lane-wise variant gives each lane its own 4 activation bytes (depthwise convolutions, where
a lane is a channel and its 4 bytes are 4 taps of that channel):

    C[i] += Σ_{k<4} int32(A[i, k]) · int32(B[i, k])     for i < lanes
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

REDUCE = 4  # products summed into each lane


def dot_product_intrinsic(lanes: int, data_dtype: str, llvm_intrinsic: str, lanewise: bool = False):
    """(description, implementation) of the dot product above for `llvm_intrinsic`: A is 4 bytes
    broadcast to every lane, or (`lanewise`) 4 bytes per lane."""
    data_x4, data_vector = f"{data_dtype}x{REDUCE}", f"{data_dtype}x{lanes * REDUCE}"
    weight_vector, accumulators = f"int8x{lanes * REDUCE}", f"int32x{lanes}"
    a_shape = (lanes, REDUCE) if lanewise else (REDUCE,)

    def a_region(A):
        return A[0:lanes, 0:REDUCE] if lanewise else A[0:REDUCE]

    def a_at(A, vi, vk):
        return A[vi, vk] if lanewise else A[vk]

    def a_operand(A):
        """A as the instruction's activation operand: its bytes, or its 4 bytes (as one int32) broadcast."""
        if lanewise:
            return A.vload([0, 0], dtype=data_vector)
        return T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], data_x4), dtype="int32"), lanes), dtype=data_vector)

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer(a_shape, data_dtype, offset_factor=1),
        B: T.Buffer((lanes, REDUCE), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], a_region(A), B[0:lanes, 0:REDUCE])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, REDUCE):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(a_at(A, vi, vk), "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def implementation(
        A: T.Buffer(a_shape, data_dtype, offset_factor=1),
        B: T.Buffer((lanes, REDUCE), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], a_region(A), B[0:lanes, 0:REDUCE])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                C.vload([0], dtype=accumulators),
                a_operand(A),
                B.vload([0, 0], dtype=weight_vector),
                dtype=accumulators,
            )

    return description, implementation


def register(name: str, lanes: int, data_dtype: str, llvm_intrinsic: str, lanewise: bool = False) -> str:
    """Register the (lane-wise) intrinsic under `name` (idempotent) and return the name."""
    TensorIntrin.register(name, *dot_product_intrinsic(lanes, data_dtype, llvm_intrinsic, lanewise), override=True)
    return name
