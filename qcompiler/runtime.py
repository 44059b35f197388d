"""Load an exported artifact and run it from Python: `qcompiler.load(path).run({name: array})`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import QCompilerError
from .frontend import TensorSpec
from .metadata import ArtifactMetadata, metadata_path
from .signature import Signature, read_signature


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def set_num_threads(threads: int) -> None:
    """Size TVM's CPU thread pool for this process (0 = one thread per core).

    TVM reads TVM_NUM_THREADS when it starts its pool, at the first parallel kernel: call this
    before running a model. (TVM's `runtime.config_threadpool` is not used: on this build it
    pins the workers so that two threads run no faster than one.)
    """
    import os

    if threads > 0:
        os.environ["TVM_NUM_THREADS"] = str(int(threads))
    else:
        os.environ.pop("TVM_NUM_THREADS", None)


def _device(kind: str):
    import tvm

    if kind == "cpu":
        return tvm.cpu(0)
    if kind == "cuda":
        dev = tvm.cuda(0)
        if not dev.exist:
            raise QCompilerError("the artifact targets CUDA but no CUDA device is available on this machine")
        return dev
    raise QCompilerError(f"unknown artifact device {kind!r}: expected 'cpu' or 'cuda'")


def check_feed(feed: Mapping[str, np.ndarray], inputs: list[TensorSpec], where: str) -> list[np.ndarray]:
    """The feed's arrays in the model's input order, after checking names, shapes and dtypes."""
    names = [spec.name for spec in inputs]
    unknown = sorted(set(feed) - set(names))
    if unknown:
        raise QCompilerError(
            f"{where}: unknown input name(s) {', '.join(map(repr, unknown))}: expected {', '.join(map(repr, names))}"
        )
    missing = [name for name in names if name not in feed]
    if missing:
        raise QCompilerError(f"{where}: missing input(s) {', '.join(map(repr, missing))}")
    arrays = []
    for spec in inputs:
        array = np.asarray(feed[spec.name])
        if array.dtype != np.dtype(spec.dtype) or tuple(array.shape) != spec.shape:
            got = TensorSpec(spec.name, tuple(array.shape), str(array.dtype))
            raise QCompilerError(f"{where}: input {spec.name!r} expects {spec.describe()}, got {got.describe()}")
        arrays.append(np.ascontiguousarray(array))
    return arrays


@dataclass
class Model:
    """A loaded artifact. `run` takes and returns `{name: ndarray}`."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device_kind: str
    metadata: ArtifactMetadata | None
    _vm: object
    _device: object

    def _call(self, arrays: list[np.ndarray]):
        import tvm

        args = [tvm.runtime.tensor(a, device=self._device) for a in arrays]
        return self._vm["main"](*args)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._call(check_feed(feed, self.inputs, str(self.path)))
        values = list(result) if not hasattr(result, "numpy") else [result]
        return {spec.name: value.numpy() for spec, value in zip(self.outputs, values)}

    def time_run(self, feed: Mapping[str, np.ndarray], repeat: int, warmup: int = 3) -> list[float]:
        """Wall-clock seconds of `repeat` calls of `main` on device-resident inputs, after `warmup`."""
        import time

        import tvm

        arrays = check_feed(feed, self.inputs, str(self.path))
        args = [tvm.runtime.tensor(a, device=self._device) for a in arrays]
        main = self._vm["main"]
        for _ in range(warmup):
            main(*args)
        self._device.sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            main(*args)
            self._device.sync()
            times.append(time.perf_counter() - start)
        return times


def load(path: str | Path, *, verify: bool = True) -> Model:
    """Load `NAME.so`; with `verify`, refuse it unless its SHA-256 matches `NAME.json`.

    A `.so` is native code: loading one that differs from what qcompiler wrote runs unknown code.
    Pass `verify=False` only for artifacts you trust (the embedded signature is then used when
    `NAME.json` is missing).
    """
    import tvm
    from tvm import relax

    so_path = Path(path)
    if not so_path.is_file():
        raise QCompilerError(f"artifact not found: {so_path}")
    json_path = metadata_path(so_path)
    metadata = None
    if json_path.exists() or verify:
        metadata = ArtifactMetadata.read(json_path)
    if verify:
        actual = _file_sha256(so_path)
        if actual != metadata.artifact_sha256:
            raise QCompilerError(
                f"{so_path} does not match {json_path.name}: SHA-256 {actual[:16]}... != "
                f"{str(metadata.artifact_sha256)[:16]}... (refusing to load modified native code; verify=False to override)"
            )
    signature = (
        Signature(metadata.device, tuple(metadata.inputs), tuple(metadata.outputs))
        if metadata is not None
        else read_signature(so_path)
    )
    if signature.device == "cpu" and metadata is not None and metadata.arch != "x86_64":
        raise QCompilerError(f"{so_path} is built for {metadata.arch}; it cannot run on this machine")
    device = _device(signature.device)
    try:
        module = tvm.runtime.load_module(str(so_path.resolve()))
        vm = relax.VirtualMachine(module, device)
    except Exception as err:
        lines = str(err).strip().splitlines()
        raise QCompilerError(f"cannot load {so_path}: {lines[-1] if lines else err}") from err
    return Model(so_path, list(signature.inputs), list(signature.outputs), signature.device, metadata, vm, device)
