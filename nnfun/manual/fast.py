"""Faster variants of some reference rules, kept apart from the textbook rules they replace.

Each variant has the contract of the rule of the same name in `nnfun.manual.layers` and computes
the same function; tests/test_manual_fast.py checks every one against its textbook rule
(forward values and backward outputs, ties and "SAME" padding included). They change how the
arrays are laid out and combined, never the math. `nnfun.manual.model` uses them only when
asked (``fast=True``, with ``{**RULES, **FAST_RULES}`` for the forward and the backward alike),
because a fast forward's cache is meant for the fast backward of the same layer. Measurements
are in experiments/benchmarks/findings.md.

The kernels:

- `patches`: im2col built in two passes, columns then rows;
- `fold`: col2im as one sum of the dilated, padded slots;
- `tiles` / `to_tiles` / `from_tiles`: pooling windows that tile the input as a reshape of it;
- the convolutions' bias gradient as the product 1^T dout;
- the recurrent layers' (GRU, LSTM) loops reduced to what must run step by step: the forward
  stacks each state once (h_{t-1} is h shifted by one step), the backward loop only carries the
  gradient back through time, and dW_h = sum_t h_{t-1}^T da_t and the bias gradients are taken
  after it, as one matmul over all T * N rows (`recurrent_weight_grads`).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from nnfun.manual import _windows
from nnfun.manual._checks import check_ndim, check_no_params, int_tuple
from nnfun.manual._windows import Window, max_and_share, offsets, real_counts
from nnfun.manual.layers import (
    AvgPoolCache,
    ConvCache,
    MaxPoolCache,
    Rule,
    _conv_checks,
    _pool_window,
)
from nnfun.manual.recurrent import GruCache, LstmCache, _check, _output, _time_major

Array = jax.Array
Params = dict[str, Array]


# --------------------------------------------------------------------------- kernels


def patches(x: Array, g: Window, fill: float = 0.0) -> Array:
    """`nnfun.manual._windows.patches` built in two passes: the KW strided column slices of the
    padded input stacked into (N, H_pad, OW, KW, C), then the KH strided row slices of that
    into (N, OH, OW, KH, KW, C), reshaped to (N, OH, OW, KH * KW, C).

    Each pass copies KH or KW contiguous runs of KW * C or C values instead of KH * KW runs of
    C values, which XLA on a CPU does faster.
    """
    xp = _windows.pad(x, g, fill)
    (oh, ow), (sh, sw), (kh, kw) = g.out_hw, g.stride, g.kernel
    cols = jnp.stack([xp[:, :, j:j + (ow - 1) * sw + 1:sw, :] for j in range(kw)], axis=3)
    rows = jnp.stack([cols[:, i:i + (oh - 1) * sh + 1:sh] for i in range(kh)], axis=3)
    return rows.reshape(*rows.shape[:3], kh * kw, rows.shape[-1])


def _dilate(d: Array, stride: tuple[int, int]) -> Array:
    """(N, OH, OW, C) -> (N, (OH - 1) * SH + 1, (OW - 1) * SW + 1, C) with SH - 1 and SW - 1
    zeros between neighbouring elements (each spatial axis padded as a unit axis, then merged)."""
    n, oh, ow, c = d.shape
    (sh, sw) = stride
    if (sh, sw) == (1, 1):
        return d
    d = jnp.pad(d[:, :, None, :, None, :], ((0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1),
                                             (0, 0)))
    return d.reshape(n, oh * sh, ow * sw, c)[:, :(oh - 1) * sh + 1, :(ow - 1) * sw + 1, :]


def fold(dpatches: Array, g: Window) -> Array:
    """`nnfun.manual._windows.fold` (col2im) as one sum: slot (i, j) of dpatches
    (N, OH, OW, KH * KW, C) is dilated by the stride and padded into place on the padded input,
    the KH * KW placed slots are added in one elementwise pass, and the padding is cropped;
    returns (N, H, W, C).

    One fused sum replaces KH * KW in-place slice additions, each of which rewrites the whole
    buffer on a CPU.
    """
    padded_hw = [size + lo + hi for size, (lo, hi) in zip(g.in_hw, g.pads)]
    placed = []
    for slot, (i, j) in enumerate(offsets(g)):
        d = _dilate(dpatches[:, :, :, slot, :], g.stride)
        placed.append(jnp.pad(d, ((0, 0), (i, padded_hw[0] - i - d.shape[1]),
                                  (j, padded_hw[1] - j - d.shape[2]), (0, 0))))
    dxp = sum(placed[1:], placed[0])
    (top, _), (left, _) = g.pads
    return dxp[:, top:top + g.in_hw[0], left:left + g.in_hw[1], :]


def tiles(g: Window) -> bool:
    """Whether the windows tile the input: stride == kernel and no padding, so every input
    element lies in at most one window (rows and columns past the last window in none)."""
    return g.stride == g.kernel and g.pads == ((0, 0), (0, 0))


def to_tiles(x: Array, g: Window) -> Array:
    """The windows of a tiling geometry (`tiles(g)`) as a reshape of x (N, H, W, C), cropped to
    the rows and columns that windows cover: (N, OH, KH, OW, KW, C), element (oh, i, ow, j)
    being the window element at offset (i, j) of window (oh, ow).

    Reductions over axes (2, 4) then read x in place, where im2col would first copy it into
    (N, OH, OW, KH * KW, C).
    """
    (oh, ow), (kh, kw) = g.out_hw, g.kernel
    return x[:, :oh * kh, :ow * kw].reshape(x.shape[0], oh, kh, ow, kw, x.shape[3])


def from_tiles(t: Array, g: Window) -> Array:
    """The adjoint of `to_tiles`: (N, OH, KH, OW, KW, C) -> (N, H, W, C), zeros on the rows and
    columns that no window covers."""
    n, oh, kh, ow, kw, c = t.shape
    x = t.reshape(n, oh * kh, ow * kw, c)
    return jnp.pad(x, ((0, 0), (0, g.in_hw[0] - oh * kh), (0, g.in_hw[1] - ow * kw), (0, 0)))


def bias_grad(dout2: Array) -> Array:
    """db = 1^T dout for dout2 (rows, C_out): the column sums as a matrix-vector product.

    XLA on a CPU reduces a tall (rows, C_out) array more slowly than it multiplies it by a
    vector. Full precision, so that no backend rounds dout to a shorter float (TF32) for it.
    """
    return jnp.dot(jnp.ones(dout2.shape[0], dout2.dtype), dout2, precision="highest")


# --------------------------------------------------------------------------- convolutions


def _conv(layer: str, w: Array, b: Array | None, x: Array, stride: tuple[int, int],
          padding: str) -> tuple[Array, ConvCache]:
    """im2col convolution of x (N, H, W, C_in) with w (KH, KW, C_in, C_out), two-pass patches."""
    g = _windows.make_window(layer, x.shape[1:3], w.shape[:2], stride, padding)
    cols = patches(x, g)
    cols = cols.reshape(-1, cols.shape[3] * cols.shape[4])
    out = cols @ w.reshape(-1, w.shape[3])
    if b is not None:
        out = out + b[None, :]
    return out.reshape(x.shape[0], *g.out_hw, w.shape[3]), ConvCache(cols, w, g, b is not None)


def conv2d_forward(params: Params, x: Array, *, stride: int | tuple[int, int] = 1,
                   padding: str = "SAME") -> tuple[Array, ConvCache]:
    """`nnfun.manual.layers.conv2d_forward` with the two-pass `patches`.

    Args:
      params: {"w": (KH, KW, C_in, C_out)} and optionally "b": (C_out,).
      x: (N, H, W, C_in).
      stride: int or (SH, SW).
      padding: "SAME" (XLA's) or "VALID".

    Returns:
      (out (N, OH, OW, C_out), cache).
    """
    _conv_checks("conv2d", params, x, 2)
    stride = int_tuple("conv2d", "stride", stride, 2)
    return _conv("conv2d", params["w"], params.get("b"), x, stride, padding)


def conv2d_backward(dout: Array, cache: ConvCache) -> tuple[Array, Params]:
    """`nnfun.manual.layers.conv2d_backward` with db = 1^T dout (`bias_grad`) and the one-sum
    col2im (`fold`).

    Args:
      dout: (N, OH, OW, C_out) upstream gradient.
      cache: from `conv2d_forward` (either module's: the caches are the same).

    Returns:
      (dx (N, H, W, C_in), {"w": dw (KH, KW, C_in, C_out)} plus "b": db (C_out,) with a bias).
    """
    w, g = cache.w, cache.window
    dout2 = dout.reshape(-1, w.shape[3])
    dparams = {"w": (cache.cols.T @ dout2).reshape(w.shape)}
    if cache.has_bias:
        dparams["b"] = bias_grad(dout2)
    dcols = (dout2 @ w.reshape(-1, w.shape[3]).T).reshape(
        dout.shape[0], *g.out_hw, g.kernel[0] * g.kernel[1], w.shape[2])
    return fold(dcols, g), dparams


def conv1d_forward(params: Params, x: Array, *, stride: int | tuple[int] = 1,
                   padding: str = "SAME") -> tuple[Array, ConvCache]:
    """`nnfun.manual.layers.conv1d_forward` with the two-pass `patches`.

    Args:
      params: {"w": (K, C_in, C_out)} and optionally "b": (C_out,).
      x: (N, L, C_in).
      stride: int (or a 1-tuple).
      padding: "SAME" (XLA's) or "VALID".

    Returns:
      (out (N, OL, C_out), cache of the equivalent conv2d on a unit height).
    """
    _conv_checks("conv1d", params, x, 1)
    (s,) = int_tuple("conv1d", "stride", stride, 1)
    out, cache = _conv("conv1d", params["w"][None], params.get("b"), x[:, None], (1, s), padding)
    return out[:, 0], cache


def conv1d_backward(dout: Array, cache: ConvCache) -> tuple[Array, Params]:
    """`nnfun.manual.layers.conv1d_backward` with `bias_grad` and the one-sum `fold`.

    Args:
      dout: (N, OL, C_out) upstream gradient.
      cache: from `conv1d_forward`.

    Returns:
      (dx (N, L, C_in), {"w": dw (K, C_in, C_out)} plus "b": db (C_out,) with a bias).
    """
    dx, dparams = conv2d_backward(dout[:, None], cache)
    dparams["w"] = dparams["w"][0]
    return dx[:, 0], dparams


# --------------------------------------------------------------------------- pooling


@partial(jax.tree_util.register_dataclass, data_fields=["share"], meta_fields=["window"])
@dataclasses.dataclass(frozen=True)
class TiledMaxPoolCache:
    """Cache of the fast max pools when the windows tile the input (`tiles`).

    Attributes:
      share: (N, OH, KH, OW, KW, C), x's own layout (`to_tiles`): each window element's share of
        its window's gradient, 1 / (number of tied maxima) on the maxima, 0 elsewhere.
      window: Window, the window geometry.
    """

    share: Array
    window: Window


def _max_pool(x: Array, g: Window) -> tuple[Array, MaxPoolCache | TiledMaxPoolCache]:
    """Max over the tiles of x when the windows tile it, else over its two-pass patches."""
    if tiles(g):
        out, share = max_and_share(to_tiles(x, g), axis=(2, 4))
        return out, TiledMaxPoolCache(share, g)
    out, share = max_and_share(patches(x, g, fill=-jnp.inf), axis=3)
    return out, MaxPoolCache(share, g)


def _avg_pool(x: Array, g: Window) -> tuple[Array, AvgPoolCache]:
    """Mean over the tiles of x when the windows tile it, else over its two-pass patches."""
    if tiles(g):
        return jnp.mean(to_tiles(x, g), axis=(2, 4)), AvgPoolCache(g)
    counts = jnp.asarray(real_counts(g), x.dtype)[None, :, :, None]
    return jnp.sum(patches(x, g), axis=3) / counts, AvgPoolCache(g)


def max_pool2d_forward(params: Params, x: Array, *, window: int | tuple[int, int] = 2,
                       stride: int | tuple[int, int] | None = None,
                       padding: str = "VALID") -> tuple[Array, MaxPoolCache | TiledMaxPoolCache]:
    """`nnfun.manual.layers.max_pool2d_forward` on `to_tiles` when the windows tile the input
    (the common 2x2 pooling), else on the two-pass `patches`.

    Args:
      params: {}.
      x: (N, H, W, C).
      window: int or (KH, KW).
      stride: int or (SH, SW); None means the window.
      padding: "VALID" or "SAME" (XLA's).

    Returns:
      (out (N, OH, OW, C), cache: a `TiledMaxPoolCache` when the windows tile the input, else a
      `MaxPoolCache`).
    """
    check_no_params("max_pool2d", params)
    check_ndim("max_pool2d", "x", x, 4, "(N, H, W, C)")
    return _max_pool(x, _pool_window("max_pool2d", x, 2, window, stride, padding))


def max_pool2d_backward(dout: Array,
                        cache: MaxPoolCache | TiledMaxPoolCache) -> tuple[Array, Params]:
    """`nnfun.manual.layers.max_pool2d_backward`: share * dout put straight back into x's layout
    (`from_tiles`) when the windows tile the input, else added back with the one-sum `fold`.

    Args:
      dout: (N, OH, OW, C) upstream gradient.
      cache: from this module's `max_pool2d_forward`.

    Returns:
      (dx (N, H, W, C), {}).
    """
    g = cache.window
    if tiles(g):
        return from_tiles(cache.share * dout[:, :, None, :, None, :], g), {}
    return fold(cache.share * dout[:, :, :, None, :], g), {}


def avg_pool2d_forward(params: Params, x: Array, *, window: int | tuple[int, int] = 2,
                       stride: int | tuple[int, int] | None = None,
                       padding: str = "VALID") -> tuple[Array, AvgPoolCache]:
    """`nnfun.manual.layers.avg_pool2d_forward` on `to_tiles` when the windows tile the input,
    else on the two-pass `patches`.

    Args:
      params: {}.
      x: (N, H, W, C).
      window: int or (KH, KW).
      stride: int or (SH, SW); None means the window.
      padding: "VALID" or "SAME" (XLA's).

    Returns:
      (out (N, OH, OW, C), cache).
    """
    check_no_params("avg_pool2d", params)
    check_ndim("avg_pool2d", "x", x, 4, "(N, H, W, C)")
    return _avg_pool(x, _pool_window("avg_pool2d", x, 2, window, stride, padding))


def avg_pool2d_backward(dout: Array, cache: AvgPoolCache) -> tuple[Array, Params]:
    """`nnfun.manual.layers.avg_pool2d_backward`: dout / (KH * KW) broadcast over each tile
    (`from_tiles`) when the windows tile the input, else added back with the one-sum `fold`.

    Args:
      dout: (N, OH, OW, C) upstream gradient.
      cache: from `avg_pool2d_forward`.

    Returns:
      (dx (N, H, W, C), {}).
    """
    g = cache.window
    (oh, ow), (kh, kw) = g.out_hw, g.kernel
    if tiles(g):
        per_tile = (dout / (kh * kw))[:, :, None, :, None, :]
        return from_tiles(jnp.broadcast_to(per_tile, (dout.shape[0], oh, kh, ow, kw,
                                                      dout.shape[3])), g), {}
    counts = jnp.asarray(real_counts(g), dout.dtype)[None, :, :, None]
    per_window = (dout / counts)[:, :, :, None, :]
    return fold(jnp.broadcast_to(per_window, (*dout.shape[:3], kh * kw, dout.shape[3])), g), {}


def _on_unit_height(name: str, pool: Any, backward_2d: Any) -> tuple[Any, Any]:
    """The 1-D forward and backward of a pool of this module: its 2-D rule on a unit height,
    (N, L, C) <-> (N, 1, L, C)."""

    def forward(params: Params, x: Array, *, window: int = 2, stride: int | None = None,
                padding: str = "VALID") -> tuple[Array, Any]:
        check_no_params(name, params)
        check_ndim(name, "x", x, 3, "(N, L, C)")
        out, cache = pool(x[:, None], _pool_window(name, x[:, None], 1, window, stride,
                                                   padding))
        return out[:, 0], cache

    def backward(dout: Array, cache: Any) -> tuple[Array, Params]:
        dx, dparams = backward_2d(dout[:, None], cache)
        return dx[:, 0], dparams

    kind = name.split("_")[0]
    forward.__name__, backward.__name__ = f"{name}_forward", f"{name}_backward"
    forward.__doc__ = (f"`{kind}_pool2d_forward` of this module on a unit height: x (N, L, C) "
                       f"-> (out (N, OL, C), cache); window K, stride (None: K), padding "
                       f"'VALID' or 'SAME'.")
    backward.__doc__ = (f"`{kind}_pool2d_backward` of this module on a unit height: dout "
                        f"(N, OL, C) -> (dx (N, L, C), {{}}).")
    return forward, backward


max_pool1d_forward, max_pool1d_backward = _on_unit_height("max_pool1d", _max_pool,
                                                          max_pool2d_backward)
avg_pool1d_forward, avg_pool1d_backward = _on_unit_height("avg_pool1d", _avg_pool,
                                                          avg_pool2d_backward)


# --------------------------------------------------------------------------- recurrent layers


def _shift(stacked: Array) -> Array:
    """(T, N, H) states s_1 .. s_T -> s_0 .. s_{T-1}, with s_0 = 0."""
    return jnp.concatenate([jnp.zeros_like(stacked[:1]), stacked[:-1]], axis=0)


def recurrent_weight_grads(h_prev: Array, dah: Array) -> tuple[Array, Array]:
    """(dW_h = sum_t h_{t-1}^T dah_t (H, G H), db = sum_{t, n} dah_t (G H,)) from h_prev
    (T, N, H) and dah (T, N, G H): one (H, T N) x (T N, G H) matmul and `bias_grad`, where the
    textbook rules add T small matmuls inside the backward loop."""
    dah2 = dah.reshape(-1, dah.shape[-1])
    return h_prev.reshape(-1, h_prev.shape[-1]).T @ dah2, bias_grad(dah2)


def _input_grads(da: Array, x: Array, w_x: Array) -> tuple[Array, Array, Array]:
    """`nnfun.manual.recurrent._input_grads` with db = 1^T da (`bias_grad`)."""
    dx = jnp.einsum("tng,dg->ntd", da, w_x)
    dw_x = jnp.einsum("ntd,tng->dg", x, da)
    return dx, dw_x, bias_grad(da.reshape(-1, da.shape[-1]))


def _reverse(step, dout: Array, t_vals: tuple[Array, ...], carry: tuple[Array, ...],
             return_sequences: bool) -> Array:
    """Runs ``step((dh_t, *rest), t_vals_t) -> ((dh_{t-1}, *rest), da_t)`` for t = T .. 1 from
    `carry` (zeros) and returns da stacked (T, N, G H). The output's gradient enters as the
    initial dh (dout (N, H) at t = T) or, with return_sequences, as one more per-step input
    added to dh (dout (N, T, H))."""
    if return_sequences:
        return jax.lax.scan(lambda c, v: step((c[0] + v[0], *c[1:]), v[1:]), carry,
                            (_time_major(dout), *t_vals), reverse=True)[1]
    return jax.lax.scan(step, (dout, *carry[1:]), t_vals, reverse=True)[1]


def gru_forward(params: Params, x: Array, *,
                return_sequences: bool = False) -> tuple[Array, GruCache]:
    """`nnfun.manual.recurrent.gru_forward` whose loop stacks (gates, ah_n, h_t) per step; the
    cache's h_prev is h shifted by one step (the same `GruCache`).

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
    gates, ah_n, h = _gru_loop(xw, w_h, params["b_h"])
    cache = GruCache(x, params["w_x"], w_h, _shift(h), gates, ah_n, return_sequences)
    return _output(h, return_sequences), cache


@jax.jit
def _gru_loop(xw: Array, w_h: Array, b_h: Array) -> tuple[Array, Array, Array]:
    def step(h_prev: Array, xw_t: Array):
        ax_r, ax_z, ax_n = jnp.split(xw_t, 3, axis=-1)
        ah_r, ah_z, ah_n = jnp.split(h_prev @ w_h + b_h[None], 3, axis=-1)
        r, z = jax.nn.sigmoid(ax_r + ah_r), jax.nn.sigmoid(ax_z + ah_z)
        n = jnp.tanh(ax_n + r * ah_n)
        h = (1.0 - z) * n + z * h_prev
        return h, (jnp.concatenate([r, z, n], -1), ah_n, h)

    h0 = jnp.zeros((xw.shape[1], w_h.shape[0]), xw.dtype)
    return jax.lax.scan(step, h0, xw)[1]


def gru_backward(dout: Array, cache: GruCache) -> tuple[Array, Params]:
    """`nnfun.manual.recurrent.gru_backward` (the same formulas) with only dh carried through
    the reverse loop, which returns dax_t = (da_r, da_z, da_n); after it dah = (da_r, da_z,
    r * da_n) and dW_h, db_h by `recurrent_weight_grads`.

    Args:
      dout: (N, H), or (N, T, H) with return_sequences.
      cache: a `GruCache` (from either module's forward).

    Returns:
      (dx (N, T, D), {"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}).
    """
    dax = _gru_reverse_loop(dout, cache.h_prev, cache.gates, cache.ah_n, cache.w_h,
                            cache.return_sequences)
    hidden = cache.w_h.shape[0]
    dah = jnp.concatenate([dax[..., :2 * hidden],
                           dax[..., 2 * hidden:] * cache.gates[..., :hidden]], axis=-1)
    dw_h, db_h = recurrent_weight_grads(cache.h_prev, dah)
    dx, dw_x, db_x = _input_grads(dax, cache.x, cache.w_x)
    return dx, {"w_x": dw_x, "w_h": dw_h, "b_x": db_x, "b_h": db_h}


@partial(jax.jit, static_argnums=5)
def _gru_reverse_loop(dout: Array, h_prev: Array, gates: Array, ah_n: Array, w_h: Array,
                      return_sequences: bool) -> Array:
    w_h_t = w_h.T

    def step(carry: tuple[Array], t_vals: tuple[Array, ...]):
        (dh,) = carry
        h_prev_t, gates_t, ah_n_t = t_vals
        r, z, n = jnp.split(gates_t, 3, axis=-1)
        da_z = dh * (h_prev_t - n) * z * (1.0 - z)
        da_n = dh * (1.0 - z) * (1.0 - n * n)
        da_r = da_n * ah_n_t * r * (1.0 - r)
        dah = jnp.concatenate([da_r, da_z, r * da_n], axis=-1)
        return (dh * z + dah @ w_h_t,), jnp.concatenate([da_r, da_z, da_n], axis=-1)

    zeros = jnp.zeros(h_prev.shape[1:], h_prev.dtype)
    return _reverse(step, dout, (h_prev, gates, ah_n), (zeros,), return_sequences)


def lstm_forward(params: Params, x: Array, *,
                 return_sequences: bool = False) -> tuple[Array, LstmCache]:
    """`nnfun.manual.recurrent.lstm_forward` whose loop stacks (gates, c_t, tanh(c_t)) per
    step; h_t = o * tanh(c_t) is recomputed for all steps at once and the cache's h_prev and
    c_prev are h and c shifted by one step (the same `LstmCache`).

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
    gates, c, tanh_c = _lstm_loop(xw, w_h)
    h = gates[..., 3 * w_h.shape[0]:] * tanh_c
    cache = LstmCache(x, params["w_x"], w_h, _shift(h), _shift(c), gates, tanh_c,
                      return_sequences)
    return _output(h, return_sequences), cache


@jax.jit
def _lstm_loop(xw: Array, w_h: Array) -> tuple[Array, Array, Array]:
    def step(carry: tuple[Array, Array], xw_t: Array):
        h_prev, c_prev = carry
        a_i, a_f, a_g, a_o = jnp.split(xw_t + h_prev @ w_h, 4, axis=-1)
        i, f, g, o = (jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g),
                      jax.nn.sigmoid(a_o))
        c = f * c_prev + i * g
        tanh_c = jnp.tanh(c)
        return (o * tanh_c, c), (jnp.concatenate([i, f, g, o], -1), c, tanh_c)

    h0 = jnp.zeros((xw.shape[1], w_h.shape[0]), xw.dtype)
    return jax.lax.scan(step, (h0, h0), xw)[1]


def lstm_backward(dout: Array, cache: LstmCache) -> tuple[Array, Params]:
    """`nnfun.manual.recurrent.lstm_backward` (the same formulas) with only dh and dc carried
    through the reverse loop, which returns da_t; dW_h and db by `recurrent_weight_grads` after
    it.

    Args:
      dout: (N, H), or (N, T, H) with return_sequences.
      cache: an `LstmCache` (from either module's forward).

    Returns:
      (dx (N, T, D), {"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}).
    """
    da = _lstm_reverse_loop(dout, cache.c_prev, cache.gates, cache.tanh_c, cache.w_h,
                            cache.return_sequences)
    dw_h, _ = recurrent_weight_grads(cache.h_prev, da)
    dx, dw_x, db = _input_grads(da, cache.x, cache.w_x)
    return dx, {"w_x": dw_x, "w_h": dw_h, "b": db}


@partial(jax.jit, static_argnums=5)
def _lstm_reverse_loop(dout: Array, c_prev: Array, gates: Array, tanh_c: Array, w_h: Array,
                       return_sequences: bool) -> Array:
    w_h_t = w_h.T

    def step(carry: tuple[Array, Array], t_vals: tuple[Array, ...]):
        dh, dc_next = carry
        c_prev_t, gates_t, tanh_c_t = t_vals
        i, f, g, o = jnp.split(gates_t, 4, axis=-1)
        dc = dh * o * (1.0 - tanh_c_t * tanh_c_t) + dc_next
        da = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_prev_t * f * (1.0 - f),
                              dc * i * (1.0 - g * g), dh * tanh_c_t * o * (1.0 - o)], axis=-1)
        return (da @ w_h_t, dc * f), da

    zeros = jnp.zeros(c_prev.shape[1:], c_prev.dtype)
    return _reverse(step, dout, (c_prev, gates, tanh_c), (zeros, zeros), return_sequences)


# --------------------------------------------------------------------------- the table


FAST_RULES: dict[str, Rule] = {
    "conv1d": Rule(conv1d_forward, conv1d_backward),
    "conv2d": Rule(conv2d_forward, conv2d_backward),
    "max_pool1d": Rule(max_pool1d_forward, max_pool1d_backward),
    "max_pool2d": Rule(max_pool2d_forward, max_pool2d_backward),
    "avg_pool1d": Rule(avg_pool1d_forward, avg_pool1d_backward),
    "avg_pool2d": Rule(avg_pool2d_forward, avg_pool2d_backward),
    "gru": Rule(gru_forward, gru_backward),
    "lstm": Rule(lstm_forward, lstm_backward),
}
"""The entries of `nnfun.manual.layers.RULES` that this module overrides when the model is
asked for the fast rules: ``{**RULES, **FAST_RULES}``."""

__all__ = ["FAST_RULES", "TiledMaxPoolCache", "patches", "fold", "tiles", "to_tiles",
           "from_tiles", "bias_grad", "recurrent_weight_grads",
           *(f"{name}_{part}" for name in FAST_RULES for part in ("forward", "backward"))]
