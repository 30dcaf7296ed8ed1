"""Tests for nnfun.preprocessing (lecture 001: mean-centring, std scaling, PCA, whitening)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnfun.preprocessing import (
    METHODS,
    apply_preprocessor,
    fit_preprocessor,
    load_preprocessor,
    save_preprocessor,
)


def _correlated(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(n, *shape) Gaussian data with an offset and strongly correlated, unequal features."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    mixing = rng.standard_normal((d, d)) * rng.uniform(0.5, 3.0, d)
    x = rng.standard_normal((n, d)) @ mixing + rng.uniform(-5, 5, d)
    return x.reshape(n, *shape)


def _cov(x: np.ndarray) -> np.ndarray:
    xc = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(axis=0)
    return xc.T @ xc / len(x)


def test_lecture_recipe_center_then_scale() -> None:
    x = _correlated(300, (5,))
    expected = x.copy()
    expected -= np.mean(expected, axis=0)  # X -= np.mean(X, axis = 0)
    expected /= np.std(expected, axis=0)  # X /= np.std(X, axis = 0)
    out = apply_preprocessor(fit_preprocessor(x, method="standardize"), x)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_center_keeps_shape_and_zeroes_mean() -> None:
    x = _correlated(200, (2, 3)).astype(np.float32)
    out = apply_preprocessor(fit_preprocessor(x, method="center"), x)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)


def test_standardize_train_mean_zero_std_one_and_constant_feature() -> None:
    x = _correlated(500, (4, 2))
    x[:, 1, 1] = 7.0  # a constant feature: divided by 1, becomes 0
    state = fit_preprocessor(x, method="standardize")
    out = apply_preprocessor(state, x)
    assert out.shape == x.shape
    flat = out.reshape(500, -1)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-10)
    std = flat.std(axis=0)
    np.testing.assert_allclose(np.delete(std, 3), 1.0, rtol=1e-10)
    np.testing.assert_allclose(flat[:, 3], 0.0, atol=1e-12)
    assert state["std"][3] == 1.0


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(2, 30), st.integers(1, 4),
                                          st.integers(1, 3)),
                    elements=st.floats(-1e3, 1e3, allow_subnormal=False)))
def test_standardize_property(x: np.ndarray) -> None:
    out = apply_preprocessor(fit_preprocessor(x, method="standardize"), x)
    flat = out.reshape(len(x), -1)
    assert out.shape == x.shape and np.all(np.isfinite(out))
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-6)
    std = flat.std(axis=0)
    varies = x.reshape(len(x), -1).std(axis=0) > 1e-6
    np.testing.assert_allclose(std[varies], 1.0, rtol=1e-6)


def test_zca_whitened_train_covariance_is_identity() -> None:
    x = _correlated(2000, (3, 2))
    out = apply_preprocessor(fit_preprocessor(x, method="zca_whiten", eps=1e-8), x)
    assert out.shape == x.shape
    np.testing.assert_allclose(_cov(out), np.eye(6), atol=1e-6)
    # ZCA is symmetric: W = U diag(1 / sqrt(l + eps)) U^T.
    state = fit_preprocessor(x, method="zca_whiten")
    u, l = state["components"], state["eigenvalues"]
    w = u @ np.diag(1.0 / np.sqrt(l + 1e-5)) @ u.T
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    xc = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(axis=0)
    np.testing.assert_allclose(apply_preprocessor(state, x).reshape(len(x), -1), xc @ w,
                               atol=1e-9)


def test_pca_whitened_covariance_is_identity() -> None:
    x = _correlated(2000, (6,))
    out = apply_preprocessor(fit_preprocessor(x, method="pca_whiten", n_components=4,
                                              eps=1e-8), x)
    assert out.shape == (2000, 4)
    np.testing.assert_allclose(_cov(out), np.eye(4), atol=1e-6)


def test_pca_matches_scikit_learn_variances_and_is_ordered() -> None:
    from sklearn.decomposition import PCA

    x = _correlated(400, (5,))
    state = fit_preprocessor(x, method="pca", n_components=3)
    out = apply_preprocessor(state, x)
    assert out.shape == (400, 3) and state["components"].shape == (5, 3)
    variances = out.var(axis=0)
    np.testing.assert_allclose(variances, state["eigenvalues"], rtol=1e-10)
    assert np.all(np.diff(variances) <= 0)
    # scikit-learn divides by N - 1, the lecture by N.
    expected = PCA(n_components=3).fit(x).explained_variance_ * (399 / 400)
    np.testing.assert_allclose(state["eigenvalues"], expected, rtol=1e-8)
    np.testing.assert_allclose(_cov(out), np.diag(variances), atol=1e-8)


def test_pca_with_all_components_reconstructs() -> None:
    x = _correlated(100, (2, 4))
    state = fit_preprocessor(x, method="pca")  # n_components=None keeps all D
    out = apply_preprocessor(state, x)
    assert out.shape == (100, 8)
    back = out @ state["components"].T + state["mean"]
    np.testing.assert_allclose(back.reshape(x.shape), x, atol=1e-9)
    np.testing.assert_allclose(state["components"].T @ state["components"], np.eye(8),
                               atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_apply_uses_training_statistics(method: str) -> None:
    train = _correlated(300, (4,))
    test = train + 5.0
    state = fit_preprocessor(train, method=method)
    shifted = apply_preprocessor(state, test) - apply_preprocessor(state, train)
    # A shift of every input by 5 is not undone: the test set is not centred on its own mean.
    assert np.abs(shifted.mean(axis=0)).max() > 0.1
    np.testing.assert_allclose(shifted, shifted[:1].repeat(300, axis=0), atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["pre.npz", "pre.bin"])
def test_state_round_trips_through_save_and_load(tmp_path: Path, method: str,
                                                 name: str) -> None:
    x = _correlated(200, (3, 2))
    kwargs = {"n_components": 3} if method in ("pca", "pca_whiten") else {}
    state = fit_preprocessor(x, method=method, **kwargs)
    save_preprocessor(state, tmp_path / name)
    assert (tmp_path / name).is_file()
    loaded = load_preprocessor(tmp_path / name)
    assert sorted(loaded) == sorted(state) and str(loaded["method"]) == method
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    np.testing.assert_array_equal(apply_preprocessor(loaded, x), apply_preprocessor(state, x))


def test_integer_inputs_give_float32() -> None:
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    out = apply_preprocessor(fit_preprocessor(x, method="standardize"), x)
    assert out.dtype == np.float32 and out.shape == x.shape


def test_unknown_method_names_argument_and_choices() -> None:
    with pytest.raises(ValueError, match="method='whiten'") as excinfo:
        fit_preprocessor(np.ones((3, 2)), method="whiten")
    assert "zca_whiten" in str(excinfo.value) and "standardize" in str(excinfo.value)


def test_feature_mismatch_names_both_shapes() -> None:
    state = fit_preprocessor(_correlated(20, (2, 3)), method="center")
    with pytest.raises(ValueError) as excinfo:
        apply_preprocessor(state, np.zeros((5, 7)))
    message = str(excinfo.value)
    assert "(5, 7)" in message and "(2, 3)" in message


def test_bad_n_components_and_inputs() -> None:
    x = _correlated(20, (3,))
    with pytest.raises(ValueError, match="n_components=4"):
        fit_preprocessor(x, method="pca", n_components=4)
    with pytest.raises(ValueError, match="n_components=2 is only used"):
        fit_preprocessor(x, method="standardize", n_components=2)
    with pytest.raises(ValueError, match="x_train must be batch first"):
        fit_preprocessor(np.ones(5), method="center")
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_preprocessor(x, method="center")


def test_load_rejects_a_file_that_is_not_a_state(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(ValueError, match="other.npz"):
        load_preprocessor(path)


@pytest.mark.parametrize("method", METHODS)
def test_apply_to_an_empty_split(method: str) -> None:
    # a config with val_fraction = 0 has an empty validation split
    pca = method in ("pca", "pca_whiten")
    state = fit_preprocessor(_correlated(50, (2, 3)), method=method,
                             n_components=2 if pca else None)
    out = apply_preprocessor(state, np.zeros((0, 2, 3)))
    assert out.shape == ((0, 2) if pca else (0, 2, 3))
