"""Load an exported artifact and run it from Python: `qcompiler.load(path).run({name: array})`.

Loading runs only the bytes that were checked: the `.so` is read once, those bytes are hashed
(against `NAME.json`) and their ELF header checked, and the library is then mapped from a sealed
in-memory copy of exactly those bytes (`memfd_create`), never from the path. Re-exporting to the
same path and loading again therefore maps the new code, and a file changed or truncated after the
check cannot be what runs.

A loaded `Model` may be run from any number of threads at once: each concurrent run takes its own
TVM VirtualMachine from a per-model pool over the one loaded library (see `_VMPool`).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform
import struct
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from .errors import QCompilerError
from .tensor_spec import TensorSpec
from .metadata import ArtifactMetadata, metadata_path
from .signature import Signature, read_signature
from .weights import SECTION as WEIGHTS_SECTION
from .weights import WeightEntry
from .weights import parse as parse_weights

if TYPE_CHECKING:
    from .profile import Profile


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def physical_cores() -> int:
    """Physical cores this process may run on: the distinct (package, core) pairs of the CPUs in
    its affinity mask, read from /sys/devices/system/cpu/cpuN/topology; the CPU count where the
    topology is not readable. Hyper-threads of one core count once."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def set_num_threads(threads: int) -> None:
    """Size TVM's CPU thread pool for this process: `threads`, or one per physical core for 0.

    TVM reads TVM_NUM_THREADS when it starts its pool, at the first parallel kernel: call this
    before running a model. Without the variable, TVM takes half the logical CPUs on x86 (it
    assumes two hyper-threads per core), so a 2-core VM without SMT ran on one thread: the
    variable is always set. (TVM's `runtime.config_threadpool` is not used: on this build it
    pins the workers so that two threads run no faster than one.)
    """
    os.environ["TVM_NUM_THREADS"] = str(int(threads) if threads > 0 else physical_cores())


def default_num_threads() -> None:
    """One thread per physical core unless TVM_NUM_THREADS says otherwise (see set_num_threads)."""
    if not os.environ.get("TVM_NUM_THREADS"):
        set_num_threads(0)


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
        # The `.so` loader itself: ffi.ModuleLoadFromFile picks the loader by the file name's
        # extension, and a private copy's path (/proc/self/fd/N) has none.
        self.load_so = tvm_ffi.get_global_func("ffi.Module.load_from_file.so")

    def load_library(self, path: str):
        """The library module of the shared object at `path` (dlopen), owned by the caller (not
        kept alive for the whole process as `tvm_ffi.load_module` does)."""
        return self.load_so(path, "so")

    def device(self, kind: str):
        if kind not in ("cpu", "cuda"):
            raise QCompilerError(f"unknown artifact device {kind!r}: expected 'cpu' or 'cuda'")
        device = self.ffi.device(kind, 0)
        device_exists = 0  # TVM's kExist device attribute
        if kind == "cuda" and not self.device_attr(device.dlpack_device_type(), 0, device_exists):
            raise QCompilerError("the artifact targets CUDA but no CUDA device is available on this machine")
        return device

    def _tensor_of_bytes(self, shape, dtype: str, raw: np.ndarray, device):
        """A TVM tensor (TVM-aligned) of `shape` and `dtype` on `device` holding a copy of the
        C-contiguous bytes of `raw`."""
        tensor = self.alloc(self.ffi.Shape(shape), self.ffi.dtype(dtype), device, None)
        if raw.nbytes:
            self.copy_from_bytes(tensor, raw.ctypes.data_as(ctypes.c_void_p), raw.nbytes)
        return tensor

    def to_device(self, array: np.ndarray, device):
        """A TVM tensor on `device` holding a copy of the C-contiguous `array`."""
        return self._tensor_of_bytes(array.shape, str(array.dtype), array, device)

    def weight_tensor(self, data: bytes, start: int, entry: WeightEntry, device):
        """A TVM tensor on `device` holding `entry`'s bytes, which start at `data[start]` (any
        dtype, bfloat16 included)."""
        raw = np.frombuffer(data, dtype=np.uint8, count=entry.nbytes, offset=start)
        return self._tensor_of_bytes(entry.shape, entry.dtype, raw, device)

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
        arrays.append(np.asarray(array, order="C"))  # (np.ascontiguousarray makes rank 0 rank 1)
    return arrays


