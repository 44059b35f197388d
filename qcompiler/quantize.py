"""The quantization pipeline: annotate → calibrate → simulate (QDQ) → realize, as named stages.

A model that already carries QuantizeLinear/DequantizeLinear pairs (ONNX QDQ format) skips
annotate and calibrate: its own scales and zero points are realized directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from .accuracy import AccuracyTarget, FallbackResult, coarse_target, fallback_order, search_fallback, sqnr_db
from .errors import QCompilerError
from .frontend import ImportedModel, onnx_node_of
from .passes.annotate import AnnotationPlan, annotate
from .passes.adaround import (MAX_GRAM_ELEMENTS, MAX_STEP_MACS, MAX_TOTAL_GRAM_ELEMENTS, InputGrams,
                               adaround_weights, learned_layers)
from .passes.bias_correction import InputMeans, bias_corrections
from .passes.calibrate import (CalibrationResult, cached_equalization, cached_input_grids, load_cache, run_observers,
                               save_cache)
from .passes.dynamic import DynamicStats, quantize_dynamic
from .passes.equalize import apply_pairs, find_pairs
from .passes.equalize_noise import choose, measure
from .passes.graph import Constant, FunctionView, op_name
from .passes.input_grid import DETECTION_SAMPLES, GRID_RANGE, align_grid, detect_grid, grid_channel_axis
from .passes.layout import channels_last
from .passes.qconfig import CALIBRATION_FREE_STRATEGIES, ActivationDType, FallbackPrecision, QConfig
from .passes.realize import RealizeStats, realize
from .passes.reduced_precision import to_bf16, to_fp16, to_half_precision
from .passes.simulate import Corrections, insert_qdq, switch_values
from .passes.smooth import smooth
from .passes.weight_only import quantize_embedding_tables, quantize_weights_only
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
    accuracy: FallbackResult | None = None
    node_of: dict = field(default_factory=dict)  # bound var of `fp32` → ONNX node
    corrections: Corrections = field(default_factory=Corrections)
    input_grids: list = field(default_factory=list)  # InputGrid of each input quantized on its grid
    grid_indices: dict = field(default_factory=dict)  # input name → the var of its grid index u (input_grid.py)
    equalization: list[bool] | None = None  # per equalization pair, whether it was rescaled (None: off)
    half_precision_layers: list[str] = field(default_factory=list)  # float convs/matmuls in config.fallback_precision

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
        if self.stats.int8_tables:
            summary["int8_embedding_tables"] = self.stats.int8_tables
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
                input_grids=[grid.to_json() for grid in self.input_grids],
            )
            if self.equalization is not None:
                summary["equalization"] = {"pairs": len(self.equalization), "rescaled": sum(self.equalization)}
            if self.config.adaround:
                weighted = [op.var for op in self.plan.ops if op.weight is not None]
                summary["adaround"] = {"layers": len(weighted),
                                       "learned": sum(var in self.corrections.weights for var in weighted)}
        if self.config.fallback_precision is not FallbackPrecision.FP32:
            summary["fallback_precision"] = {"dtype": self.config.fallback_precision.value,
                                             "layers": self.half_precision_layers}
        if self.accuracy is not None:
            summary["accuracy_target"] = self.accuracy.to_json()
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
    accuracy_target: AccuracyTarget | None = None,
    eval_data: "Sequence[Mapping[str, np.ndarray]] | None" = None,
) -> Quantized:
    """Run the quantization stages on an imported model; errors name what is missing or wrong.

    With `accuracy_target`, the fewest ops needed to meet it on `eval_data` (checked samples,
    qcompiler.accuracy.load_evaluation) stay fp32 (qcompiler.accuracy: the search)."""
    from .data import CalibrationData

    if is_prequantized(imported.mod):
        # No FoldConstant here: it would fold dequantize(int8 weights) back into float weights.
        log.info("model is pre-quantized (QuantizeLinear/DequantizeLinear): realizing its own scales")
        mod, stats, half = _realized(imported.mod, config)
        holdout = CalibrationData(calib, imported.inputs, max(config.holdout, 1)).read_holdout() if calib is not None else []
        return Quantized(mod, imported.mod, imported.mod, config, None, None, stats, {}, holdout,
                         half_precision_layers=half)
    # Channels-last first, so that int8 convolutions get the layout of dot-product kernels and
    # consecutive int8 ops need no layout transform between them.
    fp32, renamed = channels_last(relax.transform.FoldConstant()(imported.mod))
    node_of = {renamed[var]: node for var, node in onnx_node_of(imported).items() if var in renamed}
    cache = Path(calib_cache) if calib_cache else None
    data = CalibrationData(calib, imported.inputs, config.holdout, config.num_samples) if calib is not None else None
    equalized: list[bool] | None = None
    if config.equalization:
        fp32, equalized = _equalized(fp32, imported, config, data, cache, node_of)
    fp32, grids = _aligned_input_grids(fp32, imported, config, data, cache)
    if config.smoothing:
        fp32 = _smoothed(fp32, imported, data)

    plan = annotate(fp32, config, node_of, imported.node_op_types)
    if not plan.ops:
        raise QCompilerError("nothing to quantize: the model has no conv, matmul or other quantizable op "
                             "(or all of them are skipped)")
    log.info("annotate: %d ops to int8, %d observed tensors, %d skipped", len(plan.ops), len(plan.observer_keys),
             len(plan.skipped))
    kept_samples: list = []  # the first calibration samples, for AdaRound and bias correction
    if cache is not None and cache.exists():
        calibration = load_cache(cache, plan, imported.source_sha256, config)
        log.info("calibrate: using cache %s (%d samples)", cache, calibration.samples)
        holdout = data.read_holdout() if data is not None else []
    else:
        if data is None:
            raise QCompilerError("--quantize int8 needs calibration data: pass --calib DATA (or an existing --calib-cache)")
        # One sample at a time: calibration's memory does not grow with the number of samples.
        used = ([sample[spec.name] for spec in imported.inputs] for sample in data)
        if config.adaround or config.bias_correction:
            used = _keeping_first(used, kept_samples, max(ADAROUND_SAMPLES, BIAS_CORRECTION_SAMPLES))
        progress = Progress(f"calibrate ({config.calibration.value})", data.used)
        calibration = run_observers(fp32, plan, used, config, host_target(), progress=progress)
        progress.close()
        holdout = data.holdout
        log.info("calibrate: %d samples, %d observers, statistics %.1f KB", calibration.samples,
                 len(calibration.ranges), calibration.statistics_bytes / 1024)
        if cache is not None:
            save_cache(cache, calibration, imported.source_sha256, config, [grid.to_json() for grid, _ in grids],
                       equalized)
    for _, index in grids:  # the grid index is exact in uint8 with scale 1, zero point 128
        if index in plan.keys:
            calibration.ranges[plan.keys[index]] = GRID_RANGE
    qparams = calibration.qparams(config)
    corrections = Corrections()
    if (config.adaround or config.bias_correction) and not kept_samples and data is not None:  # a cache was used
        kept_samples = [[s[spec.name] for spec in imported.inputs]
                        for _, s in zip(range(max(ADAROUND_SAMPLES, BIAS_CORRECTION_SAMPLES)), data)]
    if config.adaround:
        if not kept_samples:
            raise QCompilerError("AdaRound learns from calibration samples: pass --calib DATA")
        corrections.weights = _adaround(fp32, plan, config, kept_samples[:ADAROUND_SAMPLES])
    if config.bias_correction:
        if not kept_samples:
            raise QCompilerError("bias correction measures input means on calibration samples: pass --calib DATA")
        means = InputMeans()
        for op, value in _anchor_inputs(fp32, plan, kept_samples[:BIAS_CORRECTION_SAMPLES]):
            means.update(op, value, qparams[plan.keys[op.inputs[0]]])
        corrections.bias = bias_corrections(plan, config, means, corrections.weights)
        log.info("bias correction: %d anchors", len(corrections.bias))
    fallback = None
    if accuracy_target is not None:
        if not eval_data:
            raise QCompilerError("an accuracy target needs evaluation data: pass --eval DATA (samples kept apart "
                                 "from --calib)")
        fallback, reference = _search_fallback(fp32, plan, qparams, config, corrections, node_of,
                                               imported.node_op_types, eval_data, accuracy_target)
        full_plan = plan
        plan = _with_fallback(fp32, plan, config, node_of, imported.node_op_types, fallback.fallback)
    qdq, dequantized_of = insert_qdq(fp32, plan, qparams, config, corrections)
    mod, stats, half = _realized(qdq, config, fp32, node_of)
    log.info("realize: integer %s; float %s; %d requantizations", stats.integer_ops, stats.float_ops or "none",
             stats.requantize)
    quantized = Quantized(mod, qdq, fp32, config, plan, calibration, stats, dequantized_of, holdout, fallback,
                          node_of, corrections, [grid for grid, _ in grids],
                          {grid.name: index for grid, index in grids}, equalized, half)
    if fallback is not None:
        quantized = _verified(quantized, full_plan, node_of, imported.node_op_types, corrections, eval_data,
                              reference, accuracy_target)
    return quantized


def _realized(qdq: tvm.IRModule, config: QConfig, fp32: tvm.IRModule | None = None,
              node_of: dict | None = None) -> tuple[tvm.IRModule, RealizeStats, list[str]]:
    """realize(qdq), the float convolutions and matmuls it leaves (ops kept out of int8) in
    config.fallback_precision, and those layers' names (their ONNX nodes, found through the
    weights of `fp32`, the module `qdq` was made from, and `node_of`; none in fp32)."""
    mod, stats = realize(qdq)
    if config.fallback_precision is FallbackPrecision.FP32:
        return mod, stats, []
    names = _weight_nodes(fp32, node_of) if fp32 is not None else {}
    mod, half = to_half_precision(mod, config.fallback_precision.value, names=names,
                                  instead="--fallback-precision bf16 (fallback_precision=FallbackPrecision.BF16)")
    log.info("fallback precision %s: %d float convolutions and matmuls", config.fallback_precision.value,
             len(half.layers))
    return mod, stats, half.layers


def _weight_nodes(fp32: tvm.IRModule, node_of: dict) -> dict:
    """Each convolution's and matmul's constant weight in `fp32` → the ONNX node of that op."""
    return {b.value.args[1]: node_of[b.var] for b in FunctionView(fp32["main"]).bindings
            if b.var in node_of and op_name(b.value) in ("relax.nn.conv2d", "relax.matmul")
            and isinstance(b.value.args[1], Constant)}


def _equalized(fp32, imported: ImportedModel, config: QConfig, data, cache: Path | None, node_of: dict):
    """`fp32` with its equalization pairs rescaled (passes/equalize.py) where that lowers the
    predicted quantization noise on the first calibration samples (passes/equalize_noise.py), and
    the flag of each pair; a calibration cache's flags where one is used (its ranges were
    calibrated with them; a cache without flags had every pair rescaled)."""
    pairs, refused = find_pairs(fp32)
    for first, op in refused:
        log.info("equalization: after %s refused: %s before the next layer is not scale-equivariant "
                 "(only ReLU and ReLU6 are)", node_of.get(first, first.name), op)
    if cache is not None and cache.exists():
        flags = cached_equalization(cache, len(pairs))
        flags = [True] * len(pairs) if flags is None else flags
    elif data is not None:
        stats = measure(fp32, pairs, _first_samples(imported, data, EQUALIZATION_SAMPLES), host_target())
        flags = choose(fp32, pairs, stats, config.per_channel, config.activation_dtype)
    else:
        return fp32, None
    log.info("equalization: %d of %d pairs of layers rescaled (the others would add quantization noise)",
             sum(flags), len(pairs))
    return apply_pairs(fp32, pairs, flags), flags


def _first_samples(imported: ImportedModel, data, count: int) -> list[list[np.ndarray]]:
    """The first `count` calibration samples (left in `data` for calibration), each as the
    model's inputs in order."""
    return [[sample[spec.name] for spec in imported.inputs] for sample in data.peek(count)]


