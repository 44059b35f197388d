"""ONNX's recurrent layers (RNN, GRU, LSTM) as Relax, unrolled over their static sequence length.

Per direction d (forward, reverse, or both), with X_t the input at step t and H the state:

  all steps at once   XW = X · W[d]ᵀ + Wb[d]                      (one matmul over the sequence)
  RNN                 H = f(XW_t + H · R[d]ᵀ + Rb[d])
  GRU (gates z, r, h) z = f(XW_z + H·R_zᵀ + Rb_z),  r = f(XW_r + H·R_rᵀ + Rb_r)
                      h = g(XW_h + (r ⊙ H)·R_hᵀ + Rb_h)        (linear_before_reset = 0)
                      h = g(XW_h + r ⊙ (H·R_hᵀ + Rb_h))        (linear_before_reset = 1)
                      H = (1 − z) ⊙ h + z ⊙ H
  LSTM (gates i,o,f,c) i = f(XW_i + H·R_iᵀ + Rb_i + P_i ⊙ C),  f = f(XW_f + ... + P_f ⊙ C)
                      c = g(XW_c + H·R_cᵀ + Rb_c),  C = f ⊙ C + i ⊙ c
                      o = f(XW_o + H·R_oᵀ + Rb_o + P_o ⊙ C),  H = o ⊙ h(C)

f, g, h are the `activations` (default Sigmoid, Tanh, Tanh; Relu, Sigmoid and Tanh are
supported), `clip` bounds the gate inputs. Outputs: Y [seq, dirs, batch, H] (layout 0) or
[batch, seq, dirs, H] (layout 1), Y_h (and LSTM's Y_c) [dirs, batch, H] ([batch, dirs, H]).
With `sequence_lens`, a batch entry past its length keeps its state and outputs zeros (its
reverse direction starts at its last step). Refused with a one-line reason: `input_forget`.
"""

from __future__ import annotations

import numpy as np

from .errors import QCompilerError

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _activation(name: str):
    from tvm import relax

    functions = {"Sigmoid": relax.op.sigmoid, "Tanh": relax.op.tanh, "Relu": relax.op.nn.relu}
    if name not in functions:
        raise QCompilerError(f"activation {name!r} is not supported (Sigmoid, Tanh, Relu are)")
    return functions[name]


def _constant_or_none(expr):
    from .passes.graph import Constant, constant_value

    return constant_value(expr) if isinstance(expr, Constant) else None


