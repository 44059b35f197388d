"""Embed compiled CUDA device code (fatbin / cubin) in an exported TVM library.

Why this exists
---------------
With the apache-tvm 0.27 wheel, ``tvm.compile(mod, cuda_target)`` on a machine whose
``libtvm_compiler.so`` has no CUDA runtime puts a ``CUDAFallbackModuleNode``
(``src/backend/cuda/codegen/cuda_fallback_module.cc``) in the import tree.  It holds the
generated CUDA C **source** with format ``"cuda"``; ``export_library`` serializes it as-is,
and ``libtvm_runtime_cuda.so`` (loader ``ffi.Module.load_from_bytes.cuda``) compiles that
source when the ``.so`` is loaded, through the Python callback ``tvm_callback_cuda_compile``.
Nothing in the wheel compiles at build or save time (``libtvm_compiler.so`` never calls
that callback), so such a library cannot be loaded by a C program without Python and a
CUDA compiler.

What this module does
---------------------
:func:`embed_device_binary` compiles every CUDA source module of an executable now
(``nvcc`` -> fatbin with SASS for the target arch plus PTX, or NVRTC -> cubin) and returns
an executable whose ``export_library`` writes the library blob with those modules rewritten
to ``fmt="fatbin"|"cubin"`` and the compiled bytes in place of the source.  The runtime's
``CUDAModuleNode`` then loads the binary with ``cuModuleLoadData``: no Python and no
compiler are needed at load time.

Formats relied upon (tvm-ffi 0.1.14, apache-tvm 0.27.0.post1; little-endian; ``str`` and
``bytes`` are ``u64 length`` + data, ``vec<T>`` is ``u64 count`` + items):

* ``__tvm_ffi__library_bin`` (tvm-ffi ``src/ffi/extra/library_module.cc``,
  ``ProcessLibraryBin``): ``u64 nbytes``, then ``vec<u64> indptr``, ``vec<u64> children``
  (the import tree in CSR form), then per module ``str kind`` and, unless kind is
  ``"_lib"``, ``bytes payload`` (the module's ``SaveToBytes``).
* CUDA payload (``CUDAModuleNode::SaveToBytes`` in ``cuda_module.cc``, mirrored byte for
  byte by the fallback module): ``str fmt``, ``Map<str, FunctionInfo> fmap``, ``bytes code``.
  ``fmt`` is ``"cuda"`` (source), ``"ptx"``, ``"cubin"`` or ``"fatbin"``.  A
  ``FunctionInfo`` is ``str name``, ``vec<DLDataType(4 bytes)> arg_types``,
  ``vec<str> launch_param_tags``, ``vec<i32> arg_extra_tags``.  Code is the last field,
  which every parse here checks.  Newer upstream TVM prefixes ``"cuda.module.v1"`` and
  appends a source map: :func:`describe_cuda_payload` reads that, the rewriter refuses it.

Nothing here needs a GPU.  Compilers, in the order ``compiler="auto"`` tries them:

* ``nvcc`` on ``PATH`` (CUDA toolkit): invoked through ``tvm.support.nvcc.compile_cuda``
  with TVM's own flags; result is a fatbin holding ``sm_XX`` SASS and ``compute_XX`` PTX,
  so the kernels also JIT on newer GPUs.
* NVRTC from PyPI, no toolkit needed: ``pip install cuda-bindings nvidia-cuda-nvrtc
  nvidia-cuda-cccl`` (CUDA 13 line); result is an ``sm_XX`` cubin (runs on that major
  architecture only: an sm_80 cubin runs on sm_8x GPUs, not on sm_90).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import tvm
from tvm.runtime import Executable

from .elf import ElfFile

__all__ = [
    "CudaBinaryExecutable",
    "DeviceBinary",
    "compile_device_source",
    "describe_cuda_payload",
    "embed_device_binary",
    "find_cuda_compiler",
]

BLOB_SYMBOL = "__tvm_ffi__library_bin"
NVRTC_PIP_PACKAGES = "cuda-bindings nvidia-cuda-nvrtc nvidia-cuda-cccl"
_FATBIN_MAGIC = 0xBA55ED50
_SOURCE_MARKERS = (b"__global__", b"#include <cuda", b"__CUDACC_RTC__")
_VERSIONED_TAG = "cuda.module.v1"


# --------------------------------------------------------------------------- byte I/O
class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def u64(self) -> int:
        if self.pos + 8 > self.end:
            raise ValueError("truncated stream")
        (v,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ValueError("truncated stream")
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v

    def bytes_(self) -> bytes:
        return self.raw(self.u64())

    def str_(self) -> str:
        return self.bytes_().decode("utf-8")


def _w_u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _w_bytes(b: bytes) -> bytes:
    return _w_u64(len(b)) + b


# --------------------------------------------------------------------------- library blob
@dataclasses.dataclass(frozen=True)
class _Blob:
    indptr: tuple[int, ...]
    children: tuple[int, ...]
    modules: tuple[tuple[str, bytes | None], ...]  # (kind, payload or None for "_lib")

    @staticmethod
    def parse(blob: bytes) -> _Blob:
        """Parse a library blob that starts with its ``u64 nbytes`` header."""
        r = _Reader(blob)
        nbytes = r.u64()
        r.end = 8 + nbytes
        if r.end > len(blob):
            raise ValueError(f"library blob claims {nbytes} bytes, has {len(blob) - 8}")
        indptr = tuple(r.u64() for _ in range(r.u64()))
        children = tuple(r.u64() for _ in range(r.u64()))
        modules = []
        for _ in range(len(indptr) - 1):
            kind = r.str_()
            modules.append((kind, None if kind == "_lib" else r.bytes_()))
        return _Blob(indptr, children, tuple(modules))

    def serialize(self) -> bytes:
        out = [_w_u64(len(self.indptr)), *map(_w_u64, self.indptr)]
        out += [_w_u64(len(self.children)), *map(_w_u64, self.children)]
        for kind, payload in self.modules:
            out.append(_w_bytes(kind.encode()))
            if payload is not None:
                out.append(_w_bytes(payload))
        body = b"".join(out)
        return _w_u64(len(body)) + body


@dataclasses.dataclass(frozen=True)
class _CudaPayload:
    version: str  # "" (the 0.27 wheel's layout) or "cuda.module.v1"
    fmt: str
    functions: tuple[str, ...]
    fmap_bytes: bytes  # the serialized Map<str, FunctionInfo>, kept verbatim
    code: bytes
    source_map: dict[str, str]

    @staticmethod
    def parse(payload: bytes) -> _CudaPayload:
        r = _Reader(payload)
        fmt, version = r.str_(), ""
        if fmt == _VERSIONED_TAG:
            version, fmt = fmt, r.str_()
        fmap_start = r.pos
        names = []
        for _ in range(r.u64()):
            r.str_()  # map key
            names.append(r.str_())  # FunctionInfo.name
            r.raw(4 * r.u64())  # arg_types: DLDataType {u8 code, u8 bits, u16 lanes}
            for _ in range(r.u64()):  # launch_param_tags
                r.str_()
            r.raw(4 * r.u64())  # arg_extra_tags: i32 each
        fmap_bytes = payload[fmap_start : r.pos]
        code = r.bytes_()
        source_map = {}
        if version:
            for _ in range(r.u64()):
                k = r.str_()
                source_map[k] = r.str_()
        if r.pos != len(payload):
            raise ValueError(
                f"CUDA module payload layout not understood ({len(payload) - r.pos} trailing bytes)"
            )
        return _CudaPayload(version, fmt, tuple(names), fmap_bytes, code, source_map)

    def with_code(self, fmt: str, code: bytes) -> bytes:
        if self.version:
            raise RuntimeError(
                f"cannot rewrite a {self.version!r} CUDA module payload (written by a newer TVM)"
            )
        return _w_bytes(fmt.encode()) + self.fmap_bytes + _w_bytes(code)


# --------------------------------------------------------------------------- compilers
@dataclasses.dataclass(frozen=True)
class DeviceBinary:
    """Compiled device code for one CUDA module.

    ``fmt`` is what the runtime's CUDA loader is told ("fatbin" or "cubin"), ``data`` the
    bytes given to ``cuModuleLoadData``, ``arch`` the target arch (e.g. "sm_80"),
    ``compiler`` "nvcc" or "nvrtc", ``seconds`` the compile time.
    """

    fmt: str
    data: bytes
    arch: str
    compiler: str
    seconds: float


def find_cuda_compiler(compiler: str = "auto") -> str:
    """Return the CUDA compiler that :func:`compile_device_source` would use.

    ``compiler`` is "auto" (nvcc if on ``PATH``, else NVRTC from ``cuda-bindings``),
    "nvcc" or "nvrtc".  Raises ``RuntimeError`` with a one-line message naming what to
    install when the requested compiler is not available.
    """
    if compiler not in ("auto", "nvcc", "nvrtc"):
        raise ValueError(f"compiler must be 'auto', 'nvcc' or 'nvrtc', got {compiler!r}")
    if compiler in ("auto", "nvcc") and shutil.which("nvcc"):
        return "nvcc"
    if compiler == "nvcc":
        raise RuntimeError("no CUDA compiler: nvcc is not on PATH (install the CUDA toolkit)")
    missing = _nvrtc_missing()
    if missing is None:
        return "nvrtc"
    if compiler == "auto":
        prefix = "no CUDA compiler: install nvcc (CUDA toolkit) or"
    else:
        prefix = "NVRTC unusable:"
    raise RuntimeError(f"{prefix} pip install {NVRTC_PIP_PACKAGES} ({missing})")


def _nvrtc_missing() -> str | None:
    """None when NVRTC and the CCCL headers are usable, else what is missing."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return "cuda-bindings is not installed"
    try:
        err, _major, _minor = nvrtc.nvrtcVersion()
    except Exception as e:  # the bindings raise when libnvrtc cannot be loaded
        return f"libnvrtc cannot be loaded: {e}".splitlines()[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return f"libnvrtc cannot be loaded: {err}"
    if _cccl_include_dir() is None:
        return "CCCL headers (cuda/std/cstdint) not found"
    return None


def _cccl_include_dir() -> str | None:
    candidates = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        candidates.append(find_nvidia_header_directory("cccl"))
    except Exception:  # older cuda-pathfinder, or no cccl package
        pass
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            candidates += [str(p) for p in Path(root).glob("targets/*/include/cccl")]
            candidates.append(os.path.join(root, "include"))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "cuda", "std", "cstdint")):
            return c
    return None


