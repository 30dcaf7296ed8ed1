"""Tests for nnfun.data: synthetic loaders, digits, MNIST-1D and the IDX / CIFAR-10 readers.

The file readers are tested on tiny files written here, byte for byte in the real formats, by
writers that share no code with the readers.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnfun import data
from nnfun.data import DATASETS, DataError, Dataset, load_dataset

SYNTHETIC = ["xor", "and", "or", "spirals", "moons", "circles", "blobs", "linear_regression",
             "sine_regression"]
# Keyword arguments under which different seeds must give different data.
NOISY = {"xor": {"noise": 0.1}, "and": {"noise": 0.1}, "or": {"noise": 0.1}}


def _splits(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)]


def _assert_same(a: Dataset, b: Dataset) -> None:
    for (xa, ya), (xb, yb) in zip(_splits(a), _splits(b), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def _assert_well_formed(ds: Dataset) -> None:
    for x, y in _splits(ds):
        assert x.dtype == np.float32 and x.shape[1:] == ds.input_shape
        assert len(x) == len(y)
        if ds.task == "classification":
            assert y.dtype == np.int32 and y.ndim == 1
            assert y.min() >= 0 and y.max() < ds.num_classes
        else:
            assert ds.task == "regression" and ds.num_classes == 0
            assert y.dtype == np.float32 and y.ndim == 2


def _error_message(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, "DataError messages must be one line"
    return message


# --------------------------------------------------------------------------- registry


def test_registry_signatures_are_keyword_only_with_defaults_and_seed() -> None:
    import inspect

    naming_your_data = {("npz", "path"), ("python", "loader")}  # no default can name them
    for name, loader in DATASETS.items():
        params = inspect.signature(loader).parameters
        assert "seed" in params, name
        for p in params.values():
            assert p.default is not inspect.Parameter.empty or (name, p.name) in \
                naming_your_data, (name, p.name)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist2d")
    message = _error_message(excinfo)
    assert "'mnist2d'" in message and "spirals" in message and "cifar10" in message


def test_unknown_kwarg_names_it_and_the_valid_ones() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("spirals", num_points=3)
    message = _error_message(excinfo)
    assert "num_points" in message and "points_per_class" in message and "noise" in message


def test_one_hot() -> None:
    np.testing.assert_array_equal(data.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(DataError, match="num_classes=3"):
        data.one_hot(np.array([3]), 3)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_shapes_dtypes_and_determinism(name: str) -> None:
    kwargs = NOISY.get(name, {})
    a = load_dataset(name, seed=3, **kwargs)
    _assert_well_formed(a)
    assert a.name == name and a.input_shape in ((2,), (1,))
    _assert_same(a, load_dataset(name, seed=3, **kwargs))
    b = load_dataset(name, seed=4, **kwargs)
    assert not np.array_equal(a.x_train, b.x_train)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_does_not_touch_global_random_state(name: str) -> None:
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    load_dataset(name)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize(("gate", "labels"), [("xor", [0, 1, 1, 0]), ("and", [0, 0, 0, 1]),
                                              ("or", [0, 1, 1, 1])])
def test_logic_gates_are_the_truth_table_in_every_split(gate: str, labels: list[int]) -> None:
    ds = load_dataset(gate)
    for x, y in _splits(ds):
        np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
        np.testing.assert_array_equal(y, labels)


def test_logic_gate_repeats_and_bad_gate() -> None:
    ds = data.logic_gate(gate="xor", repeats=5, noise=0.05)
    assert ds.x_train.shape == (20, 2) and ds.num_classes == 2
    assert not np.array_equal(ds.x_train, ds.x_test)
    with pytest.raises(DataError, match="'nand'"):
        data.logic_gate(gate="nand")


def test_spirals_split_sizes_and_classes() -> None:
    ds = load_dataset("spirals", num_classes=3, points_per_class=100)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (210, 30, 60)
    assert ds.num_classes == 3
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    np.testing.assert_array_equal(np.bincount(labels), [100, 100, 100])
    assert np.abs(ds.x_train).max() <= 1.0


def test_blobs_features_and_classes() -> None:
    ds = load_dataset("blobs", num_classes=5, num_features=4, num_samples=500)
    assert ds.input_shape == (4,) and ds.num_classes == 5 and set(ds.y_train) == set(range(5))


def test_regression_targets_follow_the_formula() -> None:
    ds = load_dataset("linear_regression", noise=0.0, slope=-3.0, intercept=0.5)
    np.testing.assert_allclose(ds.y_train, -3.0 * ds.x_train + 0.5, rtol=1e-5, atol=1e-6)
    ds = load_dataset("sine_regression", noise=0.0)
    np.testing.assert_allclose(ds.y_test, np.sin(ds.x_test), atol=1e-6)


def test_bad_fractions_are_named() -> None:
    with pytest.raises(DataError, match="val_fraction=1.5"):
        load_dataset("moons", val_fraction=1.5)
    with pytest.raises(DataError, match="no training examples"):
        load_dataset("moons", val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------- digits


def test_digits_sklearn_split_is_first_half_train_second_half_test() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    _assert_well_formed(ds)
    assert ds.input_shape == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_val) == 898 and len(ds.x_val) == 90
    assert len(ds.x_test) == 899
    images = load_digits().images
    np.testing.assert_allclose(ds.x_test[..., 0], images[898:] / 16.0, rtol=1e-6)
    train_half = {a.tobytes() for a in (images[:898] / 16.0).astype(np.float32)}
    assert {a.tobytes() for a in np.concatenate([ds.x_train, ds.x_val])[..., 0]} == train_half
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_digits_flatten_seed_and_random_split() -> None:
    flat = load_dataset("digits", flatten=True)
    assert flat.input_shape == (64,)
    assert not np.array_equal(load_dataset("digits", seed=1).y_val, flat.y_val)
    rand = load_dataset("digits", split="random")
    assert len(rand.x_test) == 899 and not np.array_equal(rand.y_test, flat.y_test)
    with pytest.raises(DataError, match="split='odd'"):
        load_dataset("digits", split="odd")
    none = load_dataset("digits", flatten=True, val_fraction=0.0)
    assert none.x_val.shape == (0, 64) and len(none.x_train) == 898


# --------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_default_shapes_as_the_paper() -> None:
    ds = load_dataset("mnist1d")
    _assert_well_formed(ds)
    assert ds.input_shape == (40, 1) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_val) == 4000 and len(ds.x_val) == 400
    assert len(ds.x_test) == 1000
    flat = load_dataset("mnist1d", flatten=True)
    assert flat.input_shape == (40,)
    np.testing.assert_array_equal(flat.x_test, ds.x_test[..., 0])
    other = load_dataset("mnist1d", seed=1)
    np.testing.assert_array_equal(other.x_test, ds.x_test)
    assert not np.array_equal(other.y_val, ds.y_val)


def test_mnist1d_leaves_global_random_state_alone() -> None:
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    # Arguments no other test uses, so the generator really runs instead of the cache.
    ds = data.load_mnist1d(num_samples=200, data_seed=7)
    assert len(ds.x_train) + len(ds.x_val) == 160 and len(ds.x_test) == 40
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np_after[2:] == np_before[2:]
    np.testing.assert_array_equal(np_after[1], np_before[1])
    assert random.getstate() == py_before


def test_mnist1d_results_are_not_shared_with_the_cache() -> None:
    a = data.load_mnist1d(num_samples=100, data_seed=3)
    a.x_train[:] = 0.0
    b = data.load_mnist1d(num_samples=100, data_seed=3)
    assert np.abs(b.x_train).max() > 0.0


# --------------------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array as an IDX file: magic 0x000008DD, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _fake_mnist(root: Path, gz: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 30, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 8, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        _write(root / name, _idx_bytes(array), gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = _write(tmp_path / "x-idx3-ubyte", _idx_bytes(images), gz)
    out = data.read_idx(path, expected_magic=0x00000803)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), gz=st.booleans(),
       seed=st.integers(0, 2**16))
def test_read_idx_round_trip_any_shape(shape: list[int], gz: bool, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder) / "a-idx-ubyte", _idx_bytes(array), gz)
        np.testing.assert_array_equal(data.read_idx(path), array)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    values = np.array([[1, -2, 70000]], dtype=">i4")
    header = bytes([0, 0, 0x0C, 2]) + (1).to_bytes(4, "big") + (3).to_bytes(4, "big")
    path = tmp_path / "ints.idx"
    path.write_bytes(header + values.tobytes())
    out = data.read_idx(path)
    np.testing.assert_array_equal(out, [[1, -2, 70000]])
    assert out.dtype.isnative


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = _fake_mnist(tmp_path, gz, np.random.default_rng(0))
    ds = load_dataset("mnist", root=tmp_path, val_size=5, seed=2)
    _assert_well_formed(ds)
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (25, 5, 8)
    np.testing.assert_allclose(ds.x_test[..., 0] * 255.0, arrays["t10k-images-idx3-ubyte"],
                               atol=1e-3)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    # Train plus validation hold exactly the training (image, label) pairs.
    pairs = {(np.rint(x * 255.0).astype(np.uint8).tobytes(), int(y))
             for x, y in zip(np.concatenate([ds.x_train, ds.x_val]),
                             np.concatenate([ds.y_train, ds.y_val]), strict=True)}
    expected = {(x[..., None].tobytes(), int(y))
                for x, y in zip(arrays["train-images-idx3-ubyte"],
                                arrays["train-labels-idx1-ubyte"], strict=True)}
    assert pairs == expected
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    _assert_same(ds, load_dataset("mnist", root=tmp_path, val_size=5, seed=2))


def test_fashion_mnist_reads_the_same_layout(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, True, np.random.default_rng(1))
    ds = data.load_fashion_mnist(tmp_path, val_size=3, flatten=True)
    assert ds.name == "fashion_mnist" and ds.input_shape == (784,) and len(ds.x_val) == 3


def test_idx_truncated(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, False, np.random.default_rng(0))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as excinfo:
        data.load_mnist(tmp_path)
    message = _error_message(excinfo)
    assert "train-images-idx3-ubyte" in message and "truncated" in message
    assert "(30, 28, 28)" in message


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, True, np.random.default_rng(0))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError) as excinfo:
        data.load_mnist(tmp_path, val_size=5)
    message = _error_message(excinfo)
    assert "t10k-labels-idx1-ubyte.gz" in message and "truncated" in message


def test_idx_wrong_magic(tmp_path: Path) -> None:
    arrays = _fake_mnist(tmp_path, True, np.random.default_rng(0))
    # A labels file where the images should be.
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(arrays["train-labels-idx1-ubyte"]),
           True)
    with pytest.raises(DataError) as excinfo:
        data.load_mnist(tmp_path, val_size=5)
    message = _error_message(excinfo)
    assert "train-images-idx3-ubyte.gz: magic number 2049, expected 2051 (idx3 images)" in message


def test_idx_mismatched_counts(tmp_path: Path) -> None:
    arrays = _fake_mnist(tmp_path, False, np.random.default_rng(0))
    _write(tmp_path / "train-labels-idx1-ubyte",
           _idx_bytes(arrays["train-labels-idx1-ubyte"][:29]), False)
    with pytest.raises(DataError) as excinfo:
        data.load_mnist(tmp_path, val_size=5)
    message = _error_message(excinfo)
    assert "train-labels-idx1-ubyte" in message and "29 labels, expected 30" in message


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    arrays = _fake_mnist(tmp_path, False, np.random.default_rng(0))
    labels = arrays["t10k-labels-idx1-ubyte"].copy()
    labels[3] = 12
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(labels), False)
    with pytest.raises(DataError) as excinfo:
        data.load_mnist(tmp_path, val_size=5)
    message = _error_message(excinfo)
    assert "t10k-labels-idx1-ubyte" in message and "label 12 at index 3" in message
    assert "mislabelled" in message


def test_mnist_missing_folder_says_where_what_and_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", root=tmp_path / "nowhere")
    message = _error_message(excinfo)
    assert str(tmp_path / "nowhere") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "https://yann.lecun.com/exdb/mnist/" in message
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    assert "https://github.com/zalandoresearch/fashion-mnist" in _error_message(excinfo)


def test_mnist_missing_file(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, False, np.random.default_rng(0))
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as excinfo:
        data.load_mnist(tmp_path, val_size=5)
    message = _error_message(excinfo)
    assert "t10k-images-idx3-ubyte[.gz] not found" in message and str(tmp_path) in message


def test_mnist_val_size_too_large(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, False, np.random.default_rng(0))
    with pytest.raises(DataError, match="val_size=5000"):
        data.load_mnist(tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Encodes NHWC uint8 images as CIFAR-10 binary records: label, then R, G, B planes."""
    return b"".join(bytes([int(label)]) + image.transpose(2, 0, 1).tobytes()
                    for image, label in zip(images, labels, strict=True))


