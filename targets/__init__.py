"""Hardware presets: `resolve("x86")`, `resolve('{"kind": "llvm", ...}')`, `all_presets()`."""

from __future__ import annotations

import json

from qcompiler.errors import QCompilerError

from .arm import arm_presets
from .cuda import cuda_presets
from .preset import CrossCompiler, DeviceKind, TargetPreset, TuningDefaults
from .x86 import host_preset, portable_presets

__all__ = [
    "CrossCompiler",
    "DeviceKind",
    "TargetPreset",
    "TuningDefaults",
    "all_presets",
    "resolve",
]


def all_presets() -> list[TargetPreset]:
    """Every named preset, in the order `qcompiler targets` lists them."""
    return [host_preset(), *portable_presets(), *arm_presets(), *cuda_presets()]


def _from_json(text: str) -> TargetPreset:
    """A preset for an expert's raw TVM target in JSON dict form."""
    import tvm

    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise QCompilerError(f"target {text!r} is neither a preset name nor valid JSON: {err}") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise QCompilerError(f'raw target JSON must be an object with a "kind", got {text!r}')
    try:
        target = tvm.target.Target(spec)
    except Exception as err:  # TVM raises several exception types for bad targets
        raise QCompilerError(f"TVM rejected target {text!r}: {str(err).strip().splitlines()[-1]}") from None
    kind = target.kind.name
    if kind not in ("llvm", "cuda"):
        raise QCompilerError(f"target kind {kind!r} is not supported: expected 'llvm' or 'cuda'")
    triple = str((target.host or target).attrs.get("mtriple", "")) if kind == "cuda" else str(
        target.attrs.get("mtriple", "")
    )
    aarch64 = triple.startswith("aarch64")
    return TargetPreset(
        name="custom",
        description=f"raw TVM target {json.dumps(spec)}",
        tvm_target=spec,
        device=DeviceKind.CUDA if kind == "cuda" else DeviceKind.CPU,
        arch="aarch64" if aarch64 else "x86_64",
        cross_compiler=arm_presets()[0].cross_compiler if aarch64 else None,
    )


def resolve(target: str | TargetPreset) -> TargetPreset:
    """A preset by name, or a custom preset from a raw TVM target JSON object."""
    if isinstance(target, TargetPreset):
        return target
    text = target.strip()
    if text.startswith("{"):
        return _from_json(text)
    presets = all_presets()
    for preset in presets:
        if preset.name == text:
            return preset
    names = ", ".join(p.name for p in presets)
    raise QCompilerError(f"unknown target {text!r}: expected one of {names}, or a raw TVM target JSON object")
