"""Training without I/O: the train state, jit-compiled steps, scanned epochs and evaluation.

`make_train_step` builds a pure ``step(state, (x, y)) -> (state, metrics)`` whose gradient comes
from one of two engines: ``"autodiff"`` (`jax.value_and_grad` of `nnfun.objective`) or
``"manual"`` (the hand-written `nnfun.manual.model.value_and_grad`). `make_epoch_fn` runs a whole
shuffled epoch inside one compiled `jax.lax.scan`; `make_permuted_step` runs the same steps from
a Python loop (the fast path for conv models on the autodiff engine), and `make_indexed_step`
runs one step on any batch indices.
Both produce the same sequence of states: they draw the same permutation and the same dropout
keys (``fold_in(fold_in(key, 2), step)``), so a run can be stopped and resumed exactly.

The batch axis is the leading axis of every array in a batch, so it can be sharded across
devices with `jax.sharding` without changing these functions.

Every function compiled here is compiled with `compiler_options(layers)`: on a CPU backend,
copy insertion that drops the per-step copy of the parameters (`CPU_COMPILER_OPTIONS`) and, for
a model with convolutions, XLA's own convolution instead of the YNNPACK library call that
XLA:CPU uses by default (`CPU_CONV_COMPILER_OPTIONS`); on other backends XLA's defaults.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnfun.losses import get_loss
from nnfun.manual.model import value_and_grad as manual_value_and_grad
from nnfun.models import init_model, model_apply
from nnfun.objective import make_objective
from nnfun.spec import LayerSpec, LossSpec, RegSpec

Array = jax.Array
Batch = tuple[Array, Array]
ENGINES = ("autodiff", "manual")
DISPATCHES = ("auto", "scan", "loop")
_SHUFFLE, _DROPOUT = 1, 2

#: XLA options for every function nnfun compiles on a CPU backend (`compiler_options`). Copy
#: insertion with region analysis proves that a step reads the old parameters before it writes
#: their update, so XLA:CPU drops the copy of them it otherwise makes on every step: of the
#: weights whose input gradient is taken (three per MLP step; the LeNet-like CNN's 12.8 MB dense
#: weight), bitwise the same results. Measured on 2 cores (interleaved A/B, paired medians):
#: MNIST-1D MLP epoch 1.07-1.12x, MLP 784-512-512 1.03x, small MLP 0.96-1.04x, MNIST-1D CNN
#: 1.05x, LeNet-like 0.98-1.00x; XLA's scratch per call 0.70x on the MNIST-1D MLP
#: (2.76 -> 1.93 MiB). See experiments/benchmarks/findings.md.
CPU_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_copy_insertion_use_region_analysis": True,
}
#: Added for models with a convolution. XLA:CPU (jax 0.10) hands single dots, convolutions and
#: reductions to the YNNPACK library by default, and its reduction fusions can pull a
#: convolution in with them; this keeps YNNPACK for single dots only, so every convolution runs
#: on XLA's own (Eigen) kernels. Measured on 2 cores by
#: ``python experiments/benchmarks/xla_options.py`` (results in xla_options.md next to it): a
#: convolution's forward plus both gradients 2.3x faster on LeNet's 5x5x32 -> 64 layer at
#: batch 128, 2.0x on a 16x16x16, 3x3 -> 32 layer, equal on the small digits and MNIST-1D
#: layers; train steps: LeNet-like 1.9x, digits CNN 1.1-1.2x, MNIST-1D CNN and MLPs within
#: noise, so `compiler_options` adds them for models with convolutions only.
#: Edit or clear these dicts before building steps.
CPU_CONV_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


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


def compiler_options(layers: Sequence[LayerSpec] | None = None,
                     backend: str | None = None) -> dict[str, Any] | None:
    """The ``compiler_options`` nnfun passes to `jax.jit` for a model made of `layers`: on a CPU
    backend `CPU_COMPILER_OPTIONS`, plus `CPU_CONV_COMPILER_OPTIONS` for a model with a
    convolution or when `layers` is None (not known); None (XLA's defaults) on other backends,
    when both dicts are empty, or when this jaxlib rejects them. `backend` defaults to
    `jax.default_backend()`."""
    if (backend or jax.default_backend()) != "cpu":
        return None
    merged = dict(CPU_COMPILER_OPTIONS)
    if layers is None or uses_convolution(layers):
        merged.update(CPU_CONV_COMPILER_OPTIONS)
    if not merged:
        return None
    options = tuple(sorted(merged.items()))
    return dict(options) if _accepted(options) else None


def _jit(fun: Callable, layers: Sequence[LayerSpec] | None, **kwargs: Any) -> Callable:
    return jax.jit(fun, compiler_options=compiler_options(layers), **kwargs)


class TrainState(NamedTuple):
    """Everything a run needs to continue: a pytree, so it can be jitted, donated and saved.

    Attributes:
      params: list of per-layer parameter dicts.
      opt_state: the optax state.
      step: int32 scalar, number of steps taken.
      key: uint32[2] base key of the run; per-step keys are folded from it.
    """

    params: Any
    opt_state: Any
    step: Array
    key: Array


def init_train_state(seed: int, layers: Sequence[LayerSpec], input_shape: Sequence[int],
                     optimizer: optax.GradientTransformation,
                     dtype: Any = jnp.float32) -> TrainState:
    """Initialises parameters with ``fold_in(PRNGKey(seed), 0)`` and the optimiser state."""
    key = jax.random.PRNGKey(seed)
    params = init_model(jax.random.fold_in(key, 0), layers, input_shape, dtype)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), key)


def make_grad_fn(layers: Sequence[LayerSpec], loss: LossSpec,
                 regularizers: Sequence[RegSpec] = (), *,
                 engine: str = "autodiff") -> Callable[..., tuple[Array, Any]]:
    """``(params, x, y, key) -> (objective value, grads)`` from the chosen engine."""
    if engine == "autodiff":
        return jax.value_and_grad(make_objective(layers, loss, regularizers))
    if engine == "manual":
        return manual_value_and_grad(tuple(layers), loss, tuple(regularizers))
    raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")


def layer_names(layers: Sequence[LayerSpec]) -> list[str]:
    """``"<index>.<name>"`` for every layer that has parameters (weights or biases)."""
    return [f"{i}.{s.name}" for i, s in enumerate(layers) if s.init]


def layer_grad_norms(layers: Sequence[LayerSpec], grads: Sequence[Any]) -> Array:
    """The L2 norm of each parameterised layer's gradient, in `layer_names` order."""
    norms = [jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree_util.tree_leaves(g)))
             for s, g in zip(layers, grads) if s.init]
    return jnp.stack(norms) if norms else jnp.zeros((0,))


