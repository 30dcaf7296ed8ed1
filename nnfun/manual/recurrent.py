"""Hand-written forward and backward rules of the recurrent layers (backpropagation through
time), and of `reshape` and `gaussian_noise`.

Same contract as `nnfun.manual.layers`: ``<name>_forward(params, x, **hyper) -> (out, cache)``
and ``<name>_backward(dout, cache) -> (dx, dparams)``. A sequence is (N, T, D), batch first,
and the hidden state starts at h_0 = 0 (c_0 = 0 for the LSTM).

The forward runs the recurrence over time with `jax.lax.scan` and keeps every time step's
values (previous state, gate activations) stacked time-major, (T, N, ...). The backward walks
the time steps in reverse (a reverse scan) carrying the gradient that flows into h_{t-1} (and
c_{t-1}) from step t, and accumulating dW_h = sum_t h_{t-1}^T da_t over time. Everything that
does not depend on the recurrence is done once for all steps, exactly as the forward hoists the
input projection ``x @ w_x + b``: from the stacked pre-activation gradients da (T, N, G * H),
dw_x = sum_t x_t^T da_t, db = sum over t and n of da, dx_t = da_t w_x^T. Each loop is a
module-level jitted function (`_rnn_loop`, `_rnn_reverse_loop`, ...), so calling a rule
outside `jax.jit` compiles its loop once per shape instead of on every call.

Notation: dh_t is the gradient of the loss with respect to h_t from both the layer's output
(when ``return_sequences`` is True, or at t = T) and from step t + 1; sigma' = sigma (1 - sigma)
and tanh' = 1 - tanh^2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

from nnfun.manual._checks import (
    check_keys,
    check_ndim,
    check_no_params,
    check_shape,
    reshape_target,
)
from nnfun.manual.activations import EmptyCache

__all__ = ["RnnCache", "LstmCache", "GruCache", "ReshapeCache",
           "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
           "gru_forward", "gru_backward", "reshape_forward", "reshape_backward",
           "gaussian_noise_forward", "gaussian_noise_backward"]

Array = jax.Array
Params = dict[str, Array]


def _sigmoid(a: Array) -> Array:
    return jax.nn.sigmoid(a)


def _check(layer: str, params: Params, x: Array, gates: int, biases: set[str]) -> None:
    """params has w_x (D, G H), w_h (H, G H) and `biases` (G H,); x is (N, T, D)."""
    check_keys(layer, params, {"w_x", "w_h", *biases})
    check_ndim(layer, "x", x, 3, "(N, T, D)")
    w_h = params["w_h"]
    check_ndim(layer, "w_h", w_h, 2, f"(H, {gates}H)")
    check_shape(layer, "w_h", w_h, (w_h.shape[0], gates * w_h.shape[0]))
    check_shape(layer, "w_x", params["w_x"], (x.shape[2], gates * w_h.shape[0]))
    for name in sorted(biases):
        check_shape(layer, name, params[name], (gates * w_h.shape[0],))


def _time_major(x: Array) -> Array:
    """(N, T, ...) <-> (T, N, ...)."""
    return jnp.swapaxes(x, 0, 1)


def _zero_state(xw: Array, w_h: Array) -> Array:
    """h_0 = 0 (or c_0 = 0), (N, H), for xw (T, N, G H)."""
    return jnp.zeros((xw.shape[1], w_h.shape[0]), xw.dtype)


def _output(hs: Array, return_sequences: bool) -> Array:
    """hs (T, N, H) -> every h_t (N, T, H), or the last one (N, H)."""
    return _time_major(hs) if return_sequences else hs[-1]


def _dh_per_step(dout: Array, steps: int, return_sequences: bool) -> Array:
    """The output's gradient as one (N, H) slice per time step, time-major (T, N, H): dout
    itself when every h_t is an output, else zero except at the last step."""
    if return_sequences:
        return _time_major(dout)
    return jnp.zeros((steps, *dout.shape), dout.dtype).at[-1].set(dout)


def _input_grads(da: Array, x: Array, w_x: Array) -> tuple[Array, Array, Array]:
    """The hoisted input projection's gradients from da (T, N, G H):
    (dx (N, T, D) = da_t w_x^T, dw_x (D, G H) = sum_t x_t^T da_t, db (G H,) = sum of da)."""
    dx = jnp.einsum("tng,dg->ntd", da, w_x)
    dw_x = jnp.einsum("ntd,tng->dg", x, da)
    return dx, dw_x, jnp.sum(da, axis=(0, 1))


# --------------------------------------------------------------------------- Elman RNN


@partial(jax.tree_util.register_dataclass, data_fields=["x", "w_x", "w_h", "h_prev", "h"],
         meta_fields=["return_sequences"])
@dataclasses.dataclass(frozen=True)
class RnnCache:
    """Cache of `rnn_forward`.

    Attributes:
      x: (N, T, D) input.
      w_x: (D, H), w_h: (H, H) weights.
      h_prev: (T, N, H) h_{t-1} of every step (h_0 = 0 first).
      h: (T, N, H) h_t of every step.
      return_sequences: bool, whether the output was every h_t.
    """

    x: Array
    w_x: Array
    w_h: Array
    h_prev: Array
    h: Array
    return_sequences: bool


def rnn_forward(params: Params, x: Array, *,
                return_sequences: bool = False) -> tuple[Array, RnnCache]:
    """Elman RNN: a_t = x_t W_x + h_{t-1} W_h + b, h_t = tanh(a_t), h_0 = 0.

    Args:
      params: {"w_x": (D, H), "w_h": (H, H), "b": (H,)}.
      x: (N, T, D).
      return_sequences: output every h_t (N, T, H) instead of h_T (N, H).

    Returns:
      (out, cache).
    """
    _check("rnn", params, x, 1, {"b"})
    w_h = params["w_h"]
    xw = _time_major(x @ params["w_x"] + params["b"][None, None])
    h_prev, h = _rnn_loop(xw, w_h)
    cache = RnnCache(x, params["w_x"], w_h, h_prev, h, return_sequences)
    return _output(h, return_sequences), cache


@jax.jit
def _rnn_loop(xw: Array, w_h: Array) -> tuple[Array, Array]:
    """The forward loop over time: (h_{t-1}, h_t) of every step, each (T, N, H)."""

    def step(h_prev: Array, xw_t: Array) -> tuple[Array, tuple[Array, Array]]:
        h = jnp.tanh(xw_t + h_prev @ w_h)
        return h, (h_prev, h)

    return jax.lax.scan(step, _zero_state(xw, w_h), xw)[1]


def rnn_backward(dout: Array, cache: RnnCache) -> tuple[Array, Params]:
    """Backpropagation through time, t = T .. 1, with dh_{T+1 -> T} = 0:

        dh_t  = dout_t + da_{t+1} W_h^T     (from the output and from step t + 1)
        da_t  = dh_t * (1 - h_t^2)          (tanh' from the output h_t)
        dW_h += h_{t-1}^T da_t

    then dW_x = sum_t x_t^T da_t, db = sum_{t, n} da_t, dx_t = da_t W_x^T.

    Args:
      dout: (N, H), or (N, T, H) with return_sequences.
      cache: from `rnn_forward`.

    Returns:
      (dx (N, T, D), {"w_x": (D, H), "w_h": (H, H), "b": (H,)}).
    """
    dh_out = _dh_per_step(dout, cache.h.shape[0], cache.return_sequences)
    dw_h, da = _rnn_reverse_loop(dh_out, cache.h_prev, cache.h, cache.w_h)
    dx, dw_x, db = _input_grads(da, cache.x, cache.w_x)
    return dx, {"w_x": dw_x, "w_h": dw_h, "b": db}


@jax.jit
def _rnn_reverse_loop(dh_out: Array, h_prev: Array, h: Array,
                      w_h: Array) -> tuple[Array, Array]:
    """The backward loop, t = T .. 1: (dW_h (H, H), da of every step (T, N, H))."""

    def step(carry: tuple[Array, Array], t_vals: tuple[Array, ...]):
        dh_next, dw_h = carry
        dout_t, h_prev_t, h_t = t_vals
        da = (dout_t + dh_next) * (1.0 - h_t * h_t)
        return (da @ w_h.T, dw_h + h_prev_t.T @ da), da

    init = (jnp.zeros_like(dh_out[0]), jnp.zeros_like(w_h))
    (_, dw_h), da = jax.lax.scan(step, init, (dh_out, h_prev, h), reverse=True)
    return dw_h, da


# --------------------------------------------------------------------------- LSTM


@partial(jax.tree_util.register_dataclass,
         data_fields=["x", "w_x", "w_h", "h_prev", "c_prev", "gates", "tanh_c"],
         meta_fields=["return_sequences"])
@dataclasses.dataclass(frozen=True)
class LstmCache:
    """Cache of `lstm_forward`.

    Attributes:
      x: (N, T, D) input.
      w_x: (D, 4H), w_h: (H, 4H) weights.
      h_prev: (T, N, H) h_{t-1}; c_prev: (T, N, H) c_{t-1} (zeros first).
      gates: (T, N, 4H) the activated gates (i, f, g, o) of every step.
      tanh_c: (T, N, H) tanh(c_t).
      return_sequences: bool, whether the output was every h_t.
    """

    x: Array
    w_x: Array
    w_h: Array
    h_prev: Array
    c_prev: Array
    gates: Array
    tanh_c: Array
    return_sequences: bool


def lstm_forward(params: Params, x: Array, *,
                 return_sequences: bool = False) -> tuple[Array, LstmCache]:
    """LSTM, gates (i, f, g, o) (PyTorch's order), h_0 = c_0 = 0:

        a_t = x_t W_x + h_{t-1} W_h + b = (a_i, a_f, a_g, a_o)
        i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

    Args:
      params: {"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}.
      x: (N, T, D).
      return_sequences: output every h_t (N, T, H) instead of h_T (N, H).

    Returns:
      (out, cache).
    """
    _check("lstm", params, x, 4, {"b"})
    w_h = params["w_h"]
    xw = _time_major(x @ params["w_x"] + params["b"][None, None])
    h_prev, c_prev, gates, tanh_c, h = _lstm_loop(xw, w_h)
    cache = LstmCache(x, params["w_x"], w_h, h_prev, c_prev, gates, tanh_c, return_sequences)
    return _output(h, return_sequences), cache


@jax.jit
def _lstm_loop(xw: Array, w_h: Array) -> tuple[Array, ...]:
    """The forward loop over time: (h_{t-1}, c_{t-1}, gates (i, f, g, o), tanh(c_t), h_t) of
    every step, stacked time-major."""

    def step(carry: tuple[Array, Array], xw_t: Array):
        h_prev, c_prev = carry
        a_i, a_f, a_g, a_o = jnp.split(xw_t + h_prev @ w_h, 4, axis=-1)
        i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), jnp.tanh(a_g), _sigmoid(a_o)
        c = f * c_prev + i * g
        tanh_c = jnp.tanh(c)
        h = o * tanh_c
        return (h, c), (h_prev, c_prev, jnp.concatenate([i, f, g, o], -1), tanh_c, h)

    h0 = _zero_state(xw, w_h)
    return jax.lax.scan(step, (h0, h0), xw)[1]


def lstm_backward(dout: Array, cache: LstmCache) -> tuple[Array, Params]:
    """Backpropagation through time, t = T .. 1, with nothing flowing in from step T + 1:

        dh_t  = dout_t + da_{t+1} W_h^T
        dc_t  = dh_t * o * (1 - tanh^2 c_t) + dc_{t+1} * f_{t+1}
        do = dh_t * tanh(c_t)    da_o = do * o (1 - o)
        di = dc_t * g            da_i = di * i (1 - i)
        df = dc_t * c_{t-1}      da_f = df * f (1 - f)
        dg = dc_t * i            da_g = dg * (1 - g^2)
        da_t = (da_i, da_f, da_g, da_o),   dW_h += h_{t-1}^T da_t

    and the step passes back da_t W_h^T to h_{t-1} and dc_t * f to c_{t-1}. Then
    dW_x = sum_t x_t^T da_t, db = sum_{t, n} da_t, dx_t = da_t W_x^T.

    Args:
      dout: (N, H), or (N, T, H) with return_sequences.
      cache: from `lstm_forward`.

    Returns:
      (dx (N, T, D), {"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}).
    """
    dh_out = _dh_per_step(dout, cache.h_prev.shape[0], cache.return_sequences)
    t_vals = (dh_out, cache.h_prev, cache.c_prev, cache.gates, cache.tanh_c)
    dw_h, da = _lstm_reverse_loop(t_vals, cache.w_h)
    dx, dw_x, db = _input_grads(da, cache.x, cache.w_x)
    return dx, {"w_x": dw_x, "w_h": dw_h, "b": db}


@jax.jit
def _lstm_reverse_loop(t_vals: tuple[Array, ...], w_h: Array) -> tuple[Array, Array]:
    """The backward loop, t = T .. 1, over t_vals = (dout_t, h_{t-1}, c_{t-1}, gates,
    tanh(c_t)) stacked time-major: (dW_h (H, 4H), da of every step (T, N, 4H))."""

    def step(carry: tuple[Array, Array, Array], t_vals: tuple[Array, ...]):
        dh_next, dc_next, dw_h = carry
        dout_t, h_prev, c_prev, gates, tanh_c = t_vals
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        dh = dout_t + dh_next
        dc = dh * o * (1.0 - tanh_c * tanh_c) + dc_next
        da = jnp.concatenate([dc * g * i * (1.0 - i),         # da_i
                              dc * c_prev * f * (1.0 - f),    # da_f
                              dc * i * (1.0 - g * g),         # da_g
                              dh * tanh_c * o * (1.0 - o)],   # da_o
                             axis=-1)
        return (da @ w_h.T, dc * f, dw_h + h_prev.T @ da), da

    zeros = jnp.zeros_like(t_vals[0][0])
    (_, _, dw_h), da = jax.lax.scan(step, (zeros, zeros, jnp.zeros_like(w_h)), t_vals,
                                    reverse=True)
    return dw_h, da


# --------------------------------------------------------------------------- GRU


@partial(jax.tree_util.register_dataclass,
         data_fields=["x", "w_x", "w_h", "h_prev", "gates", "ah_n"],
         meta_fields=["return_sequences"])
@dataclasses.dataclass(frozen=True)
class GruCache:
    """Cache of `gru_forward`.

    Attributes:
      x: (N, T, D) input.
      w_x: (D, 3H), w_h: (H, 3H) weights.
      h_prev: (T, N, H) h_{t-1} of every step (zeros first).
      gates: (T, N, 3H) the activated gates (r, z, n) of every step.
      ah_n: (T, N, H) h_{t-1} W_hn + b_hn, the part the reset gate scales.
      return_sequences: bool, whether the output was every h_t.
    """

    x: Array
    w_x: Array
    w_h: Array
    h_prev: Array
    gates: Array
    ah_n: Array
    return_sequences: bool


def gru_forward(params: Params, x: Array, *,
                return_sequences: bool = False) -> tuple[Array, GruCache]:
    """GRU (PyTorch's equations), gates (r, z, n), h_0 = 0:

        ax = x_t W_x + b_x = (ax_r, ax_z, ax_n),  ah = h_{t-1} W_h + b_h = (ah_r, ah_z, ah_n)
        r = sigmoid(ax_r + ah_r),  z = sigmoid(ax_z + ah_z),  n = tanh(ax_n + r * ah_n)
        h_t = (1 - z) * n + z * h_{t-1}

    Args:
      params: {"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}.
      x: (N, T, D).
      return_sequences: output every h_t (N, T, H) instead of h_T (N, H).

    Returns:
      (out, cache).
    """
    _check("gru", params, x, 3, {"b_x", "b_h"})
    w_h = params["w_h"]
    xw = _time_major(x @ params["w_x"] + params["b_x"][None, None])
    h_prev, gates, ah_n, h = _gru_loop(xw, w_h, params["b_h"])
    cache = GruCache(x, params["w_x"], w_h, h_prev, gates, ah_n, return_sequences)
    return _output(h, return_sequences), cache


@jax.jit
def _gru_loop(xw: Array, w_h: Array, b_h: Array) -> tuple[Array, ...]:
    """The forward loop over time: (h_{t-1}, gates (r, z, n), ah_n, h_t) of every step,
    stacked time-major."""

    def step(h_prev: Array, xw_t: Array):
        ax_r, ax_z, ax_n = jnp.split(xw_t, 3, axis=-1)
        ah_r, ah_z, ah_n = jnp.split(h_prev @ w_h + b_h[None], 3, axis=-1)
        r, z = _sigmoid(ax_r + ah_r), _sigmoid(ax_z + ah_z)
        n = jnp.tanh(ax_n + r * ah_n)
        h = (1.0 - z) * n + z * h_prev
        return h, (h_prev, jnp.concatenate([r, z, n], -1), ah_n, h)

    return jax.lax.scan(step, _zero_state(xw, w_h), xw)[1]


def gru_backward(dout: Array, cache: GruCache) -> tuple[Array, Params]:
    """Backpropagation through time, t = T .. 1:

        dh_t  = dout_t + (gradient passed back from step t + 1)
        dz = dh_t * (h_{t-1} - n)       da_z = dz * z (1 - z)
        dn = dh_t * (1 - z)             da_n = dn * (1 - n^2)     (n's pre-activation)
        dr = da_n * ah_n                da_r = dr * r (1 - r)
        dax = (da_r, da_z, da_n),   dah = (da_r, da_z, r * da_n)
        dW_h += h_{t-1}^T dah,      db_h += sum_n dah

    and the step passes back dh_t * z + dah W_h^T to h_{t-1}. Then dW_x = sum_t x_t^T dax_t,
    db_x = sum_{t, n} dax_t, dx_t = dax_t W_x^T.

    Args:
      dout: (N, H), or (N, T, H) with return_sequences.
      cache: from `gru_forward`.

    Returns:
      (dx (N, T, D), {"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}).
    """
    dh_out = _dh_per_step(dout, cache.h_prev.shape[0], cache.return_sequences)
    t_vals = (dh_out, cache.h_prev, cache.gates, cache.ah_n)
    dw_h, db_h, dax = _gru_reverse_loop(t_vals, cache.w_h)
    dx, dw_x, db_x = _input_grads(dax, cache.x, cache.w_x)
    return dx, {"w_x": dw_x, "w_h": dw_h, "b_x": db_x, "b_h": db_h}


@jax.jit
def _gru_reverse_loop(t_vals: tuple[Array, ...], w_h: Array) -> tuple[Array, Array, Array]:
    """The backward loop, t = T .. 1, over t_vals = (dout_t, h_{t-1}, gates, ah_n) stacked
    time-major: (dW_h (H, 3H), db_h (3H,), dax of every step (T, N, 3H))."""

    def step(carry: tuple[Array, Array, Array], t_vals: tuple[Array, ...]):
        dh_next, dw_h, db_h = carry
        dout_t, h_prev, gates, ah_n = t_vals
        r, z, n = jnp.split(gates, 3, axis=-1)
        dh = dout_t + dh_next
        da_z = dh * (h_prev - n) * z * (1.0 - z)
        da_n = dh * (1.0 - z) * (1.0 - n * n)
        da_r = da_n * ah_n * r * (1.0 - r)
        dax = jnp.concatenate([da_r, da_z, da_n], axis=-1)
        dah = jnp.concatenate([da_r, da_z, r * da_n], axis=-1)
        carry = (dh * z + dah @ w_h.T, dw_h + h_prev.T @ dah, db_h + jnp.sum(dah, axis=0))
        return carry, dax

    init = (jnp.zeros_like(t_vals[0][0]), jnp.zeros_like(w_h),
            jnp.zeros(w_h.shape[1], w_h.dtype))
    (_, dw_h, db_h), dax = jax.lax.scan(step, init, t_vals, reverse=True)
    return dw_h, db_h, dax


# --------------------------------------------------------------------------- helpers


@partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["in_shape"])
@dataclasses.dataclass(frozen=True)
class ReshapeCache:
    """Cache of `reshape_forward`.

    Attributes:
      in_shape: tuple of ints, the input shape (N, ...).
    """

    in_shape: tuple[int, ...]


def reshape_forward(params: Params, x: Array, *,
                    shape: Sequence[int]) -> tuple[Array, ReshapeCache]:
    """(N, ...) -> (N, *shape); one entry of `shape` may be -1.

    Args:
      params: {}.
      x: (N, ...).
      shape: the per-example output shape.

    Returns:
      (out (N, *shape), cache).
    """
    check_no_params("reshape", params)
    out_shape = reshape_target("reshape", tuple(x.shape), shape)
    return x.reshape(out_shape), ReshapeCache(tuple(x.shape))


def reshape_backward(dout: Array, cache: ReshapeCache) -> tuple[Array, Params]:
    """dx = dout reshaped back to the input shape (a reshape only moves values).

    Args:
      dout: (N, *shape) upstream gradient.
      cache: from `reshape_forward`.

    Returns:
      (dx (N, ...), {}).
    """
    return dout.reshape(cache.in_shape), {}


def gaussian_noise_forward(params: Params, x: Array, *, stddev: float, key: Array | None = None,
                           train: bool = True) -> tuple[Array, EmptyCache]:
    """out = x + stddev * eps with eps = ``jax.random.normal(key, x.shape, x.dtype)`` while
    training (the autodiff path draws the very same eps); the identity when ``train`` is False
    or stddev is 0.

    Args:
      params: {}.
      x: any shape (N, ...).
      stddev: the noise's standard deviation, >= 0.
      key: PRNG key, required when training with stddev > 0.
      train: whether the noise is added.

    Returns:
      (out of x's shape, an empty cache: the noise does not depend on x).
    """
    check_no_params("gaussian_noise", params)
    if not stddev >= 0.0:
        raise ValueError(f"gaussian_noise: stddev must be >= 0, got {stddev!r}")
    if not train or stddev == 0.0:
        return x, EmptyCache()
    if key is None:
        raise ValueError("gaussian_noise: key is required when train=True and stddev > 0, "
                         "got None")
    return x + stddev * jax.random.normal(key, x.shape, x.dtype), EmptyCache()


def gaussian_noise_backward(dout: Array, cache: EmptyCache) -> tuple[Array, Params]:
    """dx = dout: the added noise is a constant with respect to x.

    Args:
      dout: upstream gradient, x's shape.
      cache: from `gaussian_noise_forward`.

    Returns:
      (dx of x's shape, {}).
    """
    return dout, {}