# --------------------------------------------------------------------------------------------
# What is loaded is what was checked
# --------------------------------------------------------------------------------------------

ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv"}
_HOST_ELF_MACHINE = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}
_ET_DYN = 3
_PT_LOAD = 1
_PHDR_SIZE = 56  # sizeof(Elf64_Phdr)
_SHDR_SIZE = 64  # sizeof(Elf64_Shdr)
_SHF_ALLOC = 0x2


def host_elf_machine() -> int | None:
    """ELF `e_machine` of the code this machine runs (62 x86-64, 183 aarch64); None if unknown."""
    return _HOST_ELF_MACHINE.get(platform.machine().lower())


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (memory the kernel can give without swapping), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# Loading holds an artifact twice at its peak: the file's bytes, and the weights copied out of
# them into tensors (the code's copy leaves the weights section out; a 90 MB MiniLM peaks 195 MB
# above the process's baseline).
LOAD_MEMORY_FACTOR = 2


# Linux arch_prctl: permission for AMX tile data, needed once per process before the first tile
# instruction (without it the instruction raises SIGILL). deploy/qc_runtime.c makes the same request.
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def tile_features_needed(metadata: ArtifactMetadata | None) -> set[str]:
    """The /proc/cpuinfo flags the artifact's AMX kernels need (kernels/amx.py names them
    dense_<operands>_amx: `amx_bf16` for bfloat16 ones, `amx_int8` for the others); empty
    without AMX kernels."""
    names = [name for name in (metadata.kernels if metadata is not None else ()) if "_amx" in name
             and "_amx_emulated" not in name]
    if not names:
        return set()
    return {"amx_tile"} | {"amx_bf16" if "bf16" in name else "amx_int8" for name in names}


def enable_tile_data(metadata: ArtifactMetadata | None, where: str | Path) -> None:
    """On an x86-64 Linux host whose CPU has AMX, ask the kernel once for AMX tile data (the
    request is idempotent and covers every thread of the process). An artifact with AMX kernels
    on a host without the AMX features they use, or a refused request, is a one-line error
    instead of a SIGILL."""
    if platform.machine() != "x86_64" or not sys.platform.startswith("linux"):
        return
    from .targets.x86 import read_cpu_flags

    flags = read_cpu_flags()[1]
    has_amx = "amx_tile" in flags
    needed = tile_features_needed(metadata)
    missing = sorted(needed - flags)
    if missing:
        raise QCompilerError(f"{where} has AMX kernels and this CPU has no AMX ({', '.join(missing)} not in "
                             f"/proc/cpuinfo): compile it for this machine (--target x86) or a preset it has")
    if has_amx:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0 and needed:
            error = ctypes.get_errno()
            raise QCompilerError(f"{where}: the kernel refused AMX tile data (arch_prctl(ARCH_REQ_XCOMP_PERM): "
                                 f"{os.strerror(error)}); AMX needs Linux 5.16 or later")


def check_fits_in_memory(size: int, where: str | Path) -> None:
    """Refuse, before reading it, an artifact of `size` bytes that cannot be loaded in the memory
    available now: a one-line error instead of the kernel's OOM kill."""
    available = available_memory_bytes()
    needed = LOAD_MEMORY_FACTOR * size
    if available is not None and needed > available:
        mb = 1 << 20
        raise QCompilerError(f"{where} needs about {needed / mb:.0f} MB of memory to load ({LOAD_MEMORY_FACTOR} x its "
                             f"{size / mb:.0f} MB: its bytes and its weights copied from them); "
                             f"{available / mb:.0f} MB is available")


