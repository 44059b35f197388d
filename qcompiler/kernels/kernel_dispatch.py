"""What the kernel dispatch passes (dispatch.py: int8, bf16.py, fp32.py: float32) share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax, te

from ..passes.graph import CallRewriter, const, shape_of
from . import amx
from . import compute as kc
from .compute import shape64
from .im2col import im2col_kernel
from .isa import DotProduct


@dataclass(frozen=True)
class ConvAttrs:
    """A (transposed) conv2d call's geometry as Python ints."""

    groups: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    strides: list[int]
    dilation: list[int]

    @classmethod
    def of(cls, call) -> "ConvAttrs":
        attrs = call.attrs
        return cls(int(attrs.groups), tuple(int(p) for p in attrs.padding), [int(s) for s in attrs.strides],
                   [int(d) for d in attrs.dilation])

    def nhwc_pads(self, channels: int = 0) -> list[tuple[int, int]]:
        """(before, after) per NHWC axis: the spatial padding, and `channels` more at the end."""
        top, left, bottom, right = self.padding
        return [(0, 0), (top, bottom), (left, right), (0, channels)]


def depthwise_taps(weight: np.ndarray) -> np.ndarray:
    """A depthwise OHWI weight [C, KH, KW, 1] as taps [KH, KW, C]."""
    return np.ascontiguousarray(weight[:, :, :, 0].transpose(1, 2, 0))


def tiles_worthwhile(product: amx.TileProduct, rows: int, depth: int, out_channels: int) -> bool:
    """Whether a product of `rows` × `depth` activations by `depth` × `out_channels` weights goes
    to the tile engine: at least one 32-row block, two tile rows of K (128 bytes) and two 32-column
    blocks of output channels. On a Xeon with AMX (one run at 2 threads of single int8 ops built for
    `x86-amx` with and without tiles, as benchmarks/prepare_cpu_check.py --ops now builds them),
    every op below these bounds that was measured (16 or 48 output channels, K of 64 or 88 bytes,
    16 rows) ran 1.04–1.85× slower on tiles, as did MTCNN-RNet's 48-channel 3×3 convolution in the
    whole model at 1 and 2 threads (1.3×); 3×3 convolutions with ≥ 128 channels and matmuls with
    K ≥ 384 ran at 0.45–1.0×. Between them (64 channels, K of 128–576 bytes) the results were mixed."""
    return rows >= amx.BLOCK and depth * product.element_bytes >= 2 * amx.ROW_BYTES and out_channels >= 2 * amx.BLOCK


def conv_rows(data, w: np.ndarray, conv: ConvAttrs) -> int:
    """Output pixels of an NHWC convolution of `data` by OHWI `w`: its matrix product's rows."""
    n, height, width, _ = shape_of(data)
    top, left, bottom, right = conv.padding
    return n * kc.windows(height + top + bottom, w.shape[1], conv.strides[0], conv.dilation[0]) \
        * kc.windows(width + left + right, w.shape[2], conv.strides[1], conv.dilation[1])