def convert_recurrent(op: str, inputs: list, attrs: dict):
    """The Relax expression (a tuple of the op's outputs) of an RNN, GRU or LSTM node."""
    from tvm import relax

    x, w, r = inputs[0], inputs[1], inputs[2]
    optional = list(inputs[3:]) + [None] * 8
    bias, sequence_lens, initial_h = optional[0], optional[1], optional[2]
    initial_c, peepholes = (optional[3], optional[4]) if op == "LSTM" else (None, None)
    if int(attrs.get("input_forget", 0)):
        raise QCompilerError("input_forget = 1 is not supported")
    layout = int(attrs.get("layout", 0))
    dims = [int(d) for d in x.ty.shape]
    seq, batch = (dims[0], dims[1]) if layout == 0 else (dims[1], dims[0])
    lengths = _constant_or_none(sequence_lens) if sequence_lens is not None else None
    masked = sequence_lens is not None and not (lengths is not None and np.all(lengths == seq))
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[
        _text(attrs.get("direction", "forward"))]
    hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(w.ty.shape[1]) // GATES[op]
    names = [_text(a) for a in attrs.get("activations", [])] or DEFAULT_ACTIVATIONS[op] * len(directions)
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    clip = attrs.get("clip")
    linear_before_reset = int(attrs.get("linear_before_reset", 0))
    dtype = str(x.ty.dtype)

    def clipped(value):
        return relax.op.clip(value, -float(clip), float(clip)) if clip is not None else value

    def part(tensor, index, axis, size):
        return relax.op.strided_slice(tensor, axes=[axis], begin=[index * size], end=[(index + 1) * size])

    def with_bias(value, bias_part):
        return relax.op.add(value, bias_part) if bias_part is not None else value

    lens = relax.op.astype(sequence_lens, "int32") if masked else None
    one = relax.const(np.ones((), dtype))

    steps = relax.op.permute_dims(x, [1, 0, 2]) if layout else x  # [seq, batch, input]
    ys, last_h, last_c = [], [], []
    for d, reverse in enumerate(directions):
        f, g, h = ([_activation(n) for n in names[d * per_direction:(d + 1) * per_direction]] + [None] * 3)[:3]
        w_d = relax.op.squeeze(part(w, d, 0, 1), [0])              # [G·H, I]
        r_d = relax.op.squeeze(part(r, d, 0, 1), [0])              # [G·H, H]
        xw = relax.op.matmul(steps, relax.op.permute_dims(w_d, [1, 0]))  # [seq, batch, G·H]
        rb = None
        if bias is not None:
            b_d = relax.op.squeeze(part(bias, d, 0, 1), [0])       # [2·G·H]
            xw = relax.op.add(xw, part(b_d, 0, 0, GATES[op] * hidden))
            rb = part(b_d, 1, 0, GATES[op] * hidden)
        r_t = relax.op.permute_dims(r_d, [1, 0])                   # [H, G·H]
        zeros = relax.const(np.zeros((batch, hidden), dtype))
        state = relax.op.squeeze(part(initial_h, d, 0, 1), [0]) if initial_h is not None else zeros
        cell = relax.op.squeeze(part(initial_c, d, 0, 1), [0]) if initial_c is not None else zeros
        p_d = relax.op.squeeze(part(peepholes, d, 0, 1), [0]) if peepholes is not None else None
        outputs = [None] * seq
        for t in (reversed(range(seq)) if reverse else range(seq)):
            xw_t = relax.op.squeeze(part(xw, t, 0, 1), [0])        # [batch, G·H]
            previous_state, previous_cell = state, cell
            if op == "RNN":
                state = f(clipped(with_bias(relax.op.add(xw_t, relax.op.matmul(state, r_t)), rb)))
            elif op == "GRU":
                r_z, r_r, r_h = (part(r_t, i, 1, hidden) for i in range(3))
                rb_z, rb_r, rb_h = (part(rb, i, 0, hidden) for i in range(3)) if rb is not None else (None,) * 3
                z = f(clipped(relax.op.add(part(xw_t, 0, 1, hidden), with_bias(relax.op.matmul(state, r_z), rb_z))))
                reset = f(clipped(relax.op.add(part(xw_t, 1, 1, hidden), with_bias(relax.op.matmul(state, r_r), rb_r))))
                if linear_before_reset:
                    candidate_in = relax.op.multiply(reset, with_bias(relax.op.matmul(state, r_h), rb_h))
                else:
                    candidate_in = with_bias(relax.op.matmul(relax.op.multiply(reset, state), r_h), rb_h)
                candidate = g(clipped(relax.op.add(part(xw_t, 2, 1, hidden), candidate_in)))
                state = relax.op.add(relax.op.multiply(relax.op.subtract(one, z), candidate),
                                     relax.op.multiply(z, state))
            else:  # LSTM: gates i, o, f, c
                gates = with_bias(relax.op.add(xw_t, relax.op.matmul(state, r_t)), rb)
                i_in, o_in, f_in, c_in = (part(gates, k, 1, hidden) for k in range(4))
                if p_d is not None:
                    i_in = relax.op.add(i_in, relax.op.multiply(part(p_d, 0, 0, hidden), cell))
                    f_in = relax.op.add(f_in, relax.op.multiply(part(p_d, 2, 0, hidden), cell))
                input_gate, forget_gate = f(clipped(i_in)), f(clipped(f_in))
                cell = relax.op.add(relax.op.multiply(forget_gate, cell),
                                    relax.op.multiply(input_gate, g(clipped(c_in))))
                if p_d is not None:
                    o_in = relax.op.add(o_in, relax.op.multiply(part(p_d, 1, 0, hidden), cell))
                state = relax.op.multiply(f(clipped(o_in)), h(cell))
            if masked:  # past its length, a batch entry keeps its state and outputs zeros
                running = relax.op.expand_dims(relax.op.less(relax.const(t, "int32"), lens), [1])
                state = relax.op.where(running, state, previous_state)
                cell = relax.op.where(running, cell, previous_cell)
                outputs[t] = relax.op.where(running, state, zeros)
            else:
                outputs[t] = state
        ys.append(relax.op.stack(outputs, axis=0))                 # [seq, batch, H]
        last_h.append(state)
        last_c.append(cell)
    y = relax.op.stack(ys, axis=1)                                 # [seq, dirs, batch, H]
    y_h = relax.op.stack(last_h, axis=0)                           # [dirs, batch, H]
    y_c = relax.op.stack(last_c, axis=0)
    if layout:
        y = relax.op.permute_dims(y, [2, 0, 1, 3])
        y_h = relax.op.permute_dims(y_h, [1, 0, 2])
        y_c = relax.op.permute_dims(y_c, [1, 0, 2])
    return relax.Tuple([y, y_h, y_c] if op == "LSTM" else [y, y_h])
