"""The training objective of the autodiff path: data loss of a model plus penalties.

`make_objective(layers, loss, regularizers)` returns ``f(params, x, y, key=None) -> scalar``,
the function whose `jax.value_and_grad` the hand-written `nnfun.manual.model.value_and_grad`
reproduces exactly (same value, same gradient tree).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from nnfun.layers import Layer
from nnfun.losses import get_loss
from nnfun.models import model_apply
from nnfun.regularizers import get_regularizer
from nnfun.spec import LayerSpec, LossSpec, RegSpec

__all__ = ["make_objective"]

Array = jax.Array


def make_objective(layers: Sequence[LayerSpec], loss: LossSpec,
                   regularizers: Sequence[RegSpec] = (), *,
                   table: Mapping[str, Layer] | None = None) -> Callable[..., Array]:
    """Builds ``f(params, x, y, key=None) = loss(model(x), y) + sum_r r(params)``.

    The model runs in training mode (dropout active, with `key`). Regularisers receive
    ``batch_size=x.shape[0]`` (m of the lambda / 2m convention). `table` is the layer table
    the model runs (default `nnfun.layers.LAYERS`, see `nnfun.models.model_apply`).
    """
    layers = tuple(layers)
    loss_fn, loss_kw = get_loss(loss.name), dict(loss.kwargs)
    regs = [(get_regularizer(r.name), dict(r.kwargs)) for r in regularizers]

    def objective(params: Any, x: Array, y: Array, key: Array | None = None) -> Array:
        out = model_apply(params, x, layers, key=key, train=True, table=table)
        value = loss_fn(out, y, **loss_kw)
        for fn, kw in regs:
            value = value + fn(params, batch_size=x.shape[0], **kw)
        return value

    return objective
