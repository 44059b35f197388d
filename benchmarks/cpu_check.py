"""Check and time qcompiler's int8 CPU artifacts on a machine without TVM, beside onnxruntime.

    python3 cpu_check/cpu_check.py [--threads 2] [--repeat 100] [--json OUT.json]

Runs in a folder written by benchmarks/prepare_cpu_check.py and needs only python3, numpy and
onnxruntime. For each model of checks.json and each qcompiler artifact (one per CPU preset):
`qc_run` compares the outputs on the model's evaluation sample with the preparing machine's
build (max |diff| <= tolerance · max |expected|), then times that sample (median of --repeat
runs after --warmup, TVM_NUM_THREADS threads). onnxruntime's fp32 and int8 models are timed in
this process on the same sample (intra-op threads as given, ≥ 0.3 s of warm-up, median of
--repeat runs). Prints the host CPU, a table in ms with qc / ort ratios (and, for the single ops
of prepare_cpu_check.py --ops, the tile engine / the same op without it), and geometric means.
Exit status: 0 when every artifact ran and matched, 1 when an output differed, 2 when an
artifact could not run here (an AMX artifact on a CPU without AMX, say: its one-line error is
printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NO_TILES = " no tiles"  # an artifact label's suffix: the same op built without the tile engine (prepare --ops)
WARMUP_S = 0.3  # at least, and at least 5 runs: threads spun up and caches warm before timing


def cpu_description() -> str:
    """'MODEL NAME, N cores, amx_int8 / avx512_vnni present or not' from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU (no /proc/cpuinfo)"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    features = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("amx_int8", "amx_tile", "avx512_vnni"))
    return f"{model}, {os.cpu_count()} logical cores, {features}"


def qc_run(folder: Path, artifact: str, inputs: dict, args: list[str], threads: int) -> subprocess.CompletedProcess:
    command = [str(folder / "qc_run"), str(folder / artifact)]
    for name, path in inputs.items():
        command += ["--input", f"{name}={folder / path}"]
    environment = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    return subprocess.run(command + args, capture_output=True, text=True, env=environment, cwd=folder)


def check_artifact(folder: Path, entry: dict, artifact: str, threads: int) -> tuple[str, float]:
    """('match' | 'DIFFERS' | the error line, worst max_abs_diff / max_abs_expected)."""
    expects = [arg for name, path in entry["expected"].items() for arg in ("--expect", f"{name}={folder / path}")]
    proc = qc_run(folder, artifact, entry["inputs"], expects + ["--tolerance", str(entry["tolerance"])], threads)
    worst = 0.0
    for line in proc.stdout.splitlines():
        match = re.search(r"max_abs_diff=(\S+) max_abs_expected=(\S+)", line)
        if line.startswith("check ") and match:
            diff, scale = float(match.group(1)), float(match.group(2))
            worst = max(worst, diff / scale if scale > 0 else diff)
    if proc.returncode == 0:
        return "match", worst
    if proc.returncode == 3:
        return "DIFFERS", worst
    lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
    return lines[-1], math.nan


def time_artifact(folder: Path, entry: dict, artifact: str, threads: int, repeat: int, warmup: int) -> float:
    proc = qc_run(folder, artifact, entry["inputs"], ["--repeat", str(repeat), "--warmup", str(warmup)], threads)
    match = re.search(r"latency_ms median=([0-9.]+)", proc.stderr)
    return float(match.group(1)) if proc.returncode == 0 and match else math.nan


def time_onnxruntime(path: Path, feed: dict, threads: int, repeat: int) -> float:
    """Median ms of `repeat` runs of onnxruntime on `feed` after ≥ WARMUP_S of warm-up (also
    bench_latency's worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    while time.perf_counter() - start < WARMUP_S:
        for _ in range(5):
            session.run(None, feed)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _ratio_name(qc: str, base: str) -> str:
    """'int8 x86-amx/ort int8', or 'int8 x86-amx tiles/no tiles' for an artifact against its build
    without the tile engine."""
    if base.endswith(NO_TILES):
        return f"{' '.join(qc.split()[1:])} tiles/no tiles"
    return f"{' '.join(qc.split()[1:])}/{base}"


def geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    checks = json.loads((folder / "checks.json").read_text())
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    print(f"host: {cpu_description()}")
    print(f"onnxruntime {onnxruntime.__version__}; {args.repeat} runs after warm-up, medians in ms", flush=True)
    rows, differ, broken = {}, False, False  # (model, threads) → its row: an entry per strategy adds columns
    for entry in checks:
        feed = {name: np.load(folder / path) for name, path in entry["inputs"].items()}
        for label, artifact in entry["artifacts"].items():
            status, worst = check_artifact(folder, entry, artifact, args.threads[0])
            differ |= status == "DIFFERS"
            broken |= status not in ("match", "DIFFERS")
            print(f"{entry['model']:18} {label:28} {status} (max |diff| / max |expected| {worst:.2e})", flush=True)
        for threads in args.threads:
            row = rows.setdefault((entry["model"], threads), {"model": entry["model"], "threads": threads})
            for label, artifact in entry["artifacts"].items():
                row[label] = time_artifact(folder, entry, artifact, threads, args.repeat, args.warmup)
            for label, path in entry.get("ort", {}).items():
                if label not in row:
                    try:
                        row[label] = time_onnxruntime(folder / path, feed, threads, args.repeat)
                    except Exception as err:  # onnxruntime's own errors (an IR version it is too old for, say)
                        row[label] = math.nan
                        print(f"{entry['model']:18} {label:28} onnxruntime could not run {path}: "
                              f"{str(err).strip().splitlines()[-1]}", flush=True)
    rows = list(rows.values())
    labels = list(dict.fromkeys(label for row in rows for label in row if label not in ("model", "threads")))
    qc_labels = [label for label in labels if label.startswith("qc ")]
    ratios = [(qc, base) for qc in qc_labels if not qc.endswith(NO_TILES)
              for base in ("ort int8", "ort fp32") if any(qc in row and base in row for row in rows)]
    ratios += [(qc.removesuffix(NO_TILES), qc) for qc in qc_labels if qc.endswith(NO_TILES)]

    def ratio(row: dict, qc: str, base: str) -> float:
        return row[qc] / row[base] if qc in row and base in row else math.nan

    print()
    header = ["model", "threads", *labels, *(_ratio_name(qc, base) for qc, base in ratios)]
    print(" | ".join(header))
    for row in rows:
        cells = [row["model"], str(row["threads"]), *(f"{row[label]:.3f}" if label in row else "-" for label in labels),
                 *(f"{ratio(row, qc, base):.2f}" for qc, base in ratios)]
        print(" | ".join(cells))
    for threads in args.threads:
        chosen = [row for row in rows if row["threads"] == threads]
        for qc, base in ratios:
            values = [value for row in chosen if math.isfinite(value := ratio(row, qc, base))]
            print(f"geometric mean, {threads} threads, {_ratio_name(qc, base)}: "
                  f"{geomean(values):.2f} over {len(values)} models")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": cpu_description(), "rows": rows}, indent=1) + "\n")
    if broken:
        print("some artifacts could not run here (see their lines above)")
        return 2
    if differ:
        print("some outputs differ from the preparing machine's build")
        return 1
    print("all outputs match the preparing machine's build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
