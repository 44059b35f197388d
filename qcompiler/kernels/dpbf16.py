"""The x86 AVX-512 BF16 dot product `vdpbf16ps` as a TIR tensor intrinsic.

    C[i] += float32(A[0]) · float32(B[i, 0]) + float32(A[1]) · float32(B[i, 1])     for i < 16
    A: 2 bfloat16 activations (one pixel's 2 consecutive input channels), B: 16×2 bfloat16
    weights (16 output channels), C: 16 float32 accumulators = one 512-bit register.

The instruction computes each pair's products exactly and rounds once into the accumulator
(round to nearest even, denormal inputs and outputs flushed to zero): the description's float32
products and sums are exact for bfloat16 inputs except for that rounding.

TVM lowers every bfloat16 expression to float32 (BF16ComputeLegalize) before code generation,
so a bfloat16 vector can never reach the LLVM intrinsic, whose bundled declaration takes
`<32 x bfloat>`. The implementation therefore reads the operands through uint16 views of the
same buffers, passes them as `<16 x i32>` to a two-line LLVM function that bitcasts them and
calls the intrinsic (linked into the kernel's module by `pragma_import_llvm`, always inlined).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

INTRIN = "qcompiler_dot_16x2_bf16bf16f32"
LANES, REDUCE = 16, 2  # float32 accumulators per register, bfloat16 products summed into each
FEATURE = "avx512bf16"
_FUNCTION = "qcompiler_dpbf16ps_512"
LLVM_IR = f"""
define weak_odr <16 x float> @{_FUNCTION}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = tail call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
attributes #0 = {{ alwaysinline nounwind "target-features"="+avx512bf16,+avx512f" }}
"""


@T.prim_func(s_tir=True)
def _description(
    A: T.Buffer((REDUCE,), "bfloat16", offset_factor=1),
    B: T.Buffer((LANES, REDUCE), "bfloat16", offset_factor=1),
    C: T.Buffer((LANES,), "float32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:LANES], A[0:REDUCE], B[0:LANES, 0:REDUCE])
        T.writes(C[0:LANES])
        for i in T.serial(0, LANES):
            for k in T.serial(0, REDUCE):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "float32") * T.cast(B[vi, vk], "float32")


@T.prim_func(s_tir=True)
def _implementation(
    A: T.Buffer((REDUCE,), "bfloat16", offset_factor=1),
    B: T.Buffer((LANES, REDUCE), "bfloat16", offset_factor=1),
    C: T.Buffer((LANES,), "float32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:LANES], A[0:REDUCE], B[0:LANES, 0:REDUCE])
        T.writes(C[0:LANES])
        a_bits = T.decl_buffer((REDUCE,), "uint16", data=A.data, elem_offset=A.elem_offset)
        b_bits = T.decl_buffer((LANES * REDUCE,), "uint16", data=B.data, elem_offset=B.elem_offset)
        with T.attr(0, "pragma_import_llvm", LLVM_IR):
            C[T.ramp(T.int32(0), 1, LANES)] = T.call_pure_extern(
                "float32x16", _FUNCTION,
                C.vload([0], dtype="float32x16"),
                T.broadcast(T.reinterpret(a_bits.vload([0], dtype="uint16x2"), dtype="int32"), LANES),
                T.reinterpret(b_bits.vload([0], dtype="uint16x32"), dtype="int32x16"))


def register() -> str:
    """Register the intrinsic (idempotent) and return its name."""
    TensorIntrin.register(INTRIN, _description, _implementation, override=True)
    return INTRIN
