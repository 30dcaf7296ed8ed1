"""Sequential models: a tuple of `LayerSpec`s with an `init` and an `apply`.

A model's parameters mirror its layer list: ``params[i]`` is the dict of layer ``i`` (``{}`` for
parameterless layers), so ``params`` is a plain list of dicts. Build a model from layer specs
(`sequential`), or with the `mlp`, `cnn` and `autoencoder` shorthands::

    model = sequential([("flatten", {}), ("dense", {"features": 128}), ("relu", {}),
                        ("dense", {"features": 10})])
    params = model.init(key, input_shape=(8, 8, 1))
    logits = model.apply(params, x)                      # evaluation
    logits = model.apply(params, x, key=k, train=True)   # dropout active
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnfun.layers import LAYERS, Layer, get_layer, init_layer
from nnfun.spec import LayerSpec, with_tied_weights

__all__ = ["Model", "available_layers", "layer_arguments", "layer", "sequential", "init_model",
           "model_apply", "param_count", "default_w_init", "mlp", "cnn", "autoencoder",
           "encoder_layers", "summary"]

Array = jax.Array
Params = list[dict[str, Array]]


def available_layers() -> list[str]:
    """Every layer name a model may use: the keys of `nnfun.layers.LAYERS`."""
    return sorted(LAYERS)


def _keywords(fn: Any, drop: set[str]) -> set[str]:
    ps = inspect.signature(fn).parameters.values()
    return {p.name for p in ps if p.kind is p.KEYWORD_ONLY} - drop


def layer_arguments(name: str) -> tuple[set[str], set[str]]:
    """The (initialiser, apply) keyword names a layer spec may carry: the keyword-only
    arguments of the table entry's ``init`` (less ``dtype``) and ``apply`` (less ``key`` and
    ``train``)."""
    entry = get_layer(name)
    init_keys = _keywords(entry.init, {"dtype"}) if entry.init is not None else set()
    return init_keys, _keywords(entry.apply, {"key", "train"})


def _required(entry: Layer) -> set[str]:
    """Keyword arguments without a default, of the init and the apply."""
    fns = [f for f in (entry.init, entry.apply) if f is not None]
    return {p.name for f in fns for p in inspect.signature(f).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in ("dtype",)}


def layer(name: str, *, tie: int | None = None, **kwargs: Any) -> LayerSpec:
    """Builds a `LayerSpec`, sorting `kwargs` into initialiser and apply arguments.

    Args:
      tie: for a layer with a weight ``w`` (dense): the index of an earlier such layer whose
        weight, transposed, this one uses (tied weights; see `LayerSpec.tie`).

    Raises:
      ValueError: for an unknown layer, an unknown argument, or a missing required one
        (``features`` of dense, ``drop_rate`` of dropout).
    """
    if tie is not None and (isinstance(tie, bool) or not isinstance(tie, int) or tie < 0):
        raise ValueError(f"layer {name!r}: tie must be the index of an earlier layer, got "
                         f"{tie!r}")
    init_keys, apply_keys = layer_arguments(name)
    unknown = set(kwargs) - init_keys - apply_keys
    if unknown:
        raise ValueError(f"layer {name!r}: unknown argument(s) {sorted(unknown)}; expected "
                         f"some of {sorted(init_keys | apply_keys)}")
    missing = _required(LAYERS[name]) - set(kwargs)
    if missing:
        raise ValueError(f"layer {name!r}: missing required argument {sorted(missing)[0]!r}")
    return LayerSpec.make(name, {k: v for k, v in kwargs.items() if k in init_keys},
                          {k: v for k, v in kwargs.items() if k in apply_keys},
                          stochastic=LAYERS[name].stochastic, tie=tie)


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
        """The output shape for one example of `input_shape` (without running the model), in
        the dtype of the parameters."""
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        x = jax.ShapeDtypeStruct((1, *input_shape), dtype)
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


def _layer_apply(entry: Layer, spec: LayerSpec, p: dict[str, Array], x: Array,
                 key: Array | None, train: bool) -> Array:
    if spec.stochastic:
        return entry.apply(p, x, key=key, train=train, **spec.apply_kwargs)
    return entry.apply(p, x, **spec.apply_kwargs)


def init_model(key: Array, layers: Sequence[LayerSpec], input_shape: Sequence[int],
               dtype: Any = jnp.float32) -> Params:
    """Parameters of every layer, threading the shape through the model: layer ``i`` gets
    ``jax.random.split(key, len(layers))[i]``.

    Raises:
      ValueError: naming the layer whose input shape does not fit.
    """
    shape = tuple(int(s) for s in input_shape)
    params: Params = []
    keys = jax.random.split(key, max(len(layers), 1))
    for i, spec in enumerate(layers):
        try:
            shape_out, p = init_layer(get_layer(spec.name), keys[i], shape, dtype=dtype,
                                      init_kwargs=spec.init_kwargs,
                                      apply_kwargs=spec.apply_kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"layers[{i}] ({spec.name}) with input shape (N, "
                             f"{', '.join(map(str, shape))}): {e}") from None
        params.append(_untie(layers, i, p, params))
        shape = shape_out
    return params


def _untie(layers: Sequence[LayerSpec], i: int, p: dict[str, Any],
           earlier: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Layer i's own parameters: without ``w`` when it is tied to an earlier layer's weight
    (checked to exist with the transposed shape); a one-line ValueError otherwise."""
    tie = layers[i].tie
    if tie is None:
        return p
    where = f"layers[{i}] ({layers[i].name}) tie={tie}"
    if tie >= i or "w" not in p or "w" not in earlier[tie]:
        raise ValueError(f"{where}: expected an earlier layer with a weight w, in a layer "
                         f"with one")
    want, found = tuple(p["w"].shape), tuple(earlier[tie]["w"].shape)
    if found != want[::-1]:
        raise ValueError(f"{where}: layers[{tie}].w has shape {found}; tying needs its "
                         f"transpose to be this layer's {want}")
    return {k: v for k, v in p.items() if k != "w"}


