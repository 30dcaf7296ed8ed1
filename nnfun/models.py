"""Sequential models: a tuple of `LayerSpec`s with an `init` and an `apply`.

A model's parameters mirror its layer list: ``params[i]`` is the dict of layer ``i`` (``{}`` for
parameterless layers), so ``params`` is a plain list of dicts. Build a model from layer specs
(`sequential`), or with the `mlp` and `cnn` shorthands::

    model = sequential([("flatten", {}), ("dense", {"features": 128}), ("relu", {}),
                        ("dense", {"features": 10})])
    params = model.init(key, input_shape=(8, 8, 1))
    logits = model.apply(params, x)                      # evaluation
    logits = model.apply(params, x, key=k, train=True)   # dropout active
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnfun import layers as L
from nnfun.activations import ACTIVATIONS
from nnfun.initializers import split_keys
from nnfun.spec import LayerSpec

Array = jax.Array
Params = list[dict[str, Array]]

_PARAM_LAYERS = {"dense": L.init_dense, "conv2d": L.init_conv2d, "conv1d": L.init_conv1d,
                 "maxout": L.init_maxout}
_SIZE_ARGS = {"in_features", "out_features", "in_channels", "out_channels", "key", "dtype"}


def _apply_fn(name: str) -> Callable[..., Array]:
    return getattr(L, f"{name}_apply")


def layer_names() -> list[str]:
    """Every layer name a model may use."""
    return sorted(n[: -len("_apply")] for n in dir(L) if n.endswith("_apply"))


def _kwonly(fn: Callable[..., Any], drop: set[str]) -> set[str]:
    ps = inspect.signature(fn).parameters.values()
    return {p.name for p in ps if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - drop


def layer_arguments(name: str) -> tuple[set[str], set[str]]:
    """The (initialiser, apply) keyword names a layer spec may carry."""
    if name not in layer_names():
        raise ValueError(f"layer: unknown name {name!r}; expected one of {layer_names()}")
    init_keys = set()
    if name in _PARAM_LAYERS:
        init_keys = _kwonly(_PARAM_LAYERS[name], _SIZE_ARGS) | {"features"}
    if name in ACTIVATIONS:
        apply_keys = _kwonly(ACTIVATIONS[name], {"x"})
    else:
        apply_keys = _kwonly(_apply_fn(name), {"params", "x", "key", "train"})
    return init_keys, apply_keys


def layer(name: str, **kwargs: Any) -> LayerSpec:
    """Builds a `LayerSpec`, sorting `kwargs` into initialiser and apply arguments.

    Raises:
      ValueError: for an unknown layer, an unknown argument, or a missing ``features``.
    """
    init_keys, apply_keys = layer_arguments(name)
    unknown = set(kwargs) - init_keys - apply_keys
    if unknown:
        raise ValueError(f"layer {name!r}: unknown argument(s) {sorted(unknown)}; expected "
                         f"some of {sorted(init_keys | apply_keys)}")
    if "features" in init_keys and "features" not in kwargs:
        raise ValueError(f"layer {name!r}: missing required argument 'features'")
    if name == "dropout" and "drop_rate" not in kwargs:
        raise ValueError("layer 'dropout': missing required argument 'drop_rate'")
    return LayerSpec.make(name, {k: v for k, v in kwargs.items() if k in init_keys},
                          {k: v for k, v in kwargs.items() if k in apply_keys})


def _as_spec(item: LayerSpec | str | tuple | Mapping[str, Any]) -> LayerSpec:
    if isinstance(item, LayerSpec):
        return item
    if isinstance(item, str):
        return layer(item)
    if isinstance(item, Mapping):
        kw = dict(item)
        return layer(kw.pop("name"), **kw)
    name, kw = item
    return layer(name, **dict(kw))


class Model(NamedTuple):
    """A sequential model: its layer specs plus pure `init` and `apply` functions."""

    layers: tuple[LayerSpec, ...]

    def init(self, key: Array, input_shape: Sequence[int], dtype: Any = jnp.float32) -> Params:
        """Initialises every layer for inputs of shape (N, *input_shape)."""
        return init_model(key, self.layers, input_shape, dtype)

    def apply(self, params: Params, x: Array, *, key: Array | None = None,
              train: bool = False) -> Array:
        """Runs the model on x (N, *input_shape)."""
        return model_apply(params, x, self.layers, key=key, train=train)

    def output_shape(self, params: Params, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape for one example of `input_shape` (without running the model)."""
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        return tuple(jax.eval_shape(lambda p, v: self.apply(p, v), params, x).shape[1:])


def sequential(layers: Sequence[LayerSpec | str | tuple | Mapping[str, Any]]) -> Model:
    """A model from layer specs: `LayerSpec`s, names, ``(name, kwargs)`` pairs or
    ``{"name": ..., **kwargs}`` mappings (the form a config file uses)."""
    specs = []
    for i, item in enumerate(layers):
        try:
            specs.append(_as_spec(item))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"layers[{i}]: {e}") from None
    return Model(tuple(specs))


