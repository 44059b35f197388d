"""ONNX's Attention (opsets 23-25) as Relax, with static shapes.

For Q [B, Hq, S, D], K [B, Hk, L, D], V [B, Hk, L, Dv] (3-D inputs [B, S, H·D] are split into
`q_num_heads` / `kv_num_heads` heads first and joined back after):

  K ← concat(past_key, K), V ← concat(past_value, V) along the sequence (present_key/value outputs)
  K, V ← each head repeated Hq / Hk times when Hk divides Hq (grouped-query attention)
  s = √scale (scale defaults to 1/√D);   QK = (Q·s)(K·s)ᵀ;   QK ← c·tanh(QK / c) for softcap c > 0
  bias = the additive mask: attn_mask (bool: 0 where true, −∞ where false; float: as given; padded
         with −∞ to L keys), plus, with is_causal, 0 where key j ≤ i + offset else −∞, plus the
         sliding window (left/right_window_size) and the padding of nonpad_kv_seqlen
         (offset = past length, or nonpad_kv_seqlen[b] − S per batch entry)
  P = softmax(QK + bias) over keys, 0 on a row whose bias is −∞ everywhere (no key to attend)
  Y = P·V;   qk_matmul_output: QK (modes 0, 1), QK + bias (2) or P (3)

as ONNX's reference computes it: in float32, for float16 inputs rounded to float16 where the
reference rounds (the scaled operands, QK, the softcap, QK + bias, P); bfloat16 inputs are
refused (rounding to bfloat16 between steps cannot be written in TVM 0.27, which computes
bfloat16 in float32 and drops such round trips).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from .errors import QCompilerError
from .passes.graph import const, shape_of

NEG_INF = -np.inf


def _f32(value) -> relax.Expr:
    return relax.const(np.float32(value), "float32")


def _i64(value) -> relax.Expr:
    return relax.const(int(value), "int64")


def _heads_first(bb, x, heads: int | None, what: str):
    """A 3-D [B, S, H·D] tensor as [B, H, S, D]; 4-D ones as they are."""
    shape = shape_of(x)
    if len(shape) == 4:
        return x
    if heads is None:
        raise QCompilerError(f"3-D {what} needs the q_num_heads and kv_num_heads attributes")
    batch, length, hidden = shape
    split = bb.normalize(relax.op.reshape(x, [batch, length, heads, hidden // heads]))
    return bb.normalize(relax.op.permute_dims(split, [0, 2, 1, 3]))


def _widened(bb, x):
    return x if str(x.ty.dtype) == "float32" else bb.normalize(relax.op.astype(x, "float32"))


def _positions(queries: int, keys: int) -> tuple[relax.Expr, relax.Expr]:
    """(i [S, 1], j [1, L]) as int64 constants."""
    return (const(np.arange(queries, dtype=np.int64).reshape(queries, 1)),
            const(np.arange(keys, dtype=np.int64).reshape(1, keys)))


def _allowed_bias(bb, allowed) -> relax.Expr:
    """0 where `allowed`, −∞ elsewhere."""
    return bb.normalize(relax.op.where(allowed, _f32(0.0), _f32(NEG_INF)))


def _per_batch(bb, bias, batch: int, queries: int, keys: int):
    """A per-batch-entry [B, S, L] bias as [B, 1, S, L] (right-aligned with heads)."""
    return bb.normalize(relax.op.reshape(bias, [batch, 1, queries, keys]))


def _frontier_bias(bb, queries: int, keys: int, offset, batch: int, left: int | None, right: int | None):
    """0 where key j is within `left` keys before and `right` keys after query i's position
    i + offset (None: unbounded), −∞ elsewhere: [S, L] for a scalar (Python int) offset,
    [B, 1, S, L] for a per-batch one (a Relax [B] int64 tensor). Causal: left None, right 0."""
    if isinstance(offset, int):
        d = np.arange(queries).reshape(-1, 1) + offset - np.arange(keys).reshape(1, -1)
        allowed = np.ones(d.shape, bool)
        if left is not None:
            allowed &= d <= left
        if right is not None:
            allowed &= -d <= right
        return const(np.where(allowed, np.float32(0), np.float32(NEG_INF)))
    i, j = _positions(queries, keys)
    shift = bb.normalize(relax.op.reshape(offset, [batch, 1, 1]))
    d = bb.normalize(relax.op.subtract(relax.op.add(i, shift), j))
    conditions = []
    if left is not None:
        conditions.append(bb.normalize(relax.op.less_equal(d, _i64(left))))
    if right is not None:
        conditions.append(bb.normalize(relax.op.less_equal(relax.op.negative(d), _i64(right))))
    allowed = conditions[0] if len(conditions) == 1 else bb.normalize(relax.op.logical_and(*conditions))
    return _per_batch(bb, _allowed_bias(bb, allowed), batch, queries, keys)


def _combine(bb, bias, term):
    return term if bias is None else bb.normalize(relax.op.add(bias, term))


def convert_attention(bb, inputs: list, attrs: dict, outputs: int):
    """ONNX Attention with `outputs` outputs (Y, present_key, present_value, qk_matmul_output)."""
    q, k, v = inputs[:3]
    mask, past_key, past_value, nonpad = (list(inputs[3:]) + [None] * 4)[:4]
    if (past_key is None) != (past_value is None):
        raise QCompilerError("past_key and past_value must be given together")
    if nonpad is not None and past_key is not None:
        raise QCompilerError("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    dtype = str(q.ty.dtype)
    if dtype not in ("float32", "float16"):
        raise QCompilerError(f"{dtype} inputs are not supported (float32 and float16 are: computed in float32, "
                             f"ONNX's reference rounds every step to {dtype})")
    rank = len(shape_of(q))

    def rounded(x):
        """`x` rounded to float16 where the reference computes in float16 (and back to float32)."""
        if dtype == "float32":
            return x
        return bb.normalize(relax.op.astype(relax.op.astype(x, dtype), "float32"))

    q_heads_attr, kv_heads_attr = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    q4 = _heads_first(bb, q, q_heads_attr, "Q")
    k4 = _heads_first(bb, k, kv_heads_attr, "K")
    v4 = _heads_first(bb, v, kv_heads_attr, "V")
    present_key = k4 if past_key is None else bb.normalize(relax.op.concat([past_key, k4], axis=2))
    present_value = v4 if past_value is None else bb.normalize(relax.op.concat([past_value, v4], axis=2))
    batch, q_heads, queries, depth = shape_of(q4)
    k_heads, keys = shape_of(present_key)[1:3]
    past = shape_of(past_key)[2] if past_key is not None else 0

    keys_f, values_f = _widened(bb, present_key), _widened(bb, present_value)
    if q_heads != k_heads and q_heads % k_heads == 0:
        keys_f = bb.normalize(relax.op.repeat(keys_f, q_heads // k_heads, axis=1))
        values_f = bb.normalize(relax.op.repeat(values_f, q_heads // k_heads, axis=1))
    scale = attrs.get("scale")
    root = math.sqrt(1.0 / math.sqrt(depth) if scale is None else float(scale))
    if dtype != "float32":  # the reference rounds √scale to the inputs' type
        root = float(np.asarray(root, dtype=dtype).astype(np.float32))
    scaled_q = rounded(relax.op.multiply(_widened(bb, q4), _f32(root)))
    scaled_k = rounded(relax.op.multiply(keys_f, _f32(root)))
    qk = rounded(relax.op.matmul(scaled_q, relax.op.permute_dims(scaled_k, [0, 1, 3, 2])))
    softcap = float(attrs.get("softcap", 0.0) or 0.0)
    if softcap > 0:
        capped = rounded(relax.op.tanh(rounded(relax.op.divide(qk, _f32(softcap)))))
        qk = rounded(relax.op.multiply(capped, _f32(softcap)))

    bias = None
    if mask is not None:
        if str(mask.ty.dtype) == "bool":
            mask = _allowed_bias(bb, mask)
        else:
            mask = _widened(bb, mask)
        short = keys - shape_of(mask)[-1]
        if short > 0:
            widths = [0, 0] * (len(shape_of(mask)) - 1) + [0, short]
            mask = bb.normalize(relax.op.nn.pad(mask, widths, pad_value=NEG_INF))
        bias = mask
    offset = past
    if nonpad is not None:
        offset = bb.normalize(relax.op.subtract(relax.op.astype(nonpad, "int64"), _i64(queries)))
    if int(attrs.get("is_causal", 0)):
        bias = _combine(bb, bias, _frontier_bias(bb, queries, keys, offset, batch, None, 0))
    left, right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
    if left >= 0 or right >= 0:
        bias = _combine(bb, bias, _frontier_bias(bb, queries, keys, offset, batch, left if left >= 0 else None,
                                                 right if right >= 0 else None))
    if nonpad is not None:
        _, j = _positions(queries, keys)
        lengths = bb.normalize(relax.op.reshape(relax.op.astype(nonpad, "int64"), [batch, 1, 1, 1]))
        padding = _allowed_bias(bb, relax.op.less(relax.op.reshape(j, [1, 1, 1, keys]), lengths))
        bias = _combine(bb, bias, padding)

    scores = qk if bias is None else rounded(relax.op.add(qk, bias))
    if dtype == "float32" or attrs.get("softmax_precision") is not None:
        probabilities = bb.normalize(relax.op.nn.softmax(scores, axis=-1))
    else:  # in float16, as the reference: each step rounded
        exps = rounded(relax.op.exp(rounded(relax.op.subtract(scores, relax.op.max(scores, axis=[-1], keepdims=True)))))
        total = rounded(relax.op.sum(exps, axis=[-1], keepdims=True))
        probabilities = bb.normalize(relax.op.divide(exps, total))
    if bias is not None:
        # a row whose bias is −∞ everywhere attends nothing: 0, not softmax's NaN. (TVM's max
        # starts from the lowest finite float, so such a row's max is that, not −∞.)
        lowest = _f32(np.finfo(np.float32).min)
        empty = relax.op.less_equal(relax.op.max(bias, axis=[-1], keepdims=True), lowest)
        probabilities = bb.normalize(relax.op.where(empty, _f32(0.0), probabilities))
    probabilities = rounded(probabilities)
    y = bb.normalize(relax.op.matmul(probabilities, values_f))
    if rank == 3:
        y = bb.normalize(relax.op.permute_dims(y, [0, 2, 1, 3]))
        y = bb.normalize(relax.op.reshape(y, [batch, queries, -1]))
    if dtype != "float32":
        y = bb.normalize(relax.op.astype(y, dtype))
    if outputs == 1:
        return y
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    qk_output = {2: scores, 3: probabilities}.get(mode, qk)
    if dtype != "float32":
        qk_output = bb.normalize(relax.op.astype(qk_output, dtype))
    return relax.Tuple([y, present_key, present_value, qk_output][:outputs])
