"""What a target preset is: a named, typed description of one kind of hardware."""

from __future__ import annotations

import enum
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping

from qcompiler.errors import QCompilerError


class DeviceKind(enum.Enum):
    """Where the compiled kernels run."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class CrossCompiler:
    """A C++ compiler that links artifacts for a foreign host, and the Debian package providing it."""

    executable: str
    debian_package: str

    def require(self) -> str:
        """Return the compiler's path, or raise naming the package that provides it."""
        path = shutil.which(self.executable)
        if path is None:
            raise QCompilerError(
                f"cross compiler {self.executable} not found on PATH: "
                f"install Debian package {self.debian_package} (apt-get install {self.debian_package})"
            )
        return path


@dataclass(frozen=True)
class TuningDefaults:
    """MetaSchedule defaults for a preset (used by `qcompiler tune`).

    `runner` is "local" when kernels can be measured on the build machine, "rpc" when they
    must be measured on a remote device registered with an RPC tracker. Each round, the
    evolutionary search ranks `population` schedules of a task with the cost model, over
    `generations` generations of mutation, and measures the best `trials_per_iter`.
    MetaSchedule's own 512 and 4 took 16 s per task and round on a 2-core x86 machine, against
    about 3 s for building and measuring 3 candidates.
    """

    trials_per_iter: int = 16
    runner: str = "local"
    population: int = 256
    generations: int = 2


@dataclass(frozen=True)
class TargetPreset:
    """A named hardware target.

    `tvm_target` is TVM's dict form (TVM 0.27 rejects "llvm -mcpu=..." strings); `arch` is the
    host CPU architecture of the exported `.so` (its ELF machine); `cross_compiler` is set when
    the `.so` must be linked by a compiler other than the host's g++.
    """

    name: str
    description: str
    tvm_target: Mapping[str, Any]
    device: DeviceKind
    arch: str
    cross_compiler: CrossCompiler | None = None
    tuning: TuningDefaults = field(default_factory=TuningDefaults)

    def target(self):
        """The `tvm.target.Target` this preset compiles for."""
        import tvm

        return tvm.target.Target(dict(self.tvm_target))

    def summary(self) -> str:
        """One line for `qcompiler targets`."""
        return f"{self.name:<20} {self.description}"
