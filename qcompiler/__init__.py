"""qcompiler: compile ONNX models into tuned, deployable shared libraries with Apache TVM.

    artifact = qcompiler.compile("model.onnx", target="x86")
    artifact.export("out/model.so")          # out/model.so + out/model.json
    model = qcompiler.load("out/model.so")
    outputs = model.run({"x": array})
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .accuracy import AccuracyTarget
from .errors import QCompilerError
from .passes.qconfig import ActivationDType, CalibrationMethod, FallbackPrecision, QConfig
from .runtime import Model, load
from .targets import TargetPreset, all_presets, resolve
from .tensor_spec import TensorSpec

if TYPE_CHECKING:
    from .build import Artifact

__all__ = [
    "AccuracyTarget",
    "ActivationDType",
    "Artifact",
    "CalibrationMethod",
    "FallbackPrecision",
    "Model",
    "QConfig",
    "QCompilerError",
    "TargetPreset",
    "TensorSpec",
    "all_presets",
    "compile",
    "export_qdq",
    "load",
]


def compile(  # noqa: A001 - the public verb of this package
    model: "str | os.PathLike | object",
    target: str | TargetPreset = "x86",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    quantize: str | None = None,
    calib: "str | os.PathLike | Iterable[Mapping[str, object]] | None" = None,
    config: QConfig | None = None,
    calib_cache: "str | os.PathLike | None" = None,
    report: "str | os.PathLike | None" = None,
    simulate: bool = False,
    tuning_logs: "Sequence[str | os.PathLike]" = (),
    committed_logs: bool = True,
    default_schedules: bool = True,
    initializers_as_inputs: bool = False,
    constant_inputs: "Mapping[str, object] | None" = None,
    accuracy_target: "AccuracyTarget | str | None" = None,
    eval_data: "str | os.PathLike | Iterable[Mapping[str, object]] | None" = None,
    min_int8_macs: float | None = None,
) -> "Artifact":
    """Compile an ONNX model (path or `onnx.ModelProto`) for a target preset or raw TVM target JSON.

    `quantize="int8"` runs annotate → calibrate (on `calib`) → realize with `config`; a
    pre-quantized ONNX QDQ model needs no `calib`. `quantize="int8-dynamic"` puts matmuls with
    constant weights on int8 with activations quantized per row at run time;
    `quantize="int8-weight-only"` stores constant weights as int8 and computes in float (neither
    takes `calib`). `calib_cache` stores (or reuses) the
    calibration ranges; `report` writes a per-layer quantization report (JSON) and prints its
    table; `simulate` builds the fake-quant (QDQ, float) model instead, for debugging.
    `tuning_logs` are MetaSchedule databases (from `qcompiler tune`) applied before the
    committed `tuning_logs/<preset>/` (skipped when `committed_logs` is False). CPU kernels
    without records get qcompiler's default schedules, or with `default_schedules=False` TVM's
    naive loop nests (for comparison). Graph inputs that have an initializer (legacy exports
    list every weight so) are constants, or with `initializers_as_inputs` artifact inputs.
    `constant_inputs` gives graph inputs a fixed value (numpy arrays by input name): they are
    embedded, fold at compile time where they feed shapes, and are no longer artifact inputs.
    `accuracy_target` (an `AccuracyTarget`, or "METRIC=VALUE" such as "top1-agreement=0.97")
    keeps the fewest ops in fp32 that meet it on `eval_data` (samples as for `calib`, kept
    apart from them; an .npz may add `labels` for the top1 metric): qcompiler.accuracy.
    `min_int8_macs` (a fraction, e.g. 0.9) bounds that search: at least this share of the
    model's MACs stays int8, and where the target needs more, the best set within it is kept
    with a warning.
    """
    import logging

    from .build import build
    from .frontend import load_onnx

    log = logging.getLogger("qcompiler")
    preset = resolve(target)
    from .passes.qconfig import CALIBRATION_FREE_STRATEGIES, STRATEGIES, check_strategy

    if quantize is not None:
        check_strategy(quantize)
    if quantize is None and (calib is not None or calib_cache is not None or report is not None or simulate
                             or accuracy_target is not None):
        raise QCompilerError("calibration data, a calibration cache, a report, an accuracy target or simulate need "
                             "quantize='int8'")
    if quantize in CALIBRATION_FREE_STRATEGIES and (report is not None or simulate or accuracy_target is not None):
        raise QCompilerError(f"a report, an accuracy target and simulate are for quantize='int8' (static); "
                             f"{quantize} has none of them")
    if report is not None and not str(report).endswith((".json", ".html", ".htm")):
        raise QCompilerError(f"report {report}: expected a path ending in .json (the per-layer report) or .html "
                             f"(the page with charts)")
    half_fallback = config is not None and config.fallback_precision is not FallbackPrecision.FP32
    if quantize in CALIBRATION_FREE_STRATEGIES and half_fallback:
        raise QCompilerError(f"fallback_precision {config.fallback_precision.value} applies to quantize='int8', "
                             f"not {quantize}")
    imported = load_onnx(model, input_shapes, on_note=log.warning, initializers_as_inputs=initializers_as_inputs,
                         constant_inputs=constant_inputs)
    if quantize is None:
        return build(imported, preset, tuning_logs=list(tuning_logs), committed_logs=committed_logs,
                     default_schedules=default_schedules)
    if quantize in CALIBRATION_FREE_STRATEGIES:
        from .quantize import quantize_without_calibration

        if calib is not None or calib_cache is not None:
            log.warning("%s takes no calibration data: --calib / --calib-cache ignored (%s)", quantize, STRATEGIES[quantize])
        return build(imported, preset, quantize_without_calibration(imported, quantize), tuning_logs=list(tuning_logs),
                     committed_logs=committed_logs, default_schedules=default_schedules)
    from .quantize import quantize as run_quantization

    target_spec, samples = _accuracy_goal(imported, accuracy_target, eval_data, min_int8_macs)
    quantized = run_quantization(imported, config or QConfig(), calib, calib_cache, target_spec, samples)
    artifact = build(imported, preset, quantized, simulate=simulate, tuning_logs=list(tuning_logs),
                     committed_logs=committed_logs, default_schedules=default_schedules)
    if report is not None:
        from .report import quantization_report

        result = quantization_report(quantized, [spec.name for spec in imported.outputs])
        if str(report).endswith((".html", ".htm")):
            _write_html_report(result, quantized, imported, artifact, preset, report, tuning_logs, committed_logs,
                               default_schedules)
        else:
            result.write(report)
        print(result.render())
        artifact.metadata.quantization["agreement"] = result.model_metrics
    return artifact


def _write_html_report(result, quantized, imported, artifact, preset, path, tuning_logs, committed_logs,
                       default_schedules) -> None:
    """The HTML report, with the size and latency of this artifact and of the model built in fp32
    (measured here, when the target runs on this machine)."""
    import logging
    import platform
    import tempfile
    from pathlib import Path

    from .build import build
    from .report_html import html_report, write_html
    from .targets import DeviceKind

    sizes = {}
    if preset.device is DeviceKind.CPU and preset.cross_compiler is None and preset.arch == platform.machine():
        from .bench import bench

        fp32 = build(imported, preset, tuning_logs=list(tuning_logs), committed_logs=committed_logs,
                     default_schedules=default_schedules)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                for label, built in (("fp32", fp32), ("int8", artifact)):
                    so = built.export(Path(tmp) / f"{label}.so")
                    sizes[label] = (so.stat().st_size, bench(str(so), repeat=20, warmup=3).median_ms)
            except QCompilerError as err:  # e.g. an ISA this CPU lacks: the page goes without timings
                logging.getLogger("qcompiler").warning("report: no latency measured: %s", err)
    name = Path(imported.source_path).name if imported.source_path else "model"
    write_html(html_report(result, quantized, imported, f"qcompiler quantization report: {name}", sizes), path)


def export_qdq(
    model: "str | os.PathLike | object",
    calib: "str | os.PathLike | Iterable[Mapping[str, object]] | None",
    output: "str | os.PathLike",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    config: QConfig | None = None,
    calib_cache: "str | os.PathLike | None" = None,
    accuracy_target: "AccuracyTarget | str | None" = None,
    eval_data: "str | os.PathLike | Iterable[Mapping[str, object]] | None" = None,
    constant_inputs: "Mapping[str, object] | None" = None,
    min_int8_macs: float | None = None,
) -> "os.PathLike":
    """Calibrate (and correct, and search fallbacks, as `compile` with quantize="int8" does) and
    write the model as standard ONNX QDQ to `output` (qcompiler.qdq_export), for onnxruntime or
    TensorRT. Returns the path written. The ops kept out of int8 are float32 ONNX ops: a config
    with another fallback_precision is refused."""
    import logging

    from .qdq_export import qdq_model, write_qdq
    from .frontend import load_onnx
    from .quantize import quantize

    if config is not None and config.fallback_precision is not FallbackPrecision.FP32:
        raise QCompilerError(f"fallback_precision {config.fallback_precision.value} is for compile: export-qdq writes "
                             f"the ops kept out of int8 as float32 ONNX ops")

    imported = load_onnx(model, input_shapes, on_note=logging.getLogger("qcompiler").warning,
                         constant_inputs=constant_inputs)
    target_spec, samples = _accuracy_goal(imported, accuracy_target, eval_data, min_int8_macs)
    quantized = quantize(imported, config or QConfig(), calib, calib_cache, target_spec, samples)
    return write_qdq(qdq_model(imported, quantized), output)


def _accuracy_goal(imported, accuracy_target, eval_data, min_int8_macs=None):
    """(AccuracyTarget, evaluation samples), or (None, None) without a target."""
    if accuracy_target is None and eval_data is None:
        if min_int8_macs is not None:
            raise QCompilerError("a least int8 share of MACs bounds the accuracy search: give --accuracy-target "
                                 "METRIC=VALUE and --eval DATA with it")
        return None, None
    from .accuracy import load_evaluation

    if accuracy_target is None or eval_data is None:
        raise QCompilerError("an accuracy target and evaluation data go together: give both --accuracy-target "
                             "METRIC=VALUE and --eval DATA")
    samples, labels = load_evaluation(eval_data, imported.inputs)
    target = AccuracyTarget.parse(accuracy_target, labels) if isinstance(accuracy_target, str) else accuracy_target
    if min_int8_macs is not None:
        target = dataclasses.replace(target, min_int8_macs=min_int8_macs)
    return target, samples


def __getattr__(name: str):
    # `Artifact` lives with the compiler (onnx, TVM): imported on first use so that loading and
    # running artifacts stays light.
    if name == "Artifact":
        from .build import Artifact

        return Artifact
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")