def _smoothed(fp32, imported: ImportedModel, data):
    """`fp32` with its matmul inputs' outlier channels moved into the weights (passes/smooth.py),
    their ranges measured on the first calibration samples."""
    if data is None:
        raise QCompilerError("smoothing measures activation ranges on calibration samples: pass --calib DATA")
    fp32, groups = smooth(fp32, _first_samples(imported, data, SMOOTHING_SAMPLES), host_target())
    log.info("smoothing: %d matmul inputs rescaled", groups)
    return fp32


def _aligned_input_grids(fp32, imported: ImportedModel, config: QConfig, data, cache: Path | None):
    """`fp32` with each model input on an 8-bit grid quantized on that grid (passes/input_grid.py),
    and the (grid, grid index var) of each. The grids come from a calibration cache where one is
    used (the ranges it holds were calibrated with them), else from the first calibration samples."""
    if not config.input_grid or config.activation_dtype is not ActivationDType.UINT8:
        return fp32, []
    if cache is not None and cache.exists():
        grids = cached_input_grids(cache)
    elif data is not None:
        axes = {spec.name: axis for spec in imported.inputs if (axis := grid_channel_axis(fp32, spec.name)) is not None}
        samples = data.peek(DETECTION_SAMPLES) if axes else []
        grids = [grid for name, axis in axes.items()
                 if (grid := detect_grid(name, [sample[name] for sample in samples], axis)) is not None]
    else:
        return fp32, []
    aligned = []
    for grid in grids:
        fp32, index = align_grid(fp32, grid)
        if index is not None:
            aligned.append((grid, index))
            log.info("input %s lies on an 8-bit grid per channel (steps %s): quantized on it, without loss",
                     grid.name, ", ".join(f"{s:.4g}" for s in grid.step))
    return fp32, aligned


