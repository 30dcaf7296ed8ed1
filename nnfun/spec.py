"""Plain-data descriptions of layers, losses and regularisers.

Both gradient paths read these: the autodiff path (`nnfun.models`, `nnfun.objective`) and the
hand-written reference (`nnfun.manual`). This module imports neither, so the two paths stay
independent while agreeing on what a model *is*.

A model is a tuple of `LayerSpec`s. `LayerSpec.init_kwargs` holds the keyword arguments only
the parameter initialiser needs (sizes, initialiser names); `LayerSpec.apply_kwargs` holds the
keyword arguments of the forward computation (stride, padding, drop rate, ...), which both
`nnfun.layers.<name>_apply` and `nnfun.manual.layers.<name>_forward` accept.

Layers that draw random numbers (``stochastic``, as dropout) take `key` and `train` as well; the
model gives layer ``i`` the key ``jax.random.fold_in(key, i)``, in both paths, so that masks
agree. `nnfun.models.layer` fills the spec in from the layer table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["LayerSpec", "LossSpec", "RegSpec", "is_weight_path", "with_tied_weights"]


def _freeze(kwargs: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    items = []
    for k, v in sorted((kwargs or {}).items()):
        if isinstance(v, list):
            v = tuple(v)
        elif isinstance(v, dict):
            v = _freeze(v)
        items.append((k, v))
    return tuple(items)


def _thaw(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: v for k, v in items}


class LayerSpec(NamedTuple):
    """One layer of a sequential model.

    Attributes:
      name: layer name, e.g. ``"dense"``, ``"conv2d"``, ``"relu"``.
      init_args: frozen keyword arguments of the initialiser (sorted ``(key, value)`` pairs).
      apply_args: frozen keyword arguments of the forward computation.
      stochastic: the layer draws random numbers and takes ``key`` and ``train``.
      tie: the index of an earlier layer whose weight ``w``, transposed, this layer uses as
        its own (tied weights, as in an autoencoder whose decoder mirrors its encoder); the
        layer then owns its other parameters only (`with_tied_weights`).
    """

    name: str
    init_args: tuple[tuple[str, Any], ...] = ()
    apply_args: tuple[tuple[str, Any], ...] = ()
    stochastic: bool = False
    tie: int | None = None

    @classmethod
    def make(cls, name: str, init: dict | None = None, apply: dict | None = None, *,
             stochastic: bool = False, tie: int | None = None) -> LayerSpec:
        """A spec from plain dicts of initialiser and apply keyword arguments."""
        return cls(name, _freeze(init), _freeze(apply), stochastic, tie)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """The initialiser's keyword arguments as a dict."""
        return _thaw(self.init_args)

    @property
    def apply_kwargs(self) -> dict[str, Any]:
        """The forward computation's keyword arguments as a dict."""
        return _thaw(self.apply_args)


class LossSpec(NamedTuple):
    """A loss by name, with its keyword arguments (e.g. ``reduction``, ``margin``)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, name: str, **kwargs: Any) -> LossSpec:
        return cls(name, _freeze(kwargs))


class RegSpec(NamedTuple):
    """A regulariser by name, with its keyword arguments (e.g. ``lam``, ``convention``)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, name: str, **kwargs: Any) -> RegSpec:
        return cls(name, _freeze(kwargs))


def with_tied_weights(layers: Sequence[LayerSpec], params: Sequence[Any]) -> list[Any]:
    """The parameters each layer computes with: a tied layer (``spec.tie = j``) gets
    ``w = params[j]["w"].T`` beside its own entries; the others their own dict. Both gradient
    paths run the model on this list, so a tied weight has two uses, whose gradients add."""
    return [p if spec.tie is None else {**p, "w": params[spec.tie]["w"].T}
            for spec, p in zip(layers, params)]


def is_weight_path(path: tuple[Any, ...]) -> bool:
    """True when a parameter leaf is a weight (a dict key ``"w"`` or ``"w_<name>"``, as a
    recurrent layer's ``"w_x"`` and ``"w_h"``) rather than a bias.

    Regularisers penalise weights only by default, as the lecture notes do.
    """
    last = path[-1] if path else None
    key = getattr(last, "key", last)
    return isinstance(key, str) and (key == "w" or key.startswith("w_"))
