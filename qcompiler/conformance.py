"""ONNX's own conformance data run through qcompiler: node test cases and the "light" models.

Used by tests/test_import_coverage.py, benchmarks/conformance.py and benchmarks/conformance_light.py.

A node case ends in one `Outcome`:
  passed       compiled, exported, loaded, ran, and every output matches at the case's rtol/atol
  constant     refused as given, because a graph input feeds a value the compiler needs at compile
               time (Resize scales, Reshape shape, Reduce axes: `frontend.COMPILE_TIME_SLOTS`); passes with
               those inputs fixed to the case's values (`constant_inputs`, `--constant-input`)
  unsupported  `qcompiler.compile` refused it with a `QCompilerError` (an honest "cannot")
  wrong        it ran, but an output's shape, dtype or values differ from ONNX's expected data
  crashed      anything else: a non-QCompilerError exception while compiling, or an artifact that
               fails to export, load or run
  skipped      on `SKIPS`, with the reason there

onnxruntime is only the independent reference (`run_ort_case`); it is never in the compiled path.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import onnx

from .errors import QCompilerError
from .frontend import compile_time_operands

# Ops (and the domain) that only training graphs contain; their cases are not inference.
TRAINING_DOMAINS = frozenset({"ai.onnx.preview.training"})
TRAINING_OPS = frozenset({"NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"})

# Node cases whose expected data cannot be compared with any run: name → reason.
SKIPS: Mapping[str, str] = MappingProxyType({
    "test_bernoulli": "random output: ONNX's expected values are one random draw",
    "test_bernoulli_double": "random output: ONNX's expected values are one random draw",
    "test_bernoulli_seed": "random output: the seed's generator is implementation-defined",
    "test_bernoulli_expanded": "random output: ONNX's expected values are one random draw",
    "test_bernoulli_double_expanded": "random output: ONNX's expected values are one random draw",
    "test_bernoulli_seed_expanded": "random output: the seed's generator is implementation-defined",
})

STATUSES = ("passed", "constant", "unsupported", "wrong", "crashed", "skipped")


@dataclass(frozen=True)
class Outcome:
    """How one case ended (`status` is one of `STATUSES`), with a one-line reason when not passed."""

    status: str
    detail: str = ""


def node_cases() -> list:
    """Every ONNX node conformance case (`onnx.backend.test.case.node`), in ONNX's order."""
    import onnx.backend.test.case.node as node_cases_module

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return node_cases_module.collect_testcases(None)


def op_types(cases: Sequence) -> dict[str, str]:
    """Case name → the op type it tests (`domain::Op` outside the default domain).

    A plain case holds exactly one node; an `_expanded` case holds the function body of the op
    its base case tests, and is attributed to that op.
    """
    single = {}
    for case in cases:
        nodes = case.model.graph.node
        if len(nodes) == 1:
            node = nodes[0]
            single[case.name] = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    result = {}
    for case in cases:
        base = case.name.split("_expanded")[0]
        result[case.name] = single.get(case.name) or single.get(base) or "(multi-node)"
    return result


def is_inference_case(case_name: str, op_type: str) -> bool:
    """False for training ops (optimizers, losses) and training-mode cases."""
    domain = op_type.split("::")[0] if "::" in op_type else ""
    return domain not in TRAINING_DOMAINS and op_type not in TRAINING_OPS and "training" not in case_name


def as_value(value):
    """A data-set value as numpy: ONNX stores some tensors (float16, bfloat16, float8, 4-bit
    types) as `TensorProto`; sequences stay lists, empty optionals None."""
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [as_value(item) for item in value]
    return value


