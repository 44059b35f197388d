"""`qcompiler deploy-bundle`: one folder to copy to the device and run there, no Python or TVM.

  DIR/<model>.so, <model>.json       the artifact (checked against its SHA-256 first)
  DIR/libtvm_runtime.so, libtvm_ffi.so
                                     TVM's runtime for the artifact's architecture, from the
                                     apache-tvm / apache-tvm-ffi wheels of the versions this
                                     qcompiler runs (installed ones for this machine's
                                     architecture; otherwise downloaded once, or read from
                                     `wheel_dir` offline); CUDA artifacts add libtvm_runtime_cuda.so
                                     and libcudart.so.13 (NVIDIA's redistributable wheel)
  DIR/qc_run, libqc_runtime.so, qc_runtime.h
                                     the C runtime (deploy/) built by that architecture's C
                                     compiler, with RUNPATH $ORIGIN: the libraries beside it
  DIR/README.txt, bundle.json        how to run it; every file with its SHA-256

The folder is assembled next to DIR and renamed into place: a failure leaves no partial bundle.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path

from .errors import QCompilerError
from .metadata import ArtifactMetadata, metadata_path
from .models import default_cache_dir
from .runtime import file_sha256, installed_package_dir, verified_metadata
from .targets.preset import CrossCompiler
from .wheels import download_wheels

DEPLOY_SOURCES = Path(__file__).resolve().parent.parent / "deploy"
MANIFEST = "bundle.json"
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
C_CROSS_COMPILERS = {"aarch64": CrossCompiler("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")}
RUNTIME_PACKAGES = ("apache-tvm", "apache-tvm-ffi")
# TVM's CUDA runtime links libcudart.so.13; NVIDIA's redistributable wheel ships it, so a GPU
# machine needs only the driver (CUDA 13 capable, >= 580).
CUDA_RUNTIME = ("nvidia-cuda-runtime==13.0.96", "nvidia/cu13/lib/libcudart.so.13", "manylinux_2_17_{arch}")


@dataclass(frozen=True)
class RuntimeLibraries:
    """TVM's runtime libraries and the TVM-FFI C headers for one architecture."""

    arch: str
    tvm_lib_dir: Path  # libtvm_runtime.so (and libtvm_runtime_cuda.so)
    ffi_lib_dir: Path  # libtvm_ffi.so
    ffi_include: Path  # tvm/ffi/c_api.h


def host_arch() -> str:
    return platform.machine()


def runtime_versions() -> dict[str, str]:
    """The installed (pinned) versions of TVM and TVM-FFI; bundles ship these versions."""
    return {name: package_metadata.version(name) for name in RUNTIME_PACKAGES}


def _wheel_members(cuda: bool) -> dict[str, list[str]]:
    """Wheel-name prefix → members a bundle needs from it."""
    tvm_libs = ["tvm/lib/libtvm_runtime.so"] + (["tvm/lib/libtvm_runtime_cuda.so"] if cuda else [])
    return {"apache_tvm-": tvm_libs, "apache_tvm_ffi-": ["tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/include/"]}


def _extract(wheels: list[Path], dest: Path, cuda: bool) -> None:
    for prefix, members in _wheel_members(cuda).items():
        matches = [w for w in wheels if w.name.startswith(prefix)]
        if not matches:
            raise QCompilerError(f"no {prefix.rstrip('-')} wheel among {', '.join(w.name for w in wheels) or 'none'}")
        with zipfile.ZipFile(matches[0]) as wheel:
            names = wheel.namelist()
            for member in members:
                found = [n for n in names if n == member or (member.endswith("/") and n.startswith(member))]
                if not found:
                    raise QCompilerError(f"{matches[0].name} has no {member}")
                for name in found:
                    if not name.endswith("/"):
                        wheel.extract(name, dest)


