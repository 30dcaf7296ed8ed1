"""Recurrent layers of the autodiff path: Elman RNN, LSTM and GRU, plus the two helpers a
sequence model needs from a config (`reshape`, `gaussian_noise`).

Layout is batch first: a sequence is (N, T, D), the hidden state (N, H), and every layer starts
from h_0 = 0 (and c_0 = 0 for the LSTM). The input projection of all time steps is one matmul,
``x @ w_x + b`` of shape (N, T, G * H), hoisted out of the loop; `jax.lax.scan` then runs the
recurrence over time. Gates are stacked along the last axis of ``w_x``, ``w_h`` and ``b``, in
PyTorch's order:

- ``rnn`` (Elman): h_t = tanh(x_t W_x + h_{t-1} W_h + b);
  params ``{"w_x": (D, H), "w_h": (H, H), "b": (H,)}``.
- ``lstm``, gates (i, f, g, o): a = x_t W_x + h_{t-1} W_h + b, i = sigmoid(a_i),
  f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o); c_t = f * c_{t-1} + i * g,
  h_t = o * tanh(c_t); params ``{"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}``.
- ``gru``, gates (r, z, n) (PyTorch's equations, the reset gate applied after the matmul):
  r = sigmoid(x W_xr + b_xr + h W_hr + b_hr), z = sigmoid(x W_xz + b_xz + h W_hz + b_hz),
  n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn)), h_t = (1 - z) * n + z * h_{t-1};
  params ``{"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}``.

``return_sequences=False`` (the default) returns the last hidden state (N, H); True returns
every hidden state (N, T, H), for stacking recurrent layers. The initialisers follow Keras:
Xavier-uniform ``w_x``, orthogonal ``w_h`` (one orthogonal (H, H) block per gate), zero biases,
and the LSTM's forget-gate bias set to ``forget_bias`` (1.0 by default: the cell remembers by
default, Jozefowicz et al. 2015). The hand-written reference is `nnfun.manual.recurrent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnfun import _checks
from nnfun.initializers import get_initializer

__all__ = ["init_rnn", "rnn_apply", "init_lstm", "lstm_apply", "init_gru", "gru_apply",
           "reshape_apply", "gaussian_noise_apply", "orthogonal_blocks", "sequence_features"]

Array = jax.Array
Params = dict[str, Array]
InitSpec = str | dict[str, Any] | tuple


# --------------------------------------------------------------------------- shared pieces


def sequence_features(in_shape: tuple[int, ...], layer: str) -> int:
    """D of a sequence input (N, T, D) given as ``in_shape = (T, D)``; a one-line ValueError
    otherwise."""
    if len(in_shape) != 2:
        raise ValueError(f"{layer}: expects a sequence (N, T, D) but the previous layer gives "
                         f"(N, {', '.join(map(str, in_shape))}); add a 'reshape' layer before "
                         f"it, e.g. shape = [T, 1]")
    return in_shape[1]


def orthogonal_blocks(key: Array, features: int, gates: int, dtype: Any) -> Array:
    """A recurrent weight (H, gates * H) made of `gates` independent orthogonal (H, H) blocks
    (`jax.nn.initializers.orthogonal`), one per gate."""
    keys = jax.random.split(key, gates)
    init = jax.nn.initializers.orthogonal()
    return jnp.concatenate([init(k, (features, features), dtype) for k in keys], axis=1)


def _init_params(layer: str, key: Array, in_features: int, features: int, gates: int, *,
                 w_init: InitSpec, h_init: InitSpec, b_init: InitSpec,
                 dtype: Any) -> tuple[Array, Array, Array, Array]:
    """(w_x (D, G * H), w_h (H, G * H), two independent biases (G * H,))."""
    features = _checks.check_positive(layer, "features", features)
    in_features = _checks.check_positive(layer, "input features D", in_features)
    kx, kh, kb1, kb2 = jax.random.split(key, 4)
    w_x = get_initializer(w_init)(kx, (in_features, gates * features), dtype)
    if h_init == "orthogonal":
        w_h = orthogonal_blocks(kh, features, gates, dtype)
    else:
        w_h = get_initializer(h_init)(kh, (features, gates * features), dtype)
    b_fn = get_initializer(b_init)
    return w_x, w_h, b_fn(kb1, (gates * features,), dtype), b_fn(kb2, (gates * features,), dtype)


def _check_sequence(layer: str, params: Params, x: Array, gates: int) -> None:
    """x is (N, T, D) with D, H and the gate count matching w_x and w_h."""
    _checks.check_ndim(layer, "x", x, 3, "(N, T, D)")
    w_x, w_h = params["w_x"], params["w_h"]
    _checks.check_ndim(layer, "w_h", w_h, 2, f"(H, {gates}H)")
    _checks.check_shape(layer, "w_h", w_h, (w_h.shape[0], gates * w_h.shape[0]))
    _checks.check_shape(layer, "w_x", w_x, (x.shape[2], gates * w_h.shape[0]))


def _scan(step: Any, carry: Any, xw: Array) -> Array:
    """Runs ``step(carry, xw_t) -> (carry, h_t)`` over time; xw is (N, T, G * H), the result
    every h_t as (N, T, H). The callers are jitted module-level functions, so a call outside
    `jax.jit` compiles its loop once per shape rather than on every call."""
    _, hs = jax.lax.scan(step, carry, jnp.swapaxes(xw, 0, 1))
    return jnp.swapaxes(hs, 0, 1)


def _output(hs: Array, return_sequences: bool) -> Array:
    return hs if return_sequences else hs[:, -1]


def _zero_state(xw: Array, w_h: Array) -> Array:
    """h_0 = 0, (N, H)."""
    return jnp.zeros((xw.shape[0], w_h.shape[0]), xw.dtype)


# --------------------------------------------------------------------------- Elman RNN


def init_rnn(key: Array, in_features: int, features: int, *, w_init: InitSpec = "xavier_uniform",
             h_init: InitSpec = "orthogonal", b_init: InitSpec = "zeros",
             dtype: Any = jnp.float32) -> Params:
    """Parameters of an Elman RNN: ``{"w_x": (D, H), "w_h": (H, H), "b": (H,)}``.

    Args:
      in_features: D, the size of each time step's input.
      features: H, the size of the hidden state.
      w_init, b_init: initialisers of w_x and b (`nnfun.initializers` names).
      h_init: "orthogonal" (default) or an `nnfun.initializers` name, for w_h.
    """
    w_x, w_h, b, _ = _init_params("rnn", key, in_features, features, 1, w_init=w_init,
                                  h_init=h_init, b_init=b_init, dtype=dtype)
    return {"w_x": w_x, "w_h": w_h, "b": b}


def rnn_apply(params: Params, x: Array, *, return_sequences: bool = False) -> Array:
    """Elman RNN: h_t = tanh(x_t W_x + h_{t-1} W_h + b), h_0 = 0.

    Args:
      params: ``{"w_x": (D, H), "w_h": (H, H), "b": (H,)}``.
      x: (N, T, D).
      return_sequences: return every h_t (N, T, H) instead of the last (N, H).
    """
    _check_sequence("rnn", params, x, 1)
    xw = x @ params["w_x"] + params["b"][None, None]
    return _output(_rnn_scan(xw, params["w_h"]), return_sequences)


@jax.jit
def _rnn_scan(xw: Array, w_h: Array) -> Array:
    """Every h_t (N, T, H) from the input projections xw (N, T, H)."""

    def step(h: Array, xw_t: Array) -> tuple[Array, Array]:
        h = jnp.tanh(xw_t + h @ w_h)
        return h, h

    return _scan(step, _zero_state(xw, w_h), xw)


# --------------------------------------------------------------------------- LSTM


def init_lstm(key: Array, in_features: int, features: int, *, forget_bias: float = 1.0,
              w_init: InitSpec = "xavier_uniform", h_init: InitSpec = "orthogonal",
              b_init: InitSpec = "zeros", dtype: Any = jnp.float32) -> Params:
    """Parameters of an LSTM: ``{"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}``, gates
    (i, f, g, o) along the last axis.

    Args:
      in_features: D; features: H.
      forget_bias: the forget gate's bias ``b[H:2H]`` is set to this (1.0: f starts near
        sigmoid(1) = 0.73, so the cell keeps its memory early in training; 0.0 switches it off).
      w_init, h_init, b_init: as `init_rnn`; b_init fills the other three gates' biases.
    """
    w_x, w_h, b, _ = _init_params("lstm", key, in_features, features, 4, w_init=w_init,
                                  h_init=h_init, b_init=b_init, dtype=dtype)
    b = b.at[features:2 * features].set(forget_bias)
    return {"w_x": w_x, "w_h": w_h, "b": b}


def lstm_apply(params: Params, x: Array, *, return_sequences: bool = False) -> Array:
    """LSTM: a = x_t W_x + h_{t-1} W_h + b split into (i, f, g, o); i, f, o = sigmoid,
    g = tanh; c_t = f * c_{t-1} + i * g, h_t = o * tanh(c_t); h_0 = c_0 = 0.

    Args:
      params: ``{"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}``.
      x: (N, T, D).
      return_sequences: return every h_t (N, T, H) instead of the last (N, H).
    """
    _check_sequence("lstm", params, x, 4)
    xw = x @ params["w_x"] + params["b"][None, None]
    return _output(_lstm_scan(xw, params["w_h"]), return_sequences)


@jax.jit
def _lstm_scan(xw: Array, w_h: Array) -> Array:
    """Every h_t (N, T, H) from the input projections xw (N, T, 4H)."""

    def step(carry: tuple[Array, Array], xw_t: Array) -> tuple[tuple[Array, Array], Array]:
        h, c = carry
        a_i, a_f, a_g, a_o = jnp.split(xw_t + h @ w_h, 4, axis=-1)
        c = jax.nn.sigmoid(a_f) * c + jax.nn.sigmoid(a_i) * jnp.tanh(a_g)
        h = jax.nn.sigmoid(a_o) * jnp.tanh(c)
        return (h, c), h

    h0 = _zero_state(xw, w_h)
    return _scan(step, (h0, h0), xw)


# --------------------------------------------------------------------------- GRU


def init_gru(key: Array, in_features: int, features: int, *, w_init: InitSpec = "xavier_uniform",
             h_init: InitSpec = "orthogonal", b_init: InitSpec = "zeros",
             dtype: Any = jnp.float32) -> Params:
    """Parameters of a GRU: ``{"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}``,
    gates (r, z, n) along the last axis; arguments as `init_rnn`."""
    w_x, w_h, b_x, b_h = _init_params("gru", key, in_features, features, 3, w_init=w_init,
                                      h_init=h_init, b_init=b_init, dtype=dtype)
    return {"w_x": w_x, "w_h": w_h, "b_x": b_x, "b_h": b_h}


def gru_apply(params: Params, x: Array, *, return_sequences: bool = False) -> Array:
    """GRU (PyTorch's equations): with ax = x_t W_x + b_x and ah = h_{t-1} W_h + b_h, each split
    into (r, z, n): r = sigmoid(ax_r + ah_r), z = sigmoid(ax_z + ah_z),
    n = tanh(ax_n + r * ah_n), h_t = (1 - z) * n + z * h_{t-1}; h_0 = 0.

    Args:
      params: ``{"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}``.
      x: (N, T, D).
      return_sequences: return every h_t (N, T, H) instead of the last (N, H).
    """
    _check_sequence("gru", params, x, 3)
    xw = x @ params["w_x"] + params["b_x"][None, None]
    return _output(_gru_scan(xw, params["w_h"], params["b_h"]), return_sequences)


@jax.jit
def _gru_scan(xw: Array, w_h: Array, b_h: Array) -> Array:
    """Every h_t (N, T, H) from the input projections xw (N, T, 3H)."""

    def step(h: Array, xw_t: Array) -> tuple[Array, Array]:
        ax_r, ax_z, ax_n = jnp.split(xw_t, 3, axis=-1)
        ah_r, ah_z, ah_n = jnp.split(h @ w_h + b_h[None], 3, axis=-1)
        r, z = jax.nn.sigmoid(ax_r + ah_r), jax.nn.sigmoid(ax_z + ah_z)
        n = jnp.tanh(ax_n + r * ah_n)
        h = (1.0 - z) * n + z * h
        return h, h

    return _scan(step, _zero_state(xw, w_h), xw)


# --------------------------------------------------------------------------- helpers


def reshape_apply(params: Params, x: Array, *, shape: Sequence[int]) -> Array:
    """(N, ...) -> (N, *shape), e.g. MNIST-1D's (N, 40) -> (N, 40, 1) for a recurrent layer;
    one entry of `shape` may be -1."""
    return x.reshape(_checks.reshape_target("reshape", tuple(x.shape), shape))


def gaussian_noise_apply(params: Params, x: Array, *, stddev: float, key: Array | None = None,
                         train: bool = True) -> Array:
    """Additive Gaussian noise, a regulariser: out = x + stddev * N(0, 1) while training, the
    identity at evaluation (or when stddev is 0).

    The noise is ``jax.random.normal(key, x.shape, x.dtype)``.
    """
    if not stddev >= 0.0:
        raise ValueError(f"gaussian_noise: stddev must be >= 0, got {stddev!r}")
    if not train or stddev == 0.0:
        return x
    if key is None:
        raise ValueError("gaussian_noise: a key is required when train=True and stddev > 0")
    return x + stddev * jax.random.normal(key, x.shape, x.dtype)
