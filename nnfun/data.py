"""Data sets as NumPy arrays with a fixed, seeded train / validation / test split.

Contract: every loader in `DATASETS` takes keyword-only arguments, one of which is ``seed``,
all with defaults except the one naming your own data (`load_npz`'s ``path``, `load_python`'s
``loader``), and returns a `Dataset`. The same arguments give the same arrays (all
randomness comes from ``np.random.default_rng(seed)``; global random state is never used or
left changed). Inputs ``x_*`` are float32 and batch first, images NHWC with values in [0, 1];
classification labels ``y_*`` are int32 of shape (N,), regression targets float32 of shape
(N, 1). Every user-facing failure raises `DataError` with one line naming the file, folder or
argument, what was expected and what was found.

This module does no printing and no downloading: MNIST, Fashion-MNIST and CIFAR-10 are read
from files the user has fetched; everything else is generated or shipped with a dependency.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import inspect
import math
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "load_and",
    "load_blobs",
    "load_cifar10",
    "load_circles",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_linear_regression",
    "load_mnist",
    "load_mnist1d",
    "load_moons",
    "load_npz",
    "load_python",
    "load_or",
    "load_sine_regression",
    "load_spirals",
    "load_xor",
    "logic_gate",
    "one_hot",
    "read_cifar10_batch",
    "read_idx",
]

MNIST_SOURCE = "https://yann.lecun.com/exdb/mnist/ or one of its mirrors"
FASHION_MNIST_SOURCE = "https://github.com/zalandoresearch/fashion-mnist"
CIFAR10_SOURCE = 'https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 binary version")'


class DataError(ValueError):
    """A data set could not be loaded or an argument of a loader is invalid."""


class Dataset(NamedTuple):
    """A data set split into train, validation and test parts.

    Attributes:
      x_train: (N_train, *input_shape) float32 inputs.
      y_train: (N_train,) int32 class labels, or (N_train, out) float32 regression targets.
      x_val: (N_val, *input_shape) float32.
      y_val: (N_val,) int32 or (N_val, out) float32.
      x_test: (N_test, *input_shape) float32.
      y_test: (N_test,) int32 or (N_test, out) float32.
      num_classes: number of classes; 0 for regression.
      task: ``"classification"`` or ``"regression"``.
      name: the registered name of the loader that made it.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    task: str
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])


# --------------------------------------------------------------------------- helpers


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot encodes integer class labels.

    Args:
      labels: (N,) integer labels in ``0 .. num_classes - 1``.
      num_classes: number of classes K.

    Returns:
      (N, K) float32 array with a single 1 per row.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"one_hot: labels must be a 1-D integer array, got {labels.dtype} "
                        f"of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"one_hot: labels span {labels.min()}..{labels.max()}, expected "
                        f"0..{num_classes - 1} for num_classes={num_classes}")
    return np.eye(num_classes, dtype=np.float32)[labels]


def _flat(a: np.ndarray) -> np.ndarray:
    """(N, *F) -> (N, prod(F)); unlike ``reshape(N, -1)`` also for N = 0."""
    return a.reshape(len(a), math.prod(a.shape[1:]))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise DataError(f"{name}={value} must be in [0, 1)")


def _classification(name: str, num_classes: int, *arrays: np.ndarray) -> Dataset:
    """Builds a classification `Dataset` from (x, y) pairs for train, val, test."""
    xs, ys = arrays[0::2], arrays[1::2]
    xs = [np.ascontiguousarray(x, dtype=np.float32) for x in xs]
    ys = [np.asarray(y, dtype=np.int32) for y in ys]
    return Dataset(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes, "classification", name)


def _regression(name: str, *arrays: np.ndarray) -> Dataset:
    """Builds a regression `Dataset` from (x, y) pairs; targets become (N, out) float32."""
    xs, ys = arrays[0::2], arrays[1::2]
    xs = [np.ascontiguousarray(x, dtype=np.float32) for x in xs]
    ys = [np.asarray(y, dtype=np.float32) for y in ys]
    ys = [y if y.ndim == 2 else y[:, None] for y in ys]
    return Dataset(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], 0, "regression", name)


