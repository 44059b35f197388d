"""Fuzzing in the test suite: 50 mutated inputs of every kind (fixed seed) through the CLI and
qc_run; none may crash, raise, report an internal error, hang or leave output files behind.
1,000 cases run from benchmarks/fuzz.py."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from qcompiler import fuzzing

REPO = Path(__file__).resolve().parent.parent


def test_fuzzed_inputs_give_one_line_errors(tmp_path):
    build = subprocess.run(["make", "-C", str(REPO / "deploy"), f"PYTHON={sys.executable}"], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    cases = fuzzing.prepare(tmp_path, 50, seed=20261203, qc_run=REPO / "deploy" / "build" / "qc_run")
    outcomes = fuzzing.run_cases(cases, tmp_path / "cases.json", timeout=60)
    kinds = Counter(o.name.split("/")[0] for o in outcomes)
    assert set(kinds) == {"onnx", "calibration", "input", "input-c", "tuning"}, kinds
    failures = [o for o in outcomes if o.kind in fuzzing.FAILURES]
    assert not failures, failures
    assert sum(o.kind == "error" for o in outcomes) >= 25  # most mutations are errors, each one line


def test_classification_of_outcomes(tmp_path):
    """The harness tells each failure apart (it would otherwise pass everything)."""
    out = tmp_path / "out" / "m.so"
    out.parent.mkdir()
    case = fuzzing.Case("onnx/x", ["compile"], [str(out), str(out.with_suffix(".json"))])
    assert fuzzing.classify(case, 2, "qcompiler: error: bad model\n").kind == "error"
    assert fuzzing.classify(case, 1, "qcompiler: internal error: KeyError: 'x'\n").kind == "internal"
    assert fuzzing.classify(case, 1, "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n").kind == "traceback"
    assert fuzzing.classify(case, -11, "").kind == "crash"
    assert fuzzing.classify(case, 0, "").kind == "half-written"  # claimed success, wrote nothing
    out.write_bytes(b"partial")
    assert fuzzing.classify(case, 2, "qcompiler: error: failed\n").kind == "half-written"


def test_a_hanging_case_is_killed_and_the_rest_still_run(tmp_path):
    """A case past the time limit is reported as a hang; the worker restarts for the next one."""
    model = tmp_path / "m.onnx"
    model.write_bytes(fuzzing.seed_models(np.random.default_rng(0))["mlp"].SerializeToString())
    out = tmp_path / "out" / "m.so"
    out.parent.mkdir()
    cases = [fuzzing.Case("onnx/slow", ["compile", str(model), "-o", str(out)], [str(out)]),
             fuzzing.Case("onnx/missing", ["compile", str(tmp_path / "none.onnx"), "-o", str(out)], [str(out)])]
    outcomes = fuzzing.run_cases(cases, tmp_path / "cases.json", timeout=0.01)
    assert outcomes[0].kind == "hang", outcomes
    assert outcomes[1].kind in ("error", "hang"), outcomes
