"""`TensorSpec`: name, static shape and dtype of a model input or output.

Kept apart from the ONNX frontend so that loading and running an artifact imports neither
onnx nor TVM's compiler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of a model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(obj: Mapping) -> "TensorSpec":
        return TensorSpec(str(obj["name"]), tuple(int(d) for d in obj["shape"]), str(obj["dtype"]))

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