def _pinned_wheels(requirements: list[str], arch: str, platform_tag: str, wheel_dir: Path | None, dest: Path,
                   log, what: str) -> list[Path]:
    """The `arch` wheels of the pinned `requirements` ("name==version"): those in `wheel_dir`
    (offline), else downloaded into `dest`."""
    if wheel_dir is None:
        log(f"downloading {what} for {arch}: " + ", ".join(requirements))
        return download_wheels(requirements, dest, platform_tag)
    wanted = []
    for requirement in requirements:
        name, version = requirement.split("==")
        wanted += [w for w in sorted(Path(wheel_dir).glob(f"{name.replace('-', '_')}-{version}-*.whl")) if arch in w.name][:1]
    if len(wanted) < len(requirements):
        raise QCompilerError(
            f"{wheel_dir} lacks the {arch} wheels of {' and '.join(requirements)} (get them with: pip download "
            f"--no-deps --only-binary=:all: --platform {platform_tag} {' '.join(requirements)})")
    return wanted


def runtime_libraries(arch: str, *, cuda: bool = False, wheel_dir: Path | None = None,
                      cache_dir: Path | None = None, log=print) -> RuntimeLibraries:
    """TVM's runtime for `arch`: the installed wheels' on this architecture; otherwise the
    pinned wheels for `arch` (from `wheel_dir`, or downloaded into the cache once)."""
    if arch == host_arch() and wheel_dir is None:
        ffi = installed_package_dir("tvm_ffi")
        return RuntimeLibraries(arch, installed_package_dir("tvm") / "lib", ffi / "lib", ffi / "include")
    if arch not in WHEEL_PLATFORMS:
        raise QCompilerError(f"no TVM runtime wheels for architecture {arch!r}: expected one of {', '.join(WHEEL_PLATFORMS)}")
    versions = runtime_versions()
    tag = "-".join(f"{name}-{version}" for name, version in versions.items())
    root = (cache_dir or default_cache_dir()) / "runtime" / arch / (tag + ("-cuda" if cuda else ""))
    if not (root / "tvm" / "lib" / "libtvm_runtime.so").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=".fetch-") as tmp:
            wanted = _pinned_wheels([f"{n}=={v}" for n, v in versions.items()], arch, WHEEL_PLATFORMS[arch],
                                    wheel_dir, Path(tmp), log, "TVM's runtime")
            staged = Path(tmp) / "extracted"
            _extract(wanted, staged, cuda)
            if root.exists():
                shutil.rmtree(root)
            os.replace(staged, root)
    return RuntimeLibraries(arch, root / "tvm" / "lib", root / "tvm_ffi" / "lib", root / "tvm_ffi" / "include")


def cuda_runtime_library(arch: str, *, wheel_dir: Path | None = None, cache_dir: Path | None = None,
                         log=print) -> Path:
    """libcudart.so.13 for `arch`, from NVIDIA's wheel (in `wheel_dir`, or downloaded into the cache once)."""
    requirement, member, platform_tag = CUDA_RUNTIME
    name, version = requirement.split("==")
    target = (cache_dir or default_cache_dir()) / "runtime" / arch / f"{name}-{version}" / Path(member).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheels = _pinned_wheels([requirement], arch, platform_tag.format(arch=arch), wheel_dir, Path(tmp), log,
                                "the CUDA runtime")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise QCompilerError(f"{wheels[0].name} has no {member}")
            wheel.extract(member, tmp)
        os.replace(Path(tmp) / member, target)
    return target


def c_compiler(arch: str) -> str:
    """The C compiler that builds for `arch` (this machine's `cc`, or a Debian cross compiler)."""
    if arch == host_arch():
        found = shutil.which("cc") or shutil.which("gcc")
        if found is None:
            raise QCompilerError("no C compiler found on PATH: install Debian package gcc")
        return found
    if arch not in C_CROSS_COMPILERS:
        raise QCompilerError(f"no C cross compiler known for architecture {arch!r}: expected one of {', '.join(C_CROSS_COMPILERS)}")
    return C_CROSS_COMPILERS[arch].require()