# Calibration samples AdaRound draws its input rows from (passes/adaround.py), and bias
# correction its input means (passes/bias_correction.py).
ADAROUND_SAMPLES = 16
BIAS_CORRECTION_SAMPLES = 16
# Calibration samples equalization measures activation ranges on (passes/equalize_noise.py).
EQUALIZATION_SAMPLES = 16
# Calibration samples smoothing measures matmul inputs' channel ranges on (passes/smooth.py).
SMOOTHING_SAMPLES = 16


def _anchor_inputs(fp32, plan: AnnotationPlan, samples: list, ops: list | None = None):
    """(op, its fp32 input) for each of `ops` (default: every weighted anchor) and sample, one
    sample at a time."""
    from .passes.calibrate import host_runner
    from .passes.graph import expose

    ops = [op for op in plan.ops if op.weight is not None] if ops is None else ops
    run = host_runner(expose(fp32, [op.inputs[0] for op in ops]), host_target())
    for sample in samples:
        yield from zip(ops, run(sample)[-len(ops):])


def _keeping_first(samples, kept: list, count: int):
    """`samples`, unchanged, appending the first `count` of them to `kept`."""
    for sample in samples:
        if len(kept) < count:
            kept.append(sample)
        yield sample


def _adaround(fp32, plan: AnnotationPlan, config: QConfig, samples: list) -> dict:
    """AdaRound's int8 weights for the plan's weighted anchors, from their fp32 inputs on `samples`."""
    learned, nearest = learned_layers([op for op in plan.ops if op.weight is not None])
    if nearest:
        names = [op.node or op.var.name for op in nearest]
        log.warning("adaround: %d of %d layers keep rounding to nearest, to bound AdaRound's memory (Gram values: "
                    "at most %d per layer, %d in all) and time (%d G multiply-adds per step in all): %s%s",
                    len(nearest), len(nearest) + len(learned), MAX_GRAM_ELEMENTS, MAX_TOTAL_GRAM_ELEMENTS,
                    MAX_STEP_MACS // 10**9, ", ".join(names[:8]),
                    f" and {len(names) - 8} more" if len(names) > 8 else "")
    if not learned:
        return {}
    grams = InputGrams(config.seed)
    for op, value in _anchor_inputs(fp32, plan, samples, learned):
        grams.add(op, value)
    progress = Progress("adaround (layers)", len(grams.sums))
    weights = adaround_weights(plan, config, grams, progress)
    progress.close()
    return weights