def case_feed(model: onnx.ModelProto, inputs: Sequence) -> dict:
    """The data set's input values by graph-input name (initializer-backed inputs excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in initializers]
    return {name: as_value(value) for name, value in zip(names, inputs)}


def mismatch(actual: Mapping[str, object], expected: Sequence, names: Sequence[str],
             rtol: float, atol: float) -> str | None:
    """None when every output matches ONNX's expected data, else one line naming the first
    output that differs. As ONNX's backend runner: same dtype, then strings and objects equal,
    numbers within rtol/atol (NaN equal to NaN); sequences element by element."""
    for name, want in zip(names, expected):
        if name not in actual:
            return f"output {name!r} missing"
        problem = _value_mismatch(actual[name], want, rtol, atol)
        if problem is not None:
            return f"output {name!r}: {problem}"
    return None


def _value_mismatch(got, want, rtol: float, atol: float) -> str | None:
    want = as_value(want)
    if isinstance(want, list) or want is None:
        if not isinstance(got, list) and got is not None:
            return f"expected a {type(want).__name__}, got a {type(got).__name__}"
        if want is None or got is None:
            return None if want is got else "expected an empty optional"
        if len(got) != len(want):
            return f"sequence of {len(got)}, expected {len(want)}"
        for index, (g, w) in enumerate(zip(got, want)):
            problem = _value_mismatch(g, w, rtol, atol)
            if problem is not None:
                return f"element {index}: {problem}"
        return None
    want = np.asarray(want)
    if not isinstance(got, np.ndarray):
        return f"expected a tensor, got a {type(got).__name__}"
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if want.dtype.kind in "OUSb":
        return None if np.array_equal(got, want) else "values differ"
    try:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    except (AssertionError, TypeError):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64)) if want.size else np.zeros(1)
        err = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
        return f"values differ (max abs error {err:.3g}, rtol {rtol:g}, atol {atol:g})"
    return None


def compile_time_inputs(case) -> dict[str, np.ndarray]:
    """The case's graph inputs that feed a `frontend.COMPILE_TIME_SLOTS` slot of one of its nodes, with
    their values, when every data set gives them the same values (else nothing: they are data)."""
    opset = max((entry.version for entry in case.model.opset_import if entry.domain in ("", "ai.onnx")), default=1)
    graph_inputs = {vi.name for vi in case.model.graph.input}
    wanted = {name for node in case.model.graph.node for name in compile_time_operands(node, opset) if name in graph_inputs}
    if not wanted:
        return {}
    feeds = [case_feed(case.model, inputs) for inputs, _ in case.data_sets]
    values = {name: np.asarray(feeds[0][name]) for name in wanted if name in feeds[0]}
    for feed in feeds[1:]:
        if any(not np.array_equal(np.asarray(feed[name]), value) for name, value in values.items()):
            return {}
    return values


def _output_names(model: onnx.ModelProto) -> list[str]:
    return [out.name for out in model.graph.output]


def run_qcompiler_case(case, workdir: Path, target: str = "x86", committed_logs: bool = False) -> Outcome:
    """Compile the case's model, export it to `workdir`, load it and run every data set.

    The committed tuning logs are off by default: their records are for the zoo's models, never
    a node case's kernels, and opening them costs about 2 s per compile (a Relu compiles in 0.03 s).
    """
    import qcompiler

    constant: dict[str, np.ndarray] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                artifact = qcompiler.compile(case.model, target=target, committed_logs=committed_logs)
            except QCompilerError as err:
                constant = compile_time_inputs(case)
                if not constant:
                    return Outcome("unsupported", str(err))
                try:
                    artifact = qcompiler.compile(case.model, target=target, committed_logs=committed_logs,
                                                 constant_inputs=constant)
                except QCompilerError:
                    return Outcome("unsupported", str(err))
    except Exception as err:  # noqa: BLE001 - any other exception is the finding
        return Outcome("crashed", f"compile raised {type(err).__name__}: {_first_line(err)}")
    try:
        model = qcompiler.load(artifact.export(workdir / f"{case.name}.so"))
        for inputs, expected in case.data_sets:
            feed = {name: value for name, value in case_feed(case.model, inputs).items() if name not in constant}
            actual = model.run(feed)
            problem = mismatch(actual, expected, _output_names(case.model), case.rtol, case.atol)
            if problem is not None:
                return Outcome("wrong", problem)
    except Exception as err:  # noqa: BLE001 - a compiled artifact that cannot run is the finding
        return Outcome("crashed", f"artifact failed: {type(err).__name__}: {_first_line(err)}")
    if constant:
        return Outcome("constant", f"with {', '.join(sorted(constant))} fixed at compile time")
    return Outcome("passed")


def run_ort_case(case) -> Outcome:
    """onnxruntime (CPU) on the same case and data: passed, wrong, or unsupported (it refused)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        return Outcome("unsupported", _first_line(err))
    names = _output_names(case.model)
    for inputs, expected in case.data_sets:
        try:
            values = session.run(names, case_feed(case.model, inputs))
        except Exception as err:  # noqa: BLE001
            return Outcome("unsupported", _first_line(err))
        problem = mismatch(dict(zip(names, values)), expected, names, case.rtol, case.atol)
        if problem is not None:
            return Outcome("wrong", problem)
    return Outcome("passed")


def check_refusal(message: str, model: onnx.ModelProto, op_type: str) -> str | None:
    """None if a QCompilerError message is one line naming what is at fault: an op of the case
    (the op under test, or for an `_expanded` case any op of its function body), or for a
    refused graph input that input; else what is wrong with the message."""
    if "\n" in message:
        return "message spans several lines"
    names = {op_type.split("::")[-1]} | {node.op_type for node in model.graph.node}
    if any(name in message for name in names):
        return None
    if any(f"input {vi.name!r}" in message for vi in model.graph.input):
        return None
    return f"message names none of the case's ops ({', '.join(sorted(names))}) or inputs"


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


