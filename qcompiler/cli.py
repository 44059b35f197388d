"""The `qcompiler` command line: compile, run, bench, inspect, targets, demo.

Errors print one line (`qcompiler: error: ...`) and exit with status 2; `--verbose` adds
the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

import numpy as np

from .errors import QCompilerError
from .data import UNREADABLE
from .passes.qconfig import CALIBRATION_FREE_STRATEGIES, STRATEGIES, FallbackPrecision

log = logging.getLogger("qcompiler")


def _qconfig(args, model_path: str):
    """QConfig from the compile flags; --skip names are ONNX op types or node names of the model."""
    from .frontend import read_model
    from .passes.qconfig import ActivationDType, CalibrationMethod, QConfig

    op_types, node_names = set(), set()
    if args.skip:
        proto, _, _ = read_model(model_path)
        op_types = {n.op_type for n in proto.graph.node}
        node_names = {n.name for n in proto.graph.node}
        unknown = [s for s in args.skip if s not in op_types and s not in node_names]
        if unknown:
            raise QCompilerError(f"--skip {', '.join(unknown)}: not an op type or node name of {model_path}")
    if args.percentile is not None and args.calib_method != "percentile":
        raise QCompilerError(f"--percentile applies to --calib-method percentile, not {args.calib_method}")
    try:
        return QConfig(
            activation_dtype=ActivationDType(args.activation_dtype),
            per_channel=not args.per_tensor,
            calibration=CalibrationMethod(args.calib_method),
            percentile=QConfig.percentile if args.percentile is None else args.percentile,
            num_samples=args.num_samples,
            skip_op_types=frozenset(s for s in args.skip if s in op_types),
            skip_nodes=frozenset(s for s in args.skip if s in node_names and s not in op_types),
            equalization=getattr(args, "equalize", False),
            bias_correction=getattr(args, "bias_correction", False),
            adaround=getattr(args, "adaround", False),
            smoothing=getattr(args, "smooth", False),
            seed=getattr(args, "seed", 0),
            input_grid=not getattr(args, "no_input_grid", False),
            fallback_precision=FallbackPrecision(args.fallback_precision),
        )
    except ValueError as err:
        raise QCompilerError(str(err)) from None


def _cmd_compile(args) -> None:
    from . import compile as compile_model
    from .frontend import parse_shape

    shapes = dict(parse_shape(text) for text in args.input_shape)
    quant_flags = [flag for flag, given in (("--calib", args.calib), ("--calib-cache", args.calib_cache),
                                            ("--report", args.report), ("--skip", args.skip),
                                            ("--simulate", args.simulate),
                                            ("--accuracy-target", args.accuracy_target), ("--eval", args.eval),
                                            ("--min-int8-macs", args.min_int8_macs is not None),
                                            ("--equalize", args.equalize), ("--bias-correction", args.bias_correction),
                                            ("--adaround", args.adaround), ("--smooth", args.smooth),
                                            ("--fallback-precision", args.fallback_precision != "fp32")) if given]
    if args.quantize is None and quant_flags:
        raise QCompilerError(f"{', '.join(quant_flags)} need --quantize int8")
    config = _qconfig(args, args.model) if args.quantize else None
    artifact = compile_model(args.model, target=args.target, input_shapes=shapes, quantize=args.quantize,
                             calib=args.calib, config=config, calib_cache=args.calib_cache, report=args.report,
                             simulate=args.simulate, tuning_logs=args.tuning_log,
                             committed_logs=not args.no_tuning_logs, default_schedules=not args.naive_schedules,
                             initializers_as_inputs=args.initializers_as_inputs,
                             constant_inputs=_read_inputs(args.constant_input, "--constant-input"),
                             accuracy_target=args.accuracy_target, eval_data=args.eval,
                             min_int8_macs=args.min_int8_macs)
    artifact.export(args.output)
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.json')}")
    if args.accuracy_target:
        _print_fallback(artifact, args.output)


def _print_fallback(artifact, so_path: str) -> None:
    """What the accuracy search chose, with the artifact's size and latency."""
    from .bench import bench

    quantization = artifact.metadata.quantization
    result = quantization["accuracy_target"]
    fallback = result["fallback"]
    print(f"accuracy target {result['metric']} >= {result['target']:g} on {result['evaluation_samples']} samples: "
          f"int8 model {result['realized_value']:.4g} (all ops int8: {result['int8_value']:.4g}, "
          f"fp32: {result['fp32_value']:.4g})" + ("" if result["met"] else ": not met"
                                                 + (f" within {result['min_int8_macs']:.0%} int8 MACs; the best set is kept"
                                                    if result["min_int8_macs"] else "")))
    names = ", ".join(fallback) if fallback else "none"
    precision = quantization.get("fallback_precision")
    if precision and fallback:
        half = [name for name in fallback if name in precision["layers"]]
        print(f"kept out of int8 ({len(fallback)}): {names}; on {precision['dtype']} products: "
              f"{', '.join(half) if half else 'none'}; the rest in fp32")
    else:
        print(f"kept in fp32 ({len(fallback)}): {names}")
    timing = bench(so_path, repeat=20, warmup=3)
    print(f"int8 MACs: {quantization['int8_mac_fraction']:.1%}; size {Path(so_path).stat().st_size / 1e6:.2f} MB; "
          f"latency {timing.median_ms:.3f} ms (median of 20)")