def model_apply(params: Params, x: Array, layers: Sequence[LayerSpec], *,
                key: Array | None = None, train: bool = False,
                table: Mapping[str, Layer] | None = None) -> Array:
    """Runs layers in order; stochastic layer ``i`` gets ``jax.random.fold_in(key, i)``.

    Args:
      table: the layer table to run (default `nnfun.layers.LAYERS`; `nnfun.fast.fast_layers`
        gives one with a CPU's faster variants).
    """
    table = LAYERS if table is None else table
    if len(params) != len(layers):
        raise ValueError(f"params: expected {len(layers)} entries (one per layer), "
                         f"got {len(params)}")
    for i, (spec, p) in enumerate(zip(layers, with_tied_weights(layers, params))):
        k = None
        if spec.stochastic and train and key is not None:
            k = jax.random.fold_in(key, i)
        x = _layer_apply(table[spec.name], spec, p, x, k, train)
    return x


def param_count(params: Any) -> int:
    """Number of scalar parameters in a tree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


def default_w_init(activation: str) -> str:
    """He for the rectifier family, Xavier otherwise (the notes' advice)."""
    return "he_normal" if activation in ("relu", "leaky_relu", "elu") else "xavier_normal"


def mlp(hidden: Sequence[int], out: int, *, activation: str = "relu",
        out_activation: str | None = None, dropout: float = 0.0, bias: bool = True,
        w_init: Any = None, b_init: Any = "zeros", flatten: bool = False) -> Model:
    """A multilayer perceptron: [flatten] -> (dense -> activation [-> dropout]) * len(hidden)
    -> dense(out) [-> out_activation].

    Args:
      hidden: widths of the hidden layers (may be empty: a linear / logistic model).
      out: number of outputs.
      activation: hidden activation name.
      w_init: initialiser for every dense weight; default by `default_w_init(activation)`.
      b_init: initialiser for every dense bias.
      flatten: put a flatten layer first (for image inputs).
    """
    w_init = w_init or default_w_init(activation)
    specs: list[LayerSpec] = [layer("flatten")] if flatten else []
    for width in hidden:
        specs += [layer("dense", features=int(width), bias=bias, w_init=w_init, b_init=b_init),
                  layer(activation)]
        if dropout:
            specs.append(layer("dropout", drop_rate=dropout))
    specs.append(layer("dense", features=int(out), bias=bias, w_init=w_init, b_init=b_init))
    if out_activation:
        specs.append(layer(out_activation))
    return Model(tuple(specs))


def cnn(conv: Sequence[int], dense: Sequence[int], out: int, *, kernel_size: int = 3,
        activation: str = "relu", padding: str = "SAME", pool: str | None = "max",
        pool_window: int = 2, dropout: float = 0.0, rank: int = 2, w_init: Any = None,
        b_init: Any = "zeros") -> Model:
    """A convolutional net: (conv -> activation [-> pool]) per entry of `conv`, flatten,
    (dense -> activation [-> dropout]) per entry of `dense`, dense(out).

    Args:
      conv: output channels of each convolution.
      dense: widths of the hidden dense layers after flattening.
      rank: 2 for images (N, H, W, C) with conv2d, 1 for sequences (N, L, C) with conv1d.
      pool: "max", "avg" or None.
      w_init, b_init: initialisers of every weight and bias.
    """
    if rank not in (1, 2):
        raise ValueError(f"cnn: rank must be 1 or 2, got {rank!r}")
    if pool not in ("max", "avg", None):
        raise ValueError(f"cnn: pool must be 'max', 'avg' or None, got {pool!r}")
    w_init = w_init or default_w_init(activation)
    specs: list[LayerSpec] = []
    for c in conv:
        specs += [layer(f"conv{rank}d", features=int(c), kernel_size=kernel_size,
                        padding=padding, w_init=w_init, b_init=b_init), layer(activation)]
        if pool:
            specs.append(layer(f"{pool}_pool{rank}d", window=pool_window))
    specs.append(layer("flatten"))
    for width in dense:
        specs += [layer("dense", features=int(width), w_init=w_init, b_init=b_init),
                  layer(activation)]
        if dropout:
            specs.append(layer("dropout", drop_rate=dropout))
    specs.append(layer("dense", features=int(out), w_init=w_init, b_init=b_init))
    return Model(tuple(specs))


def autoencoder(features: int, encoder: Sequence[int], code: int, *,
                activation: str = "relu", code_activation: str | None = None,
                out_activation: str | None = None, noise_stddev: float = 0.0,
                tied: bool = False, flatten: bool = False, w_init: Any = None,
                b_init: Any = "zeros") -> Model:
    """A dense autoencoder: [gaussian_noise] [-> flatten] -> encoder (dense -> activation per
    entry of `encoder`) -> dense(code) [-> code_activation] -> decoder (the encoder's widths in
    reverse, dense -> activation) -> dense(features) [-> out_activation].

    Trained with ``data.targets = "inputs"`` (the targets are the preprocessed inputs) and a
    reconstruction loss such as ``mean_squared_error``; layer ``2 * len(encoder) + 1`` (the
    bottleneck, after `code_activation` when given: see `encoder_layers`) gives the code.

    Args:
      features: the width of one (flattened) input, which the decoder reproduces.
      encoder: widths of the encoder's hidden layers (may be empty: a linear encoder).
      code: the bottleneck width (2 for a code space that can be drawn).
      code_activation: activation after the bottleneck (None: a linear code, which with a
        linear encoder and decoder spans the same subspace as PCA).
      out_activation: activation of the reconstruction ("sigmoid" for inputs in [0, 1]).
      noise_stddev: > 0 makes a denoising autoencoder: Gaussian noise of this standard
        deviation is added to the input in training only (the ``gaussian_noise`` layer); the
        target stays the clean input.
      tied: each decoder dense layer uses the transposed weight of the encoder layer it
        mirrors (``LayerSpec.tie``) and owns only its bias: about half the weights.
      flatten: put a flatten layer before the encoder (image inputs).
      w_init, b_init: initialisers of every weight and bias; w_init by
        `default_w_init(activation)` when None.
    """
    w_init = w_init or default_w_init(activation)
    specs: list[LayerSpec] = [layer("gaussian_noise", stddev=float(noise_stddev))] \
        if noise_stddev else []
    specs += [layer("flatten")] if flatten else []
    mirrored: list[int] = []  # the encoder's dense layers, bottleneck last

    def dense(width: int, role: str) -> LayerSpec:
        tie = mirrored.pop() if tied and role == "decoder" else None
        if role == "encoder":
            mirrored.append(len(specs))
        return layer("dense", features=int(width), w_init=w_init, b_init=b_init, tie=tie)

    for width in encoder:
        specs += [dense(width, "encoder"), layer(activation)]
    specs.append(dense(code, "encoder"))
    specs += [layer(code_activation)] if code_activation else []
    for width in reversed(encoder):
        specs += [dense(width, "decoder"), layer(activation)]
    specs.append(dense(features, "decoder"))
    if out_activation:
        specs.append(layer(out_activation))
    return Model(tuple(specs))


def encoder_layers(model: Model) -> Model:
    """The encoder of a model built by `autoencoder`: its first layers, up to the bottleneck
    and its activation. With ``k = len(encoder_layers(m).layers)``,
    ``encoder_layers(m).apply(params[:k], x)`` maps inputs to codes (input noise, if any, is
    the identity at evaluation)."""
    layers = model.layers
    dense = [i for i, s in enumerate(layers) if s.name == "dense"]
    if not dense or len(dense) % 2:
        raise ValueError(f"encoder_layers: expected an even number of dense layers (encoder "
                         f"and decoder), found {len(dense)}")
    end = dense[len(dense) // 2 - 1] + 1
    if end < len(layers) and layers[end].name != "dense":
        end += 1  # the code's activation
    return Model(tuple(layers[:end]))


def summary(layers: Sequence[LayerSpec], input_shape: Sequence[int],
            dtype: Any = jnp.float32) -> list[tuple[str, tuple[int, ...], int]]:
    """One row per layer: ``(name, output shape (N, ...), parameter count)``, computed from
    shapes alone (`jax.eval_shape`), so no parameter is materialised.

    Raises:
      ValueError: naming the layer whose input shape does not fit.
    """
    rows, shape = [], tuple(int(s) for s in input_shape)
    for i, spec in enumerate(layers):
        found: dict[str, tuple[int, ...]] = {}

        def init(k: Array, spec: LayerSpec = spec, shape: tuple[int, ...] = shape,
                 found: dict = found) -> Any:
            found["shape"], p = init_layer(get_layer(spec.name), k, shape, dtype=dtype,
                                           init_kwargs=spec.init_kwargs,
                                           apply_kwargs=spec.apply_kwargs)
            return p

        try:
            structs = jax.eval_shape(init, jax.random.PRNGKey(0))
        except (ValueError, TypeError) as e:
            raise ValueError(f"layers[{i}] ({spec.name}) with input shape (N, "
                             f"{', '.join(map(str, shape))}): {e}") from None
        shape = found["shape"]
        own = {k: v for k, v in structs.items() if spec.tie is None or k != "w"}
        rows.append((spec.name, shape, param_count(own)))
    return rows