def _as_target(target) -> tvm.target.Target:
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


def _arch_of(target) -> str:
    """The target's arch, e.g. "sm_80" (TVM fills in "sm_50" when a CUDA target has none)."""
    target = _as_target(target)
    if target.kind.name != "cuda":
        raise ValueError(f"target kind must be 'cuda', got {target.kind.name!r}")
    arch = str(target.attrs.get("arch", ""))
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise ValueError(f"CUDA target needs an explicit 'arch' like 'sm_80', got {arch!r}")
    return arch


def compile_device_source(source: str, target, compiler: str = "auto") -> DeviceBinary:
    """Compile TVM-generated CUDA C source for ``target`` (a CUDA ``Target`` with ``arch``).

    nvcc gives a fatbin (SASS for the arch plus its PTX); NVRTC gives a cubin.  Raises
    ``RuntimeError`` when no compiler is available or compilation fails.
    """
    arch = _arch_of(target)
    which = find_cuda_compiler(compiler)
    t0 = time.perf_counter()
    if which == "nvcc":
        from tvm.support import nvcc as tvm_nvcc

        virt = "compute_" + arch[3:]
        gencode = ["-gencode", f"arch={virt},code=[{arch},{virt}]"]
        try:
            with _as_target(target):  # tvm's nvcc wrapper reads the arch from the current target
                data = tvm_nvcc.compile_cuda(source, "fatbin", arch=gencode, compiler="nvcc")
        except RuntimeError as e:
            tail = str(e).split("Compilation error:")[-1].strip().splitlines()[-5:]
            raise RuntimeError("nvcc failed on the CUDA module: " + " | ".join(tail)) from None
        return DeviceBinary("fatbin", bytes(data), arch, "nvcc", time.perf_counter() - t0)
    data = _nvrtc_cubin(source, arch)
    return DeviceBinary("cubin", data, arch, "nvrtc", time.perf_counter() - t0)


