"""Kernel tuning with MetaSchedule (XGBoost cost model) and applying its records at compile time.

Tuning sees exactly what compile builds: the Relax module after library dispatch, legalization
and fusion (the first stages of the CPU pipeline), one task per fused PrimFunc. Records live in
MetaSchedule's JSON database (`database_workload.json`, `database_tuning_record.json`) in a
folder; compile applies every database under `tuning_logs/<preset>/` automatically, after any
`--tuning-log` folders.
Workloads match with module equality "structural": two fused kernels share records when their
PrimFuncs are structurally equal (names aside), across models.

A database file may end in a line cut short by an interrupted run; such lines (and records
whose workload is missing) are skipped with a warning, never a crash.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import logging
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import tvm
from tvm import relax

from .errors import QCompilerError
from .kernels.isa import DOT_PRODUCTS
from .kernels.schedules import (DEFAULT_CANDIDATE, DEFAULT_KERNEL, GENERIC_LOOPS, SCHEDULE_SOURCE, SCHEDULED,
                                child_blocks, default_schedule, default_space, partitioned_kernel,
                                tile_engine_kernel)
from .kernels.vnni import INTRIN as VNNI_INTRIN
from .kernels.vnni import TVM_INTRIN as TVM_VNNI
from .kernels.vnni import repair_tvm_intrinsics
from .progress import Progress
from .runtime import set_num_threads
from .targets import DeviceKind, TargetPreset

log = logging.getLogger("qcompiler")

REPO = Path(__file__).resolve().parent.parent
TUNING_LOGS = REPO / "tuning_logs"
MODULE_EQUALITY = "structural"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def fused_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The target's pipeline up to fusion (int8 and float32 kernels dispatched, ops legalized and fused, no
    schedules yet): what tuning extracts tasks from and compile schedules. Each kernel's weight
    buffers are marked layout-free (`layout_free_buffers`), so a tuned schedule may store them
    in the layout it reads them in; `with_weight_layouts_folded` then applies that layout to
    the weights at compile time."""
    from . import fusion
    from .kernels.bf16 import dispatch_bf16_kernels
    from .kernels.dispatch import dispatch_int8_kernels
    from .kernels.fp32 import dispatch_float_kernels
    from .kernels.vector_math import with_vector_math
    from .passes.layout import channels_last

    if target.kind.name != "cuda":
        # Constant weights folded (Gemm's transposed weight), float convolutions channels-last (a
        # quantized model is already), before the kernels that pack those weights are chosen.
        mod = channels_last(relax.transform.FoldConstant()(mod))[0]
    mod = dispatch_bf16_kernels(dispatch_int8_kernels(mod, target), target)
    mod = with_vector_math(dispatch_float_kernels(mod, target), target)
    with target:
        if target.kind.name == "cuda":
            from tvm.relax.backend.cuda import pipeline as cuda

            *legalize, _dlight = cuda.legalize_passes(target)
            passes = cuda.library_dispatch_passes(target) + legalize
        else:
            from tvm.relax.backend import cpu_generic

            passes = cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
        if fusion.lookups_fuse_on(target):
            passes = fusion.with_lookups_elementwise(passes)
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
        return tvm.transform.Sequential(passes)(mod)


def with_weight_layouts_folded(mod: tvm.IRModule) -> tvm.IRModule:
    """Tuned kernels that read a weight in a layout of their own (MetaSchedule's RewriteLayout)
    carry the rewrite as a preprocessing block; split it into a kernel of its own and run that
    at compile time on the constant weights, so that the artifact stores them rewritten.
    TVM's split pass requires a block at the top of every statement of every kernel, which
    hand-written kernels (kernels/taps.py) do not have: it sees only the kernels it splits."""
    rewriting = {gvar for gvar, func in mod.functions.items()
                 if isinstance(func, tvm.tirx.PrimFunc) and _rewrites_weight_layout(func)}
    if not rewriting:
        return mod
    others = {gvar: func for gvar, func in mod.functions.items()
              if isinstance(func, tvm.tirx.PrimFunc) and gvar not in rewriting}
    split = relax.transform.SplitLayoutRewritePreproc()(
        tvm.IRModule({gvar: func for gvar, func in mod.functions.items() if gvar not in others}, attrs=mod.attrs))
    for gvar, func in others.items():
        split[gvar] = func
    return tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()])(split)


