"""The one place that pairs the two gradient paths, name by name.

For every layer (activations included), loss and regulariser, an entry holds the autodiff
function and the hand-written forward / backward of `nnfun.manual`, plus example arguments.
The shared parameterised tests (tests/test_registry.py) walk these tables: registering a
primitive here is enough to get it checked three ways (values, manual vs `jax.vjp`, finite
differences), jitted and un-jitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from nnfun import layers as L
from nnfun import losses as losses_lib
from nnfun import regularizers as regs_lib
from nnfun.manual import layers as ML
from nnfun.manual import losses as MLoss
from nnfun.manual import regularizers as MReg
from nnfun.models import layer_names

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
    """A loss and its reference; `targets` says what kind of target it takes:
    "labels" (int classes), "real", "binary" ({0, 1}), "pm1" ({-1, +1}) or "probs" (rows
    summing to one); `preds` says what the prediction must be ("real" or "probs" in (0, 1))."""

    name: str
    fn: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    targets: str
    preds: str = "real"
    kwargs: tuple[dict[str, Any], ...] = ({},)


class RegEntry(NamedTuple):
    """A regulariser over a parameter tree and its reference."""

    name: str
    fn: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    kwargs: tuple[dict[str, Any], ...]


_ACT = ((3, 5), {})
LAYER_EXAMPLES: dict[str, tuple[Example, ...]] = {
    "dense": (((3, 5), {"features": 4}), ((2, 3), {"features": 2, "bias": False})),
    "conv2d": (((2, 6, 6, 3), {"features": 4, "kernel_size": 3}),
               ((2, 7, 6, 2), {"features": 3, "kernel_size": (3, 2), "stride": 2,
                               "padding": "VALID"}),
               ((1, 6, 5, 2), {"features": 2, "kernel_size": 3, "stride": (2, 1),
                               "padding": "SAME", "bias": False})),
    "conv1d": (((2, 10, 3), {"features": 4, "kernel_size": 3}),
               ((2, 11, 2), {"features": 3, "kernel_size": 5, "stride": 2, "padding": "SAME"}),
               ((1, 9, 2), {"features": 2, "kernel_size": 4, "stride": 2, "padding": "VALID"})),
    "max_pool2d": (((2, 6, 6, 3), {}), ((2, 7, 7, 2), {"window": 3, "stride": 2,
                                                       "padding": "SAME"}),
                   ((1, 5, 6, 2), {"window": (3, 2), "stride": 1, "padding": "VALID"})),
    "avg_pool2d": (((2, 6, 6, 3), {}), ((2, 7, 7, 2), {"window": 3, "stride": 2,
                                                       "padding": "SAME"}),
                   ((1, 5, 6, 2), {"window": (3, 2), "stride": 1, "padding": "VALID"})),
    "max_pool1d": (((2, 8, 3), {}), ((2, 9, 2), {"window": 3, "stride": 2, "padding": "SAME"})),
    "avg_pool1d": (((2, 8, 3), {}), ((2, 9, 2), {"window": 3, "stride": 2, "padding": "SAME"})),
    "flatten": (((2, 3, 4, 2), {}),),
    "dropout": (((4, 6), {"drop_rate": 0.5}), ((2, 3, 3, 2), {"drop_rate": 0.2})),
    "maxout": (((3, 5), {"features": 4, "pieces": 3}),),
    "leaky_relu": (((3, 5), {"negative_slope": 0.2}),),
    "elu": (((3, 5), {"alpha": 0.7}),),
    "softmax": (((3, 5), {}), ((2, 3, 4), {"axis": 1})),
    "log_softmax": (((3, 5), {}), ((2, 3, 4), {"axis": 1})),
}

LAYERS: dict[str, LayerEntry] = {
    name: LayerEntry(name, getattr(L, f"{name}_apply"), getattr(ML, f"{name}_forward"),
                     getattr(ML, f"{name}_backward"), LAYER_EXAMPLES.get(name, (_ACT,)))
    for name in layer_names()
}

_LOSS_TARGETS = {"squared_error": ("real", "real", ({}, {"half": False, "reduction": "sum"})),
                 "mean_squared_error": ("real", "real", ({}, {"reduction": "sum"})),
                 "binary_cross_entropy_with_logits": ("binary", "real", ({},)),
                 "binary_cross_entropy": ("binary", "probs", ({}, {"reduction": "sum"})),
                 "logistic_loss": ("pm1", "real", ({},)),
                 "softmax_cross_entropy": ("labels", "real", ({}, {"reduction": "sum"})),
                 "multiclass_hinge": ("labels", "real", ({}, {"margin": 0.5}))}

LOSSES: dict[str, LossEntry] = {
    name: LossEntry(name, fn, getattr(MLoss, f"{name}_forward"),
                    getattr(MLoss, f"{name}_backward"), *_LOSS_TARGETS[name])
    for name, fn in losses_lib.LOSSES.items()
}
#: softmax cross-entropy also takes one-hot / soft labels.
LOSSES["softmax_cross_entropy_soft"] = LOSSES["softmax_cross_entropy"]._replace(
    name="softmax_cross_entropy_soft", targets="probs")

_REG_KWARGS = {"l2": ({"lam": 0.3}, {"lam": 0.3, "convention": "over_2m", "batch_size": 4},
                      {"lam": 0.1, "include_biases": True}),
               "l1": ({"lam": 0.3}, {"lam": 0.2, "include_biases": True})}

REGULARIZERS: dict[str, RegEntry] = {
    name: RegEntry(name, fn, getattr(MReg, f"{name}_forward"), getattr(MReg, f"{name}_backward"),
                   _REG_KWARGS[name])
    for name, fn in regs_lib.REGULARIZERS.items()
}