# Same preamble and flags as tvm.support.nvcc._compile_cuda_nvrtc, minus its hard
# requirement of a CUDA toolkit directory (it looks for <cuda>/include/cuda_runtime.h).
_NVRTC_PREAMBLE = """#include <cuda/std/cstdint>
using cuda::std::uint8_t; using cuda::std::uint16_t; using cuda::std::uint32_t;
using cuda::std::uint64_t; using cuda::std::int8_t; using cuda::std::int16_t;
using cuda::std::int32_t; using cuda::std::int64_t;
#ifndef __asm__
#define __asm__ asm
#endif
#ifndef __volatile__
#define __volatile__ volatile
#endif
#include <cuda/std/limits>
#ifndef INFINITY
#define INFINITY (::cuda::std::numeric_limits<float>::infinity())
#endif
"""
_CUTENSORMAP = (
    "struct alignas(64) CUtensorMap_st {\n  unsigned long long opaque[16];\n};\n"
    "typedef struct CUtensorMap_st CUtensorMap;\n\n"
)


def _nvrtc_cubin(source: str, arch: str) -> bytes:
    from cuda.bindings import nvrtc

    code = "\n".join(ln for ln in source.splitlines() if ln.strip() != "#include <cuda.h>")
    if "CUtensorMap" in code:
        code = _CUTENSORMAP + code
    code = _NVRTC_PREAMBLE + code
    opts = [
        f"--gpu-architecture={arch}",
        "-default-device",
        "--device-int128",
        "--use_fast_math",
        f"-I{_cccl_include_dir()}",
        "-D__NV_SILENCE_DEPRECATION_BEGIN=",
        "-D__NV_SILENCE_DEPRECATION_END=",
        "-D__NV_SILENCE_HOST_DEPRECATION_BEGIN=",
        "-D__NV_SILENCE_HOST_DEPRECATION_END=",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__",
        "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "--ptxas-options=--register-usage-level=10",
    ]
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(code.encode(), b"tvm_kernels.cu", 0, None, None)
    if err != ok:
        raise RuntimeError(f"nvrtcCreateProgram failed: {err}")
    try:
        enc = [o.encode() for o in opts]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(enc), enc)
        if err != ok:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            log = bytearray(size)
            nvrtc.nvrtcGetProgramLog(prog, log)
            errors = [ln for ln in log.decode(errors="replace").splitlines() if "error" in ln]
            raise RuntimeError("NVRTC failed on the CUDA module: " + " | ".join(errors[:5]))
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        buf = bytearray(size)
        if err != ok or nvrtc.nvrtcGetCUBIN(prog, buf)[0] != ok or not size:
            raise RuntimeError(f"NVRTC produced no cubin: {err}")
        return bytes(buf)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# --------------------------------------------------------------------------- embedding
