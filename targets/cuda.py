"""NVIDIA GPU presets, one per compute capability; device code is compiled at build time."""

from __future__ import annotations

from .preset import DeviceKind, TargetPreset, TuningDefaults

# (preset suffix, arch, what it covers)
_GENERATIONS = [
    ("sm75", "sm_75", "Turing (T4, RTX 20xx)"),
    ("sm80", "sm_80", "Ampere data center (A100, A30)"),
    ("sm86", "sm_86", "Ampere (RTX 30xx, A10, A40)"),
    ("sm89", "sm_89", "Ada (L4, L40, RTX 40xx)"),
    ("sm90", "sm_90", "Hopper (H100, H200)"),
]


def cuda_presets() -> list[TargetPreset]:
    return [
        TargetPreset(
            name=f"cuda-{suffix}",
            description=f"NVIDIA {what}, arch {arch}, host x86-64",
            tvm_target={
                "kind": "cuda",
                "arch": arch,
                "max_threads_per_block": 1024,
                "max_num_threads": 1024,
                "thread_warp_size": 32,
                "max_shared_memory_per_block": 49152,
                "registers_per_block": 65536,
                "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
            },
            device=DeviceKind.CUDA,
            arch="x86_64",
            tuning=TuningDefaults(runner="local"),
        )
        for suffix, arch, what in _GENERATIONS
    ]