def read_artifact(so_path: Path) -> bytes:
    """The bytes of `so_path`, read once (everything `load` checks and maps comes from them),
    after checking that it fits in memory."""
    try:
        with so_path.open("rb") as f:
            check_fits_in_memory(os.fstat(f.fileno()).st_size, so_path)
            return f.read()
    except FileNotFoundError:
        raise QCompilerError(f"artifact not found: {so_path}") from None
    except IsADirectoryError:
        raise QCompilerError(f"{so_path} is a directory, expected an artifact .so") from None
    except OSError as err:
        raise QCompilerError(f"cannot read {so_path}: {err.strerror or err}") from None


def check_elf(data: bytes, where: str | Path, machine: int | None = None) -> None:
    """Raise `QCompilerError` unless `data` is a little-endian ELF64 shared object for `machine`
    (default: this machine) whose program header table, every segment's file bytes and the section
    header table lie inside `data`.

    This is what makes a truncated or foreign file an error instead of a crash: the dynamic loader
    maps segments without checking them against the file size, and touching a page past the end
    of a file raises SIGBUS.
    """
    size = len(data)
    if size == 0:
        raise QCompilerError(f"{where} is empty: expected an ELF shared object")
    if size < 64 or data[:4] != b"\x7fELF":
        raise QCompilerError(f"{where} is not an ELF shared object (no ELF header)")
    if data[4] != 2:
        raise QCompilerError(f"{where} is a 32-bit ELF file: expected ELF64")
    if data[5] != 1:
        raise QCompilerError(f"{where} is a big-endian ELF file: expected little-endian")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_type != _ET_DYN:
        raise QCompilerError(f"{where} is not a shared object (ELF type {e_type}, expected {_ET_DYN} ET_DYN)")
    want = host_elf_machine() if machine is None else machine
    if want is not None and e_machine != want:
        built = ELF_MACHINES.get(e_machine, "an unknown architecture")
        raise QCompilerError(
            f"{where} is built for {built} (ELF machine {e_machine}); it cannot run on this machine "
            f"({ELF_MACHINES.get(want, '?')}, ELF machine {want})"
        )
    (phoff, shoff) = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    if phnum == 0 or phentsize != _PHDR_SIZE:
        raise QCompilerError(f"{where}: malformed ELF program header table ({phnum} entries of {phentsize} bytes, "
                             f"expected entries of {_PHDR_SIZE})")
    if phoff + phnum * phentsize > size:
        raise QCompilerError(f"{where} is truncated: its program header table ends at byte "
                             f"{phoff + phnum * phentsize}, the file has {size} bytes")
    loads = 0
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        loads += p_type == _PT_LOAD
        if p_filesz and p_offset + p_filesz > size:
            raise QCompilerError(f"{where} is truncated: segment {i} ends at byte {p_offset + p_filesz}, "
                                 f"the file has {size} bytes")
    if loads == 0:
        raise QCompilerError(f"{where} has no loadable segment: not a shared object")
    if shnum and (shentsize != _SHDR_SIZE or shoff + shnum * shentsize > size):
        raise QCompilerError(f"{where} is truncated: its section header table ends at byte "
                             f"{shoff + shnum * shentsize}, the file has {size} bytes")


def find_section(data: bytes, name: str, where: str | Path) -> tuple[int, int] | None:
    """(file offset, size) of the section `name` of the ELF64 `data` (already `check_elf`ed), or
    None when it has none; a `QCompilerError` when the section table cannot be read."""
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shnum, shstrndx = struct.unpack_from("<HH", data, 60)
    try:
        headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * _SHDR_SIZE) for i in range(shnum)]
        if shnum == 0:
            return None
        names_offset, names_size = headers[shstrndx][4], headers[shstrndx][5]
        names = data[names_offset : names_offset + names_size]
        wanted = name.encode()
        for sh_name, _type, flags, _addr, offset, size in headers:
            if names[sh_name : sh_name + len(wanted) + 1] == wanted + b"\0":
                if offset > len(data) or size > len(data) - offset:
                    raise QCompilerError(f"{where} is truncated: its {name} section ends at byte {offset + size}, "
                                         f"the file has {len(data)} bytes")
                if flags & _SHF_ALLOC or any(offset < end and start < offset + size for start, end in _loaded_ranges(data)):
                    raise QCompilerError(f"{where}: its {name} section overlaps the code the dynamic loader maps "
                                         f"(expected a section that is not loaded)")
                return offset, size
    except (struct.error, IndexError) as err:
        raise QCompilerError(f"{where}: malformed ELF section table ({err})") from None
    return None