def build_c_runtime(libs: RuntimeLibraries, compiler: str, build_dir: Path) -> None:
    """Build deploy/ (libqc_runtime.so, qc_run) with `compiler` for `libs.arch` into `build_dir`, RUNPATH $ORIGIN."""
    cmd = ["make", "--no-print-directory", "-C", str(DEPLOY_SOURCES), f"CC={compiler}",
           f"TVM_LIB_DIR={libs.tvm_lib_dir}", f"TVM_FFI_LIB_DIR={libs.ffi_lib_dir}",
           f"TVM_FFI_INCLUDE={libs.ffi_include}", f"BUILD={build_dir}", "RPATH=$$ORIGIN"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise QCompilerError(f"building the C runtime for {libs.arch} failed: {lines[-1] if lines else 'make failed'}")


def _readme(model: str, meta: ArtifactMetadata) -> str:
    def specs(tensors):
        return ", ".join(f"{t.name} {t.describe()}" for t in tensors)

    return f"""qcompiler deploy bundle: {model} for target preset {meta.target_preset} ({meta.arch}, {meta.device})

Run it on the device from this folder (no Python or TVM needed; qc_run finds the libraries beside it):

  ./qc_run {model} --zero-inputs --repeat 20 --warmup 3       # latency
  ./qc_run {model} INPUT.npy --output-dir out/                # outputs written as out/NAME.npy

Inputs:  {specs(meta.inputs)}
Outputs: {specs(meta.outputs)}

To call the model from your own C program, include qc_runtime.h and link libqc_runtime.so
(and libtvm_runtime.so, libtvm_ffi.so with -Wl,--no-as-needed). bundle.json lists every file
with its SHA-256.
"""


def deploy_bundle(artifact: str | os.PathLike, out_dir: str | os.PathLike, *, wheel_dir: str | os.PathLike | None = None,
                  cache_dir: Path | None = None, log=print) -> Path:
    """Write the deploy bundle of `artifact` (a qcompiler `.so` with its `.json`) to `out_dir`.

    An existing `out_dir` is replaced only if it is an earlier bundle (has bundle.json).
    """
    so_path, out = Path(artifact), Path(out_dir).resolve()
    meta = verified_metadata(so_path)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).exists())):
        raise QCompilerError(f"{out} exists and is not a deploy bundle: remove it or choose another folder")
    compiler = c_compiler(meta.arch)  # fail before any download
    if shutil.which("make") is None:
        raise QCompilerError("make not found on PATH: install Debian package make")
    cuda = meta.device == "cuda"
    libs = runtime_libraries(meta.arch, cuda=cuda, wheel_dir=Path(wheel_dir) if wheel_dir else None,
                             cache_dir=cache_dir, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staged = Path(tmp) / "bundle"
        build = Path(tmp) / "build"
        staged.mkdir()
        log(f"building the C runtime for {meta.arch} ...")
        build_c_runtime(libs, compiler, build)
        copies = {
            so_path: so_path.name,
            metadata_path(so_path): metadata_path(so_path).name,
            libs.tvm_lib_dir / "libtvm_runtime.so": "libtvm_runtime.so",
            libs.ffi_lib_dir / "libtvm_ffi.so": "libtvm_ffi.so",
            build / "qc_run": "qc_run",
            build / "libqc_runtime.so": "libqc_runtime.so",
            DEPLOY_SOURCES / "qc_runtime.h": "qc_runtime.h",
        }
        if cuda:
            copies[libs.tvm_lib_dir / "libtvm_runtime_cuda.so"] = "libtvm_runtime_cuda.so"
            cudart = cuda_runtime_library(meta.arch, wheel_dir=Path(wheel_dir) if wheel_dir else None,
                                          cache_dir=cache_dir, log=log)
            copies[cudart] = cudart.name
        for source, name in copies.items():
            shutil.copy2(source, staged / name)
        (staged / "README.txt").write_text(_readme(so_path.name, meta))
        manifest = {
            "model": so_path.name,
            "target_preset": meta.target_preset,
            "arch": meta.arch,
            "device": meta.device,
            "runtime_versions": runtime_versions(),
            "files": {p.name: file_sha256(p) for p in sorted(staged.iterdir())},
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out
