"""What the kernel dispatch passes (dispatch.py: int8, fp32.py: float32) share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..passes.graph import CallRewriter


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


def depthwise_taps(weight: np.ndarray) -> np.ndarray:
    """A depthwise OHWI weight [C, KH, KW, 1] as taps [KH, KW, C]."""
    return np.ascontiguousarray(weight[:, :, :, 0].transpose(1, 2, 0))


class KernelDispatch(CallRewriter):
    """The base of the kernel dispatch passes (subclassed under @relax.expr_functor.mutator):
    conv2d and matmul calls go to the methods of those names (a subclass may add ops)."""

    HANDLERS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}
