"""Fuzzing at scale: mutated ONNX models, calibration files, .npy inputs (Python CLI and the C
runtime's qc_run) and tuning databases through qcompiler, every outcome classified
(qcompiler/fuzzing.py). Target: no crash, traceback, internal error, hang or half-written output.

    .venv/bin/python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--timeout 60]

qc_run is built with `make -C deploy` first (its cases are skipped if that fails). Prints the
count of each outcome per kind of input and every failure, and exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from qcompiler import fuzzing

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take")
    args = parser.parse_args()
    build = subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}"], capture_output=True, text=True)
    qc_run = REPO / "deploy" / "build" / "qc_run"
    if build.returncode != 0 or not qc_run.exists():
        print("note: qc_run could not be built; its cases are skipped", file=sys.stderr)
        qc_run = None
    with tempfile.TemporaryDirectory() as tmp:
        cases = fuzzing.prepare(Path(tmp), args.cases, args.seed, qc_run)
        start = time.perf_counter()

        def progress(done: int, total: int, outcome: fuzzing.Outcome) -> None:
            if done % 100 == 0 or done == total:
                print(f"fuzz: {done}/{total} Python cases [{time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)

        outcomes = fuzzing.run_cases(cases, Path(tmp) / "cases.json", args.timeout, progress)
        seconds = time.perf_counter() - start
    by_kind = Counter((o.name.split("/")[0], o.kind) for o in outcomes)
    kinds = sorted({kind for kind, _ in by_kind})
    columns = ["ok", "error", *fuzzing.FAILURES]
    print(f"{len(outcomes)} cases, seed {args.seed}, {seconds:.0f} s")
    print(f"{'input':<14}" + "".join(f"{c:>14}" for c in columns))
    for kind in kinds:
        print(f"{kind:<14}" + "".join(f"{by_kind.get((kind, c), 0):>14}" for c in columns))
    failures = [o for o in outcomes if o.kind in fuzzing.FAILURES]
    for outcome in failures:
        print(f"FAIL {outcome.kind}: {outcome.name}: {outcome.detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