class KernelDispatch(CallRewriter):
    """The base of the kernel dispatch passes (subclassed under @relax.expr_functor.mutator):
    conv2d and matmul calls go to the methods of those names (a subclass may add ops)."""

    HANDLERS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}

    def kernel(self, name: str, compute, inputs, arrays: list = ()) -> relax.Expr:
        """call_tir of `compute` (a function of TE placeholders: one per Relax tensor of `inputs`,
        a tensor or a list, then one per numpy constant of `arrays`), its PrimFunc added to the
        module as `name`."""
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        holders = [te.placeholder(shape64(*shape_of(x)), str(x.ty.dtype), f"in{i}") for i, x in enumerate(inputs)]
        holders += [te.placeholder(shape64(*a.shape), str(a.dtype), f"w{i}") for i, a in enumerate(arrays)]
        out = compute(*holders)
        gvar = self.builder_.add_func(te.create_prim_func([*holders, out]).without_attr("global_symbol"), name)
        out_ty = relax.TensorType([int(d) for d in out.shape], str(out.dtype))
        return relax.call_tir(gvar, [*inputs, *[const(a) for a in arrays]], out_ty)

    def pad(self, data, pads: list[tuple[int, int]]):
        """`data` zero-padded by (before, after) per axis (itself where all are 0)."""
        if not any(lo or hi for lo, hi in pads):
            return data
        return self.builder_.emit(relax.op.nn.pad(data, [p for pair in pads for p in pair], pad_value=0.0))

    def dense_tiles(self, data, w: np.ndarray, dp: DotProduct, engine: amx.TileBackend, product: amx.TileProduct,
                    name: str, windows: "Windows | None" = None) -> relax.Expr:
        """`data` [..., K] (of the product's A type) × constant `w` [K, N] on the tile engine
        (amx.py): the rows flattened and padded to a multiple of 32, K to a whole tile row
        (zeros), N computed to a multiple of 32 (`w` packed as for `dp`); the kernel `name`
        keeps the real rows and channels. With `windows`, `data` is a padded NHWC tensor and the
        rows are its windows (im2col.py: K = KH·KW·C), written straight into the padded matrix."""
        if windows is None:
            *leading, depth = shape_of(data)
            rows = math.prod(leading)
            matrix = data if len(leading) == 1 else self.builder_.emit(relax.op.reshape(data, [rows, depth]))
            matrix = self.pad(matrix, [(0, -rows % amx.BLOCK), (0, -depth % product.row_elements)])
        else:
            leading = windows.out_pixels(shape_of(data))
            dtype = str(data.ty.dtype)
            kernel = im2col_kernel(tuple(shape_of(data)), dtype, windows.kh, windows.kw, windows.strides,
                                   windows.dilation, amx.BLOCK, product.row_elements)
            cols_ty = relax.TensorType([int(d) for d in kernel.params[1].ty.shape], dtype)
            matrix = self.builder_.emit(relax.call_tir(self.builder_.add_func(kernel, "im2col_nhwc"), [data], cols_ty))
        out_channels = w.shape[1]
        packed = kc.pack_dense_weight(w, dp, n_multiple=amx.BLOCK, k_multiple=product.row_elements)
        block = engine.dense_block(product)
        return self.kernel(name, lambda x, wp: kc.dense_matrix_tiles(x, wp, block, leading, out_channels, product.c_dtype),
                           [matrix], [packed])

    def conv_on_tiles(self, data, w: np.ndarray, conv: ConvAttrs) -> relax.Expr:
        """A groups = 1 NHWC convolution (OHWI weight `w`) as the subclass's `dense_on_tiles`
        (activation rows [..., K] × a constant [K, O]): a 1×1 stride-1 one over its pixels
        directly, any other over its windows (`Windows`, K = KH·KW·C) of the padded input."""
        out_channels, kh, kw, _ = w.shape
        matrix = w.reshape(out_channels, -1).T
        if (kh, kw) == (1, 1) and conv.strides == [1, 1] and not any(conv.padding):
            return self.dense_on_tiles(data, matrix)
        return self.dense_on_tiles(self.pad(data, conv.nhwc_pads()), matrix, Windows(kh, kw, conv.strides, conv.dilation))


@dataclass(frozen=True)
class Windows:
    """The kh × kw windows of a convolution (strides, dilation) over a padded NHWC tensor, as the
    rows of a matrix product."""

    kh: int
    kw: int
    strides: list[int]
    dilation: list[int]

    def out_pixels(self, shape: list[int]) -> list[int]:
        """[N, OH, OW] of an [N, H, W, C] input."""
        n, height, width, _ = shape
        return [n, kc.windows(height, self.kh, self.strides[0], self.dilation[0]),
                kc.windows(width, self.kw, self.strides[1], self.dilation[1])]
