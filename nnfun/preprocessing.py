"""Preprocessing fitted on the training split (lecture 001): centring, scaling, PCA, whitening.

Contract: `fit_preprocessor` looks at the training inputs only and returns a *state*, a flat
dict of NumPy arrays that `save_preprocessor` writes with ``np.savez`` and `load_preprocessor`
reads back without pickle; `apply_preprocessor` then transforms any split (train, validation,
test, new data) with those same training statistics. Inputs are batch first, (N, *F); the
features F are flattened to D = prod(F) for the statistics. With ``X`` the centred (N, D)
training matrix, the covariance is ``cov = X.T @ X / N`` (1/N, as in the lecture) and
``cov = U diag(l) U^T`` its eigendecomposition, eigenvalues l in decreasing order.

Methods (output shape in brackets):

- ``"none"``: x unchanged [(N, *F)].
- ``"center"``: x - mean [(N, *F)].
- ``"standardize"``: (x - mean) / std, per feature; a constant feature is divided by 1
  [(N, *F)].
- ``"pca"``: (x - mean) @ U_k, the top-k principal components [(N, k)].
- ``"pca_whiten"``: (x - mean) @ U_k / sqrt(l_k + eps) [(N, k)]; covariance ~ identity.
- ``"zca_whiten"``: (x - mean) @ U diag(1 / sqrt(l + eps)) U^T [(N, *F)]; covariance ~
  identity while staying as close as possible to the input.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = [
    "METHODS",
    "PreprocessorState",
    "apply_preprocessor",
    "fit_preprocessor",
    "invert_preprocessor",
    "load_preprocessor",
    "save_preprocessor",
]

METHODS = ("none", "center", "standardize", "pca", "pca_whiten", "zca_whiten")
_PCA_METHODS = ("pca", "pca_whiten")
_REQUIRED_KEYS = {
    "none": (),
    "center": ("mean",),
    "standardize": ("mean", "std"),
    "pca": ("mean", "components", "eigenvalues"),
    "pca_whiten": ("mean", "components", "eigenvalues", "eps"),
    "zca_whiten": ("mean", "components", "eigenvalues", "eps"),
}

#: Flat dict of arrays: ``method`` (0-d str), ``feature_shape`` (int64 F) and the statistics
#: ``mean`` (D,), ``std`` (D,), ``components`` (D, k), ``eigenvalues`` (k,), ``eps`` (0-d).
PreprocessorState = dict[str, np.ndarray]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {list(METHODS)}")


def _check_batch(x: np.ndarray, name: str) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be batch first with N >= 1 and at least one feature "
                         f"axis, got shape {x.shape}")


def _flat_features(x: np.ndarray, name: str) -> np.ndarray:
    """Returns batch-first ``x`` as (N, D) float64, refusing NaN and infinity."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return flat


def _feature_std(x: np.ndarray) -> np.ndarray:
    """Per-feature std (1/N) of (N, D) ``x``; constant features (or std 0 by underflow) get 1."""
    std = x.std(axis=0)
    constant = (x.max(axis=0) == x.min(axis=0)) | ~(std > 0.0)
    return np.where(constant, 1.0, std)


