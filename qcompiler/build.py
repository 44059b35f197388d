"""Build and export: an imported Relax module → an executable for a preset → `NAME.so` + `NAME.json`.

Writes are atomic: both files are written under temporary names in the destination folder
and renamed into place only when complete, so a failed build leaves neither behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import QCompilerError
from .frontend import ImportedModel, sha256_of
from .metadata import ArtifactMetadata, metadata_path
from .signature import Signature
from .targets import DeviceKind, TargetPreset
from .weights import assembly_source, lift_weights
from .weights import pack as weights_section
from .workspace import lift_workspace

if TYPE_CHECKING:
    from .quantize import Quantized

log = logging.getLogger("qcompiler")


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Log the start and the duration of one pipeline stage."""
    log.info("%s ...", name)
    start = time.perf_counter()
    yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def lower(mod, preset: TargetPreset, tuning_logs: list[str | os.PathLike] = (), committed_logs: bool = True,
          default_schedules: bool = True) -> tuple[object, dict[str, str], list[tuple[str, tuple[int, ...], bytes]]]:
    """Relax → executable: TVM's pipeline for the target (legalize, fold, fuse, lower). Returns
    the executable, per CPU kernel where its schedule came from (tuning.schedule_sources), and
    the weights lifted out of `main` (weights.lift_weights: `main` takes them after the inputs).

    Fused kernels that `tuning_logs` or (if `committed_logs`) the committed `tuning_logs/<preset>/`
    have records for get their tuned schedules; on CPU presets the others (if
    `default_schedules`) qcompiler's default schedules (kernels/schedules.py). For CUDA targets
    int8 convolutions and matmuls get qcompiler's dp4a kernels, small reductions (depthwise
    convolutions, pooling) one thread per output, and everything else dlight's GPU schedules;
    device code is then compiled to binary by `cuda_binary.embed_device_binary`.
    """
    import tvm

    from .tuning import cpu_pipeline, databases_for, gpu_pipeline, schedule_sources

    target = preset.target()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            database = databases_for(preset, list(tuning_logs), Path(scratch), committed_logs)
            if preset.device is DeviceKind.CPU:
                pipeline = cpu_pipeline(target, database, default_schedules)
            else:
                pipeline = gpu_pipeline(target, database)
            with target:
                lowered = pipeline(mod)
        kernels = schedule_sources(lowered)
        lowered, weights = lift_weights(lowered)
        lowered = lift_workspace(lowered)
        # Without TIR asserts: each kernel's packed-call wrapper would otherwise re-check every
        # argument's rank, dtype, shape and strides, 75% of an int8 model's machine code (PP-LCNet:
        # 340 of 420 KB). Kernels are only called by the VM, whose entry function checks the
        # model's inputs, with tensors it allocated itself.
        outer = tvm.transform.PassContext.current()
        with tvm.transform.PassContext(opt_level=outer.opt_level, required_pass=outer.required_pass,
                                       disabled_pass=outer.disabled_pass,
                                       config={**dict(outer.config), "tirx.disable_assert": True}):
            executable = tvm.compile(lowered, target, relax_pipeline=None)  # `pipeline` lowered it all
    except QCompilerError:
        raise
    except Exception as err:  # TVM raises many exception types from deep inside
        lines = str(err).strip().splitlines()
        raise QCompilerError(f"compilation for target {preset.name} failed: {lines[-1] if lines else err}") from err
    if preset.device is DeviceKind.CUDA:
        from .cuda_binary import embed_device_binary

        try:
            executable = embed_device_binary(executable, target)
        except (RuntimeError, ValueError) as err:
            raise QCompilerError(f"CUDA device code for {preset.name}: {str(err).strip().splitlines()[0]}") from err
    return executable, kernels, weights


