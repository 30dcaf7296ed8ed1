"""Every CPU speed choice nnfun makes, in one place, behind one switch.

The canonical math lives in `nnfun.layers` (one `lax.conv_general_dilated` per convolution, a
broadcast bias) and `nnfun.manual` (the textbook rules). This module holds the variants that
compute the same values faster on XLA:CPU, and the choices that change no value at all:

- `fast_layers`: a layer table with an im2col convolution for narrow convolutions and a bias
  added as an outer product for tall outputs, on a CPU backend;
- `compiler_options`: XLA:CPU options for the functions nnfun compiles at the top level itself;
- `choose_dispatch`: a scanned epoch, or a Python loop of jitted steps for models whose
  convolutions XLA:CPU runs slowly inside a loop.

Training turns the variants on with ``fast_paths=True`` (`nnfun.train.make_step_body`,
``training.fast_paths`` in a config, on by default for ``nnfun train``); the manual engine then
uses the kernels of `nnfun.manual.fast`. Gradient cross-checks (`nnfun.gradcheck`, the engine
cross-check, the registry tests) never use them, so the reference is always compared with the
canonical autodiff path. Each variant has a test that it equals the canonical function; the
measurements behind each choice are in experiments/benchmarks/findings.md.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnfun import layers as L
from nnfun.spec import LayerSpec

__all__ = ["fast_layers", "conv_im2col", "use_im2col", "add_bias_outer", "compiler_options",
           "uses_convolution", "choose_dispatch", "CPU_COMPILER_OPTIONS",
           "CPU_CONV_COMPILER_OPTIONS", "IM2COL_MAX_BYTES", "BIAS_OUTER_MIN_ROWS", "DISPATCHES"]

Array = jax.Array
DISPATCHES = ("auto", "scan", "loop")

#: Largest im2col patch matrix (bytes) built instead of calling `lax.conv_general_dilated`.
IM2COL_MAX_BYTES = 2 * 2**20
#: Rows (product of the leading axes) from which a bias is added as an outer product.
BIAS_OUTER_MIN_ROWS = 2048

#: XLA options for every function nnfun compiles at the top level on a CPU backend: copy
#: insertion with region analysis proves that a step reads the old parameters before it writes
#: their update, so XLA:CPU drops the per-step copy of them; results are bitwise the same.
CPU_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_copy_insertion_use_region_analysis": True,
}
#: Added for models with a convolution: keep XLA:CPU's YNNPACK library calls for single dots
#: only, so that every convolution runs on XLA's own kernels, which are faster for the wide
#: convolutions of the shipped CNNs.
CPU_CONV_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


# --------------------------------------------------------------------------- layer variants


def _geometry(spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
              padding: str) -> tuple[list[tuple[int, int]], list[int]]:
    """(pads, output sizes) per spatial dimension, as XLA computes them."""
    pads = [L.same_pads(s, k, st) if padding == "SAME" else (0, 0)
            for s, k, st in zip(spatial, kernel, stride)]
    return pads, [(s + lo + hi - k) // st + 1
                  for s, (lo, hi), k, st in zip(spatial, pads, kernel, stride)]


def conv_im2col(x: Array, w: Array, stride: tuple[int, ...], padding: str) -> Array:
    """`lax.conv_general_dilated`'s cross-correlation as one matmul: the prod(K) strided slices
    of the padded input, concatenated along channels into patches
    (N * prod(out), prod(K) * C_in), times ``w.reshape(-1, C_out)``.

    Args:
      x: (N, *spatial, C_in) channels last.
      w: (*K, C_in, C_out).
      stride: one int per spatial dimension.
      padding: "SAME" or "VALID".

    Returns:
      (N, *out, C_out).
    """
    kernel = w.shape[:-2]
    pads, outs = _geometry(x.shape[1:-1], kernel, stride, padding)
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    cols = jnp.concatenate(
        [xp[(slice(None),) + tuple(slice(o, o + (n - 1) * st + 1, st)
                                   for o, n, st in zip(offs, outs, stride))]
         for offs in itertools.product(*[range(k) for k in kernel])], axis=-1)
    out = cols.reshape(-1, cols.shape[-1]) @ w.reshape(-1, w.shape[-1])
    return out.reshape(x.shape[0], *outs, w.shape[-1])


def use_im2col(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, ...],
               padding: str, itemsize: int = 4) -> bool:
    """Whether `conv_im2col` replaces XLA's convolution: for narrow convolutions, whose patch
    row (prod(K) * C_in values) is no longer than the C_out outputs it produces and whose patch
    matrix fits in `IM2COL_MAX_BYTES`. There one matmul beats XLA:CPU's convolution; for wide
    ones the patches cost more than the convolution."""
    _, outs = _geometry(x_shape[1:-1], w_shape[:-2], stride, padding)
    patch_bytes = x_shape[0] * math.prod(outs) * math.prod(w_shape[:-1]) * itemsize
    return (min(outs) >= 1 and math.prod(w_shape[:-1]) <= w_shape[-1]
            and patch_bytes <= IM2COL_MAX_BYTES)


def add_bias_outer(out: Array, params: L.Params) -> Array:
    """``out + b`` for a vector bias; for at least `BIAS_OUTER_MIN_ROWS` rows written as the
    outer product ``ones(rows) b^T``, the same values, so that the bias gradient is the
    matrix-vector product ``1^T dout``, which XLA:CPU runs faster than a column reduction."""
    if "b" not in params:
        return out
    b = params["b"]
    rows = math.prod(out.shape[:out.ndim - b.ndim])
    if b.ndim == 1 and rows >= BIAS_OUTER_MIN_ROWS:
        return out + (jnp.ones((rows, 1), b.dtype) @ b[None, :]).reshape(out.shape)
    return out + b.reshape((1,) * (out.ndim - b.ndim) + b.shape)


def _weights_only(params: L.Params) -> L.Params:
    return {k: v for k, v in params.items() if k != "b"}


def dense_apply(params: L.Params, x: Array) -> Array:
    """`nnfun.layers.dense_apply` with the bias added by `add_bias_outer`."""
    return add_bias_outer(L.dense_apply(_weights_only(params), x), params)


def _conv_variant(canonical: Any, rank: int) -> Any:
    def apply(params: L.Params, x: Array, *, stride: Any = 1, padding: str = "SAME") -> Array:
        w = params["w"]
        # the canonical apply checks the arguments; only its output's shape is used here
        jax.eval_shape(lambda: canonical(_weights_only(params), x, stride=stride,
                                         padding=padding))
        strides = L._pair(stride, rank, "conv stride")
        if use_im2col(tuple(x.shape), tuple(w.shape), strides, padding, x.dtype.itemsize):
            out = conv_im2col(x, w, strides, padding)
        else:
            out = canonical(_weights_only(params), x, stride=stride, padding=padding)
        return add_bias_outer(out, params)

    apply.__name__ = canonical.__name__
    apply.__doc__ = (f"`nnfun.layers.{canonical.__name__}` with `conv_im2col` where "
                     "`use_im2col` says so and the bias added by `add_bias_outer`.")
    return apply


conv2d_apply = _conv_variant(L.conv2d_apply, 2)
conv1d_apply = _conv_variant(L.conv1d_apply, 1)

_VARIANTS = {"dense": dense_apply, "conv2d": conv2d_apply, "conv1d": conv1d_apply}


def fast_layers(backend: str | None = None,
                table: Mapping[str, L.Layer] | None = None) -> dict[str, L.Layer]:
    """The layer table with this module's variants swapped in on a CPU backend.

    Args:
      backend: "cpu", "gpu", ...; default `jax.default_backend()`.
      table: the table to start from (default `nnfun.layers.LAYERS`).

    Returns:
      A new dict: on a CPU, dense, conv1d and conv2d use the variants; elsewhere a copy of
      `table`.
    """
    table = dict(L.LAYERS if table is None else table)
    if (backend or jax.default_backend()) == "cpu":
        for name, apply in _VARIANTS.items():
            if name in table:
                table[name] = table[name]._replace(apply=apply)
    return table


# --------------------------------------------------------------------------- compilation


@functools.cache
def _accepted(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this jaxlib's CPU compiler takes `options` (names change between XLA versions)."""
    try:
        jax.jit(lambda v: v + 1, compiler_options=dict(options)).lower(
            np.zeros(1, np.float32)).compile()
    except Exception as err:  # noqa: BLE001 - any rejection means "not this version's options"
        warnings.warn(f"nnfun: XLA did not accept the CPU compiler options {dict(options)} "
                      f"({err}); compiling with XLA's defaults", RuntimeWarning, stacklevel=3)
        return False
    return True


