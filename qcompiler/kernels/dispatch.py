"""Replace realized int8 convolutions and matmuls by qcompiler's VNNI kernels (x86 with AVX-512 VNNI).

Runs on the Relax module before legalization. A call is replaced when its operands are what
the kernels take — uint8 activations, int8 constant weights, int32 output:

  conv2d NHWC/OHWI, groups = 1        → conv2d_nhwc_vnni, weights packed [O/16, H, W, I/4, 16, 4]
  conv2d NHWC/OHWI, depthwise         → depthwise_nhwc, weights [H, W, C]
  matmul [M, K] × constant [K, N]     → dense_vnni, weights packed [N/16, K/4, 16, 4]

Spatial padding becomes an explicit pad (value 0: realize has already padded asymmetric
activations with their zero point), input channels are zero-padded to a multiple of 4 and
output channels computed to a multiple of 16 (the kernel drops the padded ones). Other calls are left to TVM's
legalization. Packing happens here, once, at compile time.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.target import codegen

from ..passes.graph import Constant, const, constant_value, conv_channel_axis, op_name
from . import compute as kc
from .vnni import REDUCE


def has_vnni(target: tvm.target.Target) -> bool:
    """True for LLVM x86 targets whose CPU has AVX-512 VNNI (`vpdpbusd`)."""
    return target.kind.name == "llvm" and bool(codegen.target_has_features("avx512vnni", target))


def _shape(expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


@relax.expr_functor.mutator
class _Int8KernelDispatch(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod_ = mod

    def kernel(self, name: str, compute, inputs: list, arrays: list) -> relax.Expr:
        """call_tir of `compute` over Relax `inputs` (tensors) and constant `arrays`."""
        holders = [te.placeholder(kc.shape64(*_shape(x)), _dtype(x), f"in{i}") for i, x in enumerate(inputs)]
        holders += [te.placeholder(kc.shape64(*a.shape), str(a.dtype), f"w{i}") for i, a in enumerate(arrays)]
        out = compute(*holders)
        gvar = self.builder_.add_func(te.create_prim_func([*holders, out]).without_attr("global_symbol"), name)
        out_ty = relax.TensorType([int(d) for d in out.shape], str(out.dtype))
        return relax.call_tir(gvar, [*inputs, *[const(a) for a in arrays]], out_ty)  # bound to the call's var

    def pad(self, data, pads: list[tuple[int, int]]):
        if not any(lo or hi for lo, hi in pads):
            return data
        return self.builder_.emit(relax.op.nn.pad(data, [p for pair in pads for p in pair], pad_value=0.0))

    def conv2d(self, call) -> relax.Expr | None:
        attrs = call.attrs
        data, weight = call.args
        if not (conv_channel_axis(call) == 3 and str(attrs.out_dtype) == "int32"
                and _dtype(data) == "uint8" and isinstance(weight, Constant)):
            return None
        w = constant_value(weight)
        if w.dtype != np.int8:
            return None
        out_channels, _, _, in_per_group = w.shape
        channels = _shape(data)[3]
        groups = int(attrs.groups)
        top, left, bottom, right = (int(p) for p in attrs.padding)
        strides = [int(s) for s in attrs.strides]
        dilation = [int(d) for d in attrs.dilation]
        if groups == 1:
            extra = -channels % REDUCE
            data = self.pad(data, [(0, 0), (top, bottom), (left, right), (0, extra)])
            return self.kernel("conv2d_nhwc_u8s8_vnni",
                               lambda x, wp: kc.conv2d_nhwc_vnni(x, wp, strides, dilation, out_channels),
                               [data], [kc.pack_conv_weight(w)])
        if groups == channels == out_channels and in_per_group == 1:
            data = self.pad(data, [(0, 0), (top, bottom), (left, right), (0, 0)])
            taps = np.ascontiguousarray(w[:, :, :, 0].transpose(1, 2, 0))
            return self.kernel("depthwise_nhwc_u8s8",
                               lambda x, wd: kc.depthwise_nhwc(x, wd, strides, dilation), [data], [taps])
        return None

    def matmul(self, call) -> relax.Expr | None:
        data, weight = call.args
        if not (str(call.attrs.out_dtype) == "int32" and _dtype(data) == "uint8" and len(_shape(data)) == 2
                and isinstance(weight, Constant)):
            return None
        w = constant_value(weight)
        if w.dtype != np.int8 or w.ndim != 2:
            return None
        data = self.pad(data, [(0, 0), (0, -w.shape[0] % REDUCE)])
        return self.kernel("dense_u8s8_vnni", lambda x, wp: kc.dense_vnni(x, wp, w.shape[1]), [data],
                           [kc.pack_dense_weight(w)])

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


def dispatch_int8_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with its int8 convolutions and matmuls on VNNI kernels, if `target` has VNNI."""
    if not has_vnni(target):
        return mod
    return _Int8KernelDispatch(mod).run()