def _read_inputs(pairs: list[str], flag: str = "--input") -> dict[str, np.ndarray]:
    """NAME=FILE.npy pairs (of `flag`) read as arrays by name."""
    feed = {}
    for pair in pairs:
        name, sep, file = pair.rpartition("=")
        if not sep or not name:
            raise QCompilerError(f"{flag} {pair!r}: expected NAME=FILE.npy")
        try:
            feed[name] = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise QCompilerError(f"{flag} {name}: file not found: {file}") from None
        except UNREADABLE as err:
            raise QCompilerError(f"{flag} {name}: {file} is not a .npy array ({err})") from None
    return feed


def _cmd_export_qdq(args) -> None:
    from . import export_qdq
    from .frontend import parse_shape

    path = export_qdq(args.model, args.calib, args.output, dict(parse_shape(t) for t in args.input_shape),
                      config=_qconfig(args, args.model), calib_cache=args.calib_cache,
                      accuracy_target=args.accuracy_target, eval_data=args.eval, min_int8_macs=args.min_int8_macs,
                      constant_inputs=_read_inputs(args.constant_input, "--constant-input"))
    print(f"wrote {path}")


def _add_calibration(q) -> None:
    """The flags that decide static int8 quantization's scales and weights (compile, export-qdq)."""
    q.add_argument("--calib", metavar="DATA", help=".npz (arrays keyed by input name, first axis = samples) "
                   "or a directory of .npy/.npz samples")
    q.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"])
    q.add_argument("--percentile", type=float, help="for --calib-method percentile (default 99.99)")
    q.add_argument("--num-samples", type=int, help="use at most N calibration samples")
    q.add_argument("--activation-dtype", default="uint8", choices=["uint8", "int8"],
                   help="uint8 asymmetric (default) or int8 symmetric activations")
    q.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default: per-channel)")
    q.add_argument("--skip", action="append", default=[], metavar="NAME_OR_OPTYPE",
                   help="keep an ONNX node (by name) or every node of an op type in fp32 (repeatable)")
    q.add_argument("--calib-cache", metavar="FILE", help="reuse calibration ranges from FILE, or write them there")
    q.add_argument("--no-input-grid", action="store_true",
                   help="quantize model inputs per tensor even where their values lie on an 8-bit grid per channel")
    q.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization of conv/matmul pairs joined by ReLU or ReLU6, each where it lowers "
                        "the quantization noise predicted on the first calibration samples")
    q.add_argument("--bias-correction", action="store_true",
                   help="remove the mean output shift that quantization adds to each conv/matmul (from calibration data)")
    q.add_argument("--adaround", action="store_true",
                   help="learn each weight's rounding direction on calibration data (AdaRound)")
    q.add_argument("--smooth", action="store_true",
                   help="move matmul inputs' outlier channels into the weights (SmoothQuant; transformers), "
                        "their ranges measured on calibration data")
    q.add_argument("--seed", type=int, default=0,
                   help="seed of the input positions AdaRound draws (where a sample has more than 1,024)")
    q.add_argument("--accuracy-target", metavar="METRIC=VALUE",
                   help="keep the fewest ops in fp32 that meet this on --eval: top1-agreement, top1 (labels), cosine "
                        "or sqnr-db, e.g. top1-agreement=0.97")
    q.add_argument("--eval", metavar="DATA", help="evaluation samples for --accuracy-target (as --calib, kept apart "
                   "from it; an .npz may add an array 'labels')")
    q.add_argument("--fallback-precision", default="fp32", choices=[p.value for p in FallbackPrecision],
                   help="what the convolutions and matmuls kept out of int8 (--skip, --accuracy-target) compute in: "
                        "fp32 (default), or bf16 / fp16 weights and products with fp32 sums")
    q.add_argument("--min-int8-macs", metavar="FRACTION", type=float,
                   help="with --accuracy-target: keep at least this share of MACs in int8 (e.g. 0.9); where the "
                        "target needs more, the best fallback within it is kept, with a warning")