def _fake_cifar(root: Path, rng: np.random.Generator, per_file: int = 3) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        images = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        (root / name).write_bytes(_cifar_bytes(images, labels))
        files[name] = (images, labels)
    return files


def test_read_cifar10_batch_round_trip(tmp_path: Path) -> None:
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    images[0, 1, 2] = [10, 20, 30]  # one pixel: red 10, green 20, blue 30
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(_cifar_bytes(images, np.array([7, 2])))
    raw = path.read_bytes()
    assert raw[1 + 1 * 32 + 2] == 10 and raw[1 + 1024 + 34] == 20 and raw[1 + 2048 + 34] == 30
    out_images, out_labels = data.read_cifar10_batch(path)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, [7, 2])


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_load_cifar10(tmp_path: Path, subfolder: str) -> None:
    files = _fake_cifar(tmp_path / subfolder, np.random.default_rng(0))
    ds = load_dataset("cifar10", root=tmp_path, val_size=4, seed=1)
    _assert_well_formed(ds)
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (11, 4, 3)
    test_images, test_labels = files["test_batch.bin"]
    np.testing.assert_allclose(ds.x_test * 255.0, test_images, atol=1e-3)
    np.testing.assert_array_equal(ds.y_test, test_labels)
    assert sorted(np.concatenate([ds.y_train, ds.y_val])) == sorted(
        np.concatenate([files[f"data_batch_{i}.bin"][1] for i in range(1, 6)]))


