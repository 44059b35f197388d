"""simulate: the fake-quantized (QDQ) form of a model — quantize → dequantize in float.

Each quantized tensor t is followed by `dequantize(quantize(t))` with its calibrated
parameters, and every later use of t reads the dequantized value, except where t is computed
in float (a model input, a float op's output): there only the ops that run on its integers (the
quantized ops that read it, the layout ops that carry its quantization, the unary regions that
become its lookup table) read the dequantized value, and float ops keep reading t itself (a
transformer's residual add reads LayerNorm's output, not its 8-bit copy). Each anchor's constant
weight becomes `dequantize(int8 weight)` with per-channel (or per-tensor) scales. This module
computes in float what the integer model computes, up to rounding of requantization; it is
the debugging mode, and the input `realize` turns into integer kernels — the same form a
pre-quantized ONNX QDQ model imports as.

`Corrections` change what the weights become: int8 values rounded otherwise than to nearest
(AdaRound) and a per-channel shift of an anchor's bias (bias correction, emitted as a bias
add where the anchor has none; realize folds it into the accumulator's offset).

With `switches`, `main` takes one more input, a float32 vector s (SWITCHES_INPUT): anchor i
computes y(w) + s[i]·(y(dq(w_q)) − y(w)) (the op is linear in its weight, so this is y with
weight w + s[i]·(dq(w_q) − w), while both products keep constant weights) and its bias shift
s[i]·δ; tensor j (observer key j) becomes t + s[n + j]·(qdq(t) − t), n anchors. s = 0 computes the fp32 model, s = 1 the fake-quant
one, and any mix a model with some ops in fp32: one compiled module serves the accuracy
search's every trial (switch_values gives s for a set of ops kept in float).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .annotate import CARRY_OPS, AnnotationPlan, unary_sources
from .graph import FunctionView, const, conv_channel_axis, op_name, shape_of, with_main
from .qconfig import QConfig, QParams, quantize_weight, weight_scales

SWITCHES_INPUT = "qc_switches"


@dataclass
class Corrections:
    """Per anchor var: int8 weight values replacing round-to-nearest (same scales), and a
    float per-output-channel shift added to the anchor's bias."""

    weights: dict = field(default_factory=dict)
    bias: dict = field(default_factory=dict)


def _qdq(builder, value, params: QParams):
    q = builder.emit(relax.op.quantize(value, const(np.float32(params.scale)), const(np.int32(params.zero_point)),
                                       axis=-1, out_dtype=params.dtype))
    return builder.emit(relax.op.dequantize(q, const(np.float32(params.scale)), const(np.int32(params.zero_point)),
                                            axis=-1, out_dtype="float32"))


def _mix(builder, exact, quantized, switch):
    """exact + switch · (quantized − exact)."""
    delta = builder.emit(relax.op.subtract(quantized, exact))
    return builder.emit(relax.op.add(exact, builder.emit(relax.op.multiply(delta, switch))))


def channel_shaped(values: np.ndarray, anchor_call, out_rank: int) -> np.ndarray:
    """Per-output-channel `values` shaped to broadcast against the anchor's output (conv: its
    channel axis; matmul: the last axis)."""
    axis = conv_channel_axis(anchor_call) if op_name(anchor_call) == "relax.nn.conv2d" else out_rank - 1
    shape = [1] * (out_rank - axis)
    shape[0] = -1
    return np.asarray(values, np.float32).reshape(shape)


def switch_values(plan: AnnotationPlan, kept: AnnotationPlan) -> np.ndarray:
    """The switches of `plan`'s module that compute what `kept` quantizes (an annotation of the
    same module with more ops skipped): 1 for its anchors and tensors, 0 elsewhere."""
    kept_ops = {op.var for op in kept.ops}
    ops = [1.0 if op.var in kept_ops else 0.0 for op in plan.ops]
    tensors = [1.0 if any(var in kept.keys for var in plan.tensors_of(key)) else 0.0 for key in plan.observer_keys]
    return np.array(ops + tensors, np.float32)


def quantized_weight(weight: np.ndarray, axis: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scales) for an anchor's weight."""
    scales = weight_scales(weight, axis if per_channel else None)
    wq = quantize_weight(weight, scales, axis if per_channel else None)
    if not per_channel:
        scales = np.repeat(scales, weight.shape[axis])
    return wq, scales.astype(np.float32)