def _cmd_run(args) -> None:
    from .runtime import load

    model = load(args.artifact, verify=not args.no_verify)
    if not args.input:
        expected = " ".join(f"--input {s.name}=FILE.npy" for s in model.inputs)
        raise QCompilerError(f"no inputs given: expected {expected}")
    outputs = model.run(_read_inputs(args.input))
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.partial.npz")
        np.savez(tmp, **outputs)
        tmp.replace(out)
        print(f"wrote {', '.join(outputs)} to {out}")
    for name, value in outputs.items():
        flat = value.reshape(-1)
        head = np.array2string(flat[:8], precision=5, separator=", ")
        print(f"{name} {value.dtype}{list(value.shape)}: {head}{' ...' if flat.size > 8 else ''}")


def _cmd_bench(args) -> None:
    from .bench import bench, profile

    if args.repeat < 1:
        raise QCompilerError(f"--repeat must be at least 1, got {args.repeat}")
    run = profile if args.profile else bench
    result = run(args.artifact, repeat=args.repeat, threads=args.threads, warmup=args.warmup, verify=not args.no_verify)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.render(limit=args.top) if args.profile else result.render())


def _model_to_tune(args):
    """The Relax module `compile` would build for these flags (fp32, or the realized int8 one)."""
    from .frontend import load_onnx, parse_shape

    shapes = dict(parse_shape(text) for text in args.input_shape)
    imported = load_onnx(args.model, shapes, on_note=log.warning,
                         constant_inputs=_read_inputs(args.constant_input, "--constant-input"))
    if getattr(args, "quantize", None) is None:
        return imported.mod
    from .quantize import quantize, quantize_without_calibration

    if args.quantize in CALIBRATION_FREE_STRATEGIES:
        return quantize_without_calibration(imported, args.quantize).mod
    from . import _accuracy_goal

    target, samples = _accuracy_goal(imported, args.accuracy_target, args.eval, args.min_int8_macs)
    return quantize(imported, _qconfig(args, args.model), args.calib, args.calib_cache, target, samples).mod


def _print_coverage(tasks) -> None:
    print(f"{'task':<60}{'weight':>7}{'best us':>11}")
    total = 0.0
    for task in tasks:
        best = f"{task.best_seconds * 1e6:.4g}" if task.best_seconds is not None else "-"
        print(f"{task.name[:59]:<60}{task.weight:>7}{best:>11}")
        total += (task.best_seconds or 0.0) * task.weight
    tuned = sum(1 for t in tasks if t.best_seconds is not None)
    print(f"{tuned}/{len(tasks)} tasks have tuning records; their estimated share of a run: {total * 1e6:.4g} us")


def _add_kernel_quantization(parser, purpose: str) -> None:
    """The quantization flags of `compile` that decide which int8 kernels a model has."""
    group = parser.add_argument_group(f"quantization ({purpose})")
    group.add_argument("--quantize", choices=list(STRATEGIES))
    _add_calibration(group)


def _cmd_tune(args) -> None:
    from .targets import resolve
    from .tuning import tune

    preset = resolve(args.target)
    tasks = tune(_model_to_tune(args), preset, args.log, trials=args.trials, max_minutes=args.max_time,
                 rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, threads=args.threads)
    _print_coverage(tasks)


def _cmd_inspect(args) -> None:
    from .inspect import inspect_path

    if args.quantize is not None and (args.target is None or args.path.endswith(".so")):
        raise QCompilerError("inspect --quantize reports tuning coverage: it needs an ONNX model and --target")
    if args.target is not None and not args.path.endswith(".so"):
        from .targets import resolve
        from .tuning import coverage

        args.model = args.path  # _model_to_tune reads the model from args.model
        _print_coverage(coverage(_model_to_tune(args), resolve(args.target), args.tuning_log))
        return
    print(inspect_path(args.path))


def _cmd_deploy_bundle(args) -> None:
    from .bundle import deploy_bundle
    from .runtime import verified_metadata

    if args.target is not None:
        built_for = verified_metadata(Path(args.artifact)).target_preset
        if built_for != args.target:
            raise QCompilerError(f"{args.artifact} was compiled for target {built_for}, not {args.target}")
    out = deploy_bundle(args.artifact, args.output, wheel_dir=args.wheel_dir, log=log.info)
    print(f"wrote {out}/ (see {out}/README.txt)")


def _cmd_targets(args) -> None:
    from .targets import all_presets

    for preset in all_presets():
        print(preset.summary())


def _cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(Path(args.workdir), target=args.target, threads=args.threads)