def _layer_apply(spec: LayerSpec, p: dict[str, Array], x: Array, key: Array | None,
                 train: bool) -> Array:
    fn = _apply_fn(spec.name)
    if spec.stochastic:
        return fn(p, x, key=key, train=train, **spec.apply_kwargs)
    return fn(p, x, **spec.apply_kwargs)


def init_model(key: Array, layers: Sequence[LayerSpec], input_shape: Sequence[int],
               dtype: Any = jnp.float32) -> Params:
    """Parameters of every layer, threading the shape through the model.

    Raises:
      ValueError: naming the layer whose input shape does not fit.
    """
    shape = tuple(int(s) for s in input_shape)
    params: Params = []
    for i, (spec, k) in enumerate(zip(layers, split_keys(key, max(len(layers), 1)))):
        try:
            p = L.init_layer_from_shape(spec.name, k, shape, dtype=dtype, **spec.init_kwargs) \
                if spec.name in _PARAM_LAYERS else L.init_layer_from_shape(spec.name, k, shape)
            x = jax.ShapeDtypeStruct((1, *shape), dtype)
            out = jax.eval_shape(lambda p_, x_, s=spec: _layer_apply(s, p_, x_, None, False), p, x)
        except (ValueError, TypeError) as e:
            raise ValueError(f"layers[{i}] ({spec.name}) with input shape (N, "
                             f"{', '.join(map(str, shape))}): {e}") from None
        params.append(p)
        shape = tuple(out.shape[1:])
    return params


def model_apply(params: Params, x: Array, layers: Sequence[LayerSpec], *,
                key: Array | None = None, train: bool = False) -> Array:
    """Runs layers in order; stochastic layer ``i`` gets ``jax.random.fold_in(key, i)``."""
    if len(params) != len(layers):
        raise ValueError(f"params: expected {len(layers)} entries (one per layer), "
                         f"got {len(params)}")
    for i, (spec, p) in enumerate(zip(layers, params)):
        k = None
        if spec.stochastic and train and key is not None:
            k = jax.random.fold_in(key, i)
        x = _layer_apply(spec, p, x, k, train)
    return x


def param_count(params: Any) -> int:
    """Number of scalar parameters in a tree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


def default_w_init(activation: str) -> str:
    """He for the rectifier family, Xavier otherwise (the notes' advice)."""
    return "he_normal" if activation in ("relu", "leaky_relu", "elu") else "xavier_normal"


def mlp(hidden: Sequence[int], out: int, *, activation: str = "relu",
        out_activation: str | None = None, dropout: float = 0.0, bias: bool = True,
        w_init: Any = None, flatten: bool = False) -> Model:
    """A multilayer perceptron: [flatten] -> (dense -> activation [-> dropout]) * len(hidden)
    -> dense(out) [-> out_activation].

    Args:
      hidden: widths of the hidden layers (may be empty: a linear / logistic model).
      out: number of outputs.
      activation: hidden activation name.
      w_init: initialiser for every dense weight; default by `default_w_init(activation)`.
      flatten: put a flatten layer first (for image inputs).
    """
    w_init = w_init or default_w_init(activation)
    specs: list[LayerSpec] = [layer("flatten")] if flatten else []
    for width in hidden:
        specs += [layer("dense", features=int(width), bias=bias, w_init=w_init),
                  layer(activation)]
        if dropout:
            specs.append(layer("dropout", drop_rate=dropout))
    specs.append(layer("dense", features=int(out), bias=bias, w_init=w_init))
    if out_activation:
        specs.append(layer(out_activation))
    return Model(tuple(specs))


def cnn(conv: Sequence[int], dense: Sequence[int], out: int, *, kernel_size: int = 3,
        activation: str = "relu", padding: str = "SAME", pool: str | None = "max",
        pool_window: int = 2, dropout: float = 0.0, rank: int = 2, w_init: Any = None) -> Model:
    """A convolutional net: (conv -> activation [-> pool]) per entry of `conv`, flatten,
    (dense -> activation [-> dropout]) per entry of `dense`, dense(out).

    Args:
      conv: output channels of each convolution.
      dense: widths of the hidden dense layers after flattening.
      rank: 2 for images (N, H, W, C) with conv2d, 1 for sequences (N, L, C) with conv1d.
      pool: "max", "avg" or None.
    """
    if rank not in (1, 2):
        raise ValueError(f"cnn: rank must be 1 or 2, got {rank!r}")
    if pool not in ("max", "avg", None):
        raise ValueError(f"cnn: pool must be 'max', 'avg' or None, got {pool!r}")
    w_init = w_init or default_w_init(activation)
    specs: list[LayerSpec] = []
    for c in conv:
        specs += [layer(f"conv{rank}d", features=int(c), kernel_size=kernel_size,
                        padding=padding, w_init=w_init), layer(activation)]
        if pool:
            specs.append(layer(f"{pool}_pool{rank}d", window=pool_window))
    specs.append(layer("flatten"))
    for width in dense:
        specs += [layer("dense", features=int(width), w_init=w_init), layer(activation)]
        if dropout:
            specs.append(layer("dropout", drop_rate=dropout))
    specs.append(layer("dense", features=int(out), w_init=w_init))
    return Model(tuple(specs))
