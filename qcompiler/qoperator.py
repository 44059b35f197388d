"""ONNX's integer operators (QOperator-format models: onnxruntime's quantize_static with
QuantFormat.QOperator, quantize_dynamic) as Relax the int8 kernels take.

  QLinearConv(x, sx, zx, w, sw, zw, sy, zy, B)   → y = quantize(Conv(dq(x), dq(w), B · sx · sw), sy, zy)
  QLinearMatMul(a, sa, za, b, sb, zb, sy, zy)    → y = quantize(MatMul(dq(a), dq(b)), sy, zy)

    written as the DequantizeLinear → op → QuantizeLinear chain of a QDQ model (dq(q) =
    (q − z) · s), which `--quantize int8` realizes on the integer kernels with the model's own
    scales, exactly as it does for QDQ models (passes/realize.py); compiled without it, in float.

  MatMulInteger(a, b, za, zb), ConvInteger(x, w, zx, zw) → int32 Σ (x − zx)(w − zw), exactly:

    with a constant int8 weight and zw = 0 (onnxruntime's symmetric weights):
      Σ x·w − zx · Σ_valid w   — the first term the int8 kernels' own form (8-bit activation ×
      int8 constant, int32 out: `vpdpbusd`, `sdot`, ...), the second a constant per output
      channel (a convolution's per output pixel: Σ of the weights over the taps that fall inside
      the input, the rest meet padding, whose value is zx), times the run-time zx;
    otherwise: both operands widened to int32, zero points subtracted, multiplied in int32.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from .errors import QCompilerError
from .passes.graph import Constant, const, constant_value

QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _rank(expr) -> int:
    return len(expr.ty.shape.values)


def _dequantized(bb, q, scale, zero_point, axis: int):
    """dq(q) = (q − z) · s in float32, per tensor or along `axis` (a 1-D scale)."""
    if zero_point is None:
        zero_point = const(np.zeros((), _dtype(q)))
    per_axis = _rank(scale) == 1 and int(scale.ty.shape.values[0]) > 1
    return bb.normalize(relax.op.dequantize(q, scale, zero_point, axis=axis if per_axis else -1, out_dtype="float32"))


def _quantized(value, scale, zero_point):
    dtype = _dtype(zero_point) if zero_point is not None else "uint8"
    if zero_point is None:
        zero_point = const(np.zeros((), dtype))
    return relax.op.quantize(value, scale, zero_point, axis=-1, out_dtype=dtype)


def qlinear_conv(bb, inputs: list, convert_conv):
    """QLinearConv through `convert_conv` (the importer's Conv converter, given float inputs)."""
    x, sx, zx, w, sw, zw, sy, zy = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    xf = _dequantized(bb, x, sx, zx, 1)
    wf = _dequantized(bb, w, sw, zw, 0)
    conv_inputs = [xf, wf, None]
    if bias is not None:
        bias_scale = bb.normalize(relax.op.multiply(sx, sw))
        conv_inputs[2] = bb.normalize(relax.op.multiply(relax.op.astype(bias, "float32"), bias_scale))
    y = bb.normalize(convert_conv(conv_inputs))
    return _quantized(y, sy, zy)


def qlinear_matmul(bb, inputs: list):
    a, sa, za, b, sb, zb, sy, zy = inputs[:8]
    af = _dequantized(bb, a, sa, za, _rank(a) - 2)
    bf = _dequantized(bb, b, sb, zb, _rank(b) - 1)
    return _quantized(bb.normalize(relax.op.matmul(af, bf)), sy, zy)


def _int8_weight(weight, zero_point) -> np.ndarray | None:
    """The constant int8 weight, where its zero point is absent or 0 (the fast form applies)."""
    if not isinstance(weight, Constant) or _dtype(weight) != "int8":
        return None
    if zero_point is not None and not (isinstance(zero_point, Constant) and not constant_value(zero_point).any()):
        return None
    return constant_value(weight)


def _activation_zero_point(zero_point):
    """zx as an int32 scalar (0 where absent); None where it is not one value."""
    if zero_point is None:
        return const(np.int32(0))
    if _rank(zero_point) > 1 or (_rank(zero_point) == 1 and int(zero_point.ty.shape.values[0]) != 1):
        return None
    return relax.op.reshape(relax.op.astype(zero_point, "int32"), [])  # normalized by its user


def _widened(bb, value, zero_point, axis: int | None = None):
    """int32(value) − int32(zero point), the zero point broadcast along `axis` if it is 1-D."""
    wide = bb.normalize(relax.op.astype(value, "int32"))
    if zero_point is None:
        return wide
    z = bb.normalize(relax.op.astype(zero_point, "int32"))
    if axis is not None and _rank(zero_point) == 1:
        shape = [1] * _rank(value)
        shape[axis] = -1
        z = bb.normalize(relax.op.reshape(z, shape))
    return bb.normalize(relax.op.subtract(wide, z))


def matmul_integer(bb, inputs: list):
    a, b = inputs[:2]
    za = inputs[2] if len(inputs) > 2 else None
    zb = inputs[3] if len(inputs) > 3 else None
    w = _int8_weight(b, zb)
    zx = _activation_zero_point(za)
    if w is not None and w.ndim == 2 and zx is not None and _dtype(a) in ("uint8", "int8"):
        product = bb.normalize(relax.op.matmul(a, const(w), out_dtype="int32"))
        return relax.op.subtract(product, relax.op.multiply(zx, const(w.sum(axis=0, dtype=np.int32))))
    return relax.op.matmul(_widened(bb, a, za, _rank(a) - 2), _widened(bb, b, zb, _rank(b) - 1), out_dtype="int32")


def conv_integer(bb, inputs: list, attrs: dict):
    """ConvInteger (2-D): see the module docstring."""
    x, w = inputs[:2]
    zx_input = inputs[2] if len(inputs) > 2 else None
    zw = inputs[3] if len(inputs) > 3 else None
    if _rank(x) != 4:
        raise QCompilerError("only 2-D convolutions (NCHW input) are supported")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise QCompilerError(f"auto_pad {attrs['auto_pad']!r} is not supported (give explicit pads)")
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    conv_attrs = dict(strides=[int(s) for s in attrs.get("strides", [1, 1])], padding=pads,
                      dilation=[int(d) for d in attrs.get("dilations", [1, 1])], groups=int(attrs.get("group", 1)),
                      out_dtype="int32")
    weights = _int8_weight(w, zw)
    zx = _activation_zero_point(zx_input)
    if weights is None or zx is None or _dtype(x) not in ("uint8", "int8"):
        return relax.op.nn.conv2d(_widened(bb, x, zx_input), _widened(bb, w, zw, 0), **conv_attrs)
    product = bb.normalize(relax.op.nn.conv2d(x, const(weights), **conv_attrs))
    # Σ of the weights over the taps inside the input, per output pixel and channel: the conv of
    # an all-ones input (folded at compile time)
    ones = const(np.ones([int(d) for d in x.ty.shape.values], np.int8))
    inside = relax.op.nn.conv2d(ones, const(weights), **conv_attrs)
    return relax.op.subtract(product, relax.op.multiply(zx, inside))
