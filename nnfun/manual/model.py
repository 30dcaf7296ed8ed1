"""A sequential model on the reference path: forward, backward and the training objective's
value and gradient, all by the chain rule over the hand-written rules of `nnfun.manual`.

A model is a tuple of `nnfun.spec.LayerSpec`s; its parameters are a list with one dict per layer
(``{}`` for parameterless layers). Layer ``spec`` runs the rule ``RULES[spec.name]`` of
`nnfun.manual.layers` with ``spec.apply_kwargs``; a stochastic layer ``i`` (dropout) also gets
``key=jax.random.fold_in(key, i)`` and ``train``, exactly as the autodiff path's model does, so
both draw the same masks. Losses and regularisers come from `LOSS_RULES` and `REG_RULES`.

``fast=True`` swaps in the faster kernels of `nnfun.manual.fast` (``{**RULES, **FAST_RULES}``)
for the forward and the backward alike; the default is the textbook rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnfun.manual.fast import FAST_RULES
from nnfun.manual.layers import RULES, Rule
from nnfun.manual.losses import LOSS_RULES
from nnfun.manual.regularizers import REG_RULES
from nnfun.spec import LayerSpec, LossSpec, RegSpec, with_tied_weights

__all__ = ["forward", "backward", "value_and_grad", "implemented_layers", "loss_names",
           "regularizer_names"]

Array = jax.Array
Params = list[dict[str, Array]]


def _layer_rules(fast: bool) -> dict[str, Rule]:
    """The layer table: the textbook `RULES`, with `FAST_RULES` over them when `fast`."""
    return {**RULES, **FAST_RULES} if fast else RULES


def _lookup(table: Mapping[str, Rule], kind: str, name: str) -> Rule:
    """table[name]; ValueError naming the valid names otherwise."""
    if name not in table:
        raise ValueError(f"{kind}: unknown name {name!r}; expected one of {sorted(table)}")
    return table[name]


def implemented_layers() -> list[str]:
    """Every layer (and activation) name the reference path implements, sorted."""
    return sorted(RULES)


def loss_names() -> list[str]:
    """Every loss name the reference path implements, sorted."""
    return sorted(LOSS_RULES)


def regularizer_names() -> list[str]:
    """Every regulariser name the reference path implements, sorted."""
    return sorted(REG_RULES)


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
            train: bool = False, fast: bool = False) -> tuple[Array, list[Any]]:
    """Runs the layers in order, keeping every layer's cache.

    Args:
      layers: the model's layer specs.
      params: one dict per layer ({} for parameterless layers).
      x: (N, ...) input.
      key: PRNG key for the stochastic layers; layer i gets fold_in(key, i).
      train: whether stochastic layers are active.
      fast: use `nnfun.manual.fast`'s kernels where it has them (then pass ``fast=True`` to
        `backward` as well).

    Returns:
      (out (N, ...), caches: one cache per layer).
    """
    if len(params) != len(layers):
        raise ValueError(f"forward: params must have {len(layers)} entries (one per layer), "
                         f"got {len(params)}")
    table = _layer_rules(fast)
    caches = []
    for i, (spec, p) in enumerate(zip(layers, with_tied_weights(layers, params))):
        rule = _lookup(table, "layer", spec.name)
        x, cache = rule.forward(p, x, **_layer_kwargs(spec, i, key, train))
        caches.append(cache)
    return x, caches


def backward(layers: Sequence[LayerSpec], dout: Array, caches: Sequence[Any], *,
             fast: bool = False) -> tuple[Array, Params]:
    """The chain rule: runs the layers' backward rules in reverse order.

    dx_i = (d out_i / d x_i)^T dout_i, with dout_{i-1} = dx_i, and each layer's dparams.

    Args:
      layers: the model's layer specs.
      dout: (N, ...) upstream gradient of the model's output.
      caches: from `forward`, called with the same `fast`.
      fast: use `nnfun.manual.fast`'s kernels where it has them.

    Returns:
      (dx of the input's shape, grads: one dict per layer, mirroring params).
    """
    table = _layer_rules(fast)
    grads: Params = [{} for _ in layers]
    for i in reversed(range(len(layers))):
        dout, grads[i] = _lookup(table, "layer", layers[i].name).backward(dout, caches[i])
    return dout, _fold_tied(layers, grads)


def _fold_tied(layers: Sequence[LayerSpec], grads: Params) -> Params:
    """A tied weight (layer i computes with w_j^T, `LayerSpec.tie` = j) has two uses, and the
    gradients of a value's uses add (the copy gate): dw_j += (dw_i)^T, and layer i owns no w."""
    grads = [dict(g) for g in grads]
    for i, spec in enumerate(layers):
        if spec.tie is not None:
            grads[spec.tie]["w"] = grads[spec.tie]["w"] + grads[i].pop("w").T
    return grads


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
                   regularizers: Sequence[RegSpec] = (), *,
                   fast: bool = False) -> Callable[..., tuple[Array, Params]]:
    """Builds ``f(params, x, y, key=None) -> (value, grads)`` for the training objective
    value = loss(model(x; train=True, key), y) + sum_r penalty_r(params, batch_size=N).

    grads = backward of the model from dloss = 1, plus each penalty's gradient; it has params'
    tree structure and dtypes, as the autodiff gradient of the same objective.

    Args:
      layers: the model's layer specs.
      loss: a `LossSpec` naming a loss of `nnfun.manual.losses` and its keyword arguments.
      regularizers: `RegSpec`s naming penalties of `nnfun.manual.regularizers`.
      fast: use `nnfun.manual.fast`'s kernels where it has them (same value and gradient).

    Returns:
      f(params (one dict per layer), x (N, ...), y (targets), key=None) -> (scalar, grads).
    """
    layers = tuple(layers)
    for spec in layers:
        _lookup(RULES, "layer", spec.name)
    loss_rule, loss_kw = _lookup(LOSS_RULES, "loss", loss.name), dict(loss.kwargs)
    regs = [(_lookup(REG_RULES, "regularizer", r.name), dict(r.kwargs)) for r in regularizers]

    def f(params: Params, x: Array, y: Array, key: Array | None = None) -> tuple[Array, Params]:
        out, caches = forward(layers, params, x, key=key, train=True, fast=fast)
        value, loss_cache = loss_rule.forward(out, y, **loss_kw)
        dout = loss_rule.backward(jnp.ones_like(value), loss_cache)
        grads = _like(params, backward(layers, dout, caches, fast=fast)[1])
        for reg_rule, kw in regs:
            penalty, cache = reg_rule.forward(params, batch_size=x.shape[0], **kw)
            value = value + penalty
            grads = jax.tree_util.tree_map(jnp.add, grads,
                                           reg_rule.backward(jnp.ones_like(penalty), cache))
        return value, _like(params, grads)

    return f
