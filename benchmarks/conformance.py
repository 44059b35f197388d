"""ONNX node conformance: every inference case through qcompiler (x86), next to onnxruntime.

    .venv/bin/python benchmarks/conformance.py [--ops Relu Conv ...] [--timeout 300] [--json out.jsonl]

Runs ONNX's node test cases (`onnx.backend.test.case.node`) of every op type except training ops
and training-mode cases: each is compiled with `qcompiler.compile(model, target="x86")`,
exported, loaded and run on the case's data, and compared with ONNX's expected outputs at the
case's rtol/atol (see qcompiler/conformance.py for the outcomes; committed tuning logs off).
onnxruntime runs the same cases against the same expected data. Prints one row per op type, the
totals, and every finding: wrong values, crashes, and refusals that are not one line naming the
op or input at fault. With --json, one line per case. Each case runs in a worker process, so that
a crash or a hang (--timeout) costs one case, not the run. About 5 minutes for all 1765 cases.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from qcompiler.conformance import (
    SKIPS,
    STATUSES,
    Outcome,
    check_refusal,
    is_inference_case,
    node_cases,
    op_types,
    run_ort_case,
    run_qcompiler_case,
)


def _worker(requests, replies) -> None:
    """Run the named cases one by one: (name) → (name, status, detail, seconds)."""
    import logging

    logging.disable(logging.WARNING)
    cases = {case.name: case for case in node_cases()}
    with tempfile.TemporaryDirectory(prefix="qc-conformance-") as tmp:
        while True:
            name = requests.get()
            if name is None:
                return
            start = time.perf_counter()
            outcome = run_qcompiler_case(cases[name], Path(tmp))
            for so in Path(tmp).glob("*"):
                so.unlink()
            replies.put((name, outcome.status, outcome.detail, time.perf_counter() - start))


class Worker:
    """A worker process that is replaced when it dies or overruns its time."""

    def __init__(self):
        self._context = multiprocessing.get_context("spawn")
        self._process = None

    def _start(self) -> None:
        self.requests, self.replies = self._context.Queue(), self._context.Queue()
        self._process = self._context.Process(target=_worker, args=(self.requests, self.replies), daemon=True)
        self._process.start()

    def run(self, name: str, timeout: float) -> tuple[Outcome, float]:
        """The outcome of case `name`; a hang or a dead worker is `crashed`."""
        if self._process is None or not self._process.is_alive():
            self._start()
        start = time.perf_counter()
        self.requests.put(name)
        deadline = start + timeout + 60  # + the worker's start-up (collecting the cases)
        while True:
            try:
                _, status, detail, seconds = self.replies.get(timeout=5)
                return Outcome(status, detail), seconds
            except queue.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self._process = None
                    return Outcome("crashed", f"worker process died (exit code {code})"), time.perf_counter() - start
                if time.perf_counter() > deadline:
                    self.stop()
                    return Outcome("crashed", f"timed out after {timeout:.0f} s"), time.perf_counter() - start

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = None

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            self.requests.put(None)
            self._process.join(timeout=30)
        self.stop()


def selected_cases(only_ops: set[str] | None) -> tuple[list, dict[str, str]]:
    """The inference cases (optionally of `only_ops` only) and every case's op type."""
    cases = node_cases()
    ops = op_types(cases)
    chosen = [case for case in cases if is_inference_case(case.name, ops[case.name])
              and (not only_ops or ops[case.name] in only_ops)]
    return chosen, ops


def print_table(rows: dict[str, Counter], ort_rows: dict[str, Counter], out=sys.stdout) -> None:
    """One line per op type and the totals: qcompiler's outcomes, then onnxruntime's."""
    header = f"{'op type':<28}{'cases':>6}" + "".join(f"{s:>12}" for s in STATUSES) + \
        f"{'ort pass':>10}{'ort wrong':>10}{'ort unsup':>10}"
    print(header, file=out)
    total, ort_total = Counter(), Counter()
    for op in sorted(rows):
        counts, ort = rows[op], ort_rows[op]
        total.update(counts)
        ort_total.update(ort)
        print(f"{op:<28}{sum(counts.values()):>6}" + "".join(f"{counts[s]:>12}" for s in STATUSES)
              + f"{ort['passed']:>10}{ort['wrong']:>10}{ort['unsupported']:>10}", file=out)
    print("-" * len(header), file=out)
    print(f"{'total':<28}{sum(total.values()):>6}" + "".join(f"{total[s]:>12}" for s in STATUSES)
          + f"{ort_total['passed']:>10}{ort_total['wrong']:>10}{ort_total['unsupported']:>10}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", help="only these op types (default: every inference op)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per case before it counts as crashed")
    parser.add_argument("--json", type=Path, help="write one JSON line per case here")
    args = parser.parse_args(argv)

    cases, ops = selected_cases(set(args.ops) if args.ops else None)
    print(f"{len(cases)} inference cases of {len({ops[c.name] for c in cases})} op types", flush=True)
    rows: dict[str, Counter] = defaultdict(Counter)
    ort_rows: dict[str, Counter] = defaultdict(Counter)
    findings: list[str] = []
    worker = Worker()
    log = args.json.open("w") if args.json else None
    start = time.perf_counter()
    try:
        for index, case in enumerate(cases, 1):
            op = ops[case.name]
            if case.name in SKIPS:
                outcome, seconds = Outcome("skipped", SKIPS[case.name]), 0.0
            else:
                outcome, seconds = worker.run(case.name, args.timeout)
            if outcome.status == "unsupported":
                problem = check_refusal(outcome.detail, case.model, op)
                if problem is not None:
                    findings.append(f"{case.name} [{op}] refusal: {problem}: {outcome.detail[:200]!r}")
            ort = run_ort_case(case)
            rows[op][outcome.status] += 1
            ort_rows[op][ort.status] += 1
            if outcome.status in ("wrong", "crashed"):
                findings.append(f"{case.name} [{op}] {outcome.status}: {outcome.detail[:300]}"
                                f" (onnxruntime: {ort.status})")
            if log is not None:
                log.write(json.dumps({"case": case.name, "op": op, "status": outcome.status,
                                      "detail": outcome.detail, "seconds": round(seconds, 2),
                                      "ort": ort.status, "ort_detail": ort.detail}) + "\n")
                log.flush()
            print(f"[{index}/{len(cases)} {time.perf_counter() - start:.0f}s] {case.name}: {outcome.status}"
                  f" (ort {ort.status})", flush=True)
    finally:
        worker.close()
        if log is not None:
            log.close()
    print()
    print_table(rows, ort_rows)
    if findings:
        print(f"\n{len(findings)} findings (wrong, crashed, or refusals that are not one line naming the op):")
        for line in findings:
            print("  " + line)
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