def dropout_key(state: TrainState) -> Array:
    """The key of the current step: ``fold_in(fold_in(state.key, 2), state.step)``."""
    return jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT), state.step)


def make_step_body(layers: Sequence[LayerSpec], loss: LossSpec,
                   regularizers: Sequence[RegSpec], optimizer: optax.GradientTransformation, *,
                   engine: str = "autodiff",
                   grad_norm_every: int = 1) -> Callable[[TrainState, Batch], tuple]:
    """The un-jitted train step ``(state, (x, y)) -> (state, {"loss", "grad_norms"})``.

    Args:
      grad_norm_every: measure `layer_grad_norms` on the steps whose index (``state.step``
        before the update) is a multiple of this; on other steps ``grad_norms`` is NaN. 1 measures
        every step; 0 leaves the ``grad_norms`` metric out. The reductions cost a full extra pass
        over the gradients (measured 5-20% of a small MLP's step on a CPU), so a sparse sample is
        the cheap way to watch them.
    """
    if isinstance(grad_norm_every, bool) or not isinstance(grad_norm_every, int) \
            or grad_norm_every < 0:
        raise ValueError(f"grad_norm_every: expected an int >= 0, got {grad_norm_every!r}")
    grad_fn = make_grad_fn(layers, loss, regularizers, engine=engine)
    layers = tuple(layers)

    def norms(state: TrainState, grads: Any) -> Array:
        if grad_norm_every == 1:
            return layer_grad_norms(layers, grads)
        measure = lambda g: layer_grad_norms(layers, g)  # noqa: E731
        out = jax.eval_shape(measure, grads)
        return jax.lax.cond(state.step % grad_norm_every == 0, measure,
                            lambda g: jnp.full(out.shape, jnp.nan, out.dtype), grads)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        x, y = batch
        value, grads = grad_fn(state.params, x, y, dropout_key(state))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value}
        if grad_norm_every:
            metrics["grad_norms"] = norms(state, grads)
        return TrainState(params, opt_state, state.step + 1, state.key), metrics

    return step