def _with_fallback(fp32, plan: AnnotationPlan, config: QConfig, node_of: dict, op_types: dict,
                   fallback: Sequence[str]) -> AnnotationPlan:
    """`plan` with the ops of the `fallback` nodes in fp32 (annotated again, skipping them), its
    tensors keeping `plan`'s observer keys (so calibration ranges carry over)."""
    kept = annotate(fp32, replace(config, skip_nodes=config.skip_nodes | frozenset(fallback)), node_of, op_types)
    kept.keys = {var: plan.keys[var] for var in kept.keys}
    fallen = set(fallback)
    kept.skipped = [(node, "fp32 for the accuracy target" if node in fallen else reason)
                    for node, reason in kept.skipped]
    return kept


def _candidates(plan: AnnotationPlan) -> list[tuple[str, int]]:
    """(ONNX node, MACs) of each quantized op that can be kept in fp32, in graph order."""
    macs: dict[str, int] = {}
    for op in plan.ops:
        if op.node:
            macs[op.node] = macs.get(op.node, 0) + op.macs
    return list(macs.items())


def _run_all(run, samples, extra=()) -> list[list[np.ndarray]]:
    return [run([*sample, *extra]) for sample in samples]


def _in_parameter_order(fp32, samples) -> list[list[np.ndarray]]:
    """Each sample's arrays in the order of `main`'s parameters."""
    names = [p.name for p in fp32["main"].params]
    return [[sample[name] for name in names] for sample in samples]


