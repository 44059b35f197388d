"""Calibration data: an `.npz`, a directory of `.npy`/`.npz` files, or an iterable of dicts.

Every source becomes a list of samples, each a `{input_name: ndarray}` with exactly the
model's input shape and dtype, checked before anything is compiled:

* `.npz` file: one array per input name, first axis = samples. Each array is `[N, *shape]`,
  or `[N, *shape[1:]]` when the input's batch dim is 1 (each sample becomes a batch of one).
* directory: files sorted by name; each `.npz` is one sample keyed by input name, each
  `.npy` one sample of a single-input model (same shape rules, without the N axis).
* Python: any iterable of `{input_name: ndarray}`, one sample each.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import QCompilerError

# What numpy raises on a damaged .npy / .npz: a bad header or a pickled (object) array
# (ValueError; SyntaxError and tokenize.TokenError from parsing a garbled header dict), a short
# read (EOFError, OSError), a bad archive, member or CRC (BadZipFile, zlib.error).
UNREADABLE = (ValueError, SyntaxError, tokenize.TokenError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
from .tensor_spec import TensorSpec


def _fit(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """One sample for `spec`, accepting a missing leading batch dim of 1."""
    array = np.asarray(array)
    if array.dtype != np.dtype(spec.dtype):
        raise QCompilerError(f"{where}: input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
    if tuple(array.shape) != spec.shape:
        if spec.shape[:1] == (1,) and tuple(array.shape) == spec.shape[1:]:
            array = array[None]
        else:
            raise QCompilerError(
                f"{where}: input {spec.name!r} sample has shape {list(array.shape)}, expected {list(spec.shape)}"
            )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise QCompilerError(f"{where}: input {spec.name!r} contains NaN or Inf")
    return np.asarray(array, order="C")  # (np.ascontiguousarray makes rank 0 rank 1)


def _check_names(names, inputs: list[TensorSpec], where: str) -> None:
    expected = [spec.name for spec in inputs]
    unknown = sorted(set(names) - set(expected))
    missing = [n for n in expected if n not in names]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input name(s) {', '.join(map(repr, unknown))}")
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        raise QCompilerError(f"{where}: {'; '.join(parts)}: the model's inputs are {', '.join(map(repr, expected))}")


def _from_npz(path: Path, inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    try:
        archive = np.load(path, allow_pickle=False)
    except UNREADABLE as err:
        raise QCompilerError(f"calibration data {path} is not a readable .npz: {err}") from None
    with archive:
        _check_names(archive.files, inputs, str(path))
        try:  # each array is read (and its CRC checked) here, not by np.load
            arrays = {spec.name: archive[spec.name] for spec in inputs}
        except UNREADABLE as err:
            raise QCompilerError(f"calibration data {path} is not a readable .npz: {err}") from None
    counts = {name: len(a) if a.ndim else 0 for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise QCompilerError(f"{path}: inputs have different sample counts {counts}")
    n = next(iter(counts.values()))
    return [{spec.name: _fit(arrays[spec.name][i], spec, f"{path} sample {i}") for spec in inputs} for i in range(n)]


def _from_directory(path: Path, inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
    samples = []
    for file in files:
        if file.suffix == ".npz":
            try:
                with np.load(file, allow_pickle=False) as archive:
                    _check_names(archive.files, inputs, str(file))
                    samples.append({spec.name: _fit(archive[spec.name], spec, str(file)) for spec in inputs})
            except UNREADABLE as err:
                raise QCompilerError(f"calibration file {file} is not a readable .npz: {err}") from None
        else:
            if len(inputs) != 1:
                raise QCompilerError(
                    f"{file}: a .npy sample only fits a single-input model; use .npz files keyed by "
                    f"{', '.join(spec.name for spec in inputs)}"
                )
            try:
                array = np.load(file, allow_pickle=False)
            except UNREADABLE as err:
                raise QCompilerError(f"calibration file {file} is not a readable .npy: {err}") from None
            samples.append({inputs[0].name: _fit(array, inputs[0], str(file))})
    return samples


def load_calibration(
    source: str | os.PathLike | Iterable[Mapping[str, np.ndarray]], inputs: list[TensorSpec]
) -> list[dict[str, np.ndarray]]:
    """Every calibration sample, checked against the model's inputs; an error names what is wrong."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise QCompilerError(f"calibration data not found: {path}")
        if path.is_dir():
            samples = _from_directory(path, inputs)
        elif path.suffix == ".npz":
            samples = _from_npz(path, inputs)
        else:
            raise QCompilerError(f"calibration data {path}: expected an .npz file or a directory of .npy/.npz files")
        where = str(path)
    else:
        samples = []
        for index, sample in enumerate(source):
            if not isinstance(sample, Mapping):
                raise QCompilerError(f"calibration sample {index} is a {type(sample).__name__}, expected a dict of arrays")
            _check_names(list(sample), inputs, f"calibration sample {index}")
            samples.append({spec.name: _fit(sample[spec.name], spec, f"calibration sample {index}") for spec in inputs})
        where = "calibration data"
    if not samples:
        raise QCompilerError(f"{where} has no samples")
    return samples