def _covariance_eigh(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of cov = xc.T @ xc / N for centred (N, D) ``xc``.

    Returns:
      (eigenvalues (D,), decreasing and clipped at 0; eigenvectors (D, D), one per column,
      each signed so that its largest-magnitude entry is positive).
    """
    cov = xc.T @ xc / xc.shape[0]
    eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues, vectors = np.maximum(eigenvalues[::-1], 0.0), vectors[:, ::-1]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    return eigenvalues, vectors * signs


def _num_components(method: str, n_components: int | None, d: int) -> int:
    if n_components is None:
        return d
    if method not in _PCA_METHODS:
        raise ValueError(f"n_components={n_components} is only used by methods "
                         f"{list(_PCA_METHODS)}, not method={method!r}")
    if not 1 <= n_components <= d:
        raise ValueError(f"n_components={n_components} must be in [1, {d}] (D features)")
    return n_components


def fit_preprocessor(
    x_train: np.ndarray, *, method: str, n_components: int | None = None, eps: float = 1e-5
) -> PreprocessorState:
    """Fits a preprocessing method on training inputs.

    Args:
      x_train: (N, *F) training inputs; F is flattened to D = prod(F) features.
      method: one of `METHODS` (see the module docstring for the formulas).
      n_components: k, the number of principal components kept by ``"pca"`` and
        ``"pca_whiten"``; None keeps all D. Not accepted by the other methods.
      eps: added to the eigenvalues before the square root when whitening.

    Returns:
      State dict: ``method``, ``feature_shape`` and the method's statistics, ``mean`` (D,),
      ``std`` (D,), ``components`` (D, k), ``eigenvalues`` (k,), ``eps`` (0-d).
    """
    _check_method(method)
    x_train = np.asarray(x_train)
    _check_batch(x_train, "x_train")
    k = _num_components(method, n_components, int(np.prod(x_train.shape[1:])))
    state = {"method": np.array(method),
             "feature_shape": np.array(x_train.shape[1:], dtype=np.int64)}
    if method == "none":
        return state
    x = _flat_features(x_train, "x_train")
    state["mean"] = x.mean(axis=0)
    if method == "standardize":
        state["std"] = _feature_std(x)
    elif method != "center":
        eigenvalues, vectors = _covariance_eigh(x - state["mean"])
        state.update(components=vectors[:, :k], eigenvalues=eigenvalues[:k],
                     eps=np.array(float(eps)))
    return state


def _state_method(state: PreprocessorState, source: str) -> str:
    """Validates a state dict's keys and returns its method."""
    if "method" not in state or "feature_shape" not in state:
        raise ValueError(f"{source}: not a preprocessor state, keys {sorted(state)} lack "
                         f"'method' and 'feature_shape'")
    method = str(state["method"])
    _check_method(method)
    missing = [key for key in _REQUIRED_KEYS[method] if key not in state]
    if missing:
        raise ValueError(f"{source}: method {method!r} state lacks {missing}")
    return method


def apply_preprocessor(state: PreprocessorState, x: np.ndarray) -> np.ndarray:
    """Transforms inputs with statistics from `fit_preprocessor` (never x's own).

    Args:
      state: the fitted state.
      x: (N, *F) inputs with the same F as the training inputs.

    Returns:
      (N, *F) for ``none``, ``center``, ``standardize``, ``zca_whiten``; (N, k) for ``pca``
      and ``pca_whiten``. Floating dtype of x is kept; integer inputs give float32.
    """
    method = _state_method(state, "state")
    x = np.asarray(x)
    feature_shape = tuple(int(n) for n in state["feature_shape"])
    if x.ndim < 2 or x.shape[1:] != feature_shape:
        raise ValueError(f"x has shape {x.shape}, expected (N, *{feature_shape}) as the "
                         f"fitted x_train")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    if method == "none":
        return x.astype(dtype, copy=False)
    flat = x.reshape(x.shape[0], math.prod(feature_shape)).astype(dtype)
    flat = flat - state["mean"].astype(dtype)
    if method == "standardize":
        flat = flat / state["std"].astype(dtype)
    elif method != "center":
        flat = _rotate(state, flat, method)
    return flat.reshape(x.shape) if method not in _PCA_METHODS else flat


def invert_preprocessor(state: PreprocessorState, z: np.ndarray) -> np.ndarray:
    """Maps preprocessed inputs back to the input space: the inverse of `apply_preprocessor`.

    For ``pca`` with k < D components this is PCA's reconstruction from k components,
    mean + z U_k^T, the best rank-k linear reconstruction of the centred training inputs in
    squared error (the baseline an autoencoder with a k-wide code is compared with).

    Args:
      state: the fitted state.
      z: preprocessed inputs, (N, k) for the PCA methods, (N, *F) otherwise.

    Returns:
      (N, *F) inputs in the dtype of z.
    """
    method = _state_method(state, "state")
    z = np.asarray(z)
    feature_shape = tuple(int(n) for n in state["feature_shape"])
    if method == "none":
        return z
    dtype = z.dtype if np.issubdtype(z.dtype, np.floating) else np.dtype(np.float32)
    flat = z.reshape(z.shape[0], -1).astype(dtype)
    if method in ("pca_whiten", "zca_whiten"):
        u = state["components"].astype(dtype)
        scale = np.sqrt(state["eigenvalues"] + state["eps"]).astype(dtype)
        flat = (flat @ u if method == "zca_whiten" else flat) * scale
    if method in _PCA_METHODS or method == "zca_whiten":
        flat = flat @ state["components"].astype(dtype).T
    elif method == "standardize":
        flat = flat * state["std"].astype(dtype)
    flat = flat + state["mean"].astype(dtype)
    return flat.reshape(z.shape[0], *feature_shape)


def _rotate(state: PreprocessorState, xc: np.ndarray, method: str) -> np.ndarray:
    """Projects centred (N, D) inputs for the PCA methods and ZCA."""
    u = state["components"].astype(xc.dtype)
    projected = xc @ u
    if method == "pca":
        return projected
    whitened = projected / np.sqrt(state["eigenvalues"] + state["eps"]).astype(xc.dtype)
    return whitened if method == "pca_whiten" else whitened @ u.T


def save_preprocessor(state: PreprocessorState, path: str | Path) -> None:
    """Writes a state to ``path`` (``.npz`` format, no pickle) under exactly that name.

    Args:
      state: the fitted state.
      path: destination file.
    """
    _state_method(state, "state")
    with open(path, "wb") as f:
        np.savez(f, **state)


def load_preprocessor(path: str | Path) -> PreprocessorState:
    """Reads a state written by `save_preprocessor`.

    Args:
      path: the ``.npz`` file.

    Returns:
      The state dict, equal to the one saved.
    """
    with np.load(path, allow_pickle=False) as archive:
        state = {key: archive[key] for key in archive.files}
    _state_method(state, str(path))
    return state
