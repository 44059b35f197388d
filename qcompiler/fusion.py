"""Let FuseOps fuse qcompiler's table lookups into the kernels that produce their indices.

realize.py computes a float activation of an 8-bit tensor (hardswish, sigmoid, ...) as a lookup
`out[i] = table[clip(q[i] - qmin)]` (Relax `take` from a constant 1-D table). TVM classifies
that gather as opaque, so FuseOps launches it as a kernel of its own, between the convolution
that computes q and the next layer: one more pass over the tensor on the CPU, one more launch on
the GPU. Each output element of a lookup depends on the same element of its index tensor alone,
and the table is a constant like a scale, so it is elementwise in the sense FuseOps uses: the
pass below says so, and the lookup joins its producer's epilogue.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.s_tir import Schedule, ScheduleError

ELEMWISE, OPAQUE = 0, 8  # relax's OpPatternKind kElemWise, kOpaque


def _point_access(region, iter_vars) -> bool:
    """The region is the single element [v0, v1, ...] of the block's iteration variables."""
    return len(region.region) == len(iter_vars) and all(
        isinstance(r.extent, tirx.IntImm) and r.extent.value == 1 and r.min.same_as(iv.var)
        for r, iv in zip(region.region, iter_vars))


def child_blocks(sch: Schedule) -> list:
    """The blocks under the root block; none for a PrimFunc written without one (TOPI's
    ir_builder and extern kernels, e.g. ScatterElements, TopK, CumSum), which no rule schedules."""
    try:
        root = sch.get_sblock("root")
    except (ScheduleError, ValueError, RuntimeError):
        return []
    return list(sch.get_child_blocks(root))


def sole_block(func: tirx.PrimFunc):
    """The block of a PrimFunc that has one block under its root, else None."""
    sch = Schedule(func)
    blocks = child_blocks(sch)
    return sch.get(blocks[0]) if len(blocks) == 1 else None


def is_table_lookup(func: tirx.PrimFunc) -> bool:
    """One spatial block that writes `out[v]` from `index[v]` (an integer tensor of out's shape,
    read at the same point) and a 1-D `table` read anywhere."""
    block = sole_block(func)
    if block is None:
        return False
    ivs = block.iter_vars
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in ivs) or len(block.writes) != 1 or len(block.reads) != 2:
        return False
    out = block.writes[0]
    index = [r for r in block.reads if _point_access(r, ivs) and "int" in r.source.dtype
             and list(r.source.shape) == list(out.source.shape)]
    table = [r for r in block.reads if len(r.source.shape) == 1 and not _point_access(r, ivs)]
    return _point_access(out, ivs) and len(index) == 1 and len(table) == 1


@tvm.transform.module_pass(opt_level=0, name="MarkTableLookupsElementwise")
def mark_table_lookups_elementwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Run after AnnotateTIROpPattern: table-lookup PrimFuncs (which it classifies kOpaque) get
    op_pattern kElemWise."""
    marked = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gvar, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and func.attrs and int(func.attrs.get("op_pattern", -1)) == OPAQUE \
                and is_table_lookup(func):
            marked[gvar] = func.with_attr("op_pattern", ELEMWISE)
    return marked


def lookups_fuse_on(target: tvm.target.Target) -> bool:
    """GPUs only: there a fused lookup saves a launch and a pass over memory. On x86 it was
    measured slower (rapidocr's MobileNetV3 classifier, 1 thread: 1.23 ms fused, 1.16 ms not):
    gathering from the table inside the vectorized epilogue costs more than a separate pass."""
    return target.kind.name == "cuda"


def with_lookups_elementwise(passes: list) -> list:
    """`passes` (a TVM legalize sequence) with the marking right after AnnotateTIROpPattern."""
    names = [p.info.name for p in passes]
    at = names.index(relax.transform.AnnotateTIROpPattern().info.name) + 1
    return passes[:at] + [mark_table_lookups_elementwise] + passes[at:]