def make_train_step(layers: Sequence[LayerSpec], loss: LossSpec,
                    regularizers: Sequence[RegSpec], optimizer: optax.GradientTransformation, *,
                    engine: str = "autodiff", donate: bool = True,
                    grad_norm_every: int = 1) -> Callable[..., tuple]:
    """The jit-compiled train step; the state's buffers are donated (do not reuse `state`).
    `grad_norm_every` as in `make_step_body`."""
    body = make_step_body(layers, loss, regularizers, optimizer, engine=engine,
                          grad_norm_every=grad_norm_every)
    return _jit(body, layers, donate_argnums=(0,) if donate else ())


def epoch_permutation(key: Array, epoch: Array | int, num_examples: int, batch_size: int) -> Array:
    """Batch indices (steps, batch_size) of one epoch; the remainder is dropped."""
    steps = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch),
                                  num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def make_epoch_fn(step_body: Callable[[TrainState, Batch], tuple], batch_size: int, *,
                  unroll: int | bool = 1,
                  layers: Sequence[LayerSpec] | None = None) -> Callable[..., tuple]:
    """One shuffled epoch in one compiled call: ``(state, x, y, epoch) -> (state, metrics)``
    where each metric is stacked over the epoch's steps. `state` is donated. `layers` (the
    model's) picks the `compiler_options`."""

    def epoch_fn(state: TrainState, x: Array, y: Array, epoch: Array) -> tuple:
        idx = epoch_permutation(state.key, epoch, x.shape[0], batch_size)
        return jax.lax.scan(lambda s, i: step_body(s, (x[i], y[i])), state, idx, unroll=unroll)

    return _jit(epoch_fn, layers, donate_argnums=(0,))


def make_indexed_step(step_body: Callable[[TrainState, Batch], tuple], *,
                      layers: Sequence[LayerSpec] | None = None) -> Callable[..., tuple]:
    """A jitted ``(state, x, y, idx) -> (state, metrics)`` that gathers its batch on device.
    `layers` (the model's) picks the `compiler_options`."""
    return _jit(lambda s, x, y, i: step_body(s, (x[i], y[i])), layers, donate_argnums=(0,))


def make_permuted_step(step_body: Callable[[TrainState, Batch], tuple], *,
                       layers: Sequence[LayerSpec] | None = None) -> Callable[..., tuple]:
    """A jitted ``(state, x, y, perm) -> (state, metrics)`` for the Python-loop dispatch: step
    ``state.step % len(perm)`` of the epoch whose batches are the rows of `perm` (its
    `epoch_permutation`), selected and gathered on the device. The same steps as
    `make_indexed_step` with ``perm[state.step % len(perm)]``, in one dispatch per step where
    indexing `perm` from Python would add an eager slice (~0.1 ms on a CPU). `state` is donated;
    `layers` (the model's) picks the `compiler_options`."""

    def step(s: TrainState, x: Array, y: Array, perm: Array) -> tuple:
        i = jax.lax.dynamic_index_in_dim(perm, s.step % perm.shape[0], keepdims=False)
        return step_body(s, (x[i], y[i]))

    return _jit(step, layers, donate_argnums=(0,))


def uses_convolution(layers: Sequence[LayerSpec]) -> bool:
    """True when the model has a convolution layer."""
    return any(s.name.startswith("conv") for s in layers)


