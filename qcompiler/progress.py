"""A progress line on stderr for long loops (calibration samples, tuning trials)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`label: done/total [elapsed]`, redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total = label, max(total, 1)
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last_decile = -1
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, note: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        line = f"{self.label}: {done}/{self.total} [{elapsed:.1f}s]{' ' + note if note else ''}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
            self.stream.flush()
            return
        decile = done * 10 // self.total
        if decile != self.last_decile or done >= self.total:
            self.last_decile = decile
            self.stream.write(line + "\n")
            self.stream.flush()
