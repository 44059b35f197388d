"""ONNX's blocked QuantizeLinear / DequantizeLinear (opset 21+, `block_size` > 0) as Relax.

With `block_size` B along `axis` a, the scale (and zero point) have x's shape except
⌈x.shape[a] / B⌉ along a: element i of that axis uses entry ⌊i / B⌋. Expanded so (repeated B
times along a, cut to x.shape[a]) they apply elementwise, as ONNX's reference computes:

  DequantizeLinear   y = (float32(x) − float32(zero_point)) · scale, in the scale's type
                     (or `output_dtype`)
  QuantizeLinear     y = saturate(round_half_to_even(x / scale) + zero_point), in the zero
                     point's type (or `output_dtype`, else uint8)

Per-tensor and per-axis forms stay with TVM's converter.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from tvm import relax

from .errors import QCompilerError
from .passes.graph import shape_of

INTEGER_TYPES = ("int8", "uint8", "int16", "uint16")


def _expanded(bb: relax.BlockBuilder, value: relax.Expr, shape: Sequence[int], axis: int, block: int) -> relax.Expr:
    """A per-block tensor repeated over its blocks and cut to `shape` along `axis`."""
    blocks = [int(d) for d in shape_of(value)]
    want = [-(-n // block) if i == axis else n for i, n in enumerate(shape)]
    if blocks != want:
        raise QCompilerError(f"blocked scale / zero point has shape {blocks}, expected {want} "
                             f"(block_size {block} along axis {axis} of {list(shape)})")
    repeated = bb.normalize(relax.op.repeat(value, block, axis=axis))
    return bb.normalize(relax.op.strided_slice(repeated, axes=[axis], begin=[0], end=[shape[axis]]))


def _output_dtype(attrs: Mapping[str, object], default: str) -> str:
    code = int(attrs.get("output_dtype", 0))
    return default if code == 0 else str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)))


def convert_blocked(bb: relax.BlockBuilder, op_name: str, inputs: Sequence, attrs: Mapping[str, object]):
    """Blocked QuantizeLinear / DequantizeLinear, or None when `block_size` is 0 (not blocked)."""
    block = int(attrs.get("block_size", 0))
    if block <= 0:
        return None
    if int(attrs.get("precision", 0)):
        raise QCompilerError(f"{op_name} with the precision attribute is not supported")
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    shape = [int(d) for d in shape_of(x)]
    axis = int(attrs.get("axis", 1)) % len(shape)
    scale = _expanded(bb, scale, shape, axis, block)
    if zero_point is not None:
        zero_point = _expanded(bb, zero_point, shape, axis, block)
    f32 = "float32"
    if op_name == "DequantizeLinear":
        value = bb.normalize(relax.op.astype(x, f32))
        if zero_point is not None:
            value = bb.normalize(relax.op.subtract(value, relax.op.astype(zero_point, f32)))
        value = bb.normalize(relax.op.multiply(value, relax.op.astype(scale, f32)))
        return relax.op.astype(value, _output_dtype(attrs, str(scale.ty.dtype)))
    out = str(zero_point.ty.dtype) if zero_point is not None else _output_dtype(attrs, "uint8")
    if out not in INTEGER_TYPES:
        raise QCompilerError(f"blocked QuantizeLinear to {out} is not supported (expected one of "
                             f"{', '.join(INTEGER_TYPES)})")
    levels = relax.op.round(relax.op.divide(relax.op.astype(x, f32), relax.op.astype(scale, f32)))
    levels = bb.normalize(relax.op.astype(levels, "int32"))
    if zero_point is not None:
        levels = bb.normalize(relax.op.add(levels, relax.op.astype(zero_point, "int32")))
    info = np.iinfo(np.dtype(out))
    clipped = relax.op.clip(levels, int(info.min), int(info.max))
    return relax.op.astype(bb.normalize(clipped), out)
