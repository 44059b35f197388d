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
    to the tile engine: one that fills at least half of a 32 × 32 block and a whole tile row of K
    (smaller ones stay on the vector instruction, which wastes no padding)."""
    return rows >= amx.ROWS and depth >= product.row_elements and out_channels >= amx.ROWS


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
                    name: str) -> relax.Expr:
        """`data` [..., K] (of the product's A type) × constant `w` [K, N] on the tile engine
        (amx.py): the rows flattened and padded to a multiple of 32, K to a whole tile row
        (zeros), N computed to a multiple of 32 (`w` packed as for `dp`); the kernel `name`
        keeps the real rows and channels."""
        *leading, depth = shape_of(data)
        rows, out_channels = math.prod(leading), w.shape[1]
        matrix = data if len(leading) == 1 else self.builder_.emit(relax.op.reshape(data, [rows, depth]))
        matrix = self.pad(matrix, [(0, -rows % amx.BLOCK), (0, -depth % product.row_elements)])
        packed = kc.pack_dense_weight(w, dp, n_multiple=amx.BLOCK, k_multiple=product.row_elements)
        block = engine.dense_block(product)
        return self.kernel(name, lambda x, wp: kc.dense_matrix_tiles(x, wp, block, leading, out_channels, product.c_dtype),
                           [matrix], [packed])

    def conv_on_tiles(self, data, w: np.ndarray, conv: ConvAttrs) -> relax.Expr:
        """A groups = 1 NHWC convolution (OHWI weight `w`) as the subclass's `dense_on_tiles`
        (activation rows [..., K] × a constant [K, O]): a 1×1 stride-1 one over its pixels
        directly, any other over its windows as columns (`compute.im2col_nhwc`, K = KH·KW·C)."""
        out_channels, kh, kw, channels = w.shape
        matrix = w.reshape(out_channels, -1).T
        if (kh, kw) == (1, 1) and conv.strides == [1, 1] and not any(conv.padding):
            return self.dense_on_tiles(data, matrix)
        padded = self.pad(data, conv.nhwc_pads())
        cols = self.builder_.emit(self.kernel(
            "im2col_nhwc", lambda x: kc.im2col_nhwc(x, kh, kw, conv.strides, conv.dilation), [padded]))
        n, out_h, out_w = shape_of(cols)[:3]
        return self.dense_on_tiles(self.builder_.emit(relax.op.reshape(cols, [n, out_h, out_w, kh * kw * channels])),
                                   matrix)