def uses_convolution(layers: Sequence[LayerSpec]) -> bool:
    """True when a layer of the model is a convolution (`nnfun.layers.Layer.uses_convolution`)."""
    return any(L.get_layer(s.name).uses_convolution for s in layers)


def compiler_options(layers: Sequence[LayerSpec] | None = None,
                     backend: str | None = None) -> dict[str, Any] | None:
    """The ``compiler_options`` for a top-level `jax.jit` of a step of a model made of `layers`:
    on a CPU backend `CPU_COMPILER_OPTIONS`, plus `CPU_CONV_COMPILER_OPTIONS` for a model with
    a convolution (or when `layers` is None); None (XLA's defaults) on other backends, or when
    this jaxlib rejects them. A function compiled with options cannot be called inside another
    `jax.jit`, so only nnfun's own run driver passes them."""
    if (backend or jax.default_backend()) != "cpu":
        return None
    merged = dict(CPU_COMPILER_OPTIONS)
    if layers is None or uses_convolution(layers):
        merged.update(CPU_CONV_COMPILER_OPTIONS)
    if not merged:
        return None
    options = tuple(sorted(merged.items()))
    return dict(options) if _accepted(options) else None


def choose_dispatch(layers: Sequence[LayerSpec], requested: str = "auto",
                    engine: str = "autodiff", backend: str | None = None) -> str:
    """"scan" (a whole epoch in one compiled `lax.scan`) or "loop" (a Python loop of jitted
    steps). `requested` other than "auto" is returned as it is. The automatic choice is the
    scan, except on a CPU for a model with convolutions on the autodiff engine: XLA:CPU runs
    its convolutions much slower inside a loop body than as a top-level step. The manual
    engine's convolutions are matmuls, so its conv models keep the scan."""
    if requested not in DISPATCHES:
        raise ValueError(f"dispatch: expected one of {list(DISPATCHES)}, got {requested!r}")
    if engine not in ("autodiff", "manual"):
        raise ValueError(f"engine: expected one of ['autodiff', 'manual'], got {engine!r}")
    if requested != "auto":
        return requested
    cpu = (backend or jax.default_backend()) == "cpu"
    return "loop" if cpu and engine == "autodiff" and uses_convolution(layers) else "scan"