def _search_fallback(fp32, plan, qparams, config, corrections, node_of, op_types, eval_data,
                     target: AccuracyTarget) -> tuple[FallbackResult, list]:
    """The accuracy search on the fake-quant module with switches (one compilation); also the
    fp32 outputs on the samples (all switches 0), which the integer model is checked against."""
    from .passes.calibrate import host_runner

    switched, _ = insert_qdq(fp32, plan, qparams, config, corrections, switches=True)
    run = host_runner(switched, host_target())
    samples = _in_parameter_order(fp32, eval_data)
    reference = _run_all(run, samples, [np.zeros(len(plan.ops) + len(plan.observer_keys), np.float32)])
    metric = target.function()
    cache: dict[frozenset, tuple[float, float]] = {}

    def evaluate(fallback: frozenset) -> tuple[float, float]:
        if fallback not in cache:
            switches = switch_values(plan, _with_fallback(fp32, plan, config, node_of, op_types, sorted(fallback)))
            outputs = _run_all(run, samples, [switches])
            cache[fallback] = metric(outputs, reference), sqnr_db(outputs, reference)
        return cache[fallback]

    candidates = _candidates(plan)
    log.info("accuracy search: %s >= %g on %d samples, %d candidate ops", target.name, target.value, len(samples),
             len(candidates))
    warning = coarse_target(target, reference)
    if warning:
        log.warning(warning)
    result = search_fallback(evaluate, candidates, target, _fallback_budget(plan, target))
    result.samples = len(samples)
    return result, reference


def _fallback_budget(plan: AnnotationPlan, target: AccuracyTarget) -> int | None:
    """The MACs the search may move to fp32 and keep int8 ≥ target.min_int8_macs of the model's."""
    if not target.min_int8_macs:
        return None
    return max(0, sum(op.macs for op in plan.ops) - int(np.ceil(target.min_int8_macs * plan.total_macs)))


# How many more ops the search may return to fp32 when the integer model misses a target the
# fake-quant one met (requantization rounds differently from fake quantization).
_MAX_EXTRA_FALLBACK = 4


def _verified(q: Quantized, full_plan: AnnotationPlan, node_of, op_types, corrections, eval_data, reference,
              target: AccuracyTarget) -> Quantized:
    """Measure the realized integer model on the evaluation samples against the fp32 outputs
    `reference`; where it misses the target, keep the next most sensitive ops of `full_plan`
    (everything quantized) in fp32 too (at most _MAX_EXTRA_FALLBACK)."""
    from .passes.calibrate import host_runner

    fp32 = q.fp32
    samples = _in_parameter_order(fp32, eval_data)
    metric = target.function()
    result = q.accuracy
    macs = dict(_candidates(full_plan))
    budget = _fallback_budget(full_plan, target)
    spent = sum(macs[name] for name in result.fallback)
    # More ops only where the simulated model met the target (else the search kept its best set).
    extra = fallback_order(result, list(macs.items())) if result.value >= target.value else []
    for added in range(_MAX_EXTRA_FALLBACK + 1):
        result.realized_value = metric(_run_all(host_runner(q.mod, host_target()), samples), reference)
        extra = [name for name in extra if budget is None or spent + macs[name] <= budget]
        if result.realized_value >= target.value or not extra or added == _MAX_EXTRA_FALLBACK:
            break
        result.fallback.append(extra.pop(0))
        spent += macs[result.fallback[-1]]
        log.info("accuracy search: the integer model reaches %.4g; keeping %s in fp32 too", result.realized_value,
                 result.fallback[-1])
        plan = _with_fallback(fp32, full_plan, q.config, node_of, op_types, result.fallback)
        qdq, dequantized_of = insert_qdq(fp32, plan, q.calibration.qparams(q.config), q.config, corrections)
        mod, stats, half = _realized(qdq, q.config, fp32, node_of)
        q = replace(q, mod=mod, qdq=qdq, plan=plan, stats=stats, dequantized_of=dequantized_of,
                    half_precision_layers=half)
    if result.realized_value < target.value:
        log.warning("accuracy target %s >= %g not met by the integer model: %.4g with %d ops in fp32 (simulated %.4g)",
                    target.name, target.value, result.realized_value, len(result.fallback), result.value)
    return replace(q, accuracy=result)


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


def _int8_dynamic(mod: tvm.IRModule) -> tuple[tvm.IRModule, DynamicStats]:
    """int8-dynamic's matmuls (passes/dynamic.py), and its embedding tables as int8 rows."""
    mod, stats = quantize_dynamic(mod)
    mod, tables = quantize_embedding_tables(mod)
    if tables:
        log.info("int8-dynamic: %d embedding tables stored as int8 rows", tables)
    return mod, stats


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
    "int8-dynamic": CalibrationFreePass(_int8_dynamic, _INT8_WEIGHTS,
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