def _carve(
    x: np.ndarray, y: np.ndarray, n_out: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Moves a random ``n_out`` examples out of (x, y); returns (x_rest, y_rest, x_out, y_out)."""
    perm = rng.permutation(len(x))
    rest, out = np.sort(perm[n_out:]), np.sort(perm[:n_out])
    return x[rest], y[rest], x[out], y[out]


def _split3(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, val_fraction: float,
    test_fraction: float,
) -> tuple[np.ndarray, ...]:
    """Shuffles (x, y) and splits it into train, val, test by the given fractions."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    n = len(x)
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    if n_val + n_test >= n:
        raise DataError(f"val_fraction={val_fraction} + test_fraction={test_fraction} leave "
                        f"no training examples out of {n}")
    perm = rng.permutation(n)
    val, test, train = np.split(perm, [n_val, n_val + n_test])
    return x[train], y[train], x[val], y[val], x[test], y[test]


def _sklearn_seed(rng: np.random.Generator) -> int:
    """An integer ``random_state`` for scikit-learn, drawn from ``rng``."""
    return int(rng.integers(2**31 - 1))


# --------------------------------------------------------------------------- synthetic

_GATES = {"xor": (0, 1, 1, 0), "and": (0, 0, 0, 1), "or": (0, 1, 1, 1)}


def logic_gate(
    *, gate: str = "xor", repeats: int = 1, noise: float = 0.0, seed: int = 0
) -> Dataset:
    """The four points of a two-input logic gate, as 2-class classification.

    Each split holds ``repeats`` copies of the points (0, 0), (0, 1), (1, 0), (1, 1), each
    copy shifted by independent Gaussian noise of standard deviation ``noise``. With the
    defaults (one copy, no noise) train, validation and test are the same four points: the
    task is to fit the truth table, not to generalise.

    Args:
      gate: ``"xor"``, ``"and"`` or ``"or"``.
      repeats: copies of the four points in each split.
      noise: standard deviation of the Gaussian jitter added to the inputs.
      seed: seeds the jitter.

    Returns:
      `Dataset` with x (4 * repeats, 2) and y (4 * repeats,) in {0, 1}.
    """
    if gate not in _GATES:
        raise DataError(f"gate={gate!r} is not one of {sorted(_GATES)}")
    if repeats < 1:
        raise DataError(f"repeats={repeats} must be at least 1")
    rng = np.random.default_rng(seed)
    points = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    x = np.tile(points, (repeats, 1))
    y = np.tile(np.array(_GATES[gate]), repeats)
    splits = [x + noise * rng.standard_normal(x.shape) if noise else x for _ in range(3)]
    return _classification(gate, 2, splits[0], y, splits[1], y, splits[2], y)


def load_xor(*, repeats: int = 1, noise: float = 0.0, seed: int = 0) -> Dataset:
    """XOR gate; see `logic_gate`."""
    return logic_gate(gate="xor", repeats=repeats, noise=noise, seed=seed)


def load_and(*, repeats: int = 1, noise: float = 0.0, seed: int = 0) -> Dataset:
    """AND gate; see `logic_gate`."""
    return logic_gate(gate="and", repeats=repeats, noise=noise, seed=seed)


def load_or(*, repeats: int = 1, noise: float = 0.0, seed: int = 0) -> Dataset:
    """OR gate; see `logic_gate`."""
    return logic_gate(gate="or", repeats=repeats, noise=noise, seed=seed)


def load_spirals(
    *, num_classes: int = 2, points_per_class: int = 100, noise: float = 0.2,
    val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """K interleaved spiral arms in the plane (the CS231n toy set).

    Arm j has radius r = linspace(0, 1) and angle t = linspace(4 j, 4 (j + 1)) + noise * e,
    e ~ N(0, 1); the point is (r sin t, r cos t).

    Args:
      num_classes: number of arms K.
      points_per_class: points per arm before splitting.
      noise: standard deviation of the angular noise (radians).
      val_fraction: fraction of all points held out for validation.
      test_fraction: fraction of all points held out for testing.
      seed: seeds the noise and the split.

    Returns:
      `Dataset` with x (N, 2) and y (N,) in 0..K-1.
    """
    if num_classes < 2 or points_per_class < 1:
        raise DataError(f"spirals need num_classes >= 2 and points_per_class >= 1, got "
                        f"{num_classes} and {points_per_class}")
    rng = np.random.default_rng(seed)
    n = points_per_class
    r = np.tile(np.linspace(0.0, 1.0, n), num_classes)
    arm = np.repeat(np.arange(num_classes), n)
    t = (np.linspace(0.0, 4.0, n)[None, :] + 4.0 * np.arange(num_classes)[:, None]).ravel()
    t = t + noise * rng.standard_normal(t.shape)
    x = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
    return _classification("spirals", num_classes, *_split3(x, arm, rng, val_fraction,
                                                            test_fraction))


def load_moons(
    *, num_samples: int = 1000, noise: float = 0.1, val_fraction: float = 0.1,
    test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """Two interleaving half circles (`sklearn.datasets.make_moons`).

    Args:
      num_samples: points before splitting, half per class.
      noise: standard deviation of Gaussian noise added to the points.
      val_fraction: fraction held out for validation.
      test_fraction: fraction held out for testing.
      seed: seeds generation and split.

    Returns:
      `Dataset` with x (N, 2) and y (N,) in {0, 1}.
    """
    from sklearn.datasets import make_moons

    rng = np.random.default_rng(seed)
    x, y = make_moons(num_samples, noise=noise, random_state=_sklearn_seed(rng))
    return _classification("moons", 2, *_split3(x, y, rng, val_fraction, test_fraction))


def load_circles(
    *, num_samples: int = 1000, noise: float = 0.05, factor: float = 0.5,
    val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """A small circle inside a large one (`sklearn.datasets.make_circles`).

    Args:
      num_samples: points before splitting, half per class.
      noise: standard deviation of Gaussian noise added to the points.
      factor: radius of the inner circle relative to the outer one, in (0, 1).
      val_fraction: fraction held out for validation.
      test_fraction: fraction held out for testing.
      seed: seeds generation and split.

    Returns:
      `Dataset` with x (N, 2) and y (N,) in {0, 1} (1 = inner circle).
    """
    from sklearn.datasets import make_circles

    rng = np.random.default_rng(seed)
    x, y = make_circles(num_samples, noise=noise, factor=factor,
                        random_state=_sklearn_seed(rng))
    return _classification("circles", 2, *_split3(x, y, rng, val_fraction, test_fraction))


def load_blobs(
    *, num_samples: int = 1000, num_classes: int = 3, num_features: int = 2,
    cluster_std: float = 1.0, val_fraction: float = 0.1, test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Isotropic Gaussian blobs, one per class (`sklearn.datasets.make_blobs`).

    Args:
      num_samples: points before splitting, spread evenly over the classes.
      num_classes: number of blobs K; their centres are drawn in [-10, 10]^D.
      num_features: input dimension D.
      cluster_std: standard deviation of each blob.
      val_fraction: fraction held out for validation.
      test_fraction: fraction held out for testing.
      seed: seeds generation and split.

    Returns:
      `Dataset` with x (N, D) and y (N,) in 0..K-1.
    """
    from sklearn.datasets import make_blobs

    rng = np.random.default_rng(seed)
    x, y = make_blobs(num_samples, n_features=num_features, centers=num_classes,
                      cluster_std=cluster_std, random_state=_sklearn_seed(rng))
    return _classification("blobs", num_classes,
                           *_split3(x, y, rng, val_fraction, test_fraction))


def load_linear_regression(
    *, num_samples: int = 200, slope: float = 2.0, intercept: float = 1.0,
    noise: float = 0.1, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """A noisy line: y = slope * x + intercept + noise * e, x ~ U(-1, 1), e ~ N(0, 1).

    Args:
      num_samples: points before splitting.
      slope: true slope.
      intercept: true intercept.
      noise: standard deviation of the target noise.
      val_fraction: fraction held out for validation.
      test_fraction: fraction held out for testing.
      seed: seeds generation and split.

    Returns:
      Regression `Dataset` with x (N, 1) and y (N, 1).
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (num_samples, 1))
    y = slope * x + intercept + noise * rng.standard_normal(x.shape)
    return _regression("linear_regression", *_split3(x, y, rng, val_fraction, test_fraction))


def load_sine_regression(
    *, num_samples: int = 500, frequency: float = 1.0, noise: float = 0.1,
    val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """A noisy sine: y = sin(frequency * x) + noise * e, x ~ U(-pi, pi), e ~ N(0, 1).

    Args:
      num_samples: points before splitting.
      frequency: angular frequency of the sine.
      noise: standard deviation of the target noise.
      val_fraction: fraction held out for validation.
      test_fraction: fraction held out for testing.
      seed: seeds generation and split.

    Returns:
      Regression `Dataset` with x (N, 1) and y (N, 1).
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (num_samples, 1))
    y = np.sin(frequency * x) + noise * rng.standard_normal(x.shape)
    return _regression("sine_regression", *_split3(x, y, rng, val_fraction, test_fraction))


# --------------------------------------------------------------------------- digits


def load_digits(
    *, split: str = "sklearn", val_fraction: float = 0.1, flatten: bool = False, seed: int = 0,
) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn).

    With ``split="sklearn"`` the first half (898 images) is for training and the second half
    (899) for testing, as in scikit-learn's "Recognizing hand-written digits" example; with
    ``split="random"`` the images are shuffled before halving. In both cases a seeded
    ``val_fraction`` of the training half becomes the validation set.

    Args:
      split: ``"sklearn"`` or ``"random"``.
      val_fraction: fraction of the training half held out for validation.
      flatten: give x as (N, 64) instead of (N, 8, 8, 1).
      seed: seeds the validation split (and the shuffle for ``split="random"``).

    Returns:
      `Dataset` with x (N, 8, 8, 1) or (N, 64) in [0, 1] (pixel / 16) and y (N,) in 0..9.
    """
    if split not in ("sklearn", "random"):
        raise DataError(f"split={split!r} is not one of ['random', 'sklearn']")
    _check_fraction("val_fraction", val_fraction)
    images, y = _sklearn_digits()
    x = images[..., None] / 16.0
    rng = np.random.default_rng(seed)
    if split == "random":
        perm = rng.permutation(len(x))
        x, y = x[perm], y[perm]
    half = len(x) // 2
    x_test, y_test = x[half:], y[half:]
    x_train, y_train, x_val, y_val = _carve(x[:half], y[:half], round(val_fraction * half), rng)
    if flatten:
        x_train, x_val, x_test = (_flat(a) for a in (x_train, x_val, x_test))
    return _classification("digits", 10, x_train, y_train, x_val, y_val, x_test, y_test)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64, labels (1797,) int): scikit-learn's ``load_digits``,
    read from the ``digits.csv.gz`` it ships exactly as it reads it (``np.loadtxt``), without
    importing scikit-learn (seconds of a run's start-up); through scikit-learn itself when the
    file is not where it keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.images, bunch.target


# --------------------------------------------------------------------------- MNIST-1D


@contextlib.contextmanager
def _isolated_global_random_state() -> Iterator[None]:
    """Restores NumPy's and Python's global random state on exit (not thread-safe)."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(
    num_samples: int, train_split: float, data_seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generates MNIST-1D offline (about 0.8 s for 5,000 samples); arrays are read-only."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, data_seed
    with _isolated_global_random_state():
        data = make_dataset(args)
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist1d(
    *, num_samples: int = 5000, train_split: float = 0.8, data_seed: int = 42,
    val_fraction: float = 0.1, flatten: bool = False, seed: int = 0,
) -> Dataset:
    """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of ten digit templates.

    Generated offline with ``mnist1d.data.make_dataset`` (never downloaded). The defaults give
    the paper's 4,000 training (including validation) and 1,000 test examples. Generation
    depends only on ``data_seed`` (42 as in the package's defaults), so the test set is fixed;
    ``seed`` picks which ``val_fraction`` of the training examples are held out. Results are
    cached in-process per (num_samples, train_split, data_seed).

    Args:
      num_samples: examples generated in all (a multiple of 10 keeps classes balanced).
      train_split: fraction of them used for training and validation; the rest is the test set.
      data_seed: seed of the generator (``args.seed`` of mnist1d).
      val_fraction: fraction of the training examples held out for validation.
      flatten: give x as (N, 40) instead of (N, 40, 1) (NWC, for 1-D convolutions).
      seed: seeds the validation split.

    Returns:
      `Dataset` with x (N, 40, 1) or (N, 40), standardised by mnist1d, and y (N,) in 0..9.
    """
    _check_fraction("val_fraction", val_fraction)
    if not 0.0 < train_split < 1.0 or num_samples < 10:
        raise DataError(f"mnist1d needs 0 < train_split < 1 and num_samples >= 10, got "
                        f"train_split={train_split}, num_samples={num_samples}")
    x, y, x_test, y_test = _mnist1d_arrays(int(num_samples), float(train_split), int(data_seed))
    rng = np.random.default_rng(seed)
    x_train, y_train, x_val, y_val = _carve(x, y, round(val_fraction * len(x)), rng)
    if not flatten:
        x_train, x_val, x_test = (a[..., None] for a in (x_train, x_val, x_test))
    return _classification("mnist1d", 10, x_train, y_train, x_val, y_val, x_test, y_test)


# --------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_KINDS = {0x00000803: "idx3 images", 0x00000801: "idx1 labels"}


def _read_bytes(path: Path) -> bytes:
    """Reads a file, gunzipping it when it starts with the gzip magic bytes (whatever its name)."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx(path: str | Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Reads an IDX file (the MNIST format), plain or gzipped.

    The header is a big-endian magic number ``0x0000TTDD`` (T: element type, 0x08 for
    unsigned bytes; D: number of dimensions) followed by D big-endian uint32 sizes; the data
    follow, big-endian, in C order. The file must hold exactly as many bytes as the header
    promises.

    Args:
      path: the file; gzipped content (as in ``.gz`` downloads) is decompressed.
      expected_magic: if given, the magic number the file must carry (0x00000803 for
        images, 0x00000801 for labels).

    Returns:
      Array of shape (d_1, ..., d_D) in native byte order (uint8 for MNIST).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated, {len(raw)} bytes is shorter than the 4-byte magic")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        kind = _IDX_KINDS.get(expected_magic, "idx")
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic} ({kind})")
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: magic number {magic:#010x} is not an IDX header "
                        f"(expected 0x0000TTDD with type TT in "
                        f"{[hex(t) for t in _IDX_DTYPES]} and DD > 0)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header, {len(raw)} bytes, expected {header}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no int64 wrap
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes"
        raise DataError(f"{path}: {what}, header says shape {shape} ({expected} bytes), "
                        f"file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside "
                        f"0..{num_classes - 1} ({bad.size} mislabelled)")


def _require_folder(root: Path, what: str, files: str, source: str) -> None:
    if not root.is_dir():
        raise DataError(f"{root.absolute()}: {what} folder not found; expected {files} there "
                        f"(get them from {source})")


def _find_idx(root: Path, stem: str, what: str, source: str) -> Path:
    """Finds ``stem`` or ``stem.gz`` in ``root`` (also the ``train-images.idx3-ubyte`` form)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: {what} file {stem}[.gz] not found (get it from {source})")


def _read_idx_pair(root: Path, prefix: str, what: str, source: str) -> tuple[np.ndarray, ...]:
    """Reads ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` and checks them."""
    image_path = _find_idx(root, f"{prefix}-images-idx3-ubyte", what, source)
    label_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte", what, source)
    images = read_idx(image_path, expected_magic=0x00000803)
    labels = read_idx(label_path, expected_magic=0x00000801)
    if len(images) != len(labels):
        raise DataError(f"{label_path}: {len(labels)} labels, expected {len(images)} to match "
                        f"the images in {image_path.name}")
    _check_labels(label_path, labels, 10)
    return images, labels


def _check_val_size(root: Path, val_size: int, n_train: int) -> None:
    if not 0 <= val_size < n_train:
        raise DataError(f"val_size={val_size} must be in [0, {n_train}), the number of "
                        f"training images in {root}")


def _images_dataset(
    name: str, root: Path, train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray], val_size: int, flatten: bool, seed: int,
) -> Dataset:
    """Carves a seeded validation set from uint8 NHWC train images and scales to [0, 1]."""
    _check_val_size(root, val_size, len(train[0]))
    x_train, y_train, x_val, y_val = _carve(*train, val_size, np.random.default_rng(seed))
    xs = [a.astype(np.float32) / np.float32(255.0) for a in (x_train, x_val, test[0])]
    if flatten:
        xs = [_flat(a) for a in xs]
    return _classification(name, 10, xs[0], y_train, xs[1], y_val, xs[2], test[1])


_MNIST_FILES = ("train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")


def _load_idx_dataset(
    name: str, what: str, source: str, root: str | Path, val_size: int, flatten: bool,
    seed: int,
) -> Dataset:
    root = Path(root)
    _require_folder(root, what, _MNIST_FILES, source)
    x_train, y_train = _read_idx_pair(root, "train", what, source)
    x_test, y_test = _read_idx_pair(root, "t10k", what, source)
    return _images_dataset(name, root, (x_train[..., None], y_train),
                           (x_test[..., None], y_test), val_size, flatten, seed)


def load_mnist(
    root: str | Path = "data/mnist", *, val_size: int = 5000, flatten: bool = False,
    seed: int = 0,
) -> Dataset:
    """MNIST handwritten digits from the four IDX files in ``root``.

    Reads train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
    t10k-labels-idx1-ubyte, each plain or ``.gz``, from https://yann.lecun.com/exdb/mnist/
    or a mirror. The 10,000 t10k images are the test set; a seeded ``val_size`` of the 60,000
    training images become the validation set.

    Args:
      root: folder holding the four files.
      val_size: number of training images held out for validation.
      flatten: give x as (N, 784) instead of (N, 28, 28, 1).
      seed: seeds the validation split.

    Returns:
      `Dataset` with x (N, 28, 28, 1) float32 in [0, 1] and y (N,) in 0..9.
    """
    return _load_idx_dataset("mnist", "MNIST", MNIST_SOURCE, root, val_size, flatten, seed)


def load_fashion_mnist(
    root: str | Path = "data/fashion_mnist", *, val_size: int = 5000, flatten: bool = False,
    seed: int = 0,
) -> Dataset:
    """Fashion-MNIST (Zalando) from its four IDX files in ``root``; same layout as `load_mnist`.

    Args:
      root: folder holding the four files (names as MNIST's, plain or ``.gz``).
      val_size: number of training images held out for validation.
      flatten: give x as (N, 784) instead of (N, 28, 28, 1).
      seed: seeds the validation split.

    Returns:
      `Dataset` with x (N, 28, 28, 1) float32 in [0, 1] and y (N,) in 0..9.
    """
    return _load_idx_dataset("fashion_mnist", "Fashion-MNIST", FASHION_MNIST_SOURCE, root,
                             val_size, flatten, seed)


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_FILES = ", ".join(_CIFAR_TRAIN + ("test_batch.bin",))


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one file of the CIFAR-10 binary version.

    Each record is one label byte followed by 3,072 pixel bytes: the 32x32 red plane, then
    green, then blue, rows first (CHW). Real files hold 10,000 records; any whole number is
    accepted.

    Args:
      path: e.g. ``data_batch_1.bin`` or ``test_batch.bin``.

    Returns:
      (images, labels): uint8 arrays of shape (N, 32, 32, 3) (NHWC) and (N,), labels in 0..9.
    """
    path = Path(path)
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DataError(f"{path}: truncated, {raw.size} bytes is not a positive multiple of "
                        f"the {_CIFAR_RECORD}-byte record (1 label + 3072 pixels)")
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].copy()
    _check_labels(path, labels, 10)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_folder(root: Path) -> Path:
    """``root`` or ``root/cifar-10-batches-bin``, whichever holds data_batch_1.bin."""
    _require_folder(root, "CIFAR-10", _CIFAR_FILES, CIFAR10_SOURCE)
    for folder in (root, root / "cifar-10-batches-bin"):
        if (folder / _CIFAR_TRAIN[0]).is_file():
            return folder
    python_hint = ""
    if any((f / "data_batch_1").is_file() for f in (root, root / "cifar-10-batches-py")):
        python_hint = "; found the Python (pickle) version, which is not read,"
    raise DataError(f"{root}: CIFAR-10 file {_CIFAR_TRAIN[0]} not found here or in "
                    f"cifar-10-batches-bin{python_hint} (get the binary version from "
                    f"{CIFAR10_SOURCE})")


def load_cifar10(
    root: str | Path = "data/cifar10", *, val_size: int = 5000, flatten: bool = False,
    seed: int = 0,
) -> Dataset:
    """CIFAR-10 (binary version) from ``root`` or ``root/cifar-10-batches-bin``.

    Reads data_batch_1.bin .. data_batch_5.bin (training) and test_batch.bin (test). A
    seeded ``val_size`` of the training images become the validation set.

    Args:
      root: folder holding the six ``.bin`` files, or their ``cifar-10-batches-bin`` parent.
      val_size: number of training images held out for validation.
      flatten: give x as (N, 3072) (HWC order) instead of (N, 32, 32, 3).
      seed: seeds the validation split.

    Returns:
      `Dataset` with x (N, 32, 32, 3) float32 in [0, 1] and y (N,) in 0..9.
    """
    root = Path(root)
    folder = _cifar_folder(root)
    missing = [n for n in _CIFAR_TRAIN + ("test_batch.bin",) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: CIFAR-10 file(s) {', '.join(missing)} not found "
                        f"(get the binary version from {CIFAR10_SOURCE})")
    parts = [read_cifar10_batch(folder / n) for n in _CIFAR_TRAIN]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read_cifar10_batch(folder / "test_batch.bin")
    return _images_dataset("cifar10", root, train, test, val_size, flatten, seed)


# --------------------------------------------------------------------------- registry

# --------------------------------------------------------------------------- your own data


_SPLITS = ("train", "val", "test")


def _stored_splits(archive: dict[str, np.ndarray], x_key: str,
                   y_key: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """[(x, y)] for train, val, test when the file stores its own splits; None otherwise."""
    if f"{x_key}_train" not in archive:
        return None
    out = []
    for split in _SPLITS:
        xk, yk = f"{x_key}_{split}", f"{y_key}_{split}"
        if xk not in archive and split == "val":  # no validation split stored: an empty one
            x_tr = archive[f"{x_key}_train"]
            out.append((x_tr[:0], archive[f"{y_key}_train"][:0]))
            continue
        if xk not in archive or yk not in archive:
            raise DataError(f"expected arrays {xk!r} and {yk!r} beside {x_key}_train, found "
                            f"{sorted(archive)}")
        out.append((archive[xk], archive[yk]))
    return out


def load_npz(*, path: str, x_key: str = "x", y_key: str = "y", task: str = "classification",
             val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Your own arrays from a NumPy ``.npz`` file (``np.savez(path, x=..., y=...)``).

    The file holds either one set, ``x`` (N, ...) and ``y`` (N,) or (N, out), split here with
    `seed` by the fractions, or its own splits ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (and optionally ``x_val``, ``y_val``), used as they are. Key names follow `x_key` and `y_key`.

    Args:
      path: the file; a relative path is read from the current directory.
      task: "classification" (integer labels 0..K-1) or "regression" (float targets).

    Returns:
      `Dataset` named "npz"; inputs float32; for classification K = max label + 1.
    """
    if task not in ("classification", "regression"):
        raise DataError(f"task: expected 'classification' or 'regression', found {task!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            archive = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    try:
        parts = _stored_splits(archive, x_key, y_key)
        if parts is None:
            if x_key not in archive or y_key not in archive:
                raise DataError(f"expected arrays {x_key!r} and {y_key!r} (or "
                                f"{x_key}_train, ...), found {sorted(archive)}")
            x, y = archive[x_key], archive[y_key]
            if len(x) != len(y):
                raise DataError(f"{x_key!r} has {len(x)} rows but {y_key!r} has {len(y)}")
            s = _split3(x, y, np.random.default_rng(seed), val_fraction, test_fraction)
            parts = [(s[0], s[1]), (s[2], s[3]), (s[4], s[5])]
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    flat = [a for xy in parts for a in xy]
    if task == "regression":
        return _regression("npz", *flat)
    labels = np.concatenate([y for _, y in parts])
    if labels.ndim != 1 or labels.size == 0 or not np.all(labels == np.round(labels)) \
            or labels.min() < 0:
        raise DataError(f"{path}: classification labels must be integers >= 0 of shape (N,); "
                        f"use task = 'regression' for float targets")
    return _classification("npz", int(labels.max()) + 1, *flat)


def load_python(*, loader: str, arguments: dict[str, Any] | None = None,
                seed: int = 0) -> Dataset:
    """A `Dataset` from your own Python function, named ``"module:function"``.

    The module is imported from the current directory or the installed packages, so `nnfun
    eval`, `resume` and `gradcheck` find it again from the config the run folder records. The
    function is called with `arguments` as keyword arguments, and with ``seed`` when it takes
    one, and must return a `Dataset`.
    """
    module_name, _, fn_name = loader.partition(":")
    if not module_name or not fn_name:
        raise DataError(f"loader: expected 'module:function', found {loader!r}")
    import importlib
    import sys

    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise DataError(f"loader: cannot import {loader!r} ({e})") from None
    kwargs = dict(arguments or {})
    if "seed" in inspect.signature(fn).parameters:
        kwargs["seed"] = seed
    ds = fn(**kwargs)
    if not isinstance(ds, Dataset):
        raise DataError(f"loader: {loader!r} returned {type(ds).__name__}, expected a "
                        f"nnfun.data.Dataset")
    return ds


DATASETS: dict[str, Callable[..., Dataset]] = {
    "xor": load_xor,
    "and": load_and,
    "or": load_or,
    "spirals": load_spirals,
    "moons": load_moons,
    "circles": load_circles,
    "blobs": load_blobs,
    "linear_regression": load_linear_regression,
    "sine_regression": load_sine_regression,
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "npz": load_npz,
    "python": load_python,
}


def load_dataset(name: str, *, seed: int = 0, **kwargs: object) -> Dataset:
    """Loads a registered data set by name.

    Args:
      name: a key of `DATASETS`, e.g. ``"spirals"``, ``"mnist1d"``, ``"cifar10"``.
      seed: seeds the loader's generation and train / validation / test split.
      **kwargs: the loader's other keyword arguments (see its signature).

    Returns:
      The loader's `Dataset`.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
    loader = DATASETS[name]
    valid = [p for p in inspect.signature(loader).parameters if p != "seed"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise DataError(f"dataset {name!r} has no argument(s) {unknown}; valid: {valid}")
    return loader(seed=seed, **kwargs)