def _loaded_ranges(data: bytes) -> list[tuple[int, int]]:
    """The file ranges [start, end) of the PT_LOAD segments of the ELF64 `data` (check_elf'ed)."""
    (phoff,) = struct.unpack_from("<Q", data, 32)
    (phnum,) = struct.unpack_from("<H", data, 56)
    ranges = []
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * _PHDR_SIZE)
        if p_type == _PT_LOAD and p_filesz:
            ranges.append((p_offset, p_offset + p_filesz))
    return ranges


@dataclass
class _Weights:
    """The `.qc_weights` section of an artifact: where it lies in the file, and its entries."""

    offset: int
    size: int
    entries: list[WeightEntry]

    @classmethod
    def of(cls, data: bytes, where: str | Path) -> "_Weights":
        found = find_section(data, WEIGHTS_SECTION, where)
        if found is None:  # an artifact without weights (or from before they were lifted)
            return cls(0, 0, [])
        offset, size = found
        return cls(offset, size, parse_weights(memoryview(data)[offset : offset + size], str(where)))

    def tensors(self, runtime: _TvmRuntime, data: bytes, device) -> list:
        """Each weight copied to `device`, in the order `main` takes them."""
        return [runtime.weight_tensor(data, self.offset + e.offset, e, device) for e in self.entries]


BUNDLE_MANIFEST = "bundle.json"  # qcompiler.bundle.MANIFEST (not imported: bundle imports this module)


def _check_bundle_manifest(so_path: Path, digest: str) -> None:
    """If the artifact's folder holds a deploy bundle manifest that lists the file, `digest`
    must match its entry too."""
    manifest = so_path.parent / BUNDLE_MANIFEST
    if not manifest.is_file():
        return
    try:
        obj = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise QCompilerError(f"{manifest} is not valid JSON: expected a deploy bundle manifest ({err})") from None
    files = obj.get("files") if isinstance(obj, dict) else None
    expected = files.get(so_path.name) if isinstance(files, dict) else None
    if isinstance(expected, str) and expected != digest:
        raise QCompilerError(
            f"{so_path} does not match {manifest.name}: SHA-256 {digest[:16]}... != {expected[:16]}... "
            f"(refusing to load modified native code; verify=False to override)"
        )


def verified_metadata(so_path: Path, data: bytes | None = None) -> ArtifactMetadata:
    """`NAME.json` of the artifact `NAME.so`, after checking that `data` (default: the file's
    current bytes) has the SHA-256 that `NAME.json` records, and the one the folder's
    `bundle.json` records for it, if the folder is a deploy bundle that lists it."""
    so_path = Path(so_path)
    if data is None and not so_path.is_file():
        raise QCompilerError(f"artifact not found: {so_path}")
    json_path = metadata_path(so_path)
    metadata = ArtifactMetadata.read(json_path)
    actual = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(so_path)
    if actual != metadata.artifact_sha256:
        raise QCompilerError(
            f"{so_path} does not match {json_path.name}: SHA-256 {actual[:16]}... != "
            f"{str(metadata.artifact_sha256)[:16]}... (refusing to load modified native code; verify=False to override)"
        )
    _check_bundle_manifest(so_path, actual)
    return metadata