def _rewrites_weight_layout(func: tvm.tirx.PrimFunc) -> bool:
    """Whether a block of `func` is MetaSchedule's layout-rewrite preprocessing of a weight."""
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    blocks = child_blocks(sch)
    while blocks:
        block = blocks.pop()
        if "meta_schedule.layout_rewrite_preproc" in sch.get(block).annotations:
            return True
        blocks.extend(sch.get_child_blocks(block))
    return False


def _unscheduled_kernels_through(mod: tvm.IRModule, schedule) -> tvm.IRModule:
    """`mod` with `schedule(func)` in place of each kernel no record scheduled, where it gives one."""
    scheduled = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and not _is_scheduled(func):
            new = schedule(func)
            if new is not None:
                scheduled[gvar] = new
    return scheduled


def _hand_written_kernels(target: tvm.target.Target) -> list:
    """qcompiler's kernels written for a kind of PrimFunc (each returns its kernel for a PrimFunc
    of its kind, else None): the tile engine's panel products (kernels/amx.py), byte-table
    lookups on the VBMI or AVX-512BW kernel (kernels/lookup.py) where `target` has the instruction,
    channels-last pads as the row copies of kernels/pad.py, and
    element-wise kernels whose default schedule partitions their loops: a final pad into a fill
    and an interior, a concatenation into its segments (kernels/schedules.py). They beat what tuning finds for these memory-bound kernels,
    so they take precedence over tuning records, and such kernels are no tuning tasks. None on
    GPUs (gpu_pipeline)."""
    from .kernels import lookup, pad

    if target.kind.name == "cuda":
        return []
    return [tile_engine_kernel, *lookup.lookup_kernels(target), pad.row_pad_kernel, partitioned_kernel]


def _first_that_applies(kernels: list):
    def first(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
        for kernel in kernels:
            scheduled = kernel(func)
            if scheduled is not None:
                return scheduled
        return None

    return first


def with_hand_written_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Every kernel of a kind qcompiler has a hand-written kernel for gets it."""
    return _unscheduled_kernels_through(mod, _first_that_applies(_hand_written_kernels(target)))


def _with_only_default_schedules(mod: tvm.IRModule) -> tvm.IRModule:
    """Every kernel not scheduled yet gets qcompiler's default schedule (kernels/schedules.py)."""
    return _unscheduled_kernels_through(mod, default_schedule)


def with_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Every kernel not scheduled yet gets a hand-written kernel for its kind, else qcompiler's
    default schedule (kernels/schedules.py)."""
    return _with_only_default_schedules(with_hand_written_kernels(mod, target))


def _tuned(mod: tvm.IRModule, database) -> tvm.IRModule:
    """`mod` with `database`'s schedules applied to the kernels they match."""
    if database is not None:
        with database:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    return mod


class ScheduleSource(str, Enum):
    """Where a kernel's schedule came from (the PrimFunc attribute SCHEDULE_SOURCE)."""

    HAND_WRITTEN = "hand-written"  # one of qcompiler's kernels for its kind, or written scheduled
    TUNED = "tuning record"
    DEFAULT = DEFAULT_KERNEL  # qcompiler's default schedule for the op (kernels/schedules.py)
    GENERIC = GENERIC_LOOPS  # the op's loop nest, parallel and vectorized (schedule_generic)
    NAIVE = "naive"  # TVM's loop nest as legalized: no schedule


def _mark_new_schedules(mod: tvm.IRModule, source: ScheduleSource) -> tvm.IRModule:
    """Each scheduled kernel without a SCHEDULE_SOURCE gets `source` (NAIVE: each unscheduled one)."""
    marked = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get(SCHEDULE_SOURCE)):
            continue
        if _is_scheduled(func) != (source is ScheduleSource.NAIVE):
            marked[gvar] = func.with_attr(SCHEDULE_SOURCE, source.value)
    return marked


def schedule_sources(mod: tvm.IRModule) -> dict[str, str]:
    """Kernel name → where its schedule came from, for the kernels of a lowered module."""
    sources = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and func.attrs.get(SCHEDULE_SOURCE):
            sources[str(func.attrs.get("global_symbol", gvar.name_hint))] = str(func.attrs[SCHEDULE_SOURCE])
    return dict(sorted(sources.items()))