@dataclass
class Artifact:
    """A compiled model, ready to export as `NAME.so` (code, and the weights in its
    `.qc_weights` section) plus `NAME.json`."""

    executable: object  # tvm.runtime.Executable
    metadata: ArtifactMetadata
    preset: TargetPreset
    weights: list[tuple[str, tuple[int, ...], bytes]] = field(default_factory=list)  # `main`'s parameters after the inputs

    @property
    def signature(self) -> Signature:
        return Signature(self.metadata.device, tuple(self.metadata.inputs), tuple(self.metadata.outputs))

    def export(self, path: str | os.PathLike) -> Path:
        """Write `path` (a `.so`) and its `.json` atomically; return the `.so` path."""
        so_path = Path(path)
        if so_path.suffix != ".so":
            raise QCompilerError(f"output {so_path} must end in .so")
        so_path.parent.mkdir(parents=True, exist_ok=True)
        json_path = metadata_path(so_path)
        fcompile = None
        if self.preset.cross_compiler is not None:
            from tvm.support import cc

            fcompile = cc.cross_compiler(self.preset.cross_compiler.require())
        with tempfile.TemporaryDirectory(prefix=f".{so_path.stem}.", dir=so_path.parent) as tmp:
            tmp_dir = Path(tmp)
            addon = tmp_dir / "qc_signature.cc"
            addon.write_text(self.signature.c_source())
            addons = [str(addon)]
            if self.weights:
                packed = tmp_dir / "qc_weights.bin"
                packed.write_bytes(weights_section(self.weights))
                weights_asm = tmp_dir / "qc_weights.S"
                weights_asm.write_text(assembly_source(str(packed.resolve())))
                addons.append(str(weights_asm))
            tmp_so = tmp_dir / so_path.name
            with stage(f"export {so_path.name}"):
                try:
                    # Kernels carry DWARF debug info from LLVM; a deployed library needs none of it.
                    self.executable.export_library(str(tmp_so), fcompile=fcompile, addons=addons,
                                                   options=["-Wl,--strip-debug"])
                except Exception as err:
                    lines = str(err).strip().splitlines()
                    raise QCompilerError(f"exporting {so_path} failed: {lines[-1] if lines else err}") from err
            data = tmp_so.read_bytes()
            final = replace(
                self.metadata,
                artifact_file=so_path.name,
                artifact_sha256=sha256_of(data),
                artifact_bytes=len(data),
            )
            tmp_json = tmp_dir / json_path.name
            tmp_json.write_text(json.dumps(final.to_json(), indent=2) + "\n")
            os.replace(tmp_so, so_path)
            try:
                os.replace(tmp_json, json_path)
            except OSError:
                so_path.unlink(missing_ok=True)
                raise
        self.metadata = final
        log.info("wrote %s (%.1f MB) and %s", so_path, len(data) / 1e6, json_path.name)
        return so_path


def build(imported: ImportedModel, preset: TargetPreset, quantized: "Quantized | None" = None,
          simulate: bool = False, tuning_logs: list[str | os.PathLike] = (), committed_logs: bool = True,
          default_schedules: bool = True) -> Artifact:
    """Compile an imported model for a preset: fp32, or the integer module of `quantized`
    (its fake-quant QDQ module when `simulate`, a debugging mode), with tuned schedules from
    `tuning_logs/<preset>/` and `tuning_logs`."""
    if preset.cross_compiler is not None:
        preset.cross_compiler.require()  # fail before minutes of compilation, not after
    mod = imported.mod if quantized is None else (quantized.qdq if simulate else quantized.mod)
    with stage(f"compile for {preset.name}"):
        executable, kernels, weights = lower(mod, preset, tuning_logs, committed_logs, default_schedules)
    metadata = ArtifactMetadata(
        inputs=list(imported.inputs),
        outputs=list(imported.outputs),
        target_preset=preset.name,
        tvm_target=dict(preset.tvm_target),
        device=preset.device.value,
        arch=preset.arch,
        source_model_sha256=imported.source_sha256,
        source_model_path=imported.source_path,
        onnx_opset=imported.opset,
        kernels=kernels,
        constant_inputs=dict(imported.constant_inputs),
    )
    if quantized is not None:
        metadata.quantization = {**quantized.summary(), **({"mode": "int8-simulated"} if simulate else {})}
    return Artifact(executable=executable, metadata=metadata, preset=preset, weights=weights)
