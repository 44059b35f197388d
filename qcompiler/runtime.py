"""Load an exported artifact and run it from Python: `qcompiler.load(path).run({name: array})`."""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import QCompilerError
from .tensor_spec import TensorSpec
from .metadata import ArtifactMetadata, metadata_path
from .signature import Signature, read_signature


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex, read in 1 MB chunks."""
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


def installed_package_dir(module: str) -> Path:
    """The folder of an installed Python package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise QCompilerError(f"Python package {module} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


class _TvmRuntime:
    """TVM's runtime library and the handful of its functions a loaded artifact needs.

    Only `libtvm_runtime.so` (and for CUDA artifacts `libtvm_runtime_cuda.so`) is loaded,
    through tvm_ffi: not the `tvm` package, whose import maps TVM's 250 MB compiler. Loading a
    library twice is harmless (the dynamic loader returns the same handle), so this also works in
    a process that has imported `tvm` to compile.
    """

    def __init__(self, device_kind: str):
        import tvm_ffi

        lib_dir = installed_package_dir("tvm") / "lib"
        ctypes.CDLL(str(lib_dir / "libtvm_runtime.so"), mode=ctypes.RTLD_GLOBAL)
        if device_kind == "cuda":
            try:
                ctypes.CDLL(str(lib_dir / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
            except OSError as err:
                raise QCompilerError(
                    f"the artifact targets CUDA but no CUDA device is available on this machine "
                    f"(TVM's CUDA runtime does not load: {err})"
                ) from err
        self.ffi = tvm_ffi
        self.alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        self.copy_from_bytes = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromBytes")
        self.copy_to_bytes = tvm_ffi.get_global_func("runtime.TVMTensorCopyToBytes")
        self.stream_sync = tvm_ffi.get_global_func("runtime.Device_StreamSync")
        self.device_attr = tvm_ffi.get_global_func("runtime.GetDeviceAttr")

    def device(self, kind: str):
        if kind not in ("cpu", "cuda"):
            raise QCompilerError(f"unknown artifact device {kind!r}: expected 'cpu' or 'cuda'")
        device = self.ffi.device(kind, 0)
        device_exists = 0  # TVM's kExist device attribute
        if kind == "cuda" and not self.device_attr(device.dlpack_device_type(), 0, device_exists):
            raise QCompilerError("the artifact targets CUDA but no CUDA device is available on this machine")
        return device

    def to_device(self, array: np.ndarray, device):
        """A TVM tensor on `device` holding a copy of the C-contiguous `array` (TVM-aligned)."""
        tensor = self.alloc(self.ffi.Shape(array.shape), self.ffi.dtype(str(array.dtype)), device, None)
        self.copy_from_bytes(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)
        return tensor

    def to_numpy(self, tensor) -> np.ndarray:
        array = np.empty(tuple(tensor.shape), dtype=str(tensor.dtype))
        self.copy_to_bytes(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)
        return array


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
    _runtime: _TvmRuntime
    _main: object
    _device: object

    def _device_args(self, feed: Mapping[str, np.ndarray]) -> list:
        arrays = check_feed(feed, self.inputs, str(self.path))
        return [self._runtime.to_device(a, self._device) for a in arrays]

    def _sync(self) -> None:
        self._runtime.stream_sync(self._device, 0)  # 0: the default stream

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._main(*self._device_args(feed))
        values = list(result) if isinstance(result, self._runtime.ffi.Array) else [result]
        return {spec.name: self._runtime.to_numpy(value) for spec, value in zip(self.outputs, values)}

    def time_run(self, feed: Mapping[str, np.ndarray], repeat: int, warmup: int = 3) -> list[float]:
        """Wall-clock seconds of `repeat` calls of `main` on device-resident inputs, after `warmup`."""
        import time

        args = self._device_args(feed)
        for _ in range(warmup):
            self._main(*args)
        self._sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._main(*args)
            self._sync()
            times.append(time.perf_counter() - start)
        return times


def verified_metadata(so_path: Path) -> ArtifactMetadata:
    """`NAME.json` of the artifact `NAME.so`, after checking that the `.so` is the file it describes."""
    if not so_path.is_file():
        raise QCompilerError(f"artifact not found: {so_path}")
    json_path = metadata_path(so_path)
    metadata = ArtifactMetadata.read(json_path)
    actual = file_sha256(so_path)
    if actual != metadata.artifact_sha256:
        raise QCompilerError(
            f"{so_path} does not match {json_path.name}: SHA-256 {actual[:16]}... != "
            f"{str(metadata.artifact_sha256)[:16]}... (refusing to load modified native code; verify=False to override)"
        )
    return metadata


def load(path: str | Path, *, verify: bool = True) -> Model:
    """Load `NAME.so`; with `verify`, refuse it unless its SHA-256 matches `NAME.json`.

    A `.so` is native code: loading one that differs from what qcompiler wrote runs unknown code.
    Pass `verify=False` only for artifacts you trust (the embedded signature is then used when
    `NAME.json` is missing). Only TVM's runtime library is loaded (see `_TvmRuntime`).
    """
    so_path = Path(path)
    if verify:
        metadata = verified_metadata(so_path)
    else:
        if not so_path.is_file():
            raise QCompilerError(f"artifact not found: {so_path}")
        json_path = metadata_path(so_path)
        metadata = ArtifactMetadata.read(json_path) if json_path.exists() else None
    signature = (
        Signature(metadata.device, tuple(metadata.inputs), tuple(metadata.outputs))
        if metadata is not None
        else read_signature(so_path)
    )
    if signature.device == "cpu" and metadata is not None and metadata.arch != "x86_64":
        raise QCompilerError(f"{so_path} is built for {metadata.arch}; it cannot run on this machine")
    runtime = _TvmRuntime(signature.device)
    device = runtime.device(signature.device)
    try:
        library = runtime.ffi.load_module(str(so_path.resolve()))
        vm = library["vm_load_executable"]()
        # (device type, device id, allocator) per device; a non-CPU device is followed by the
        # CPU host. Allocator 2 is TVM's pooled allocator (relax.VirtualMachine's default).
        pooled = 2
        init_args = [device.dlpack_device_type(), 0, pooled]
        if signature.device != "cpu":
            init_args += [runtime.ffi.device("cpu", 0).dlpack_device_type(), 0, pooled]
        vm["vm_initialization"](*init_args)
        main = vm["main"]
    except Exception as err:
        lines = str(err).strip().splitlines()
        raise QCompilerError(f"cannot load {so_path}: {lines[-1] if lines else err}") from err
    return Model(so_path, list(signature.inputs), list(signature.outputs), signature.device, metadata,
                 runtime, main, device)
