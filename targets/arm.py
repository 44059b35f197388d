"""aarch64 presets, cross-compiled on the build host with Debian's aarch64 g++."""

from __future__ import annotations

from .preset import CrossCompiler, DeviceKind, TargetPreset, TuningDefaults

AARCH64_GXX = CrossCompiler("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")


def _arm(name: str, description: str, mcpu: str, mattr: list[str], cores: int) -> TargetPreset:
    return TargetPreset(
        name=name,
        description=description,
        tvm_target={
            "kind": "llvm",
            "mtriple": "aarch64-linux-gnu",
            "mcpu": mcpu,
            "mattr": mattr,
            "num-cores": cores,
        },
        device=DeviceKind.CPU,
        arch="aarch64",
        cross_compiler=AARCH64_GXX,
        # ARM boards are measured through an RPC tracker, never on the build host.
        tuning=TuningDefaults(runner="rpc"),
    )


def arm_presets() -> list[TargetPreset]:
    return [
        _arm("arm64", "aarch64 generic with NEON (any 64-bit ARM board)", "generic", ["+neon"], 4),
        _arm("arm64-a72", "Cortex-A72, NEON (Raspberry Pi 4, RK3399 class)", "cortex-a72", ["+neon"], 4),
        _arm(
            "arm64-a76-dotprod",
            "Cortex-A76, NEON + int8 dot product (Raspberry Pi 5, RK3588 class)",
            "cortex-a76",
            ["+neon", "+dotprod"],
            4,
        ),
    ]
