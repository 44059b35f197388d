"""channels_last: run a convolution network in NHWC (weights OHWI) instead of NCHW (OIHW).

Integer dot-product instructions (x86 VNNI `vpdpbusd`, ARM `sdot`) reduce over 4 consecutive
input channels of one pixel, so their convolutions want the channels innermost. Converting the
whole function once keeps every consecutive op in NHWC: a layout transform appears only where
the network leaves the convolutional part (a reshape, a matmul, the outputs).

Every 4-D value is either in its original layout or channels-last, i.e. stored as
`permute_dims(x, [0, 2, 3, 1])` of the original. The rewrite, per op:

  conv2d NCHW / OIHW              NHWC / OHWI, weights transposed at compile time
  conv2d_transpose NCHW           unchanged, its result transposed to NHWC at once (kernels/fp32.py
                                  runs it channels-last and cancels the transposes around it)
  max_pool2d / avg_pool2d NCHW    NHWC
  mean over axes {2, 3}           mean over {1, 2} (its result keeps the layout iff keepdims)
  concat along axis 1             along axis 3
  elementwise unary               unchanged; the result keeps its input's layout
  prelu along axis 1 (1-D slope)  along axis 3
  elementwise binary              unchanged when every operand is channels-last, a scalar or a
                                  constant (constants are transposed at compile time)
  permute_dims(x, [0, 3, 1, 2])   nothing: x is its channels-last form (an NHWC model's input
                                  transposed to NCHW costs no copy)
  permute_dims(x, [0, 2, 3, 1])   nothing, where x is channels-last: the result is x's stored form
  anything else                   operands transposed back to the original layout first

The function's outputs are returned in their original layout, so callers see no difference.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .graph import Constant, const, constant_value, conv_channel_axis, op_name, with_main

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]

UNARY_OPS = frozenset({
    "relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.exp", "relax.nn.silu",
    "relax.nn.gelu", "relax.nn.leakyrelu", "relax.negative", "relax.abs", "relax.sqrt", "relax.rsqrt",
    "relax.log", "relax.erf", "relax.round", "relax.floor", "relax.ceil", "relax.astype",
})
BINARY_OPS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
    "relax.power",
})
POOL_OPS = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d"})


def _rank(expr) -> int | None:
    ty = getattr(expr, "ty", None)
    return int(ty.ndim) if isinstance(ty, relax.TensorType) and ty.ndim >= 0 else None


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


class _ChannelsLast:
    def __init__(self, func: relax.Function):
        self.func = func
        self.bb = relax.BlockBuilder()
        self.env: dict = {}        # original var → new expr (in the layout recorded below)
        self.last: set = set()     # original vars whose new expr is channels-last
        self.nchw_cache: dict = {}
        self.renamed: dict = {}    # original var → new var holding the same value and layout

    def emit(self, expr, name: str = ""):
        return self.bb.emit(expr, name)

    def original(self, expr):
        """`expr` rewritten, in its original layout."""
        if isinstance(expr, relax.Var) and expr in self.env:
            if expr not in self.last:
                return self.env[expr]
            if expr not in self.nchw_cache:
                self.nchw_cache[expr] = self.emit(relax.op.permute_dims(self.env[expr], TO_NCHW))
            return self.nchw_cache[expr]
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.original(f) for f in expr.fields])
        return expr

    def channels_last(self, expr):
        """`expr` rewritten, channels-last (a 4-D tensor)."""
        if isinstance(expr, relax.Var) and expr in self.last:
            return self.env[expr]
        if isinstance(expr, Constant):
            return const(np.transpose(constant_value(expr), TO_NHWC))
        return self.emit(relax.op.permute_dims(self.original(expr), TO_NHWC))

    def binary_operand(self, expr):
        """`expr` as an operand of a channels-last elementwise op, or None if it cannot be one."""
        if isinstance(expr, relax.Var) and expr in self.last:
            return self.env[expr]
        if isinstance(expr, Constant):
            value = constant_value(expr)
            if value.size == 1:
                return expr
            if value.ndim > 4:
                return None
            return const(np.transpose(value.reshape((1,) * (4 - value.ndim) + value.shape), TO_NHWC))
        if _rank(expr) == 4:
            return self.channels_last(expr)
        return None

    def rewrite(self, var, call) -> tuple[relax.Expr, bool] | None:
        """(new value, is channels-last) for ops with a channels-last form, else None."""
        name = op_name(call)
        attrs = call.attrs
        if name == "relax.nn.conv2d" and conv_channel_axis(call) == 1 and isinstance(call.args[1], Constant):
            weight = np.transpose(constant_value(call.args[1]), TO_NHWC)  # OIHW → OHWI
            return relax.op.nn.conv2d(
                self.channels_last(call.args[0]), const(weight), strides=attrs.strides, padding=attrs.padding,
                dilation=attrs.dilation, groups=attrs.groups, data_layout="NHWC", kernel_layout="OHWI",
                out_layout="NHWC", out_dtype=attrs.out_dtype), True
        if name == "relax.nn.conv2d_transpose" and str(attrs.data_layout) == "NCHW" and str(attrs.out_layout) == "NCHW":
            transposed = self.emit(relax.Call(call.op, [self.original(a) for a in call.args], attrs, call.ty_args))
            return relax.op.permute_dims(transposed, TO_NHWC), True
        if name in POOL_OPS and str(attrs.layout) == "NCHW" and str(attrs.out_layout) == "NCHW":
            pool = relax.op.nn.max_pool2d if name == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
            return pool(self.channels_last(call.args[0]), pool_size=attrs.pool_size, strides=attrs.strides,
                        padding=attrs.padding, dilation=attrs.dilation, ceil_mode=attrs.ceil_mode,
                        count_include_pad=attrs.count_include_pad, layout="NHWC", out_layout="NHWC"), True
        source = call.args[0] if call.args else None
        if name == "relax.mean" and source in self.last and attrs.axis is not None \
                and sorted(int(a) % 4 for a in attrs.axis) == [2, 3]:
            keep = bool(attrs.keepdims)
            return relax.op.mean(self.env[source], axis=[1, 2], keepdims=keep), keep
        if name == "relax.concat" and isinstance(source, relax.Tuple) and int(attrs.axis) % 4 == 1 \
                and all(_rank(f) == 4 for f in source.fields) and any(f in self.last for f in source.fields):
            return relax.op.concat([self.channels_last(f) for f in source.fields], axis=3), True
        if name == "relax.nn.prelu" and source in self.last and int(attrs.axis) % 4 == 1 and _rank(call.args[1]) == 1:
            return relax.op.nn.prelu(self.env[source], call.args[1], axis=3), True
        if name in UNARY_OPS and source in self.last:
            return relax.Call(call.op, [self.env[source], *call.args[1:]], attrs, call.ty_args), True
        if name in BINARY_OPS and _rank(var) == 4 and any(a in self.last for a in call.args):
            operands = [self.binary_operand(a) for a in call.args]
            if all(o is not None for o in operands):
                return relax.Call(call.op, operands, attrs, call.ty_args), True
        return None

    def visit(self, var, value):
        if isinstance(value, relax.Var):
            self.env[var] = self.renamed[var] = self.env.get(value, value)
            if value in self.last:
                self.last.add(var)
            return
        if op_name(value) == "relax.permute_dims" and _axes(value) == TO_NCHW and _rank(value.args[0]) == 4:
            # An NHWC model's transpose to NCHW: channels-last, its value is the operand itself
            # (no var of its own holds it: it stays out of `renamed`).
            self.env[var] = self.original(value.args[0])
            self.last.add(var)
            return
        if op_name(value) == "relax.permute_dims" and _axes(value) == TO_NHWC and value.args[0] in self.last:
            # A transpose to NHWC of a channels-last value (a Keras flatten) is its channels-last form.
            self.env[var] = self.env[value.args[0]]
            return
        rewritten = self.rewrite(var, value) if isinstance(value, relax.Call) else None
        if rewritten is not None:
            expr, is_last = rewritten
            new = self.emit(expr, var.name)
            if is_last:
                self.last.add(var)
        elif isinstance(value, relax.Call):
            new = self.emit(relax.Call(value.op, [self.original(a) for a in value.args], value.attrs, value.ty_args),
                            var.name)
        elif isinstance(value, relax.Tuple):
            new = self.emit(self.original(value), var.name)
        elif isinstance(value, relax.TupleGetItem):
            new = self.emit(relax.TupleGetItem(self.original(value.tuple_value), value.index), var.name)
        else:
            new = self.emit(value, var.name)
        self.env[var] = new
        self.renamed[var] = new

    def run(self) -> relax.Function:
        params = [relax.Var(p.name, p.ty) for p in self.func.params]
        self.env.update(zip(self.func.params, params))
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with self.bb.function("main", params, attrs=attrs):
            with self.bb.dataflow():
                for block in self.func.body.blocks:
                    for binding in block.bindings:
                        self.visit(binding.var, binding.value)
                output = self.bb.emit_output(self.original(self.func.body.body))
            self.bb.emit_func_output(output)
        return self.bb.get()["main"]


def channels_last(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict]:
    """`mod` with its convolutional part in NHWC, and a map from each original bound var of
    `main` to the new var that holds its value (channels-last where the op was converted)."""
    rewriter = _ChannelsLast(mod["main"])
    func = rewriter.run()
    return with_main(mod, func), rewriter.renamed