def _add_input_bindings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="bind an input's shape, e.g. x=1x3x224x224 (repeatable)")
    p.add_argument("--constant-input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="fix a graph input to a value at compile time (e.g. Resize scales or Reshape shapes an "
                        "export feeds as inputs): embedded, folded, no longer an artifact input (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcompiler", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX model into OUT.so + OUT.json")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="output artifact path, ending in .so")
    p.add_argument("--target", default="x86", help="target preset (see `qcompiler targets`) or raw TVM target JSON")
    _add_input_bindings(p)
    p.add_argument("--initializers-as-inputs", action="store_true",
                   help="legacy exports (ONNX IR < 4) list their weights among the graph inputs: keep those as "
                        "artifact inputs (default: embedded constants)")
    q = p.add_argument_group("quantization")
    q.add_argument("--quantize", choices=list(STRATEGIES),
                   help="; ".join(f"{name}: {what}" for name, what in STRATEGIES.items()))
    _add_calibration(q)
    q.add_argument("--report", metavar="FILE", help="write the per-layer quantization report and print it: JSON for "
                   "FILE.json, or a self-contained HTML page (charts, graph by precision, fp32/int8 size and latency) "
                   "for FILE.html")
    q.add_argument("--simulate", action="store_true", help="build the fake-quant (float QDQ) model, for debugging")
    p.add_argument("--tuning-log", action="append", default=[], metavar="DIR",
                   help="MetaSchedule database from `qcompiler tune`, applied with tuning_logs/<target>/ (repeatable)")
    p.add_argument("--no-tuning-logs", action="store_true", help="ignore the committed tuning_logs/<target>/")
    p.add_argument("--naive-schedules", action="store_true",
                   help="no default schedules: kernels without tuning records stay TVM's naive loop nests")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("tune", help="tune the model's kernels with MetaSchedule (XGBoost cost model)")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--target", default="x86")
    p.add_argument("--trials", type=int, default=200, help="measurements to add to the database")
    p.add_argument("--log", required=True, metavar="DIR", help="database folder (created, or resumed)")
    p.add_argument("--max-time", type=float, metavar="MIN", help="stop after this many minutes")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads kernels are measured with: the count the model will run at (0: one per core)")
    _add_input_bindings(p)
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on devices registered with this RPC tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="the device key the RPC servers registered with")
    _add_kernel_quantization(p, "tune the int8 kernels compile will build")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("export-qdq", help="calibrate and write the model as standard ONNX QDQ (onnxruntime, TensorRT)")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="the QDQ model to write (.onnx)")
    _add_input_bindings(p)
    _add_calibration(p.add_argument_group("quantization"))
    p.set_defaults(func=_cmd_export_qdq)

    p = sub.add_parser("run", help="run an artifact on .npy inputs")
    p.add_argument("artifact", help="OUT.so")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--output", help="write all outputs to this .npz")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check against OUT.json")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="latency and peak memory of an artifact; --profile: per-kernel times")
    p.add_argument("artifact", help="OUT.so")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: one per core)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--profile", action="store_true",
                   help="per-kernel table: each kernel and runtime call (allocations, copies) with its calls per "
                        "run, time per run and share of the run, slowest first")
    p.add_argument("--top", type=int, metavar="N", help="with --profile: show the N slowest rows (and the rest summed)")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check against OUT.json")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("inspect", help="describe an ONNX model or an artifact; with --target, its tuning coverage")
    p.add_argument("path", help="MODEL.onnx or OUT.so")
    p.add_argument("--target", help="report how many of the model's kernels have tuning records for this target")
    _add_input_bindings(p)
    p.add_argument("--tuning-log", action="append", default=[], metavar="DIR")
    _add_kernel_quantization(p, "with --target: the coverage of the int8 kernels compile will build")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("deploy-bundle", help="a folder to copy to the device: artifact, TVM runtime, C runtime (qc_run)")
    p.add_argument("artifact", help="OUT.so (with OUT.json)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the bundle folder to write")
    p.add_argument("--target", help="check that the artifact was compiled for this preset")
    p.add_argument("--wheel-dir", metavar="DIR",
                   help="offline: take the target architecture's apache-tvm / apache-tvm-ffi wheels from DIR")
    p.set_defaults(func=_cmd_deploy_bundle)

    p = sub.add_parser("targets", help="list target presets")
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("demo", help="compile the PP-LCNet orientation classifier and run it through the C runtime")
    p.add_argument("--workdir", default="out/demo", help="where the model, artifact and images go")
    p.add_argument("--target", default="x86")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for latency (0: one per core)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="qcompiler: %(message)s",
                        stream=sys.stderr)
    try:
        args.func(args)
    except QCompilerError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"qcompiler: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: still one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"qcompiler: internal error: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
              " (rerun with --verbose for the traceback)", file=sys.stderr)
        return 1
    return 0
