"""Per-kernel profile of one artifact run: where the time of `main` goes.

The Relax VM calls an instrument before and after every Call instruction: each compiled
kernel (`fused_conv2d_...`), and each runtime builtin (`vm.builtin.alloc_storage`,
`vm.builtin.alloc_tensor`, copies, shape checks, tuple construction). A row of the profile is
one callee: calls per run, total µs per run, share of the run. The clock reads at the end of
the "before" callback and at the start of the "after" one, so a row holds the callee's own
time plus the VM's dispatch of one call (about 0.3 µs here), not the Python callbacks.

Besides the rows, the profile measures the same runs without the instrument (`run_us`, the
median wall time of `main`): the rows' total is what the instrument could attribute; the
difference is the VM's interpretation between calls.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

# Runtime builtins that allocate or move memory: each is a row of its own, marked as such.
MEMORY_BUILTINS = frozenset({
    "vm.builtin.alloc_storage", "vm.builtin.alloc_tensor", "vm.builtin.copy", "vm.builtin.to_device",
    "vm.builtin.reshape", "vm.builtin.ensure_zero_offset",
})


@dataclass
class ProfileRow:
    """One callee of `main`: how often it runs and how long it takes, per run."""

    name: str
    kind: str  # "kernel", "memory" (allocations and copies) or "runtime" (other VM builtins)
    calls: int  # calls per run
    total_us: float  # per run: the median over the profiled runs
    share: float  # total_us / run_us


@dataclass
class Profile:
    """The rows of a profile, slowest first, and the uninstrumented wall time of a run."""

    rows: list[ProfileRow]
    repeat: int
    run_us: float  # median wall time of `main` without the instrument
    threads: int
    artifact: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def total_us(self) -> float:
        return sum(row.total_us for row in self.rows)

    def top(self, n: int, kind: str | None = None) -> list[ProfileRow]:
        return [row for row in self.rows if kind is None or row.kind == kind][:n]

    def render(self, limit: int | None = None) -> str:
        rows = self.rows if limit is None else self.rows[:limit]
        width = max([len("name")] + [min(len(r.name), 72) for r in rows])
        lines = [f"{'name':<{width}}  {'kind':<8}{'calls':>6}{'total us':>12}{'share':>8}"]
        for row in rows:
            name = row.name if len(row.name) <= 72 else row.name[:69] + "..."
            lines.append(f"{name:<{width}}  {row.kind:<8}{row.calls:>6}{row.total_us:>12.1f}{row.share:>8.1%}")
        if limit is not None and len(self.rows) > limit:
            rest = self.rows[limit:]
            lines.append(f"{f'({len(rest)} more)':<{width}}  {'':<8}{sum(r.calls for r in rest):>6}"
                         f"{sum(r.total_us for r in rest):>12.1f}{sum(r.share for r in rest):>8.1%}")
        by_kind = defaultdict(float)
        for row in self.rows:
            by_kind[row.kind] += row.total_us
        lines.append(f"{'total':<{width}}  {'':<8}{sum(r.calls for r in self.rows):>6}{self.total_us:>12.1f}"
                     f"{self.total_us / self.run_us if self.run_us else 0:>8.1%}")
        lines.append(f"run: {self.run_us:.1f} us median without the profiler ({self.threads} thread(s), "
                     f"{self.repeat} profiled runs); kernels {by_kind['kernel']:.1f} us, allocations and copies "
                     f"{by_kind['memory']:.1f} us, other runtime calls {by_kind['runtime']:.1f} us")
        lines += self.notes
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"artifact": self.artifact, "threads": self.threads, "repeat": self.repeat, "run_us": self.run_us,
                "total_us": self.total_us, "rows": [asdict(row) for row in self.rows], "notes": self.notes}


def kind_of(name: str) -> str:
    if name in MEMORY_BUILTINS:
        return "memory"
    if name.startswith("vm.builtin.") or name.startswith("vm.") or name.startswith("runtime."):
        return "runtime"
    return "kernel"


def profile_vm(set_instrument: Callable, main: Callable, args: Sequence, repeat: int, threads: int,
               sync: Callable[[], None] = lambda: None, warmup: int = 3) -> Profile:
    """Profile `main(*args)` of one VM (whose `set_instrument` function is given).

    After `warmup` plain calls, `repeat` instrumented calls alternate with `repeat` plain ones;
    a row's time is its median over the instrumented runs, `run_us` the median of the plain
    ones. The instrument is removed after each run (also on error). `sync` waits for the
    device (kernels on a GPU are asynchronous: their rows are then launch times).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    clock = time.perf_counter
    run_totals: dict[str, float] = defaultdict(float)  # the current instrumented run
    calls: dict[str, int] = defaultdict(int)
    starts: list[float] = []

    def instrument(func, name, before_run, ret_value, *call_args):
        if before_run:
            starts.append(clock())
        else:
            end = clock()
            run_totals[name] += end - starts.pop()
            calls[name] += 1
        return 0  # VMInstrumentReturnKind.kNoOp

    for _ in range(warmup):
        main(*args)
    sync()
    # Instrumented and plain runs alternate, so that both see the same machine state.
    per_run: dict[str, list[float]] = defaultdict(list)
    walls = []
    for _ in range(repeat):
        run_totals.clear()
        set_instrument(instrument)
        try:
            main(*args)
            sync()
        finally:
            set_instrument(None)
        for name, seconds in run_totals.items():
            per_run[name].append(seconds)
        start = clock()
        main(*args)
        sync()
        walls.append(clock() - start)
    run_us = statistics.median(walls) * 1e6
    rows = []
    for name, seconds in per_run.items():
        total_us = statistics.median(seconds) * 1e6
        rows.append(ProfileRow(name, kind_of(name), calls[name] // repeat, total_us,
                               total_us / run_us if run_us else 0.0))
    rows.sort(key=lambda row: row.total_us, reverse=True)
    return Profile(rows, repeat, run_us, threads)
