"""x86-64 presets: the build host (detected) and portable ISA levels for other machines."""

from __future__ import annotations

import os
from pathlib import Path

from .preset import DeviceKind, TargetPreset, TuningDefaults

_CPUINFO = Path("/proc/cpuinfo")


def read_cpu_flags(cpuinfo: Path = _CPUINFO) -> tuple[str, frozenset[str]]:
    """(vendor_id, flags) of the first processor in /proc/cpuinfo; ("", {}) where unreadable."""
    vendor, flags = "", frozenset()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return vendor, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if vendor and flags:
            break
    return vendor, flags


def best_mcpu(vendor: str, flags: frozenset[str]) -> str:
    """The LLVM `-mcpu` that uses every ISA extension the CPU has, preferring int8 dot products.

    AMD with AVX-512 VNNI is Zen 4 or newer (`znver4`); Intel with AVX-512 VNNI is Cascade Lake
    or newer; plain AVX-512 is Skylake-SP; AVX2 with FMA is Haswell-class (Zen 2/3 on AMD).
    """
    amd = vendor == "AuthenticAMD"
    if "avx512_vnni" in flags and "avx512bw" in flags:
        if amd:
            return "znver4"
        if "avx512_bf16" in flags or "amx_int8" in flags:
            return "sapphirerapids" if "amx_int8" in flags else "cooperlake"
        return "cascadelake"
    if "avx512f" in flags and "avx512bw" in flags:
        return "skylake-avx512"
    if "avx2" in flags and "fma" in flags:
        return "znver2" if amd else "haswell"
    if "sse4_2" in flags:
        return "nehalem"
    return "x86-64"


def host_preset() -> TargetPreset:
    """The `x86` preset: this machine, with its best `mcpu` and its core count."""
    vendor, flags = read_cpu_flags()
    mcpu = best_mcpu(vendor, flags)
    cores = os.cpu_count() or 1
    vnni = " with VNNI int8 dot products" if "avx512_vnni" in flags else ""
    vnni += " and AMX int8 tiles" if {"amx_tile", "amx_int8"} <= flags else ""
    return TargetPreset(
        name="x86",
        description=f"this host: llvm mcpu={mcpu}{vnni}, {cores} cores",
        tvm_target={"kind": "llvm", "mcpu": mcpu, "num-cores": cores},
        device=DeviceKind.CPU,
        arch="x86_64",
        tuning=TuningDefaults(runner="local"),
    )


def _portable(name: str, mcpu: str, what: str) -> TargetPreset:
    return TargetPreset(
        name=name,
        description=f"other x86-64 machines with {what} (llvm mcpu={mcpu})",
        tvm_target={"kind": "llvm", "mcpu": mcpu},
        device=DeviceKind.CPU,
        arch="x86_64",
        tuning=TuningDefaults(runner="rpc"),
    )


def portable_presets() -> list[TargetPreset]:
    """ISA-level presets for x86 machines other than the build host."""
    return [
        _portable("x86-avx2", "haswell", "AVX2 + FMA (Haswell, Zen 1-3 and newer)"),
        _portable("x86-avx512", "skylake-avx512", "AVX-512 (Skylake-SP and newer)"),
        _portable("x86-avx512-vnni", "cascadelake", "AVX-512 VNNI int8 (Cascade Lake, Zen 4 and newer)"),
        _portable("x86-amx", "sapphirerapids", "AMX int8 tiles and AVX-512 VNNI (Sapphire Rapids and newer)"),
    ]
