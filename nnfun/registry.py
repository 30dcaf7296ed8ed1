"""The one place that pairs the two gradient paths, name by name.

It joins the autodiff tables (`nnfun.layers.LAYERS`, `nnfun.losses.LOSSES`,
`nnfun.regularizers.REGULARIZERS`) with the reference tables of `nnfun.manual`
(`layers.RULES`, `losses.LOSS_RULES`, `regularizers.REG_RULES`). The shared parameterised tests
(tests/test_registry.py) walk the joined tables: an entry here is checked three ways (values,
manual vs `jax.vjp`, finite differences). Building the tables fails for a layer or loss that
has no examples or no hand-written rule, so nothing can join the autodiff path untested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from nnfun import layers as autodiff_layers
from nnfun import losses as autodiff_losses
from nnfun import regularizers as autodiff_regularizers
from nnfun.manual import layers as manual_layers
from nnfun.manual import losses as manual_losses
from nnfun.manual import regularizers as manual_regularizers

__all__ = ["LayerEntry", "LossEntry", "RegEntry", "build_layer_entries", "LAYERS", "LOSSES",
           "REGULARIZERS", "REG_EXAMPLES"]

Example = tuple[tuple[int, ...], dict[str, Any]]


class LayerEntry(NamedTuple):
    """A layer: `apply(params, x, **kw)`, `forward(params, x, **kw) -> (out, cache)`,
    `backward(dout, cache) -> (dx, dparams)`, and examples ((N, ...) input shape, layer kwargs)."""

    name: str
    apply: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    examples: tuple[Example, ...]


class LossEntry(NamedTuple):
    """A loss and its reference; `targets` says what kind of target the tests draw:
    "labels" (int classes), "one_hot" (in [0, 1]), "pm1" ({-1, +1}) or "probs" (rows summing
    to one); `preds` says what the prediction must be ("real" or "probs" in (0, 1))."""

    name: str
    fn: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    targets: str
    preds: str = "real"
    examples: tuple[dict[str, Any], ...] = ({},)


class RegEntry(NamedTuple):
    """A regulariser over a parameter tree and its reference."""

    name: str
    fn: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    examples: tuple[dict[str, Any], ...]


def build_layer_entries(table: Mapping[str, autodiff_layers.Layer],
                        rules: Mapping[str, Any]) -> dict[str, LayerEntry]:
    """Joins a layer table with a table of manual rules.

    Raises:
      ValueError: for a layer without examples or without a manual rule.
    """
    entries = {}
    for name, layer in table.items():
        if not layer.examples:
            raise ValueError(f"registry: layer {name!r} has no examples for the three-way tests")
        if name not in rules:
            raise ValueError(f"registry: layer {name!r} has no hand-written rule in "
                             f"nnfun.manual.layers.RULES")
        entries[name] = LayerEntry(name, layer.apply, rules[name].forward, rules[name].backward,
                                   layer.examples)
    return entries


LAYERS: dict[str, LayerEntry] = build_layer_entries(autodiff_layers.LAYERS, manual_layers.RULES)

LOSSES: dict[str, LossEntry] = {
    name: LossEntry(name, loss.fn, manual_losses.LOSS_RULES[name].forward,
                    manual_losses.LOSS_RULES[name].backward, loss.targets, loss.preds,
                    loss.examples)
    for name, loss in autodiff_losses.LOSSES.items()
}
#: softmax cross-entropy also takes one-hot / soft labels.
LOSSES["softmax_cross_entropy_soft"] = LOSSES["softmax_cross_entropy"]._replace(
    name="softmax_cross_entropy_soft", targets="probs")

#: Keyword arguments of each regulariser's three-way tests.
REG_EXAMPLES: dict[str, tuple[dict[str, Any], ...]] = {
    "l2": ({"lam": 0.3}, {"lam": 0.3, "convention": "over_2m", "batch_size": 4},
           {"lam": 0.1, "include_biases": True}),
    "l1": ({"lam": 0.3}, {"lam": 0.2, "include_biases": True}),
}

REGULARIZERS: dict[str, RegEntry] = {
    name: RegEntry(name, fn, manual_regularizers.REG_RULES[name].forward,
                   manual_regularizers.REG_RULES[name].backward, REG_EXAMPLES[name])
    for name, fn in autodiff_regularizers.REGULARIZERS.items()
}
