"""What the kernel dispatch passes (dispatch.py: int8, fp32.py: float32) share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..passes.graph import op_name, rewrite_relax_functions


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


class KernelDispatch(relax.PyExprMutator):
    """The base of the kernel dispatch passes (subclassed under @relax.expr_functor.mutator): each
    call of an op in HANDLERS goes to the method named there (conv2d and matmul here; a subclass
    may add ops), which returns its replacement or None to keep it; `run` rewrites every Relax
    function of the module given as `mod_`."""

    HANDLERS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}

    def visit_call_(self, call):
        call = super().visit_call_(call)
        handler = self.HANDLERS.get(op_name(call))
        replaced = getattr(self, handler)(call) if handler is not None else None
        return call if replaced is None else replaced

    def run(self) -> tvm.IRModule:
        return rewrite_relax_functions(self, self.mod_)
