"""qcompiler: compile ONNX models into tuned, deployable shared libraries with Apache TVM.

    artifact = qcompiler.compile("model.onnx", target="x86")
    artifact.export("out/model.so")          # out/model.so + out/model.json
    model = qcompiler.load("out/model.so")
    outputs = model.run({"x": array})
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from .build import Artifact, build
from .errors import QCompilerError
from .frontend import TensorSpec, load_onnx
from .runtime import Model, load
from .targets import TargetPreset, all_presets, resolve

__all__ = [
    "Artifact",
    "Model",
    "QCompilerError",
    "TargetPreset",
    "TensorSpec",
    "all_presets",
    "compile",
    "load",
]


def compile(  # noqa: A001 - the public verb of this package
    model: "str | os.PathLike | object",
    target: str | TargetPreset = "x86",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Artifact:
    """Compile an ONNX model (path or `onnx.ModelProto`) for a target preset or raw TVM target JSON."""
    import logging

    preset = resolve(target)
    imported = load_onnx(model, input_shapes, on_note=logging.getLogger("qcompiler").warning)
    return build(imported, preset)
