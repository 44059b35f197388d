"""Intermediate tensors made once per VM, not on every run.

TVM's static memory planner (StaticPlanBlockMemory) gives `main` a few storages, each allocated
from the VM's pooled allocator on every run, and places the intermediate tensors in them (a
tensor object per intermediate, created on every run). With static shapes both are the same on
every run, so `lift_workspace` moves them into a function of their own,

    qc_workspace() -> (t_0, ..., t_k-1)     the planned storages, allocated once, and the
                                            intermediate tensors placed in them

and makes the tensors parameters of `main` after its inputs and weights. Storages whose memory
`main` returns (its outputs, which TVM allocates like the others) stay in `main`. A runtime calls
`qc_workspace` once for each VM it creates and passes its tensors to every run of that VM
(deploy/qc_runtime.c, qcompiler/runtime.py): a run then allocates only its outputs, which it
hands to the caller. Concurrent runs use different VMs, hence different workspaces.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .passes.graph import op_name, with_main

FUNCTION = "qc_workspace"

_ALLOC_STORAGE = "relax.vm.alloc_storage"
_ALLOC_TENSOR = "relax.vm.alloc_tensor"
_KILL = "relax.vm.kill_object"


def _static_shape(expr) -> bool:
    return isinstance(expr, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in expr.values)


def _vars_in(expr) -> list:
    """The Relax variables `expr` refers to (through call arguments and tuple fields)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for field in expr.fields for v in _vars_in(field)]
    if isinstance(expr, relax.Call):
        return [v for arg in expr.args for v in _vars_in(arg)]
    return []


def _escaping(bindings: list, result) -> set:
    """Variables whose memory the function may return: those in `result` and, transitively,
    whatever the bindings of those were made from (a storage, a reshaped tensor)."""
    escaping = set(_vars_in(result))
    for b in reversed(bindings):
        if b.var in escaping:
            escaping.update(_vars_in(b.value))
    return escaping


def _planned(bindings: list, result) -> tuple[set, list]:
    """The storages of static size that hold only static tensors none of which is returned
    (outputs get storages of their own, handed to the caller), and the bindings of those
    storages and tensors in order."""
    escaping = _escaping(bindings, result)
    storages = {b.var for b in bindings if op_name(b.value) == _ALLOC_STORAGE and _static_shape(b.value.args[0])
                and b.var not in escaping}
    for b in bindings:
        value = b.value
        if not isinstance(value, relax.Call) or op_name(value) == _KILL:
            continue
        args = list(value.args)
        if op_name(value) == _ALLOC_TENSOR and _static_shape(args[2]) and isinstance(args[1], tvm.tirx.IntImm):
            args = args[1:]  # args[0] is the storage it places a static tensor in: a use that keeps it
        storages.difference_update(args)  # any other use of a storage keeps it in `main`
    lifted = [b for b in bindings
              if b.var in storages or (op_name(b.value) == _ALLOC_TENSOR and b.value.args[0] in storages)]
    return storages, lifted


def lift_workspace(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` (after TVM's finalize passes) with `main`'s planned storages and the tensors placed
    in them made once by `qc_workspace`, and those tensors parameters of `main` after the others."""
    func = mod["main"]
    if not isinstance(func.body, relax.SeqExpr):
        return mod
    bindings = [b for block in func.body.blocks for b in block.bindings]
    storages, lifted = _planned(bindings, func.body.body)
    tensors = [b.var for b in lifted if b.var not in storages]
    if not tensors:
        return mod
    params = {var: relax.Var(var.name, var.ty) for var in tensors}
    dropped = {b.var for b in lifted}

    @relax.expr_functor.mutator
    class _Hoist(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            value = binding.value
            if binding.var in dropped or (op_name(value) == _KILL and value.args[0] in dropped):
                return  # made by qc_workspace, owned by the caller
            super().visit_var_binding_(binding)

        def visit_var_(self, var):
            return params.get(var, var)

    body = _Hoist(mod).visit_expr(func.body)
    new_main = relax.Function(list(func.params) + [params[v] for v in tensors], body, func.ret_ty, func.is_pure,
                              func.attrs, func.span)
    workspace = relax.Function([], relax.SeqExpr([relax.BindingBlock(lifted)], relax.Tuple(tensors)),
                               relax.TupleType([v.ty for v in tensors]), True,
                               tvm.ir.make_node("ir.DictAttrs", **{"global_symbol": FUNCTION, "relax.force_pure": True}))
    out = with_main(mod, new_main)
    out[FUNCTION] = workspace
    return out
