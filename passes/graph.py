"""A read-only view of a Relax dataflow function: bindings, users and constant values."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import tvm
from tvm import relax

Constant = tvm.ir.expr.Constant  # relax constants are tvm.ir.expr.GenericConst in TVM 0.27


def constant_value(expr) -> np.ndarray:
    """The numpy value of a Relax constant (scalar constants may hold a plain Python number)."""
    value = expr.value
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def const(value: np.ndarray, dtype: str | None = None):
    """A Relax constant holding exactly `value` (in `dtype` when given)."""
    array = np.ascontiguousarray(value if dtype is None else np.asarray(value).astype(dtype))
    return relax.const(array, str(array.dtype))


def float32_constant(expr, min_size: int = 0) -> np.ndarray | None:
    """The value of `expr` if it is a float32 constant of at least `min_size` elements, else None
    (the weights the weight-storage strategies convert)."""
    if not isinstance(expr, Constant):
        return None
    value = constant_value(expr)
    return value if value.dtype == np.float32 and value.size >= min_size else None


def is_float32(expr) -> bool:
    """Whether `expr` is a float32 tensor."""
    return isinstance(expr.ty, relax.TensorType) and str(expr.ty.dtype) == "float32"


def op_name(expr) -> str | None:
    """'relax.nn.conv2d' for a call of that operator, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


CONV_LAYOUTS = {("NCHW", "OIHW", "NCHW"): 1, ("NHWC", "OHWI", "NHWC"): 3}  # → the output's channel axis


def conv_channel_axis(call) -> int | None:
    """The output channel axis of a conv2d in a layout qcompiler handles (NCHW/OIHW: 1,
    NHWC/OHWI: 3), or None for any other layout."""
    attrs = call.attrs
    return CONV_LAYOUTS.get((str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)))


class FunctionView:
    """Bindings of `main` in order, each var's defining value and its users."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.bindings = [b for block in func.body.blocks for b in block.bindings]
        self.value = {b.var: b.value for b in self.bindings}
        self.users: dict = defaultdict(list)
        for b in self.bindings:
            for arg in _var_args(b.value):
                self.users[arg].append(b.var)
        self.outputs = set(_var_args(func.body.body)) | ({func.body.body} if isinstance(func.body.body, relax.Var) else set())
        # Outputs pass through `gv = lv` aliases: resolve them.
        for b in self.bindings:
            if isinstance(b.value, relax.Var) and b.var in self.outputs:
                self.outputs.add(b.value)

    def producer_op(self, expr) -> str | None:
        return op_name(self.value.get(expr)) if isinstance(expr, relax.Var) else None

    def single_user(self, var):
        users = self.users.get(var, [])
        if len(users) == 1 and var not in self.outputs:
            return users[0]
        return None

    def constant(self, expr) -> np.ndarray | None:
        """The value of `expr` if it is a constant, or a reshape/permute/astype chain of one."""
        if isinstance(expr, Constant):
            return constant_value(expr)
        if isinstance(expr, relax.Var) and expr in self.value:
            value = self.value[expr]
            name = op_name(value)
            if name in ("relax.reshape", "relax.permute_dims", "relax.astype", "relax.expand_dims", "relax.squeeze"):
                inner = self.constant(value.args[0])
                if inner is None:
                    return None
                if name == "relax.reshape":
                    return inner.reshape([int(d) for d in value.ty.shape.values])
                if name == "relax.permute_dims":
                    axes = value.attrs.axes
                    return np.transpose(inner, None if axes is None else [int(a) for a in axes])
                if name == "relax.astype":
                    return inner.astype(str(value.attrs.dtype))
                return inner.reshape([int(d) for d in value.ty.shape.values])
            if isinstance(value, Constant):
                return constant_value(value)
        return None


    def other_constant(self, var, operand) -> np.ndarray | None:
        """The value of binary op `var`'s operand beside `operand`, if it is a constant."""
        args = self.value[var].args
        return self.constant(args[1] if args[0].same_as(operand) else args[0])

    def constant_index(self, var) -> int:
        """Which argument of binary op `var` is the constant one (1 where both could be)."""
        return 1 if self.constant(self.value[var].args[1]) is not None else 0


def _var_args(expr):
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        out = []
        for arg in expr.args:
            out += _var_args(arg) if isinstance(arg, (relax.Var, relax.Tuple)) else []
        return out
    if isinstance(expr, relax.Tuple):
        out = []
        for field in expr.fields:
            out += _var_args(field)
        return out
    if isinstance(expr, relax.TupleGetItem):
        return _var_args(expr.tuple_value)
    return []


class CallRewriter(relax.PyExprMutator):
    """The base of the passes that replace calls of some ops (subclassed under
    @relax.expr_functor.mutator; a subclass sets `mod_` to the module it was made over): each
    call of an op in HANDLERS goes to the method named there, which returns its replacement or
    None to keep it; `run` rewrites every Relax function of `mod_`."""

    HANDLERS: dict[str, str] = {}

    def visit_call_(self, call):
        call = super().visit_call_(call)
        handler = self.HANDLERS.get(op_name(call))
        replaced = getattr(self, handler)(call) if handler is not None else None
        return call if replaced is None else replaced

    def run(self) -> tvm.IRModule:
        for gvar, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()


def shape_of(var) -> tuple[int, ...]:
    return tuple(int(d) for d in var.ty.shape.values)


def along_axis(values: np.ndarray, axis: int, shape: tuple[int, ...]) -> bool:
    """Whether `values` holds one value per index of `axis` of a tensor of `shape`, shaped to
    broadcast along that axis only (e.g. (C,) or (1, 1, 1, C) for NHWC channels)."""
    expected = [1] * len(shape)
    expected[axis] = shape[axis]
    return values.ndim <= len(shape) and (1,) * (len(shape) - values.ndim) + tuple(values.shape) == tuple(expected)


def with_main(mod: tvm.IRModule, func: relax.Function) -> tvm.IRModule:
    """A copy of `mod` (helper PrimFuncs included) whose `main` is `func`."""
    new = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    new["main"] = func
    return new


def expose(mod: tvm.IRModule, tensors: list) -> tvm.IRModule:
    """`mod` whose `main` returns its outputs followed by `tensors` (vars bound in `main`)."""
    func = mod["main"]
    body = func.body
    original = body.body
    outputs = list(original.fields) if isinstance(original, relax.Tuple) else [original]
    blocks = list(body.blocks)
    last = blocks[-1]
    bindings = list(last.bindings)
    exposed = []
    params = set(func.params)
    for tensor in tensors:
        if tensor in params:
            exposed.append(tensor)
            continue
        out_var = relax.Var(f"exposed_{tensor.name}", tensor.ty)  # a dataflow block output
        bindings.append(relax.VarBinding(out_var, tensor))
        exposed.append(out_var)
    block_type = relax.DataflowBlock if isinstance(last, relax.DataflowBlock) else relax.BindingBlock
    blocks[-1] = block_type(bindings)
    results = [*outputs, *exposed]
    new_body = relax.SeqExpr(blocks, relax.Tuple(results))
    new_func = relax.Function(func.params, new_body, relax.TupleType([r.ty for r in results]), func.is_pure, func.attrs)
    return with_main(mod, new_func)
