"""A progress line on stderr for long loops (calibration samples, tuning trials)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`label: done/total [elapsed]`, redrawn in place on a terminal, every 10% otherwise. With
    `total` None (a stream of unknown length): `label: done [elapsed]`, every power of two
    otherwise."""

    def __init__(self, label: str, total: int | None, stream=None):
        self.label, self.total = label, None if total is None else max(total, 1)
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last_step = -1
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, note: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        count = f"{done}/{self.total}" if self.total is not None else f"{done}"
        line = f"{self.label}: {count} [{elapsed:.1f}s]{' ' + note if note else ''}"
        finished = self.total is not None and done >= self.total
        if self.tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
            self.stream.flush()
            return
        step = done * 10 // self.total if self.total is not None else max(done, 1).bit_length()
        if step != self.last_step or finished:
            self.last_step = step
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the line drawn in place when the total was unknown (a known total ends it itself)."""
        if self.tty and self.total is None:
            self.stream.write("\n")
            self.stream.flush()
