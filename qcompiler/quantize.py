"""The quantization pipeline: annotate → calibrate → simulate (QDQ) → realize, as named stages.

A model that already carries QuantizeLinear/DequantizeLinear pairs (ONNX QDQ format) skips
annotate and calibrate: its own scales and zero points are realized directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import tvm
from tvm import relax

from .errors import QCompilerError
from .frontend import ImportedModel, onnx_node_of
from .passes.annotate import AnnotationPlan, annotate
from .passes.calibrate import CalibrationResult, load_cache, run_observers, save_cache
from .passes.dynamic import DynamicStats, quantize_dynamic
from .passes.graph import FunctionView, op_name
from .passes.layout import channels_last
from .passes.qconfig import CALIBRATION_FREE_STRATEGIES, QConfig
from .passes.realize import RealizeStats, realize
from .passes.reduced_precision import to_bf16, to_fp16
from .passes.simulate import insert_qdq
from .passes.weight_only import quantize_weights_only
from .progress import Progress

log = logging.getLogger("qcompiler")


@dataclass
class Quantized:
    """The result of the pipeline; `mod` is the integer module that gets compiled."""

    mod: tvm.IRModule
    qdq: tvm.IRModule
    fp32: tvm.IRModule
    config: QConfig
    plan: AnnotationPlan | None
    calibration: CalibrationResult | None
    stats: RealizeStats
    dequantized_of: dict
    holdout: list[dict[str, np.ndarray]]

    @property
    def prequantized(self) -> bool:
        return self.plan is None

    def summary(self) -> dict:
        """The artifact metadata's quantization section."""
        summary = {
            "mode": "int8",
            "source": "onnx-qdq" if self.prequantized else "calibrated",
            "integer_ops": dict(self.stats.integer_ops),
            "float_ops": dict(self.stats.float_ops),
            "requantize_ops": self.stats.requantize,
        }
        if self.plan is not None:
            quantized_macs = sum(op.macs for op in self.plan.ops)
            summary.update(
                activation_dtype=self.config.activation_dtype.value,
                weights="int8 symmetric per-channel" if self.config.per_channel else "int8 symmetric per-tensor",
                calibration=self.config.calibration.value,
                calibration_samples=self.calibration.samples if self.calibration else 0,
                quantized_layers=len(self.plan.ops),
                skipped=[name for name, _ in self.plan.skipped],
                int8_mac_fraction=quantized_macs / self.plan.total_macs if self.plan.total_macs else 0.0,
            )
        return summary


def is_prequantized(mod: tvm.IRModule) -> bool:
    return any(op_name(b.value) in ("relax.quantize", "relax.dequantize") for b in FunctionView(mod["main"]).bindings)


def host_target() -> tvm.target.Target:
    from .targets import resolve

    return resolve("x86").target()


def quantize(
    imported: ImportedModel,
    config: QConfig,
    calib: "str | Path | Iterable[Mapping[str, np.ndarray]] | None",
    calib_cache: str | Path | None = None,
) -> Quantized:
    """Run the quantization stages on an imported model; errors name what is missing or wrong."""
    from .data import CalibrationData

    if is_prequantized(imported.mod):
        # No FoldConstant here: it would fold dequantize(int8 weights) back into float weights.
        log.info("model is pre-quantized (QuantizeLinear/DequantizeLinear): realizing its own scales")
        mod, stats = realize(imported.mod)
        holdout = CalibrationData(calib, imported.inputs, max(config.holdout, 1)).read_holdout() if calib is not None else []
        return Quantized(mod, imported.mod, imported.mod, config, None, None, stats, {}, holdout)
    # Channels-last first, so that int8 convolutions get the layout of dot-product kernels and
    # consecutive int8 ops need no layout transform between them.
    fp32, renamed = channels_last(relax.transform.FoldConstant()(imported.mod))
    node_of = {renamed[var]: node for var, node in onnx_node_of(imported).items() if var in renamed}

    plan = annotate(fp32, config, node_of, imported.node_op_types)
    if not plan.ops:
        raise QCompilerError("nothing to quantize: the model has no conv, matmul or other quantizable op "
                             "(or all of them are skipped)")
    log.info("annotate: %d ops to int8, %d observed tensors, %d skipped", len(plan.ops), len(plan.observer_keys),
             len(plan.skipped))
    cache = Path(calib_cache) if calib_cache else None
    data = CalibrationData(calib, imported.inputs, config.holdout, config.num_samples) if calib is not None else None
    if cache is not None and cache.exists():
        calibration = load_cache(cache, plan, imported.source_sha256, config)
        log.info("calibrate: using cache %s (%d samples)", cache, calibration.samples)
        holdout = data.read_holdout() if data is not None else []
    else:
        if data is None:
            raise QCompilerError("--quantize int8 needs calibration data: pass --calib DATA (or an existing --calib-cache)")
        # One sample at a time: calibration's memory does not grow with the number of samples.
        used = ([sample[spec.name] for spec in imported.inputs] for sample in data)
        progress = Progress(f"calibrate ({config.calibration.value})", data.used)
        calibration = run_observers(fp32, plan, used, config, host_target(), progress=progress)
        progress.close()
        holdout = data.holdout
        log.info("calibrate: %d samples, %d observers, statistics %.1f KB", calibration.samples,
                 len(calibration.ranges), calibration.statistics_bytes / 1024)
        if cache is not None:
            save_cache(cache, calibration, imported.source_sha256, config)
    qdq, dequantized_of = insert_qdq(fp32, plan, calibration.qparams(config), config)
    mod, stats = realize(qdq)
    log.info("realize: integer %s; float %s; %d requantizations", stats.integer_ops, stats.float_ops or "none",
             stats.requantize)
    return Quantized(mod, qdq, fp32, config, plan, calibration, stats, dequantized_of, holdout)