def cpu_pipeline(target: tvm.target.Target, database=None, default_schedules: bool = True) -> tvm.transform.Pass:
    """TVM's CPU pipeline, with `database`'s schedules applied to the fused kernels they match
    and (if `default_schedules`) default schedules for the others. Each kernel is marked with
    where its schedule came from (`schedule_sources`)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            mod = _mark_new_schedules(fused_module(mod, target), ScheduleSource.HAND_WRITTEN)
            if default_schedules:
                mod = _mark_new_schedules(with_hand_written_kernels(mod, target), ScheduleSource.HAND_WRITTEN)
            mod = _mark_new_schedules(_tuned(mod, database), ScheduleSource.TUNED)
            if default_schedules:
                mod = _mark_new_schedules(_with_only_default_schedules(mod), ScheduleSource.DEFAULT)
            mod = _mark_new_schedules(with_weight_layouts_folded(mod), ScheduleSource.NAIVE)
            rest = cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)
            return tvm.transform.Sequential(rest)(mod)

    return pipeline


def gpu_pipeline(target: tvm.target.Target, database=None) -> tvm.transform.Pass:
    """TVM's CUDA pipeline, with `database`'s schedules applied to the kernels they match, int8
    convolutions and matmuls on qcompiler's dp4a kernels, small reductions (depthwise convolutions,
    pooling) one thread per output (kernels/gpu_schedules.py), and dlight's schedules for
    everything else."""
    from tvm.relax.backend.cuda import pipeline as cuda

    from .kernels.gpu_schedules import schedule_gpu

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            mod = _unscheduled_kernels_through(_tuned(fused_module(mod, target), database), schedule_gpu)
            *_, dlight = cuda.legalize_passes(target)
            rest = [dlight] + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)
            return tvm.transform.Sequential(rest)(mod)

    return pipeline


def _clean_lines(path: Path, check) -> list[tuple[int, str, object]]:
    """(position among the file's non-empty lines, line, parsed value) of each line of a
    JSON-lines file that parses and passes `check`."""
    good = []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for position, line in enumerate(lines):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if check(value):
            good.append((position, line, value))
    return good


def _readable_lines(folder: Path) -> tuple[list[str], list[str]]:
    """The workload and record lines of a database folder that can be read; warns about the rest.
    A record names its workload by position: where unreadable workload lines are dropped, the
    records of the workloads after them are renumbered (and those of dropped ones dropped)."""
    workloads, records = folder / WORKLOADS, folder / RECORDS
    if not folder.is_dir():
        raise QCompilerError(f"tuning log {folder} is not a folder")
    if not workloads.exists() or not records.exists():
        raise QCompilerError(f"tuning log {folder} has no {WORKLOADS} and {RECORDS}: not a MetaSchedule database")
    total_w = sum(1 for line in workloads.read_text(errors="replace").splitlines() if line.strip())
    total_r = sum(1 for line in records.read_text(errors="replace").splitlines() if line.strip())
    kept_workloads = _clean_lines(workloads, lambda v: isinstance(v, list) and len(v) == 2)
    renumbered = {position: index for index, (position, _, _) in enumerate(kept_workloads)}
    good_records = []
    for _, line, value in _clean_lines(records, lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[0], int)):
        if value[0] in renumbered:
            good_records.append(line if renumbered[value[0]] == value[0] else json.dumps([renumbered[value[0]], value[1]]))
    bad_w, bad_r = total_w - len(kept_workloads), total_r - len(good_records)
    if bad_w or bad_r:
        log.warning("tuning log %s: skipped %d unreadable workload line(s) and %d record(s)", folder, bad_w, bad_r)
    return [line for _, line, _ in kept_workloads], good_records


def _write_database(folder: Path, workloads: list[str], records: list[str]) -> None:
    for name, lines in ((WORKLOADS, workloads), (RECORDS, records)):
        tmp = folder / f".{name}.partial"
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(folder / name)


def register_dot_intrinsics() -> None:
    """Register qcompiler's dot-product intrinsics: replaying a trace that tensorizes with one
    (a record of a default schedule) needs it registered."""
    for dp in DOT_PRODUCTS:
        for register in (dp.register, dp.register_lanewise):
            if register is not None:
                register()


def open_database(folder: str | Path, scratch: Path):
    """A JSONDatabase over a readable copy (in `scratch`) of the database in `folder`."""
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    copy = Path(tempfile.mkdtemp(dir=scratch))
    workloads, records = _readable_lines(folder)
    register_dot_intrinsics()
    # MetaSchedule's x86 space tensorizes with TVM's `dot_16x4_vnni`, broken in TVM 0.27 and
    # repaired for tuning by registering qcompiler's intrinsic under its name. Replayed under
    # qcompiler's own name, records need no import of TVM's intrinsic library (~20 s of CPU).
    records = [line.replace(f'"{TVM_VNNI}"', f'"{VNNI_INTRIN}"') for line in records]
    _write_database(copy, workloads, records)
    try:
        return ms.database.JSONDatabase(work_dir=str(copy), module_equality=MODULE_EQUALITY)
    except Exception as err:  # a line that is JSON but not a valid workload or record
        raise QCompilerError(f"tuning log {folder} is corrupt: {str(err).strip().splitlines()[-1]}") from None


def preset_log_dir(preset: TargetPreset) -> Path:
    return TUNING_LOGS / preset.name


def log_folders(preset: TargetPreset, extra: list[str | Path], committed: bool = True) -> list[Path]:
    """User logs first, then (if `committed`) every database under `tuning_logs/<preset>/`."""
    folders = [Path(f) for f in extra]
    if committed:
        folders += sorted(path.parent for path in preset_log_dir(preset).rglob(RECORDS))
    return folders


def databases_for(preset: TargetPreset, extra: list[str | Path], scratch: Path, committed: bool = True):
    """The databases of `log_folders` as one, earlier folders taking precedence (None if none)."""
    from tvm.s_tir import meta_schedule as ms

    databases = [open_database(folder, scratch) for folder in log_folders(preset, extra, committed)]
    if not databases:
        return None
    return databases[0] if len(databases) == 1 else ms.database.OrderedUnionDatabase(*databases)


def extract_tasks(mod: tvm.IRModule, target: tvm.target.Target):
    return tunable_tasks(fused_module(mod, target), target)


def tunable_tasks(fused: tvm.IRModule, target: tvm.target.Target):
    """MetaSchedule's tasks for the fused kernels of `fused`, except kernels written already
    scheduled (the tap interleaving of depthwise convolutions, kernels/taps.py: there is
    nothing to tune in them, and MetaSchedule cannot analyse their vector shuffles) and kernels
    compile replaces by a hand-written one (byte-table lookups, pads)."""
    from tvm.s_tir import meta_schedule as ms

    hand_written = _first_that_applies(_hand_written_kernels(target))
    tasks = ms.relax_integration.extract_tasks(fused, target, module_equality=MODULE_EQUALITY)
    return [task for task in tasks
            if not _is_scheduled(task.dispatched[0]["main"]) and hand_written(task.dispatched[0]["main"]) is None]


def _is_scheduled(func: tvm.tirx.PrimFunc) -> bool:
    """Whether `func` is scheduled already (by a record, a default schedule, or as written)."""
    return bool(func.attrs and func.attrs.get(SCHEDULED))


@dataclass
class TaskCoverage:
    name: str
    weight: int
    best_seconds: float | None


def coverage(mod: tvm.IRModule, preset: TargetPreset, extra_logs: list[str | Path] = ()) -> list[TaskCoverage]:
    """For each tuning task of the model: how often it runs and its best recorded latency, if any."""
    target = preset.target()
    tasks = extract_tasks(mod, target)
    with tempfile.TemporaryDirectory() as scratch:
        # Queried one by one: MetaSchedule's union databases answer only schedule queries.
        databases = [open_database(folder, Path(scratch)) for folder in log_folders(preset, list(extra_logs))]
        result = []
        for task in tasks:
            best = None
            workload_mod = task.dispatched[0]
            for database in databases:
                if database.has_workload(workload_mod):
                    top = database.get_top_k(database.commit_workload(workload_mod), 1)
                    if top and top[0].run_secs:
                        best = float(sum(float(s) for s in top[0].run_secs) / len(top[0].run_secs))
                        break
            result.append(TaskCoverage(task.task_name, int(task.weight), best))
    return result


def _runner(preset: TargetPreset, rpc_tracker: str | None, rpc_key: str | None):
    from tvm.s_tir import meta_schedule as ms

    if rpc_tracker:
        host, _, port = rpc_tracker.rpartition(":")
        if not host or not port.isdigit():
            raise QCompilerError(f"--rpc-tracker {rpc_tracker!r}: expected HOST:PORT")
        if not rpc_key:
            raise QCompilerError("--rpc-tracker needs --rpc-key (the key the device servers registered with)")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key,
                                     session_timeout_sec=120)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1))
    if preset.tuning.runner == "rpc":
        raise QCompilerError(f"target {preset.name} is measured on the device itself: pass --rpc-tracker HOST:PORT "
                             f"--rpc-key KEY (see README: tuning on a remote device)")
    if preset.device is DeviceKind.CUDA and not tvm.cuda(0).exist:
        raise QCompilerError(f"target {preset.name} needs a GPU to measure kernels and this machine has none: "
                             f"tune on a GPU machine or pass --rpc-tracker HOST:PORT --rpc-key KEY")
    return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1))


def export_with(compiler: str, mod) -> str:
    """MetaSchedule builder export for cross-compiled presets: link with `compiler`."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="qc-ms-"), "kernel.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    """MetaSchedule builder build: MetaSchedule's default build, without its import of TVM's
    tensor-intrinsic library. A candidate arrives already tensorized, so the builder process
    needs no intrinsic registered; the import costs about 26 s of CPU on a 2-core machine, and
    MetaSchedule's LocalBuilder starts fresh processes for every batch of candidates."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target)


def _builder(preset: TargetPreset):
    from tvm.s_tir import meta_schedule as ms

    if preset.cross_compiler is None:
        return ms.builder.LocalBuilder(f_build=build_candidate)
    return ms.builder.LocalBuilder(f_build=build_candidate,
                                   f_export=functools.partial(export_with, preset.cross_compiler.require()))


def _search_space(preset: TargetPreset):
    """MetaSchedule's own design space, plus qcompiler's default schedule as a candidate on CPUs."""
    from tvm.s_tir import meta_schedule as ms

    if preset.device is not DeviceKind.CPU:
        return "post-order-apply"

    return ms.space_generator.SpaceGeneratorUnion([ms.space_generator.PostOrderApply(),
                                                   ms.space_generator.ScheduleFn(default_space)])


def _search_strategy(preset: TargetPreset):
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(population_size=preset.tuning.population,
                                                 genetic_num_iters=preset.tuning.generations)


@contextlib.contextmanager
def _nameless_handlers_detached():
    """MetaSchedule rebuilds its logging with dictConfig from the names of the handlers on its
    logger, and fails on a handler without a name (e.g. one a test harness attached): detach
    those for the duration of a tuning round."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    nameless = [h for h in logger.handlers if h.get_name() is None]
    for handler in nameless:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in nameless:
            logger.addHandler(handler)


def _default_candidates_measured(tasks, log_dir: Path) -> set[int]:
    """Indices of `tasks` for which the database in `log_dir` holds a measured default-schedule
    candidate (a record whose trace annotates DEFAULT_CANDIDATE)."""
    from tvm.s_tir import meta_schedule as ms

    if not (log_dir / RECORDS).exists():
        return set()
    database = ms.database.JSONDatabase(path_workload=str(log_dir / WORKLOADS),
                                        path_tuning_record=str(log_dir / RECORDS), module_equality=MODULE_EQUALITY)
    measured = set()
    for index, task in enumerate(tasks):
        mod = task.dispatched[0]
        if database.has_workload(mod):
            records = database.get_top_k(database.commit_workload(mod), 1 << 30)
            if any(DEFAULT_CANDIDATE in "".join(record.trace.as_python()) for record in records):
                measured.add(index)
    return measured


def _measure_default_candidates(tasks, log_dir: Path, builder, runner, budget: int) -> int:
    """Measure the default-schedule candidate of each task that has none measured in `log_dir`
    yet (at most `budget` of them); return how many. MetaSchedule's evolutionary search picks
    the candidates it measures by its cost model and may never pick the default one, and then a
    tuned record can be slower than the default schedule it replaces: PP-LCNet int8, 200
    trials, 1.55 → 2.32 ms at 1 thread."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    measured = _default_candidates_measured(tasks, log_dir)
    missing = [task for index, task in enumerate(tasks)
               if index not in measured and default_space(Schedule(task.dispatched[0]))][:budget]
    if not missing:
        return 0
    log.info("tune: measuring the default schedule of %d task(s) first", len(missing))
    with _nameless_handlers_detached():
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            missing, work_dir=str(log_dir), space=ms.space_generator.ScheduleFn(default_space),
            strategy="replay-trace")
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(log_dir), max_trials_global=len(missing),
                      num_trials_per_iter=1, builder=builder, runner=runner, cost_model="random",
                      module_equality=MODULE_EQUALITY)
    return len(missing)


def round_budget(wanted: int, done: int, elapsed_s: float, max_s: float | None) -> int:
    """Trials for the next round: `wanted`, or after `done` trials in `elapsed_s` seconds as many
    as fit in what is left of `max_s` at that pace; 0 once the time is up."""
    if max_s is None:
        return wanted
    if elapsed_s >= max_s:
        return 0
    return min(wanted, int((max_s - elapsed_s) * done / elapsed_s)) if done else wanted


def tune(
    mod: tvm.IRModule,
    preset: TargetPreset,
    log_dir: str | Path,
    trials: int,
    max_minutes: float | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    threads: int = 0,
) -> list[TaskCoverage]:
    """Tune the model's kernels into `log_dir` for `trials` more measurements (or `max_minutes`).

    Local CPU measurements run on `threads` threads (0: one per physical core), the count the
    model should then run at: a schedule's worth depends on it (MTCNN ONet, records measured on
    one thread and run on two: 1.6x slower than the default schedules). A remote device's
    thread count is its RPC server's.

    First, each task's default schedule is measured, unless the log holds that measurement
    already. Then tuning runs in rounds; each round gives every task `per_iter` candidates (sized
    so that the budget reaches every task) and resumes from the records of earlier rounds and runs. The
    time budget and the progress line are checked between rounds, so a round always completes
    and records every measurement it made; after the first round, a round is shortened to the
    trials that fit in the time left at the pace measured so far.
    """
    from tvm.s_tir import meta_schedule as ms

    if threads < 0:
        raise QCompilerError(f"--threads {threads}: expected 0 (one per core) or a positive count")
    set_num_threads(threads)  # before the runner starts its measuring processes: they inherit it
    runner = _runner(preset, rpc_tracker, rpc_key)  # fails fast, before any work, when nothing can measure
    builder = _builder(preset)
    target = preset.target()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if (log_dir / RECORDS).exists():  # resuming: drop a line an interrupted run may have cut short
        _write_database(log_dir, *_readable_lines(log_dir))
    repair_tvm_intrinsics()  # MetaSchedule's x86 design space tensorizes with TVM's VNNI intrinsic
    register_dot_intrinsics()  # its search replays the recorded default schedules
    tasks = tunable_tasks(fused_module(mod, target), target)
    num_tasks = len(tasks)
    per_iter = max(2, min(preset.tuning.trials_per_iter, trials // max(1, 2 * num_tasks)))
    round_size = per_iter * num_tasks
    log.info("tune: %d tasks, %d trials in rounds of %d (%d per task)", num_tasks, trials, round_size, per_iter)
    progress = Progress("tune (trials)", trials)
    start = time.perf_counter()
    done = _measure_default_candidates(tasks, log_dir, builder, runner, trials)
    if done:
        progress(done)
    while done < trials:
        budget = round_budget(min(round_size, trials - done), done, time.perf_counter() - start,
                              None if max_minutes is None else max_minutes * 60)
        if budget == 0:
            log.info("tune: --max-time %.1f min reached after %d trials", max_minutes, done)
            break
        with _nameless_handlers_detached():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks, work_dir=str(log_dir), space=_search_space(preset), strategy=_search_strategy(preset))
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(log_dir), max_trials_global=budget,
                num_trials_per_iter=min(per_iter, budget), builder=builder, runner=runner,
                cost_model=ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                                  adaptive_training=True),
                module_equality=MODULE_EQUALITY,
            )
        done += budget
        progress(done)
    return coverage(mod, preset, [log_dir])
