"""The int8 dot-product instructions qcompiler's kernels are built around, and which target has one.

  vnni   x86 AVX-512 VNNI `vpdpbusd`: 16 int32 lanes, each += 4 products uint8 × int8
  vnni8  its 256-bit form: 8 lanes, for channel counts of 8 (mod 16) (`DotProduct.narrow`)
  sdot   ARM +dotprod `sdot`:          4 int32 lanes, each += 4 products int8 × int8
  dp4a   CUDA `__dp4a`:                1 int32 += 4 products int8 × int8 per thread (one output
         channel each); packed in groups of 8 output channels, whose 8 threads read 32
         consecutive bytes
  bf16   x86 AVX-512 BF16 `vdpbf16ps`: 16 float32 lanes, each += 2 products bfloat16 × bfloat16
         (the bf16 strategy's convolutions and matmuls, not an int8 family)
  neon   plain ARM NEON (no dot product): not an instruction; one lane, so each output
         channel's weights are contiguous, and the reduction over input channels is left to
         LLVM's loop vectorizer (int16 products widened: `smull`/`smlal`-family instructions)

With VNNI, depthwise convolutions use the lane-wise `vpdpbusd` (each lane its own 4 bytes: 4 taps
of one channel; taps.py interleaves them).

Kernels pack weights so that one instruction's weight operand (dp4a: 8 neighbouring threads'
operands) is `lanes × reduce` consecutive bytes, and name their compute blocks after the
instruction (`conv2d_nhwc_<name>`, `dense_<name>`) so that the default schedules know which
tensor intrinsic to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.target import codegen

from . import amx, dot_intrinsic, dp4a, dpbf16, sdot, vnni


@dataclass(frozen=True)
class DotProduct:
    name: str                   # suffix of the kernels' block names
    lanes: int                  # int32 accumulators (output channels) per instruction
    reduce: int                 # products summed into each lane (input channels)
    data_dtype: str | None      # the activation bytes it multiplies (None: uint8 or int8; weights are int8)
    feature: str | None         # LLVM target feature that provides it (None: a GPU family)
    register: Callable[[], str] | None  # registers the tensor intrinsic, returns its name (None: vectorized)
    # registers its lane-wise variant (each lane its own 4 bytes) for depthwise convolutions;
    # None: depthwise convolutions multiply in int32 instead
    register_lanewise: Callable[[], str] | None = None
    # the same instruction on fewer lanes, for output channel counts that are a multiple of its
    # lanes but not of these: computed exactly, instead of padded to a multiple of `lanes` and
    # then cut back, which leaves the kernel's epilogue to a separate pass over each pixel tile
    narrow: DotProduct | None = None
    weight_dtype: str = "int8"
    accumulator: str = "int32"  # what the lanes accumulate in

    def for_channels(self, channels: int) -> DotProduct:
        """The variant whose lanes divide `channels` (this one unless only `narrow`'s do)."""
        if channels % self.lanes and self.narrow is not None and channels % self.narrow.lanes == 0:
            return self.narrow
        return self

    def conv_block(self) -> str:
        return f"conv2d_nhwc_{self.name}"

    def depthwise_block(self) -> str:
        return f"depthwise_nhwc_{self.name}"

    def dense_block(self) -> str:
        return f"dense_{self.name}"


VNNI_YMM = DotProduct("vnni8", vnni.YMM_LANES, dot_intrinsic.REDUCE, "uint8", "avx512vnni", vnni.register_ymm,
                      vnni.register_ymm_lanewise)
VNNI = DotProduct("vnni", vnni.LANES, dot_intrinsic.REDUCE, "uint8", "avx512vnni", vnni.register,
                  vnni.register_lanewise, narrow=VNNI_YMM)
SDOT = DotProduct("sdot", sdot.LANES, dot_intrinsic.REDUCE, "int8", "dotprod", sdot.register)
NEON = DotProduct("neon", 1, dot_intrinsic.REDUCE, None, "neon", None)
DP4A = DotProduct("dp4a", dp4a.LANES, dot_intrinsic.REDUCE, "int8", None, dp4a.register)
CPU_DOT_PRODUCTS = (VNNI, VNNI_YMM, SDOT, NEON)
DOT_PRODUCTS = (*CPU_DOT_PRODUCTS, DP4A)
# bfloat16 × bfloat16 → float32 (the bf16 strategy), not an int8 family: kernels/bf16.py
BF16_DOT = DotProduct("bf16", dpbf16.LANES, dpbf16.REDUCE, "bfloat16", dpbf16.FEATURE, dpbf16.register,
                      weight_dtype="bfloat16", accumulator="float32")


def bf16_dot_of(target: tvm.target.Target) -> DotProduct | None:
    """BF16_DOT on x86 targets with AVX-512 BF16, else None."""
    if target.kind.name != "llvm" or str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    return BF16_DOT if codegen.target_has_features(BF16_DOT.feature, target) else None


def dot_product_of(target: tvm.target.Target) -> DotProduct | None:
    """The int8 kernel family for a target: VNNI on x86 with AVX-512 VNNI; on aarch64 `sdot`
    with +dotprod, else NEON; `dp4a` on CUDA; None otherwise."""
    if target.kind.name == "cuda":
        return DP4A
    if target.kind.name != "llvm":
        return None
    if str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        candidates: tuple[DotProduct, ...] = (SDOT, NEON)
    else:
        candidates = (VNNI,)
    for dp in candidates:
        if codegen.target_has_features(dp.feature, target):
            return dp
    return None


# A TVM target key asking for AMX kernels with the tile instructions emulated (amx.EMULATED): for
# testing the AMX kernels on x86 hosts without AMX, e.g.
# {"kind": "llvm", "mcpu": "znver4", "keys": ["cpu", "qc-amx-emulated"]}.
AMX_EMULATED_KEY = "qc-amx-emulated"


def tile_engine_of(target: tvm.target.Target, product: amx.TileProduct = amx.U8S8) -> amx.TileBackend | None:
    """The tile engine of an x86 target for `product`: AMX where it has `amx-tile` and the
    product's feature (`amx-int8`, `amx-bf16`), its emulation where its keys ask for it
    (AMX_EMULATED_KEY), else None. Never AMX for a target without the features: LLVM aborts
    the process on AMX intrinsics it cannot select."""
    if target.kind.name != "llvm" or str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    if AMX_EMULATED_KEY in list(target.keys):
        return amx.EMULATED
    if codegen.target_has_features("amx-tile", target) and codegen.target_has_features(product.feature, target):
        return amx.HARDWARE
    return None
