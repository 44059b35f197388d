"""benchmarks/gpu_check.sh, exercised on this CPU: prepare_gpu_check.py with --target x86 builds
the same folder as for a GPU preset, and the script checks and times it through qc_run alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def check_folder(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from prepare_gpu_check import prepare
    finally:
        sys.path.remove(str(BENCHMARKS))
    return prepare("x86", tmp_path_factory.mktemp("gpu") / "gpu_check")


def run_check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(folder / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "REPEAT": "3", "WARMUP": "1"}, timeout=300)


def test_gpu_check_passes_and_prints_the_table(check_folder):
    assert sorted(p.name for p in (check_folder / "inputs").iterdir()) == \
        ["page_cw0.npy", "page_cw180.npy", "page_cw270.npy", "page_cw90.npy"]
    proc = run_check(check_folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("fp32 ", "int8 ", "fp16 ")) and ".so" in line]
    assert [(r[0], r[1], r[2]) for r in rows] == [("fp32", "model_fp32.so", "4/4"), ("int8", "model_int8.so", "4/4"),
                                                   ("fp16", "model_fp16.so", "4/4")]
    assert all(float(r[-1]) > 0 for r in rows)
    assert "int8 speed-up over fp32" in proc.stdout and "all outputs match the CPU build" in proc.stdout


def test_gpu_check_reports_a_differing_output(check_folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(check_folder, broken, symlinks=True)
    expected = broken / "expected" / "int8" / "page_cw90.npy"
    np.save(expected, np.load(expected) + 1.0)
    proc = run_check(broken)
    assert proc.returncode == 1
    assert any(line.startswith("FAIL int8 page_cw90.npy: check") for line in proc.stdout.splitlines())