class _Dl:
    """libc's dlopen/dlclose (ctypes.CDLL never closes what it opens)."""

    def __init__(self):
        libc = ctypes.CDLL(None)
        self.dlopen = libc.dlopen
        self.dlopen.restype, self.dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        self.dlclose = libc.dlclose
        self.dlclose.restype, self.dlclose.argtypes = ctypes.c_int, [ctypes.c_void_p]

    def is_loaded(self, path: str) -> bool:
        """Whether the dynamic loader already has an object it would return for `path`."""
        handle = self.dlopen(path.encode(), os.RTLD_LAZY | os.RTLD_NOLOAD)
        if handle:
            self.dlclose(handle)
        return bool(handle)


class _PrivateCopy:
    """A private, unmodifiable copy of an artifact's bytes with a path for dlopen.

    The copy is an anonymous sealed memfd (`memfd_create`; writes, growing and shrinking sealed
    off) named by `/proc/self/fd/N`; where memfd is unavailable, a temporary file that is unlinked
    on `close`. The byte range `hole` (the weights section, which the loader never maps) is left
    a hole of zeros that takes no memory. glibc's dlopen returns an already-loaded object whose
    name equals the path, and fd numbers are reused, so the path is checked (RTLD_NOLOAD) not to
    name a loaded object: another descriptor of the same copy is taken until it does not. Close
    the copy once the library is loaded; the mapping stays valid.
    """

    _MAX_TRIES = 64

    def __init__(self, data: bytes, origin: Path, hole: tuple[int, int] = (0, 0)):
        self._fds: list[int] = []
        self._temp: str | None = None
        fd = self._memfd(data, hole)
        if fd is None:
            self._tempfile(data, origin, hole)
        else:
            self._fds.append(fd)
        dl = _Dl()
        for _ in range(self._MAX_TRIES):
            if not dl.is_loaded(self.path):
                return
            if self._temp is not None:
                break  # a random temporary name that is taken: do not guess further
            self._fds.append(os.dup(self._fds[0]))  # a different number, so a different name
        path = self.path
        self.close()
        raise QCompilerError(f"cannot load {origin}: the path of its private copy ({path}) names a library "
                             f"that is already loaded")

    @staticmethod
    def _memfd(data: bytes, hole: tuple[int, int]) -> int | None:
        create = getattr(os, "memfd_create", None)
        if create is None:
            return None
        try:
            fd = create("qcompiler-artifact", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as err:
            if err.errno in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                return None
            raise QCompilerError(f"cannot create an in-memory copy of the artifact: {err.strerror}") from None
        try:
            _write_around(fd, data, hole)
            import fcntl

            seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _tempfile(self, data: bytes, origin: Path, hole: tuple[int, int]) -> None:
        """The fallback: a temporary file, read-only once written (unlinked by `close`)."""
        try:
            fd, self._temp = tempfile.mkstemp(prefix=f".qc-{origin.stem}-", suffix=".so")
            self._fds.append(fd)
            _write_around(fd, data, hole)
            os.fchmod(fd, 0o500)
        except OSError as err:
            self.close()
            raise QCompilerError(f"cannot write a private copy of {origin}: {err.strerror or err}") from None

    @property
    def path(self) -> str:
        return self._temp if self._temp is not None else f"/proc/self/fd/{self._fds[-1]}"

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._temp is not None:
            os.unlink(self._temp)
            self._temp = None


def _write_around(fd: int, data: bytes, hole: tuple[int, int]) -> None:
    """Write `data` to the empty file `fd`, except the range `hole` = (offset, size), which is
    left unwritten (a sparse hole reading as zeros)."""
    start, size = hole
    view = memoryview(data)
    head, tail = view[:start], view[start + size :]
    while head:
        head = head[os.write(fd, head):]
    os.lseek(fd, start + size, os.SEEK_SET)
    while tail:
        tail = tail[os.write(fd, tail):]
    os.ftruncate(fd, len(data))


# --------------------------------------------------------------------------------------------
# One VM per concurrent run
# --------------------------------------------------------------------------------------------


@dataclass
class _VM:
    module: object  # the VirtualMachine module
    main: object  # its `main`
    workspace: list  # its intermediate tensors (qcompiler/workspace.py), main's last parameters

    def __call__(self, args: list):
        """`main` on `args` (the inputs and the weights) and this VM's workspace."""
        return self.main(*args, *self.workspace)


class _VMPool:
    """TVM VirtualMachines over one loaded library module, handed out one per concurrent run.

    A Relax VM keeps its registers and call frames in the VM object, so one VM must never run two
    calls at once. `vm()` lends an idle VM, creating one (`vm_load_executable` +
    `vm_initialization`) when none is idle, so the pool grows to the peak number of concurrent
    callers and never shrinks. A VM whose call raised is dropped, not reused. The executable's
    constants and the (pooled, thread-safe) allocator are shared by all VMs.
    """

    def __init__(self, library, init_args: list[int]):
        self._library = library
        self._init_args = init_args
        self._idle: list[_VM] = []
        self._lock = threading.Lock()  # guards _idle and created
        self._create_lock = threading.Lock()  # serializes VM creation (library module lookups)
        self.created = 0

    def _create(self) -> _VM:
        with self._create_lock:
            module = self._library["vm_load_executable"]()
            module["vm_initialization"](*self._init_args)
            main = module["main"]
            workspace = list(module["qc_workspace"]()) if module.implements_function("qc_workspace") else []
        if hasattr(main, "release_gil"):
            main.release_gil = True  # runs of different VMs proceed in parallel
        with self._lock:
            self.created += 1
        return _VM(module, main, workspace)

    def prime(self) -> None:
        """Create one idle VM now (so that `load` reports a broken artifact)."""
        vm = self._create()
        with self._lock:
            self._idle.append(vm)

    @contextmanager
    def vm(self) -> Iterator[_VM]:
        """A VM (`.main`, and `.module` for other VM functions) that no other caller uses until
        the block ends. A block that changes the VM's state (e.g. `set_instrument`) must restore
        it before it ends, or raise: an exception from the block drops the VM."""
        with self._lock:
            vm = self._idle.pop() if self._idle else None
        if vm is None:
            vm = self._create()
        yield vm
        with self._lock:
            self._idle.append(vm)


@dataclass
class Model:
    """A loaded artifact. `run` takes and returns `{name: ndarray}`.

    Thread safety: `run` and `time_run` may be called from any number of threads at once; each
    call runs on its own VM from the model's pool (calls do not wait for each other, and TVM-FFI
    releases the GIL while `main` runs).
    """

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device_kind: str
    metadata: ArtifactMetadata | None
    _runtime: _TvmRuntime
    _library: object
    _pool: _VMPool
    _device: object
    _weights: list  # `main`'s parameters after the inputs (the artifact's .qc_weights), on the device

    def _device_args(self, feed: Mapping[str, np.ndarray]) -> list:
        """`main`'s arguments: the checked inputs copied to the device, then the weights."""
        arrays = check_feed(feed, self.inputs, str(self.path))
        return [self._runtime.to_device(a, self._device) for a in arrays] + self._weights

    def _sync(self) -> None:
        self._runtime.stream_sync(self._device, 0)  # 0: the default stream

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of `main` on `feed` (inputs checked against the signature), as fresh arrays."""
        args = self._device_args(feed)
        with self._pool.vm() as vm:
            result = vm(args)
        values = list(result) if isinstance(result, self._runtime.ffi.Array) else [result]
        return {spec.name: self._runtime.to_numpy(value) for spec, value in zip(self.outputs, values)}

    def time_run(self, feed: Mapping[str, np.ndarray], repeat: int, warmup: int = 3) -> list[float]:
        """Wall-clock seconds of `repeat` calls of `main` on device-resident inputs, after `warmup`."""
        import time

        args = self._device_args(feed)
        with self._pool.vm() as vm:
            for _ in range(warmup):
                vm(args)
            self._sync()
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                vm(args)
                self._sync()
                times.append(time.perf_counter() - start)
        return times

    def profile(self, feed: Mapping[str, np.ndarray], repeat: int = 20, warmup: int = 3) -> "Profile":
        """Per-kernel profile of `repeat` runs on `feed` (qcompiler.profile): every kernel and
        runtime call of `main`, slowest first, next to the uninstrumented run time."""
        from .profile import profile_vm

        args = self._device_args(feed)
        with self._pool.vm() as vm:  # profile_vm removes its instrument before the VM goes back
            threads = int(os.environ.get("TVM_NUM_THREADS", 0)) or physical_cores()  # see set_num_threads
            result = profile_vm(vm.module["set_instrument"], vm.main, [*args, *vm.workspace], repeat, threads, sync=self._sync,
                                warmup=warmup)
        result.artifact = str(self.path)
        return result


def _signature_of(copy: _PrivateCopy, so_path: Path) -> Signature:
    """The signature embedded in the private copy (error messages name `so_path`)."""
    try:
        return read_signature(copy.path)
    except QCompilerError as err:
        raise QCompilerError(str(err).replace(copy.path, str(so_path))) from None
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as err:
        raise QCompilerError(f"{so_path}: cannot read its qc_model_signature ({type(err).__name__}: {err})") from None


def load(path: str | Path, *, verify: bool = True) -> Model:
    """Load `NAME.so`; with `verify`, refuse it unless its SHA-256 matches `NAME.json`.

    A `.so` is native code: loading one that differs from what qcompiler wrote runs unknown code.
    The file is read once; the hash (with `verify`) and the ELF checks (always: an ELF64 shared
    object for this machine whose segments lie inside the file) are made on those bytes, and the
    library is mapped from a private in-memory copy of them, so what runs is what was checked, and
    each call maps the file's current contents (a re-exported artifact loads its new code). Pass
    `verify=False` only for artifacts you trust (the embedded signature is then used when
    `NAME.json` is missing). Only TVM's runtime library is loaded (see `_TvmRuntime`). Every
    failure is a `QCompilerError` with a one-line message. Unless TVM_NUM_THREADS is set (or
    `set_num_threads` was called), models run on one thread per physical core.
    """
    default_num_threads()
    so_path = Path(path)
    data = read_artifact(so_path)
    if verify:
        metadata = verified_metadata(so_path, data)
    else:
        json_path = metadata_path(so_path)
        metadata = ArtifactMetadata.read(json_path) if json_path.exists() else None
    if metadata is not None and metadata.device == "cpu" and metadata.arch != platform.machine():
        raise QCompilerError(f"{so_path} is built for {metadata.arch}; it cannot run on this machine")
    enable_tile_data(metadata, so_path)
    check_elf(data, so_path)
    weights = _Weights.of(data, so_path)
    copy = _PrivateCopy(data, so_path, hole=(weights.offset, weights.size))
    try:
        signature = (
            Signature(metadata.device, tuple(metadata.inputs), tuple(metadata.outputs))
            if metadata is not None
            else _signature_of(copy, so_path)
        )
        runtime = _TvmRuntime(signature.device)
        device = runtime.device(signature.device)
        # (device type, device id, allocator) per device; a non-CPU device is followed by the
        # CPU host. Allocator 2 is TVM's pooled allocator (relax.VirtualMachine's default).
        pooled = 2
        init_args = [device.dlpack_device_type(), 0, pooled]
        if signature.device != "cpu":
            init_args += [runtime.ffi.device("cpu", 0).dlpack_device_type(), 0, pooled]
        try:
            library = runtime.load_library(copy.path)
            weight_tensors = weights.tensors(runtime, data, device)
            del data  # the weights are on the device now
            pool = _VMPool(library, init_args)
            pool.prime()
        except Exception as err:
            lines = str(err).replace(copy.path, str(so_path)).strip().splitlines()
            raise QCompilerError(f"cannot load {so_path}: {lines[-1] if lines else err}") from err
    finally:
        copy.close()
    return Model(so_path, list(signature.inputs), list(signature.outputs), signature.device, metadata,
                 runtime, library, pool, device, weight_tensors)