def insert_qdq(
    mod: tvm.IRModule, plan: AnnotationPlan, qparams: dict[str, QParams], config: QConfig,
    corrections: Corrections | None = None, switches: bool = False,
) -> tuple[tvm.IRModule, dict]:
    """The QDQ (fake-quant) module for `plan` with calibrated `qparams` (per observer key),
    and for each observer key the dequantized var that carries it in that module; an op whose
    output stays float (no key) is there under its output var, with the var that computes it."""
    dequantized_of: dict = {}
    float_outputs = {op.output for op in plan.ops if op.output not in plan.keys}
    corrections = corrections or Corrections()
    weights = {op.var: op for op in plan.ops if op.weight is not None}
    op_index = {op.var: i for i, op in enumerate(plan.ops)}
    key_index = {key: len(plan.ops) + j for j, key in enumerate(plan.observer_keys)}
    switch_var = relax.Var(SWITCHES_INPUT, relax.TensorType([len(key_index) + len(op_index)], "float32")) \
        if switches else None

    params = [p for p in mod["main"].params if p in plan.keys]
    float_readers = float_readers_of(mod, plan)

    @relax.expr_functor.mutator
    class InsertQDQ(relax.PyExprMutator):
        started = False

        def __init__(self, module):
            super().__init__(module)
            self.computed: dict = {}  # quantized tensor → its float value, as emitted
            self.fake: dict = {}  # quantized tensor → its dequantize(quantize(·))

        def switch(self, index: int):
            return self.builder_.emit(relax.op.strided_slice(switch_var, [0], [index], [index + 1]))

        def fake_quantized(self, value, key: str):
            dequantized = _qdq(self.builder_, value, qparams[key])
            return dequantized if switch_var is None else _mix(self.builder_, value, dequantized,
                                                                self.switch(key_index[key]))

        def visit_var_binding_(self, binding):
            if not self.started:  # quantized model inputs: fake-quantize before the first binding
                self.started = True
                for param in params:
                    dequantized = self.fake_quantized(param, plan.keys[param])
                    dequantized_of.setdefault(plan.keys[param], dequantized)
                    self.set_var_remap(param, dequantized)
                    self.computed[param], self.fake[param] = param, dequantized
            var = binding.var
            reads_float = [t for t in float_readers.get(var, ()) if t in self.computed]
            for tensor in reads_float:  # this float op reads these float tensors themselves
                self.set_var_remap(tensor, self.computed[tensor])
            if var in weights:
                op = weights[var]
                wq, scales = quantized_weight(op.weight, op.weight_axis, config.per_channel)
                wq = corrections.weights.get(var, wq)
                call = binding.value
                data = self.visit_expr(call.args[0])
                switch = None if switch_var is None else self.switch(op_index[var])
                if switch is None:
                    weight = self.builder_.emit(relax.op.dequantize(
                        const(wq), const(scales), const(np.zeros(scales.shape, np.int32)),
                        axis=op.weight_axis, out_dtype="float32"))
                    new_var = self.builder_.emit(relax.Call(call.op, [data, weight], call.attrs, call.ty_args), var.name)
                else:  # linear in the weight: both products keep constant weights (packed, fast kernels)
                    shape = [1] * wq.ndim
                    shape[op.weight_axis] = -1
                    dequantized = (wq.astype(np.float32) * scales.reshape(shape)).astype(np.float32)
                    exact, quantized = (self.builder_.emit(relax.Call(call.op, [data, const(w)], call.attrs, call.ty_args))
                                        for w in (op.weight.astype(np.float32), dequantized))
                    new_var = _mix(self.builder_, exact, quantized, switch)
                if var in corrections.bias:
                    shift = const(channel_shaped(corrections.bias[var], call, len(shape_of(var))))
                    if switch is not None:
                        shift = self.builder_.emit(relax.op.multiply(shift, switch))
                    new_var = self.builder_.emit(relax.op.add(new_var, shift), var.name)
                self.set_var_remap(var, new_var)
            else:
                super().visit_var_binding_(binding)
            for tensor in reads_float:
                self.set_var_remap(tensor, self.fake[tensor])
            if var in plan.keys:
                emitted = self.get_var_remap(var) if self.get_var_remap(var) is not None else var
                dequantized = self.fake_quantized(emitted, plan.keys[var])
                dequantized_of.setdefault(plan.keys[var], dequantized)
                self.set_var_remap(var, dequantized)
                self.computed[var], self.fake[var] = emitted, dequantized
            elif var in float_outputs:  # (reading the remap makes an entry: set it)
                emitted = self.get_var_remap(var) if self.get_var_remap(var) is not None else var
                dequantized_of[var] = emitted
                self.set_var_remap(var, emitted)

    mutator = InsertQDQ(mod)
    func = mutator.visit_expr(mod["main"])
    if switch_var is not None:
        func = relax.Function(list(func.params) + [switch_var], func.body, func.ret_ty, func.is_pure, func.attrs)
    return with_main(mod, func), dequantized_of


def float_readers_of(mod: tvm.IRModule, plan: AnnotationPlan) -> dict:
    """For each binding that computes in float: the quantized tensors computed in float (model
    inputs, float ops' outputs; not the quantized ops' outputs nor the unary regions' ends, which
    exist only as integers) that it reads. The readers that run on the integers are not listed: the quantized ops, the
    layout ops that carry the tensor's quantization, and the unary regions over it."""
    view = FunctionView(mod["main"])
    lookups = {var for var, source in unary_sources(view).items() if source in plan.keys}  # realize: tables
    integer_readers = {op.var for op in plan.ops} | lookups
    integer_keys = {plan.keys[op.output] for op in plan.ops if op.output in plan.keys}  # and what carries them
    readers: dict = {}
    for tensor, key in plan.keys.items():
        if key in integer_keys or tensor in lookups:  # integers only: an op's output, a table's result
            continue
        for user in view.users.get(tensor, []):
            carried = view.producer_op(user) in CARRY_OPS and plan.keys.get(user) == plan.keys[tensor]
            if user not in integer_readers and not carried:
                readers.setdefault(user, []).append(tensor)
    return readers
