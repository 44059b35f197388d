"""What the kernel dispatch passes (dispatch.py: int8, fp32.py: float32) share."""

from __future__ import annotations

import tvm
from tvm import relax

from ..passes.graph import op_name


class KernelDispatch(relax.PyExprMutator):
    """The base of the kernel dispatch passes (subclassed under @relax.expr_functor.mutator): each
    conv2d and matmul call goes to `self.conv2d` / `self.matmul`, which return its replacement
    or None to keep it; `run` rewrites every Relax function of the module given as `mod_`."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = op_name(call)
        replaced = None
        if name == "relax.nn.conv2d":
            replaced = self.conv2d(call)
        elif name == "relax.matmul":
            replaced = self.matmul(call)
        return call if replaced is None else replaced

    def run(self) -> tvm.IRModule:
        for gvar, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()
