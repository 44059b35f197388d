"""Table lookups (int8 hardswish, hardsigmoid ...) fuse into the kernels that produce their
indices (by default on GPUs only), and the fused model computes exactly what the unfused one does."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

import qcompiler
from qcompiler import fusion
from qcompiler.frontend import load_onnx
from qcompiler.quantize import quantize
from qcompiler.targets import resolve
from qcompiler.tuning import cpu_pipeline, fused_module
from test_quantize import mobile_net, samples

TARGET = resolve("x86").target()


def kernels(mod) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_table_lookups_join_their_producers_and_change_no_output(monkeypatch):
    """On by default for CUDA; forced on for this CPU, whose results must not change by a bit."""
    quantized = quantize(load_onnx(mobile_net()), qcompiler.QConfig(), samples(8))
    assert fusion.lookups_fuse_on(resolve("cuda-sm80").target()) and not fusion.lookups_fuse_on(TARGET)

    def run(mod):
        with TARGET:
            lowered = cpu_pipeline(TARGET)(mod)
        vm = relax.VirtualMachine(tvm.compile(lowered, TARGET), tvm.cpu())
        return [vm["main"](tvm.runtime.tensor(s["x"])).numpy() for s in samples(4, seed=5)]

    separate = kernels(fused_module(quantized.mod, TARGET))
    assert sum(name.startswith("take") for name in separate) == 3  # two hardswish, one hardsigmoid
    expected = run(quantized.mod)
    monkeypatch.setattr(fusion, "lookups_fuse_on", lambda target: True)
    fused = kernels(fused_module(quantized.mod, TARGET))
    assert not any(name.startswith("take") for name in fused)
    assert sum("take" in name for name in fused) == 3  # each in the kernel that computes its index
    for got, want in zip(run(quantized.mod), expected):
        np.testing.assert_array_equal(got, want)


def test_only_table_lookups_are_marked():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 5], "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            table = relax.const(np.arange(16, dtype=np.int8))
            lookup = bb.emit(relax.op.take(table, x, axis=0, mode="clip"))
            gather = bb.emit(relax.op.take(relax.const(np.ones((16, 3), np.int8)), x, axis=0, mode="clip"))
            out = bb.emit_output(relax.Tuple([lookup, bb.emit(relax.op.add(x, x)), gather]))
        bb.emit_func_output(out)
    legalized = relax.transform.LegalizeOps()(bb.get())
    marked = {gv.name_hint: fusion.is_table_lookup(f) for gv, f in legalized.functions.items()
              if isinstance(f, tvm.tirx.PrimFunc)}
    assert marked == {"take": True, "add": False, "take1": False}