def test_cifar_truncated(tmp_path: Path) -> None:
    _fake_cifar(tmp_path, np.random.default_rng(0))
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError) as excinfo:
        data.load_cifar10(tmp_path, val_size=2)
    message = _error_message(excinfo)
    assert "data_batch_3.bin" in message and "truncated" in message and "3073" in message


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    _fake_cifar(tmp_path, np.random.default_rng(0))
    path = tmp_path / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 200  # label byte of the second record
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as excinfo:
        data.load_cifar10(tmp_path, val_size=2)
    message = _error_message(excinfo)
    assert "test_batch.bin" in message and "label 200 at index 1" in message


def test_cifar_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", root=tmp_path / "nope")
    message = _error_message(excinfo)
    assert str(tmp_path / "nope") in message and "data_batch_1.bin" in message
    assert "test_batch.bin" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "CIFAR-10 binary version" in message
    _fake_cifar(tmp_path, np.random.default_rng(0))
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError) as excinfo:
        data.load_cifar10(tmp_path, val_size=2)
    assert "test_batch.bin not found" in _error_message(excinfo)


def test_an_idx_header_whose_sizes_overflow_int64_is_one_line(tmp_path) -> None:
    """Four sizes of 2**16 multiply to 2**64, which wraps to 0 in int64: the size check must
    still see that the file holds no such array."""
    from nnfun.data import read_idx

    path = tmp_path / "huge-idx4-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 4]) + (2**16).to_bytes(4, "big") * 4)
    with pytest.raises(DataError, match="truncated, header says shape"):
        read_idx(path)


def test_digits_are_read_as_scikit_learn_reads_them_without_importing_it():
    from sklearn.datasets import load_digits as sklearn_digits

    from nnfun.data import _sklearn_digits

    images, labels = _sklearn_digits()
    bunch = sklearn_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)
    assert images.dtype == bunch.images.dtype and labels.dtype == bunch.target.dtype
    code = ("import sys; from nnfun.data import load_digits; load_digits(); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
