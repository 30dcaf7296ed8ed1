"""A sequential model on the reference path: forward, backward and the training objective's
value and gradient, all by the chain rule over the hand-written rules of `nnfun.manual`.

A model is a tuple of `nnfun.spec.LayerSpec`s; its parameters are a list with one dict per layer
(``{}`` for parameterless layers). Layer ``spec`` runs ``<spec.name>_forward`` /
``<spec.name>_backward`` of `nnfun.manual.layers` with ``spec.apply_kwargs``; a stochastic layer
``i`` (dropout) also gets ``key=jax.random.fold_in(key, i)`` and ``train``, exactly as the
autodiff path's model does, so both draw the same masks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnfun.manual import layers as _layers
from nnfun.manual import losses as _losses
from nnfun.manual import regularizers as _regularizers
from nnfun.spec import LayerSpec, LossSpec, RegSpec

Array = jax.Array
Params = list[dict[str, Array]]


@functools.cache
def _names(module: ModuleType) -> tuple[str, ...]:
    """Names ``n`` for which `module` defines both ``n_forward`` and ``n_backward``."""
    stems = [n[: -len("_forward")] for n in dir(module)
             if n.endswith("_forward") and not n.startswith("_")]
    return tuple(sorted(n for n in stems if hasattr(module, f"{n}_backward")))


def _rule(module: ModuleType, kind: str, name: str) -> tuple[Callable, Callable]:
    """(forward, backward) of `name` in `module`; ValueError naming the valid names otherwise."""
    valid = _names(module)
    if name not in valid:
        raise ValueError(f"{kind}: unknown name {name!r}; expected one of {list(valid)}")
    return getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")


def layer_names() -> list[str]:
    """Every layer (and activation) name the reference path implements."""
    return list(_names(_layers))


def loss_names() -> list[str]:
    """Every loss name the reference path implements."""
    return list(_names(_losses))


def regularizer_names() -> list[str]:
    """Every regulariser name the reference path implements."""
    return list(_names(_regularizers))


def _layer_kwargs(spec: LayerSpec, i: int, key: Array | None, train: bool) -> dict[str, Any]:
    """spec.apply_kwargs, plus key and train for a stochastic layer."""
    kwargs = spec.apply_kwargs
    if spec.stochastic:
        if train and key is None and kwargs.get("drop_rate", 0.0) > 0:
            raise ValueError(f"forward: layer {i} ({spec.name}) needs key when train=True, "
                             "got key=None")
        kwargs.update(key=None if key is None else jax.random.fold_in(key, i), train=train)
    return kwargs


def forward(layers: Sequence[LayerSpec], params: Params, x: Array, *, key: Array | None = None,
            train: bool = False) -> tuple[Array, list[NamedTuple]]:
    """Runs the layers in order, keeping every layer's cache.

    Args:
      layers: the model's layer specs.
      params: one dict per layer ({} for parameterless layers).
      x: (N, ...) input.
      key: PRNG key for the stochastic layers; layer i gets fold_in(key, i).
      train: whether stochastic layers are active.

    Returns:
      (out (N, ...), caches: one cache per layer).
    """
    if len(params) != len(layers):
        raise ValueError(f"forward: params must have {len(layers)} entries (one per layer), "
                         f"got {len(params)}")
    caches = []
    for i, (spec, p) in enumerate(zip(layers, params)):
        x, cache = _rule(_layers, "layer", spec.name)[0](p, x, **_layer_kwargs(spec, i, key, train))
        caches.append(cache)
    return x, caches


def backward(layers: Sequence[LayerSpec], dout: Array,
             caches: Sequence[NamedTuple]) -> tuple[Array, Params]:
    """The chain rule: runs the layers' backward rules in reverse order.

    dx_i = (d out_i / d x_i)^T dout_i, with dout_{i-1} = dx_i, and each layer's dparams.

    Args:
      layers: the model's layer specs.
      dout: (N, ...) upstream gradient of the model's output.
      caches: from `forward`.

    Returns:
      (dx of the input's shape, grads: one dict per layer, mirroring params).
    """
    grads: Params = [{} for _ in layers]
    for i in reversed(range(len(layers))):
        dout, grads[i] = _rule(_layers, "layer", layers[i].name)[1](dout, caches[i])
    return dout, grads


def _like(params: Sequence[Any], grads: Sequence[Any]) -> Any:
    """grads (one entry per layer) rebuilt with params' exact tree structure and leaf dtypes."""
    treedef = jax.tree_util.tree_structure(params)
    if jax.tree_util.tree_structure(list(grads)) != jax.tree_util.tree_structure(list(params)):
        raise ValueError(f"value_and_grad: gradient tree {jax.tree_util.tree_structure(grads)} "
                         f"does not mirror params {treedef}")
    leaves = [g.astype(jnp.result_type(p)) for p, g in
              zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(grads))]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def value_and_grad(layers: Sequence[LayerSpec], loss: LossSpec,
                   regularizers: Sequence[RegSpec] = ()) -> Callable[..., tuple[Array, Params]]:
    """Builds ``f(params, x, y, key=None) -> (value, grads)`` for the training objective
    value = loss(model(x; train=True, key), y) + sum_r penalty_r(params, batch_size=N).

    grads = backward of the model from dloss = 1, plus each penalty's gradient; it has params'
    tree structure and dtypes, as the autodiff gradient of the same objective.

    Args:
      layers: the model's layer specs.
      loss: a `LossSpec` naming a loss of `nnfun.manual.losses` and its keyword arguments.
      regularizers: `RegSpec`s naming penalties of `nnfun.manual.regularizers`.

    Returns:
      f(params (one dict per layer), x (N, ...), y (targets), key=None) -> (scalar, grads).
    """
    layers = tuple(layers)
    for spec in layers:
        _rule(_layers, "layer", spec.name)
    loss_rule, loss_kw = _rule(_losses, "loss", loss.name), dict(loss.kwargs)
    regs = [(_rule(_regularizers, "regularizer", r.name), dict(r.kwargs)) for r in regularizers]

    def f(params: Params, x: Array, y: Array, key: Array | None = None) -> tuple[Array, Params]:
        out, caches = forward(layers, params, x, key=key, train=True)
        value, loss_cache = loss_rule[0](out, y, **loss_kw)
        grads = backward(layers, loss_rule[1](jnp.ones_like(value), loss_cache), caches)[1]
        grads = _like(params, grads)
        for (reg_forward, reg_backward), kw in regs:
            penalty, cache = reg_forward(params, batch_size=x.shape[0], **kw)
            value = value + penalty
            grads = jax.tree_util.tree_map(jnp.add, grads,
                                           reg_backward(jnp.ones_like(penalty), cache))
        return value, _like(params, grads)

    return f