# --- the "light" architecture models shipped in the onnx package -------------------------------

LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512")


def light_model_path(name: str) -> Path:
    """`onnx/backend/test/data/light/light_NAME.onnx` in the installed onnx package."""
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        raise QCompilerError(f"light model {name!r} not found at {path}: expected one of {', '.join(LIGHT_MODELS)}")
    return path


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of a light model whose placeholder weights are random, in the model's own legacy form.

    The shipped light models make every large weight with `ConstantOfShape` (each element 0.02),
    which makes every output the same (softmax 1/1000) for any input: a comparison that cannot
    fail. Here each such weight becomes an initializer listed among the graph inputs, as an IR-3
    exporter writes weights, drawn by `_draw_weight`. The shipped BatchNormalization statistics
    (variances down to 1e-14) would overflow float32 within a few layers of random weights, so
    they are redrawn too.
    """
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    new = onnx.ModelProto()
    new.CopyFrom(model)
    graph = new.graph
    roles = _batchnorm_roles(graph.node)
    shapes = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name.endswith("__SHAPE")}
    nodes, weights = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            weights.append(numpy_helper.from_array(_draw_weight(shape, roles.get(node.output[0]), rng),
                                                   node.output[0]))
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    inits = [numpy_helper.from_array(_draw_weight(tuple(init.dims), roles[init.name], rng), init.name)
             if init.name in roles else init
             for init in graph.initializer if init.name in used] + weights
    inputs = [vi for vi in graph.input if vi.name in used or vi.name not in shapes]
    inputs += [onnx.helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)) for w in weights]
    for field, values in ((graph.node, nodes), (graph.initializer, inits), (graph.input, inputs)):
        del field[:]
        field.extend(values)
    return new


def _batchnorm_roles(nodes: Sequence[onnx.NodeProto]) -> dict[str, str]:
    """Tensor name → its role (scale, bias, mean, var) as a BatchNormalization parameter."""
    roles = {}
    for node in nodes:
        if node.op_type == "BatchNormalization":
            roles.update(zip(node.input[1:5], ("scale", "bias", "mean", "var")))
    return roles


def _draw_weight(shape: tuple[int, ...], role: str | None, rng: np.random.Generator) -> np.ndarray:
    """float32 random values for a weight: BatchNormalization scale N(1, 0.1²), bias and mean
    N(0, 0.1²), variance U(0.5, 1.5); other 1-D tensors (biases) N(0, 0.1²); the rest LeCun-scaled
    normal, N(0, 1 / fan_in) with fan_in the product of all but the first dim (outputs stay
    in range: softmax outputs do not saturate to one-hot)."""
    if role == "var":
        value = rng.uniform(0.5, 1.5, shape)
    elif role == "scale":
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif role is not None or len(shape) <= 1:
        value = 0.1 * rng.standard_normal(shape)
    else:
        value = rng.standard_normal(shape) * np.sqrt(1.0 / max(int(np.prod(shape[1:])), 1))
    return value.astype(np.float32)


def random_feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 values for every graph input without an initializer (static shapes)."""
    rng = np.random.default_rng(seed)
    initializers = {init.name for init in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feed[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def max_rel_error(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> float:
    """max over outputs of max|actual − expected| / max|expected| (inf on a missing output or shape)."""
    worst = 0.0
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            return float("inf")
        scale = max(float(np.abs(want).max()), 1e-6)
        worst = max(worst, float(np.abs(got.astype(np.float64) - want).max()) / scale)
    return worst


@dataclass(frozen=True)
class LightResult:
    """One light model compiled and compared with onnxruntime."""

    name: str
    compiled: bool
    compile_seconds: float
    rel_error: float | None  # None when it did not compile or run
    detail: str = ""


def run_light_model(name: str, workdir: Path, target: str = "x86", seed: int = 0) -> LightResult:
    """Compile light model `name` with random weights (`with_random_weights`, fp32), export,
    load, run on random inputs, and compare with onnxruntime on the same model and inputs."""
    import qcompiler

    model = with_random_weights(onnx.load(light_model_path(name)), seed)
    feed = random_feed(model, seed)
    start = time.perf_counter()
    try:
        artifact = qcompiler.compile(model, target=target)
    except QCompilerError as err:
        return LightResult(name, False, time.perf_counter() - start, None, str(err))
    seconds = time.perf_counter() - start
    expected = _ort_outputs(model, feed)
    try:
        actual = qcompiler.load(artifact.export(workdir / f"{name}.so")).run(feed)
    except Exception as err:  # noqa: BLE001 - an artifact that cannot run is the finding
        return LightResult(name, True, seconds, None, f"artifact failed: {type(err).__name__}: {_first_line(err)}")
    return LightResult(name, True, seconds, max_rel_error(actual, expected))


def _ort_outputs(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feed))))
