"""Calibration data: an `.npz`, a directory of `.npy`/`.npz` files, or an iterable of dicts.

Every source becomes a stream of samples (`CalibrationData`), each a `{input_name: ndarray}`
with exactly the model's input shape and dtype, checked as it is read:

* `.npz` file: one array per input name, first axis = samples. Each array is `[N, *shape]`,
  or `[N, *shape[1:]]` when the input's batch dim is 1 (each sample becomes a batch of one).
* directory: files sorted by name; each `.npz` is one sample keyed by input name, each
  `.npy` one sample of a single-input model (same shape rules, without the N axis).
* Python: any iterable of `{input_name: ndarray}`, one sample each.
"""

from __future__ import annotations

import itertools
import os
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping

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


def _from_npz(path: Path, inputs: list[TensorSpec], kind: str) -> list[dict[str, np.ndarray]]:
    try:
        archive = np.load(path, allow_pickle=False)
    except UNREADABLE as err:
        raise QCompilerError(f"{kind} data {path} is not a readable .npz: {err}") from None
    with archive:
        _check_names(archive.files, inputs, str(path))
        try:  # each array is read (and its CRC checked) here, not by np.load
            arrays = {spec.name: archive[spec.name] for spec in inputs}
        except UNREADABLE as err:
            raise QCompilerError(f"{kind} data {path} is not a readable .npz: {err}") from None
    counts = {name: len(a) if a.ndim else 0 for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise QCompilerError(f"{path}: inputs have different sample counts {counts}")
    n = next(iter(counts.values()))
    return [{spec.name: _fit(arrays[spec.name][i], spec, f"{path} sample {i}") for spec in inputs} for i in range(n)]


def _directory_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))


def _read_sample_file(file: Path, inputs: list[TensorSpec], kind: str) -> dict[str, np.ndarray]:
    """One sample of a data directory: an .npz keyed by input name, or a single-input
    model's .npy."""
    if file.suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as archive:
                _check_names(archive.files, inputs, str(file))
                return {spec.name: _fit(archive[spec.name], spec, str(file)) for spec in inputs}
        except UNREADABLE as err:
            raise QCompilerError(f"{kind} file {file} is not a readable .npz: {err}") from None
    if len(inputs) != 1:
        raise QCompilerError(
            f"{file}: a .npy sample only fits a single-input model; use .npz files keyed by "
            f"{', '.join(spec.name for spec in inputs)}"
        )
    try:
        array = np.load(file, allow_pickle=False)
    except UNREADABLE as err:
        raise QCompilerError(f"{kind} file {file} is not a readable .npy: {err}") from None
    return {inputs[0].name: _fit(array, inputs[0], str(file))}


def _checked(sample, index: int, inputs: list[TensorSpec], kind: str) -> dict[str, np.ndarray]:
    if not isinstance(sample, Mapping):
        raise QCompilerError(f"{kind} sample {index} is a {type(sample).__name__}, expected a dict of arrays")
    _check_names(list(sample), inputs, f"{kind} sample {index}")
    return {spec.name: _fit(sample[spec.name], spec, f"{kind} sample {index}") for spec in inputs}


class CalibrationData:
    """Calibration samples, read one at a time. Iterating (once) yields the samples calibration
    uses, at most `limit`, each checked against the model's inputs; afterwards `holdout` holds the
    last `keep` samples of the data, held back from calibration for the accuracy report (where
    the data has `keep` samples or fewer, all of them, which are then used too). `used` is the
    number of samples iterating yields, where it is known in advance (not for an iterable).
    Errors name the data by `kind`.

    Memory: a directory or an iterable is read one sample at a time (plus the `keep` held back),
    so calibrating on 10,000 samples takes no more memory than on 100; an .npz file holds one
    array per input and is read whole."""

    def __init__(self, source: str | os.PathLike | Iterable[Mapping[str, np.ndarray]], inputs: list[TensorSpec],
                 keep: int, limit: int | None = None, kind: str = "calibration"):
        self.inputs, self.keep, self.limit, self.kind = inputs, max(keep, 0), limit, kind
        self.holdout: list[dict[str, np.ndarray]] = []
        self._files: list[Path] | None = None
        self._samples: list[dict[str, np.ndarray]] | None = None
        self._iterable = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            self.where = str(path)
            if not path.exists():
                raise QCompilerError(f"{kind} data not found: {path}")
            if path.is_dir():
                self._files = _directory_files(path)
                total = len(self._files)
            elif path.suffix == ".npz":
                self._samples = _from_npz(path, inputs, kind)
                total = len(self._samples)
            else:
                raise QCompilerError(f"{kind} data {path}: expected an .npz file or a directory of .npy/.npz files")
            if total == 0:
                raise QCompilerError(f"{path} has no samples")
            split = total - self.keep if total > self.keep else total
            self.used: int | None = split if limit is None else min(split, limit)
        else:
            self.where = f"{kind} data"
            self._iterable = source
            self.used = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._iterable is not None:
            yield from self._stream()
            return
        total = len(self._files) if self._files is not None else len(self._samples)
        split = total - self.keep if total > self.keep else total
        self.holdout = [self._read(i) for i in range(split if split < total else 0, total)]
        for index in range(self.used):
            yield self._read(index)

    def _read(self, index: int) -> dict[str, np.ndarray]:
        """Sample `index` of a directory or an .npz file."""
        if self._files is None:
            return self._samples[index]
        return _read_sample_file(self._files[index], self.inputs, self.kind)

    def _stream(self) -> Iterator[dict[str, np.ndarray]]:
        """An iterable's samples: each yielded once `keep` later ones are seen (a sample among
        the last `keep` is held back); all of them where there are `keep` or fewer."""
        from collections import deque

        window: deque = deque()
        yielded = 0
        for index, sample in enumerate(self._iterable):
            window.append(_checked(sample, index, self.inputs, self.kind))
            if len(window) > self.keep:
                oldest = window.popleft()
                if self.limit is None or yielded < self.limit:
                    yielded += 1
                    yield oldest
        self.holdout = list(window)
        if not yielded and not window:
            raise QCompilerError(f"{self.where} has no samples")
        if not yielded:
            yield from self.holdout[: self.limit]

    def peek(self, count: int) -> list[dict[str, np.ndarray]]:
        """The first `count` samples of the data (calibration's own where it has more than
        `count` + `keep`), without consuming them: an iterable's are read ahead and yielded
        again by the iteration."""
        if self._iterable is None:
            return [self._read(i) for i in range(min(count, self.used))]
        source = iter(self._iterable)
        ahead = list(itertools.islice(source, count))
        self._iterable = itertools.chain(ahead, source)
        return [_checked(sample, index, self.inputs, self.kind) for index, sample in enumerate(ahead)]

    def read_holdout(self) -> list[dict[str, np.ndarray]]:
        """`holdout`, reading the data through where calibration does not (a calibration cache)."""
        for _ in self:
            pass
        return self.holdout


def load_calibration(
    source: str | os.PathLike | Iterable[Mapping[str, np.ndarray]], inputs: list[TensorSpec],
    kind: str = "calibration",
) -> list[dict[str, np.ndarray]]:
    """Every sample, checked against the model's inputs; an error names what is wrong, and the
    data by its `kind` ("calibration", "evaluation")."""
    data = CalibrationData(source, inputs, keep=0, kind=kind)
    return list(data)
