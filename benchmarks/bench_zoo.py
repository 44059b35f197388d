"""The zoo: every real model we can get, qcompiler fp32 / int8 next to onnxruntime fp32 / int8.

    .venv/bin/python benchmarks/bench_zoo.py [--threads 1 2] [--repeat 30] [--models ...]
        [--profile] [--json OUT.json]

What `compile` gives without tuning is the product: qcompiler compiles every model with no
tuning records (`committed_logs=False`), its default schedules only. Per model (batch 1) and
thread count, each latency is the median of `--repeat` runs after ≥ 0.3 s of warm-up, each
variant measured in its own process (bench_latency.measure_run):

  qc fp32     qcompiler fp32, no tuning records
  qc int8     qcompiler static int8 (calibrated on the model's calibration samples, zoo_data.py)
  ort fp32    onnxruntime on the original model
  ort int8    onnxruntime int8: quantize_static (QDQ, per-channel, uint8 activations, same
              calibration samples) for CNNs; quantize_dynamic for transformers (ZooModel.ort_quantization),
              of the float model (an int8-stored export's Cast + Mul weights as float32: with_float_weights)
  qc int8-dyn qcompiler int8-dynamic (no calibration), on the models onnxruntime quantizes dynamically
  qc int8-wo  qcompiler int8-weight-only (int8 weights, float compute; no calibration)
  qc fp16     qcompiler fp16 (float16 weights and conv/matmul operands, float32 sums)
  qc bf16     qcompiler bf16 (the same in bfloat16: `vdpbf16ps` where the host has AVX-512 BF16)
  ort fp16    onnxruntime on its float16 converter's model (onnxruntime.transformers.float16,
              inputs and outputs kept float32), where it converts and runs

and the ratios qc / ort at the same precision, qc int8 / ort fp32, with geometric means over the
models measured. Per model also: compile time (fp32; int8 without calibration), calibration
time, peak resident memory of each run, the output's cosine to onnxruntime fp32 on the
evaluation samples (for sentence encoders, whose feeds carry an attention mask, also the top-1
nearest-neighbour agreement of the mask-pooled sentence embeddings among the evaluation
sentences: the fraction of sentences whose nearest other sentence is the one fp32 finds), and how many kernels got a default schedule for their op, only the generic
parallel loop nest, or none (naive). A model that fails to compile, quantize or run is a row
that says so. `--profile` adds each artifact's 5 slowest kernels (`qcompiler bench --profile`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

import qcompiler
from qcompiler.errors import QCompilerError
from qcompiler.models import ZOO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import measure_run  # noqa: E402
from zoo_data import ZooCase, zoo_case  # noqa: E402

VARIANTS = ("qc fp32", "ort fp32", "qc int8", "ort int8", "qc int8-dyn", "qc int8-wo", "qc fp16", "qc bf16",
            "ort fp16")
# The ratios printed per row (column header, its width) and as geometric means: numerator / denominator.
RATIOS = ((("qc fp32", "ort fp32"), "fp32/ort", 10), (("qc int8", "ort int8"), "int8/ort", 10),
          (("qc int8", "ort fp32"), "int8/ort32", 11), (("qc int8-dyn", "ort int8"), "dyn/ort8", 10),
          (("qc int8-wo", "qc fp32"), "wo/qc32", 10), (("qc fp16", "ort fp16"), "fp16/ort16", 11),
          (("qc fp16", "qc fp32"), "fp16/qc32", 10), (("qc bf16", "qc fp32"), "bf16/qc32", 10))
QC_VARIANTS = [v for v in VARIANTS if v.startswith("qc ")]


def ort_int8(case: ZooCase, mode: str, out: Path) -> Path:
    """onnxruntime's int8 model of the case: QDQ static per-channel, or dynamic."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if mode == "dynamic":
        source = out.with_name(out.stem + "_float.onnx")
        onnx.save(with_float_weights(onnx.load(case.onnx_path)), source)
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)
        return out
    source = case.onnx_path
    model = onnx.load(source)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        source = out.with_name(out.stem + "_opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(model, 13), source)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(case.calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def with_float_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each weight stored as int8 and dequantized by Cast + Mul (as int8-stored
    exports write them) replaced by its float32 initializer: the float model such an export was
    made from, which onnxruntime's quantize_dynamic quantizes (it leaves Cast + Mul as they are,
    computing in float)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    nodes = list(model.graph.node)
    casts = {node.output[0]: index for index, node in enumerate(nodes) if node.op_type == "Cast"
             and node.input[0] in initializers and initializers[node.input[0]].data_type == onnx.TensorProto.INT8}
    dropped, added = set(), []
    for index, node in enumerate(nodes):
        cast_input = next((i for i in node.input if i in casts), None) if node.op_type == "Mul" else None
        scale = next((i for i in node.input if i in initializers), None)
        if cast_input is None or scale is None:
            continue
        q = numpy_helper.to_array(initializers[nodes[casts[cast_input]].input[0]]).astype(np.float32)
        added.append(numpy_helper.from_array(q * numpy_helper.to_array(initializers[scale]).astype(np.float32),
                                             node.output[0]))
        dropped |= {index, casts[cast_input]}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(node for index, node in enumerate(nodes) if index not in dropped)
    used = {name for node in result.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept_initializers = [init for init in model.graph.initializer if init.name in used]
    del result.graph.initializer[:]
    result.graph.initializer.extend([*kept_initializers, *added])
    return result


def ort_fp16(case: ZooCase, out: Path) -> Path:
    """onnxruntime's float16 model of the case (its float16 converter, inputs and outputs float32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(case.onnx_path), keep_io_types=True), out)
    return out


def pooled_embeddings(run, feeds) -> np.ndarray | None:
    """[sentences, D]: the first output [1, T, D] averaged over the tokens its attention mask
    keeps, per feed; None unless every feed has an `attention_mask`."""
    if not all("attention_mask" in feed for feed in feeds):
        return None
    pooled = []
    for feed in feeds:
        tokens = np.asarray(run(feed), np.float64)[0]
        mask = feed["attention_mask"][0].astype(np.float64)[:, None]
        pooled.append((tokens * mask).sum(axis=0) / max(mask.sum(), 1.0))
    return np.stack(pooled)


def nearest_neighbour_agreement(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """The fraction of sentences whose nearest other sentence (cosine) in `embeddings` is the
    one it is in `reference`."""
    def nearest(e):
        unit = e / np.linalg.norm(e, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return float(np.mean(nearest(embeddings) == nearest(reference)))


def cosine_to_reference(run, reference, feeds) -> float:
    """Mean over the feeds of the cosine between the first outputs of `run` and `reference`."""
    values = []
    for feed in feeds:
        a = np.asarray(run(feed), np.float64).ravel()
        b = np.asarray(reference(feed), np.float64).ravel()
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        values.append(float(a @ b / norm) if norm else 1.0)
    return float(np.mean(values))


def build_artifacts(case: ZooCase, work: Path, row: dict, variants: list[str]) -> dict[str, Path]:
    """qcompiler's fp32 and int8 artifacts and onnxruntime's models (those of `variants`; the
    fp32 artifact always); failures recorded in `row`."""
    from qcompiler.build import build
    from qcompiler.frontend import load_onnx
    from qcompiler.quantize import quantize, quantize_without_calibration
    from qcompiler.targets import resolve

    shapes = ZOO[case.name].input_shapes
    paths: dict[str, Path] = {"ort fp32": case.onnx_path}
    preset = resolve("x86")
    try:
        start = time.perf_counter()
        imported = load_onnx(case.onnx_path, shapes)
        artifact = build(imported, preset, committed_logs=False)
        row["compile_s fp32"] = time.perf_counter() - start
        row["kernels fp32"] = dict(Counter(artifact.metadata.kernels.values()))
        paths["qc fp32"] = artifact.export(work / f"{case.name}_fp32.so")
    except QCompilerError as err:
        row["error qc fp32"] = str(err)
        return paths
    # int8-dynamic where onnxruntime quantizes dynamically too (matmul-heavy models)
    calibration_free = {"qc int8-dyn": ("int8-dynamic", ZOO[case.name].ort_quantization == "dynamic"),
                        "qc int8-wo": ("int8-weight-only", True), "qc fp16": ("fp16", True), "qc bf16": ("bf16", True)}
    for variant, (strategy, applies) in calibration_free.items():
        if variant not in variants or not applies:
            continue
        try:
            artifact = build(imported, preset, quantize_without_calibration(imported, strategy), committed_logs=False)
            paths[variant] = artifact.export(work / f"{case.name}_{strategy}.so")
        except QCompilerError as err:
            row[f"error {variant}"] = str(err)
    if "qc int8" in variants:
        try:
            start = time.perf_counter()
            quantized = quantize(imported, qcompiler.QConfig(holdout=0), case.calib)
            row["calibration_s"] = time.perf_counter() - start
            start = time.perf_counter()
            artifact = build(imported, preset, quantized, committed_logs=False)
            row["compile_s int8"] = time.perf_counter() - start
            row["kernels int8"] = dict(Counter(artifact.metadata.kernels.values()))
            paths["qc int8"] = artifact.export(work / f"{case.name}_int8.so")
        except QCompilerError as err:
            row["error qc int8"] = str(err)
    if "ort int8" in variants:
        try:
            paths["ort int8"] = ort_int8(case, ZOO[case.name].ort_quantization, work / f"{case.name}_ort_int8.onnx")
        except Exception as err:  # onnxruntime's quantizer raises anything
            row["error ort int8"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    if "ort fp16" in variants:
        try:
            paths["ort fp16"] = ort_fp16(case, work / f"{case.name}_ort_fp16.onnx")
        except Exception as err:  # the converter raises anything
            row["error ort fp16"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    return paths


def accuracy(case: ZooCase, paths: dict[str, Path], row: dict) -> None:
    """Cosine of each model's first output to onnxruntime fp32 on the evaluation samples (and the
    nearest-neighbour agreement of sentence encoders' pooled embeddings)."""
    import onnxruntime as ort

    def session_run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda feed: session.run(None, feed)[0]

    reference = session_run(paths["ort fp32"])
    runs = {}
    for label in ("ort int8", "ort fp16"):
        if label in paths:
            try:
                runs[label] = session_run(paths[label])
            except Exception as err:  # e.g. a float16 model onnxruntime has no kernel for
                row[f"error {label} accuracy"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"
    for label in QC_VARIANTS:
        if label in paths:
            model = qcompiler.load(paths[label])
            runs[label] = lambda feed, model=model: next(iter(model.run(feed).values()))
    sentences = pooled_embeddings(reference, case.evaluate)
    for label, run in runs.items():
        try:
            row[f"cosine {label}"] = cosine_to_reference(run, reference, case.evaluate)
            if sentences is not None:
                row[f"nn agreement {label}"] = nearest_neighbour_agreement(pooled_embeddings(run, case.evaluate),
                                                                           sentences)
        except Exception as err:  # the latency run of the same model reports its failure too
            row[f"error {label} accuracy"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"


def top_kernels(path: Path, threads: int, repeat: int) -> list[dict]:
    """The 5 slowest rows of `qcompiler bench --profile`, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "qcompiler", "bench", str(path), "--profile", "--json",
                           "--threads", str(threads), "--repeat", str(repeat)], capture_output=True, text=True)
    if proc.returncode != 0:
        return [{"name": f"profile failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"}]
    rows = json.loads(proc.stdout)["rows"][:5]
    return [{k: row[k] for k in ("name", "kind", "calls", "total_us", "share")} for row in rows]


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                        help=f"measure only these of {', '.join(VARIANTS)} (e.g. 'qc fp32' before and after a change)")
    parser.add_argument("--profile", action="store_true", help="also list each artifact's 5 slowest kernels")
    parser.add_argument("--json", metavar="OUT", help="write every measurement to this JSON file")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: not the quantizer's notes on unused initializers
    rows = []
    header = (f"{'model':<18}{'thr':>4}" + "".join(f"{v:>12}" for v in VARIANTS)
              + "".join(f"{title:>{width}}" for _, title, width in RATIOS))
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            row: dict = {"model": name, "latency_ms": {}, "peak_mb": {}}
            rows.append(row)
            try:
                case = zoo_case(name)
            except (QCompilerError, OSError, ImportError, SystemExit) as err:
                row["error data"] = str(err)
                print(f"{name:<18}  no inputs: {err}", flush=True)
                continue
            row["data"] = case.data
            paths = build_artifacts(case, work, row, args.variants)
            accuracy(case, paths, row)
            feed_path = work / f"{name}.npz"
            np.savez(feed_path, **case.evaluate[0])
            for threads in args.threads:
                ms = {}
                for variant in args.variants:
                    if variant not in paths:
                        continue
                    kind = "onnxruntime" if variant.startswith("ort") else "qcompiler"
                    try:
                        result = measure_run(kind, paths[variant], threads, args.repeat, feed_path)
                    except subprocess.CalledProcessError as err:
                        row[f"error {variant} run"] = (err.stderr.strip().splitlines() or [f"exit {err.returncode}"])[-1]
                        continue
                    ms[variant] = result["median_ms"]
                    row["peak_mb"][variant] = result["peak_mb"]
                row["latency_ms"][str(threads)] = ms
                cells = "".join(f"{ms[v]:>12.3f}" if v in ms else f"{'failed' if {f'error {v}', f'error {v} run'} & set(row) else '-':>12}"
                                for v in VARIANTS)
                ratios = [ms[top] / ms[bottom] if {top, bottom} <= set(ms) else None for (top, bottom), _, _ in RATIOS]
                row.setdefault("ratios", {})[str(threads)] = ratios
                print(f"{name:<18}{threads:>4}{cells}" + "".join(
                    f"{r:>{width}.2f}" if r is not None else f"{'-':>{width}}"
                    for r, (_, _, width) in zip(ratios, RATIOS)), flush=True)
            details = [f"compile {row.get('compile_s fp32', float('nan')):.0f} s fp32, "
                       f"{row.get('compile_s int8', float('nan')):.0f} s int8 (+ {row.get('calibration_s', float('nan')):.0f} s "
                       f"calibration, {len(case.calib)} samples)",
                       "peak MB " + ", ".join(f"{k} {v:.0f}" for k, v in row["peak_mb"].items()),
                       "file MB " + ", ".join(f"{k} {Path(p).stat().st_size / 1e6:.1f}" for k, p in paths.items()),
                       "cosine to ort fp32 " + ", ".join(f"{k[7:]} {row[k]:.4f}" for k in row if k.startswith("cosine ")),
                       *(["top-1 nearest-neighbour agreement " + ", ".join(
                           f"{k[13:]} {row[k]:.2f}" for k in row if k.startswith("nn agreement "))]
                         if any(k.startswith("nn agreement ") for k in row) else []),
                       "kernels fp32 " + str(row.get("kernels fp32", {})) + ", int8 " + str(row.get("kernels int8", {}))]
            print(f"{'':<22}" + "; ".join(details), flush=True)
            for key in [k for k in row if k.startswith("error")]:
                print(f"{'':<22}{key}: {row[key]}", flush=True)
            if args.profile:
                for variant in ("qc fp32", "qc int8"):
                    if variant in paths:
                        row[f"top kernels {variant}"] = top_kernels(paths[variant], max(args.threads), args.repeat)
                        for k in row[f"top kernels {variant}"]:
                            share = f"{k['share']:>6.1%}" if "share" in k else ""
                            print(f"{'':<22}{variant} {share} {k['name'][:90]}", flush=True)
    print()
    for threads in args.threads:
        means = []
        for index, ((top, bottom), _, _) in enumerate(RATIOS):
            label = f"{top} / {bottom}"
            values = [r["ratios"][str(threads)][index] for r in rows
                      if str(threads) in r.get("ratios", {}) and r["ratios"][str(threads)][index] is not None]
            means.append(f"{label} {geomean(values):.2f} ({len(values)} models)")
        print(f"geometric mean, {threads} thread(s): " + "; ".join(means))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
