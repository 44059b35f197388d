"""The artifact's `NAME.json`: what a loader and a human need to know about `NAME.so`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata as _pkg_metadata
from pathlib import Path
from typing import Any

from .errors import QCompilerError
from .tensor_spec import TensorSpec

FORMAT = "qcompiler-artifact"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    """Versions of qcompiler and the packages that determine what an artifact contains."""
    versions = {}
    for dist in ("qcompiler", "apache-tvm", "apache-tvm-ffi", "onnx"):
        try:
            versions[dist] = _pkg_metadata.version(dist)
        except _pkg_metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


@dataclass
class ArtifactMetadata:
    """Contents of `NAME.json`; `artifact_sha256` is the SHA-256 of `NAME.so`."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target_preset: str
    tvm_target: dict[str, Any]
    device: str
    arch: str
    source_model_sha256: str
    onnx_opset: int
    versions: dict[str, str] = field(default_factory=package_versions)
    source_model_path: str | None = None
    artifact_file: str | None = None
    artifact_sha256: str | None = None
    artifact_bytes: int | None = None
    quantization: dict[str, Any] = field(default_factory=lambda: {"mode": "none"})
    # Kernel name → where its schedule came from: "tuning record", "default", "hand-written" or
    # "naive" (TVM's unscheduled loop nest); CPU artifacts only.
    kernels: dict[str, str] = field(default_factory=dict)
    # Graph inputs fixed at compile time (`--constant-input`) → SHA-256 of the value's bytes.
    constant_inputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "target": {
                "preset": self.target_preset,
                "tvm_target": self.tvm_target,
                "device": self.device,
                "arch": self.arch,
            },
            "versions": {**self.versions, "onnx_opset": self.onnx_opset},
            "source_model": {"path": self.source_model_path, "sha256": self.source_model_sha256},
            "artifact": {"file": self.artifact_file, "sha256": self.artifact_sha256, "bytes": self.artifact_bytes},
            "quantization": self.quantization,
            "kernels": self.kernels,
            "constant_inputs": self.constant_inputs,
        }

    @staticmethod
    def from_json(obj: dict[str, Any], where: str) -> "ArtifactMetadata":
        if obj.get("format") != FORMAT:
            raise QCompilerError(f"{where} is not qcompiler artifact metadata (format {obj.get('format')!r})")
        if obj.get("format_version") != FORMAT_VERSION:
            raise QCompilerError(
                f"{where} has metadata format version {obj.get('format_version')}, expected {FORMAT_VERSION}"
            )
        try:
            versions = dict(obj["versions"])
            opset = int(versions.pop("onnx_opset"))
            return ArtifactMetadata(
                inputs=[TensorSpec.from_json(s) for s in obj["inputs"]],
                outputs=[TensorSpec.from_json(s) for s in obj["outputs"]],
                target_preset=obj["target"]["preset"],
                tvm_target=obj["target"]["tvm_target"],
                device=obj["target"]["device"],
                arch=obj["target"]["arch"],
                source_model_sha256=obj["source_model"]["sha256"],
                source_model_path=obj["source_model"]["path"],
                onnx_opset=opset,
                versions=versions,
                artifact_file=obj["artifact"]["file"],
                artifact_sha256=obj["artifact"]["sha256"],
                artifact_bytes=obj["artifact"]["bytes"],
                quantization=obj["quantization"],
                kernels=dict(obj.get("kernels", {})),
                constant_inputs=dict(obj.get("constant_inputs", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise QCompilerError(f"{where}: malformed artifact metadata ({type(err).__name__}: {err})") from None

    @staticmethod
    def read(path: str | Path) -> "ArtifactMetadata":
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise QCompilerError(f"artifact metadata not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise QCompilerError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(obj, dict):
            raise QCompilerError(f"{path} is not qcompiler artifact metadata (expected a JSON object)")
        return ArtifactMetadata.from_json(obj, str(path))


def metadata_path(so_path: str | Path) -> Path:
    """`OUT.so` → `OUT.json`."""
    return Path(so_path).with_suffix(".json")