def _pack_imports_blob(mod) -> bytes:
    tensor = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod)
    return tensor.numpy().tobytes()


def _source_key(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def _cuda_entries(blob: _Blob) -> Iterator[tuple[int, _CudaPayload]]:
    for i, (kind, payload) in enumerate(blob.modules):
        if kind == "cuda" and payload is not None:
            yield i, _CudaPayload.parse(payload)


def _rewrite_blob(blob_bytes: bytes, binaries: Mapping[str, DeviceBinary]) -> bytes:
    blob = _Blob.parse(blob_bytes)
    modules = list(blob.modules)
    for i, cuda in _cuda_entries(blob):
        if cuda.fmt != "cuda":
            continue  # already binary
        binary = binaries.get(_source_key(cuda.code))
        if binary is None:
            raise RuntimeError(
                "a CUDA source module at export time was not compiled by embed_device_binary"
            )
        modules[i] = ("cuda", cuda.with_code(binary.fmt, binary.data))
    return dataclasses.replace(blob, modules=tuple(modules)).serialize()


def _write_blob_object(blob: bytes, symbol: str, is_system_lib: bool, workspace_dir: str) -> str:
    """Write the blob as a linkable file defining ``symbol``; return its path."""
    if is_system_lib:  # needs the registration stub that only TVM's C packer writes
        raise NotImplementedError("embed_device_binary does not support system-lib exports")
    bin_path = os.path.join(workspace_dir, "qc_devblob.bin")
    asm_path = os.path.join(workspace_dir, "qc_devblob.S")
    Path(bin_path).write_bytes(blob)
    if '"' in bin_path or "\\" in bin_path:
        raise ValueError(f"workspace path not usable in assembler: {bin_path}")
    Path(asm_path).write_text(
        f'\t.section .rodata.{symbol},"a"\n'
        f"\t.globl {symbol}\n"
        f"\t.balign 16\n"
        f"\t.type {symbol}, %object\n"
        f"{symbol}:\n"
        f'\t.incbin "{bin_path}"\n'
        f"\t.size {symbol}, . - {symbol}\n"
        f'\t.section .note.GNU-stack,"",%progbits\n'
    )
    return asm_path


class CudaBinaryExecutable(Executable):
    """A ``tvm.runtime.Executable`` whose ``export_library`` embeds compiled device code.

    Built by :func:`embed_device_binary`; ``device_binaries`` lists what was compiled.
    ``export_library`` accepts the usual arguments except ``fpack_imports`` (used here),
    does not support system-lib exports, and emits the blob as a GNU assembler file
    (``.incbin``) that ``fcompile`` (default: g++) assembles and links.
    """

    def __init__(self, mod, binaries: Mapping[str, DeviceBinary]):
        super().__init__(mod)
        self._binaries = dict(binaries)

    @property
    def device_binaries(self) -> tuple[DeviceBinary, ...]:
        return tuple(self._binaries.values())

    def _pack_imports(self, mod, is_system_lib, symbol_prefix, workspace_dir) -> str:
        blob = _rewrite_blob(_pack_imports_blob(mod), self._binaries)
        symbol = symbol_prefix + tvm.get_global_func("runtime.ModuleImportsBlobName")()
        return _write_blob_object(blob, symbol, is_system_lib, workspace_dir)

    def export_library(
        self, file_name, *, fcompile=None, addons=None, workspace_dir=None, **kwargs
    ):
        if "fpack_imports" in kwargs:
            raise TypeError("CudaBinaryExecutable.export_library sets fpack_imports itself")
        return super().export_library(
            file_name,
            fcompile=fcompile,
            addons=addons,
            workspace_dir=workspace_dir,
            fpack_imports=self._pack_imports,
            **kwargs,
        )


def embed_device_binary(executable, target, *, compiler: str = "auto") -> CudaBinaryExecutable:
    """Compile the CUDA modules of ``executable`` now; return an executable that exports them.

    ``executable`` is what ``tvm.compile(mod, target)`` returned (a ``tvm.runtime.Executable``
    or its ``.mod``), ``target`` the CUDA target it was compiled for (``Target`` or dict; its
    ``arch``, e.g. "sm_80", selects the code generated).  ``compiler``: "auto" | "nvcc" |
    "nvrtc" (see :func:`find_cuda_compiler`).

    The returned :class:`CudaBinaryExecutable` wraps the same runtime module; calling its
    ``export_library(path)`` writes a ``.so`` whose CUDA modules carry fatbin (nvcc) or cubin
    (NVRTC) with no CUDA source, loadable by ``libtvm_runtime_cuda.so`` without Python.  The
    input executable is not changed.  An executable with no CUDA module is returned wrapped
    with nothing compiled (exports as usual).

    Raises ``RuntimeError`` when no compiler is available (one line naming what to install)
    or when compilation fails; ``ValueError`` when ``target`` is not CUDA with an ``arch``.
    """
    mod = getattr(executable, "mod", executable)
    blob = _Blob.parse(_pack_imports_blob(mod)) if len(mod.imports) else None
    binaries: dict[str, DeviceBinary] = {}
    if blob is not None:
        for _, cuda in _cuda_entries(blob):
            if cuda.fmt == "cuda" and _source_key(cuda.code) not in binaries:
                source = cuda.code.decode("utf-8")
                binaries[_source_key(cuda.code)] = compile_device_source(source, target, compiler)
    return CudaBinaryExecutable(mod, binaries)


# --------------------------------------------------------------------------- inspection
def _fatbin_entries(data: bytes) -> list[dict]:
    """Entries of a fatbin: [{"kind": "sass"|"ptx", "arch": "sm_80"|"compute_80"}, ...]."""
    _magic, _ver, header, size = struct.unpack_from("<IHHQ", data, 0)
    entries, pos = [], header
    while pos + 32 <= min(len(data), header + size):
        kind, _flags, ehead, payload = struct.unpack_from("<HHIQ", data, pos)
        (sm,) = struct.unpack_from("<I", data, pos + 28)
        if ehead == 0:
            break
        if kind == 1:
            entries.append({"kind": "ptx", "arch": f"compute_{sm}"})
        elif kind == 2:
            entries.append({"kind": "sass", "arch": f"sm_{sm}"})
        pos += ehead + payload
    return entries


def _cubin_arch(data: bytes) -> str | None:
    if len(data) < 0x34 or data[:4] != b"\x7fELF":
        return None
    (flags,) = struct.unpack_from("<I", data, 0x30)
    sm = (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF  # EI_ABIVERSION 8: CUDA >= 12.8
    return f"sm_{sm}"


def describe_cuda_payload(so_path) -> dict:
    """Describe the CUDA device code embedded in an exported ``.so`` without loading it.

    Reads the ``__tvm_ffi__library_bin`` symbol from the ELF file (no GPU, no dlopen),
    parses the module blob and each ``"cuda"`` module payload (formats in the module
    docstring).  Returns::

        {"device_module": "cuda" | None,   # None: no CUDA module in the library
         "num_cuda_modules": int,
         "format": "fatbin" | "cubin" | "ptx" | "cuda" | None,   # "cuda" means source
         "contains_cuda_source": bool,     # source text anywhere in a CUDA payload
         "binary_bytes": int,              # bytes of compiled device code (0 for source)
         "arch": "sm_80" | None,           # SASS arch (fatbin/cubin) or PTX target
         "fatbin_entries": [{"kind": "sass"|"ptx", "arch": ...}, ...],
         "functions": [kernel names],
         "payload_version": "" | "cuda.module.v1"}

    With several CUDA modules, "format"/"arch"/"payload_version" describe the first and
    the counts/lists cover all.  Raises ``QCompilerError`` for a non-ELF64 file and
    ``ValueError`` for a file without a library blob.
    """
    path = Path(so_path)
    raw = ElfFile(path).read_symbol(BLOB_SYMBOL)
    if raw is None:
        raise ValueError(f"{path}: no {BLOB_SYMBOL} symbol (not a TVM library with imports)")
    blob = _Blob.parse(raw)
    cudas = [c for _, c in _cuda_entries(blob)]
    result = {
        "device_module": "cuda" if cudas else None,
        "num_cuda_modules": len(cudas),
        "format": cudas[0].fmt if cudas else None,
        "contains_cuda_source": False,
        "binary_bytes": 0,
        "arch": None,
        "fatbin_entries": [],
        "functions": [],
        "payload_version": cudas[0].version if cudas else "",
    }
    for c in cudas:
        result["functions"] += list(c.functions)
        texts = [c.code, *(v.encode() for v in c.source_map.values())]
        if c.fmt == "cuda" or any(m in t for t in texts for m in _SOURCE_MARKERS):
            result["contains_cuda_source"] = True
        if c.fmt == "cuda":
            continue
        result["binary_bytes"] += len(c.code)
        arch = None
        is_fatbin = len(c.code) >= 16 and struct.unpack_from("<I", c.code)[0] == _FATBIN_MAGIC
        if c.fmt == "fatbin" and is_fatbin:
            entries = _fatbin_entries(c.code)
            result["fatbin_entries"] += entries
            sass = [e["arch"] for e in entries if e["kind"] == "sass"]
            arch = sass[0] if sass else (entries[0]["arch"] if entries else None)
        elif c.fmt == "cubin":
            arch = _cubin_arch(c.code)
        elif c.fmt == "ptx":
            m = re.search(rb"\.target\s+(sm_\w+)", c.code)
            arch = m.group(1).decode() if m else None
        result["arch"] = result["arch"] or arch
    return result
