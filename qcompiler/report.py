"""The quantization report: per-layer parameters and SQNR, int8 coverage, agreement with fp32.

SQNR of a layer = 10·log10(Σ y² / Σ (ŷ − y)²) over the held-back samples, where y is the
layer's fp32 output and ŷ the same tensor in the fake-quant (QDQ) model, so it includes the
error accumulated by all earlier layers. Model-level numbers compare the realized integer
model with fp32: top-1 agreement (for [N, classes] outputs), cosine similarity, max |error|.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .passes.calibrate import host_runner
from .passes.graph import expose
from .quantize import Quantized, host_target

_LAYOUT_OR_QDQ = ("relax.quantize", "relax.dequantize", "relax.reshape", "relax.permute_dims", "relax.squeeze",
                  "relax.expand_dims", "relax.astype", "relax.strided_slice")


def _runner(mod):
    return host_runner(mod, host_target())


@dataclass
class QuantizationReport:
    layers: list[dict] = field(default_factory=list)
    int8_op_fraction: float = 0.0
    int8_mac_fraction: float = 0.0
    model_metrics: dict = field(default_factory=dict)
    samples: int = 0

    def to_json(self) -> dict:
        return {"layers": self.layers, "int8_op_fraction": self.int8_op_fraction,
                "int8_mac_fraction": self.int8_mac_fraction, "model": self.model_metrics,
                "held_back_samples": self.samples}

    def write(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)

    def render(self) -> str:
        lines = [f"{'layer':<28}{'op':<16}{'out scale':>11}{'zp':>5}{'weight scales':>22}{'SQNR dB':>9}"]
        for layer in self.layers:
            w = layer.get("weight_scale_range")
            wtext = f"{w[0]:.2e}..{w[1]:.2e}" if w else "-"
            sqnr = layer.get("sqnr_db")
            scale, zero_point = (f"{layer['scale']:.3e}", layer["zero_point"]) if "scale" in layer else ("float", "-")
            lines.append(f"{layer['name'][:27]:<28}{layer['op'][:15]:<16}{scale:>11}{zero_point:>5}"
                         f"{wtext:>22}{(f'{sqnr:.1f}' if sqnr is not None else '-'):>9}")
        lines.append(f"int8: {self.int8_op_fraction:.0%} of compute ops, {self.int8_mac_fraction:.1%} of MACs")
        m = self.model_metrics
        if m:
            top1 = f"top-1 agreement {m['top1_agreement']:.1%}, " if "top1_agreement" in m else ""
            lines.append(f"int8 vs fp32 on {self.samples} held-back samples: {top1}cosine {m['cosine']:.5f}, "
                         f"max |error| {m['max_abs_error']:.4g}")
        return "\n".join(lines)


def quantization_report(q: Quantized, output_names: list[str]) -> QuantizationReport:
    """The report of `q`; model-level metrics per float output, named by `output_names`."""
    report = QuantizationReport(samples=len(q.holdout))
    integer = sum(q.stats.integer_ops.values())
    floating = sum(n for op, n in q.stats.float_ops.items() if op not in _LAYOUT_OR_QDQ)
    report.int8_op_fraction = integer / (integer + floating) if integer + floating else 0.0
    if q.plan is not None and q.plan.total_macs:
        report.int8_mac_fraction = sum(op.macs for op in q.plan.ops) / q.plan.total_macs
    input_names = [p.name for p in q.fp32["main"].params]
    samples = [[s[name] for name in input_names] for s in q.holdout]

    if q.plan is not None:
        qparams = q.calibration.qparams(q.config)
        # An op's output: its observer key, or the op's var where the output stays float.
        keys = [q.plan.keys.get(op.output, op.output) for op in q.plan.ops]
        sqnr = {}
        if samples:
            fp32_tensors = [op.output for op in q.plan.ops]
            qdq_tensors = [q.dequantized_of[key] for key in keys]
            fp32_run = _runner(expose(q.fp32, fp32_tensors))
            qdq_run = _runner(expose(q.qdq, qdq_tensors))
            n_out = len(fp32_run(samples[0])) - len(fp32_tensors)
            signal = np.zeros(len(keys))
            noise = np.zeros(len(keys))
            edges = [_quantized_range(qparams[key]) if isinstance(key, str) else None for key in keys]
            counts = [np.zeros(HISTOGRAM_BINS, np.int64) for _ in keys]
            for sample in samples:
                ref = fp32_run(sample)[n_out:]
                got = qdq_run(sample)[n_out:]
                for i, (r, g) in enumerate(zip(ref, got)):
                    signal[i] += float(np.sum(r.astype(np.float64) ** 2))
                    noise[i] += float(np.sum((g.astype(np.float64) - r) ** 2))
                    if edges[i] is not None:
                        counts[i] += np.histogram(np.clip(r, *edges[i]), HISTOGRAM_BINS, edges[i])[0]
            for i in range(len(keys)):
                sqnr[i] = float(10 * np.log10(signal[i] / noise[i])) if noise[i] > 0 else float("inf")
        from .passes.simulate import quantized_weight

        for i, op in enumerate(q.plan.ops):
            layer = {"name": op.node or op.var.name, "op": op.op.replace("relax.", ""), "macs": op.macs}
            if isinstance(keys[i], str):
                params = qparams[keys[i]]
                layer.update(scale=params.scale, zero_point=params.zero_point, dtype=params.dtype)
            else:
                layer["dtype"] = "float32"  # the int32 sum dequantized: no 8-bit output
            if op.weight is not None:
                _, scales = quantized_weight(op.weight, op.weight_axis, q.config.per_channel)
                layer["weight_scale_range"] = [float(scales.min()), float(scales.max())]
                layer["weight_histogram"] = _histogram(op.weight)
            if i in sqnr:
                layer["sqnr_db"] = sqnr[i]
            if i in sqnr and edges[i] is not None:
                lo, hi = edges[i]
                layer["activation_histogram"] = {"range": [lo, hi], "counts": counts[i].tolist()}
            report.layers.append(layer)

    if samples:
        fp32_run, int_run = _runner(q.fp32), _runner(q.mod)
        pairs = [(fp32_run(sample), int_run(sample)) for sample in samples]
        per_output = {name: _agreement([ref[i] for ref, _ in pairs], [got[i] for _, got in pairs])
                      for i, name in enumerate(output_names) if pairs[0][0][i].dtype.kind == "f"}
        if per_output:
            report.model_metrics = dict(next(iter(per_output.values())))
            if len(per_output) > 1:
                report.model_metrics["outputs"] = per_output
    return report


HISTOGRAM_BINS = 40


def _quantized_range(params) -> tuple[float, float]:
    """The real values a tensor's quantization covers: scale · ([qmin, qmax] − zero point)."""
    return (params.qmin - params.zero_point) * params.scale, (params.qmax - params.zero_point) * params.scale


def _histogram(values: np.ndarray) -> dict:
    lo, hi = float(values.min()), float(values.max())
    counts, _ = np.histogram(values, HISTOGRAM_BINS, (lo, hi if hi > lo else lo + 1.0))
    return {"range": [lo, hi], "counts": counts.tolist()}


def _agreement(refs: list[np.ndarray], gots: list[np.ndarray]) -> dict:
    """cosine similarity and max |error| of one float output over the samples; top-1 agreement
    for an [N, classes] output."""
    ref = np.concatenate([r.astype(np.float64).ravel() for r in refs])
    got = np.concatenate([g.astype(np.float64).ravel() for g in gots])
    norms = float(np.sqrt(np.sum(ref * ref) * np.sum(got * got)))
    metrics = {"cosine": float(np.sum(ref * got)) / norms if norms else 1.0,
               "max_abs_error": float(np.abs(ref - got).max())}
    if refs[0].ndim == 2 and refs[0].shape[1] > 1:
        agree = sum(int(np.sum(r.argmax(1) == g.argmax(1))) for r, g in zip(refs, gots))
        metrics["top1_agreement"] = agree / sum(r.shape[0] for r in refs)
    return metrics