def choose_dispatch(layers: Sequence[LayerSpec], requested: str = "auto",
                    engine: str = "autodiff") -> str:
    """"scan" or "loop". Automatic choice: a scanned epoch, except for conv models on the
    autodiff engine, which get a Python loop of jitted steps (on a CPU a scanned step with
    XLA's convolutions was measured 6.6x (digits CNN) to 16x (MNIST-1D CNN) slower than the
    same step in a loop). The manual engine's convolutions are im2col matmuls, with no
    convolution op for the scan to slow down, so its conv models keep the scanned epoch
    (measured 1.1-1.4x faster than its own loop: the step's buffers are allocated once per
    epoch instead of once per step)."""
    if requested not in DISPATCHES:
        raise ValueError(f"dispatch: expected one of {list(DISPATCHES)}, got {requested!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if requested != "auto":
        return requested
    return "loop" if engine == "autodiff" and uses_convolution(layers) else "scan"


# --------------------------------------------------------------------------- targets and metrics

_LOGIT_LOSSES = {"binary_cross_entropy_with_logits", "logistic_loss"}
_ONE_HOT_LOSSES = {"squared_error", "mean_squared_error", "binary_cross_entropy",
                   "binary_cross_entropy_with_logits", "logistic_loss"}


def make_targets(loss_name: str, labels: Array, out_dim: int, num_classes: int) -> Array:
    """Turns integer class labels into what `loss_name` expects from a model with `out_dim`
    outputs: labels for softmax / hinge, {0, 1} (or {-1, +1} for the logistic loss) one-hot or
    single-column targets for the others. Regression targets (num_classes == 0) pass through."""
    if num_classes == 0 or loss_name not in _ONE_HOT_LOSSES:
        return labels
    y = labels[:, None].astype(jnp.float32) if out_dim == 1 else jax.nn.one_hot(labels, out_dim)
    return 2.0 * y - 1.0 if loss_name == "logistic_loss" else y


def predict_labels(loss_name: str, preds: Array) -> Array:
    """Class predictions: argmax for several outputs; for one output, a threshold at the loss's
    decision boundary (0 for logits, 0.5 for probabilities and squared error on {0, 1})."""
    if preds.shape[-1] > 1:
        return jnp.argmax(preds, axis=-1)
    threshold = 0.0 if loss_name in _LOGIT_LOSSES else 0.5
    return (preds[:, 0] > threshold).astype(jnp.int32)


def make_eval_fn(layers: Sequence[LayerSpec], loss: LossSpec, num_classes: int, *,
                 chunk: int = 1024) -> Callable[[Any, Array, Array], dict[str, Array]]:
    """A jitted ``evaluate(params, x, labels) -> {"loss", "accuracy", "per_class_accuracy"}``.

    The model runs in evaluation mode over chunks of `chunk` examples (`jax.lax.map`), so memory
    stays bounded. The loss is the data loss only (no penalty), averaged over examples.
    Accuracy entries are present for classification (num_classes > 0).
    """
    layers, loss_fn = tuple(layers), get_loss(loss.name)
    loss_kw = {**dict(loss.kwargs), "reduction": "mean"}

    def evaluate(params: Any, x: Array, labels: Array) -> dict[str, Array]:
        n = x.shape[0]
        size = min(chunk, n)
        pad = (-n) % size
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        preds = jax.lax.map(lambda c: model_apply(params, c, layers),
                            xp.reshape(-1, size, *x.shape[1:]))
        preds = preds.reshape(-1, *preds.shape[2:])[:n]
        out = {"loss": loss_fn(preds, make_targets(loss.name, labels, preds.shape[-1],
                                                   num_classes), **loss_kw)}
        if num_classes:
            hit = (predict_labels(loss.name, preds) == labels).astype(jnp.float32)
            onehot = jax.nn.one_hot(labels, num_classes)
            out["accuracy"] = jnp.mean(hit)
            out["per_class_accuracy"] = (hit @ onehot) / jnp.maximum(onehot.sum(0), 1.0)
        return out

    return _jit(evaluate, layers)


def make_engine_crosscheck(layers: Sequence[LayerSpec], loss: LossSpec,
                           regularizers: Sequence[RegSpec] = ()) -> Callable[..., Array]:
    """A jitted ``(params, x, y, key) -> max relative difference`` between the two engines'
    gradients, leaf by leaf: max |g_auto - g_manual| / max |g_auto|."""
    auto = make_grad_fn(layers, loss, regularizers, engine="autodiff")
    manual = make_grad_fn(layers, loss, regularizers, engine="manual")

    def check(params: Any, x: Array, y: Array, key: Array) -> Array:
        ga, gm = auto(params, x, y, key)[1], manual(params, x, y, key)[1]
        rel = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)) /
                           jnp.maximum(jnp.max(jnp.abs(a)), 1e-30), ga, gm)
        leaves = jax.tree_util.tree_leaves(rel)
        return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())

    return _jit(check, layers)