@dataclass
class CalibrationFree:
    """The result of a strategy that needs no calibration (int8-dynamic, passes/dynamic.py;
    int8-weight-only, passes/weight_only.py): `mod` is the module that gets compiled."""

    mod: tvm.IRModule
    stats: DynamicStats
    strategy: str

    def summary(self) -> dict:
        total = self.stats.int8_macs + self.stats.float_macs
        strategy = CALIBRATION_FREE[self.strategy]
        summary = {"mode": self.strategy, "weights": strategy.weights, "activations": strategy.activations,
                   "quantized_layers": len(self.stats.layers)}
        if total:
            summary["int8_mac_fraction"] = self.stats.int8_macs / total
        return summary


@dataclass(frozen=True)
class CalibrationFreePass:
    """A calibration-free strategy's pass, what its weights and activations are, and what it
    quantizes."""

    rewrite: Callable[[tvm.IRModule], tuple[tvm.IRModule, DynamicStats]]
    weights: str
    activations: str
    quantizes: str


_INT8_WEIGHTS = "int8 symmetric per-channel"
_HALF_QUANTIZES = "convolutions (groups = 1), matmuls or embedding tables with constant float weights"
CALIBRATION_FREE = {
    "int8-dynamic": CalibrationFreePass(quantize_dynamic, _INT8_WEIGHTS,
                                        "uint8 asymmetric per row, ranges computed at run time",
                                        "matmuls (MatMul, Gemm) with constant weights"),
    "int8-weight-only": CalibrationFreePass(quantize_weights_only, _INT8_WEIGHTS, "float32",
                                            "matmuls, convolutions or embedding tables with constant float weights"),
    "fp16": CalibrationFreePass(to_fp16, "float16", "float16 into convolutions and matmuls, float32 elsewhere",
                                _HALF_QUANTIZES),
    "bf16": CalibrationFreePass(to_bf16, "bfloat16", "bfloat16 into convolutions and matmuls, float32 elsewhere",
                                _HALF_QUANTIZES),
}
assert set(CALIBRATION_FREE) == set(CALIBRATION_FREE_STRATEGIES)


def quantize_without_calibration(imported: ImportedModel, strategy: str) -> CalibrationFree:
    """A calibration-free strategy (int8-dynamic, int8-weight-only, fp16, bf16) on an imported
    model; an error where it has nothing to do."""
    strategy_pass = CALIBRATION_FREE[strategy]
    mod, stats = strategy_pass.rewrite(imported.mod)
    if not stats.layers:
        raise QCompilerError(f"nothing to quantize with {strategy}: it quantizes {strategy_pass.quantizes} "
                             f"and the model has none")
    log.info("%s: %d layers with %s weights", strategy, len(stats.layers), strategy_pass.weights)
    return CalibrationFree(mod, stats, strategy)
