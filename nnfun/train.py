"""Training without I/O: the train state, the step, the epoch and evaluation.

The stages, in the order a run goes through them:

- `init_params` / `init_train_state` / `create_train_state`: parameters from a seed (no
  optimiser needed), and the `TrainState` (params, optimiser state, step, key) a run carries;
- `make_grad_fn`: ``(params, x, y, key) -> (objective, grads)`` from one of two engines,
  ``"autodiff"`` (`jax.value_and_grad` of `nnfun.objective`) or ``"manual"`` (the hand-written
  `nnfun.manual.model.value_and_grad`);
- `make_step_body`: one optimiser step, ``(state, (x, y)) -> (state, metrics)``;
  `make_train_step` is it jitted;
- `make_train_epoch`: one shuffled epoch, ``(state, x, y, epoch) -> (state, metrics)``, as a
  compiled `lax.scan` (`make_epoch_fn`) or a Python loop of jitted steps;
- `make_eval_fn`: loss and accuracy (or reconstruction error) of a parameter set on a data
  split.

Every epoch draws its permutation from ``fold_in(fold_in(key, 1), epoch)`` and gathers the
shuffled batches once; every step's dropout key is ``fold_in(fold_in(key, 2), step)``. So the
scan and the loop produce the same states, and a stopped run resumes exactly.

The functions returned here are plain `jax.jit` functions unless a ``compiler_options`` dict
is passed (nnfun's run driver passes `nnfun.fast.compiler_options` on a CPU), so they nest in
a user's own `jax.jit`, `lax.scan` or `vmap`. The batch axis is the leading axis of every
array in a batch, so it can be sharded across devices without changing these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nnfun import fast as fast_lib
from nnfun.layers import get_layer
from nnfun.losses import get_loss, make_targets, predict_labels
from nnfun.manual.model import value_and_grad as manual_value_and_grad
from nnfun.models import init_model, model_apply
from nnfun.objective import make_objective
from nnfun.spec import LayerSpec, LossSpec, RegSpec

__all__ = ["TrainState", "ENGINES", "init_params", "init_train_state", "create_train_state",
           "make_grad_fn", "param_layer_labels", "layer_grad_norms", "dropout_key",
           "make_step_body", "make_train_step", "epoch_permutation", "make_epoch_fn",
           "make_train_epoch", "make_eval_fn", "make_engine_crosscheck"]

Array = jax.Array
Batch = tuple[Array, Array]
ENGINES = ("autodiff", "manual")
_PARAMS, _SHUFFLE, _DROPOUT = 0, 1, 2


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


def init_params(seed: int, layers: Sequence[LayerSpec], input_shape: Sequence[int],
                dtype: Any = jnp.float32) -> list[dict[str, Array]]:
    """A model's parameters from a seed: `nnfun.models.init_model` with
    ``fold_in(PRNGKey(seed), 0)``, the parameters `init_train_state` starts from."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _PARAMS)
    return init_model(key, layers, input_shape, dtype)


def create_train_state(params: Any, optimizer: optax.GradientTransformation,
                       seed: int = 0) -> TrainState:
    """A `TrainState` at step 0 from parameters you already have; `seed` keys the shuffles and
    dropout masks."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                      jax.random.PRNGKey(seed))


def init_train_state(seed: int, layers: Sequence[LayerSpec], input_shape: Sequence[int],
                     optimizer: optax.GradientTransformation,
                     dtype: Any = jnp.float32) -> TrainState:
    """`create_train_state` of `init_params`: parameters and run key from one seed."""
    return create_train_state(init_params(seed, layers, input_shape, dtype), optimizer, seed)


def make_grad_fn(layers: Sequence[LayerSpec], loss: LossSpec,
                 regularizers: Sequence[RegSpec] = (), *, engine: str = "autodiff",
                 fast_paths: bool = False) -> Callable[..., tuple[Array, Any]]:
    """``(params, x, y, key) -> (objective value, grads)`` from the chosen engine.

    Args:
      engine: "autodiff" or "manual".
      fast_paths: use `nnfun.fast.fast_layers` (autodiff) or the kernels of
        `nnfun.manual.fast` (manual): the same values, computed faster on a CPU.
    """
    if engine == "autodiff":
        table = fast_lib.fast_layers() if fast_paths else None
        return jax.value_and_grad(make_objective(layers, loss, regularizers, table=table))
    if engine == "manual":
        return manual_value_and_grad(tuple(layers), loss, tuple(regularizers), fast=fast_paths)
    raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")


def param_layer_labels(layers: Sequence[LayerSpec]) -> list[str]:
    """``"<index>.<name>"`` for every layer that has parameters (weights or biases)."""
    return [f"{i}.{s.name}" for i, s in enumerate(layers) if get_layer(s.name).has_params]


def layer_grad_norms(layers: Sequence[LayerSpec], grads: Sequence[Any]) -> Array:
    """The L2 norm of each parameterised layer's gradient, in `param_layer_labels` order."""
    norms = [jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree_util.tree_leaves(g)))
             for s, g in zip(layers, grads) if get_layer(s.name).has_params]
    return jnp.stack(norms) if norms else jnp.zeros((0,))


def dropout_key(state: TrainState) -> Array:
    """The key of the current step: ``fold_in(fold_in(state.key, 2), state.step)``."""
    return jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT), state.step)


def make_step_body(layers: Sequence[LayerSpec], loss: LossSpec,
                   regularizers: Sequence[RegSpec], optimizer: optax.GradientTransformation, *,
                   engine: str = "autodiff", grad_norm_every: int = 1,
                   fast_paths: bool = False) -> Callable[[TrainState, Batch], tuple]:
    """The un-jitted train step ``(state, (x, y)) -> (state, {"loss", "grad_norms"})``.

    Args:
      engine, fast_paths: as in `make_grad_fn`.
      grad_norm_every: measure `layer_grad_norms` on the steps whose index (``state.step``
        before the update) is a multiple of this; on other steps ``grad_norms`` is NaN. 1
        measures every step; 0 leaves the ``grad_norms`` metric out. The norms are an extra
        pass over the gradients, so a sparse sample is the cheap way to watch them.
    """
    if isinstance(grad_norm_every, bool) or not isinstance(grad_norm_every, int) \
            or grad_norm_every < 0:
        raise ValueError(f"grad_norm_every: expected an int >= 0, got {grad_norm_every!r}")
    grad_fn = make_grad_fn(layers, loss, regularizers, engine=engine, fast_paths=fast_paths)
    layers = tuple(layers)

    def norms(state: TrainState, grads: Any) -> Array:
        measure = lambda g: layer_grad_norms(layers, g)  # noqa: E731
        if grad_norm_every == 1:
            return measure(grads)
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
                    engine: str = "autodiff", donate: bool = True, grad_norm_every: int = 1,
                    fast_paths: bool = False,
                    compiler_options: dict[str, Any] | None = None) -> Callable[..., tuple]:
    """`make_step_body` jitted; the state's buffers are donated (do not reuse `state`) unless
    ``donate=False``."""
    body = make_step_body(layers, loss, regularizers, optimizer, engine=engine,
                          grad_norm_every=grad_norm_every, fast_paths=fast_paths)
    return jax.jit(body, donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options)


def epoch_permutation(key: Array, epoch: Array | int, num_examples: int, batch_size: int) -> Array:
    """Batch indices (steps, batch_size) of one epoch; the remainder is dropped."""
    steps = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch),
                                  num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def _epoch_batches(key: Array, x: Array, y: Array, epoch: Array, batch_size: int) -> Batch:
    """The epoch's shuffled batches (steps, batch_size, ...), gathered in one go."""
    idx = epoch_permutation(key, epoch, x.shape[0], batch_size)
    return x[idx], y[idx]


def make_epoch_fn(step_body: Callable[[TrainState, Batch], tuple], batch_size: int, *,
                  unroll: int | bool = 1,
                  compiler_options: dict[str, Any] | None = None) -> Callable[..., tuple]:
    """One shuffled epoch in one compiled call: ``(state, x, y, epoch) -> (state, metrics)``,
    each metric stacked over the epoch's steps. The batches are gathered once, then a
    `lax.scan` runs the steps over them. `state` is donated."""

    def epoch_fn(state: TrainState, x: Array, y: Array, epoch: Array) -> tuple:
        batches = _epoch_batches(state.key, x, y, epoch, batch_size)
        return jax.lax.scan(step_body, state, batches, unroll=unroll)

    return jax.jit(epoch_fn, donate_argnums=(0,), compiler_options=compiler_options)


def make_train_epoch(step_body: Callable[[TrainState, Batch], tuple], batch_size: int, *,
                     dispatch: str = "scan",
                     compiler_options: dict[str, Any] | None = None) -> Callable[..., tuple]:
    """``train_epoch(state, x, y, epoch, should_stop=None) -> (state, metrics)``: the rest of
    epoch `epoch` from ``state.step``, each metric stacked over the steps run.

    Args:
      dispatch: "scan" runs a whole epoch as `make_epoch_fn`; "loop" gathers the batches once
        and runs one jitted step per batch from Python (`nnfun.fast.choose_dispatch` says
        which is faster). Both give the same states.
      compiler_options: passed to every `jax.jit` (None: XLA's defaults).

    The returned function also runs a partial epoch (a run resumed from a mid-epoch
    checkpoint) step by step, and with the loop dispatch it returns early, after the step at
    which ``should_stop()`` first returns True. ``done``, the number of this epoch's steps
    already taken, is read from ``state.step`` when not given; giving it (0 for a fresh epoch)
    lets the next epoch be dispatched before the previous one has finished.
    """
    if dispatch not in ("scan", "loop"):
        raise ValueError(f"dispatch: expected 'scan' or 'loop', got {dispatch!r}")
    jit = lambda f, **kw: jax.jit(f, compiler_options=compiler_options, **kw)  # noqa: E731
    scan_epoch = make_epoch_fn(step_body, batch_size, compiler_options=compiler_options)
    batches = jit(_epoch_batches, static_argnums=(4,))
    # one dispatch per step: the row is picked on the device from state.step
    one_step = jit(lambda s, xb, yb: step_body(s, jax.tree.map(
        lambda b: jax.lax.dynamic_index_in_dim(b, s.step % b.shape[0], keepdims=False),
        (xb, yb))), donate_argnums=(0,))

    def train_epoch(state: TrainState, x: Array, y: Array, epoch: int,
                    should_stop: Callable[[], bool] | None = None, *,
                    done: int | None = None) -> tuple:
        steps = x.shape[0] // batch_size
        if done is None:  # steps of this epoch already taken; reading them waits for `state`
            done = int(state.step) - epoch * steps
        if dispatch == "scan" and done == 0:
            return scan_epoch(state, x, y, jnp.asarray(epoch))
        xb, yb = batches(state.key, x, y, jnp.asarray(epoch), batch_size)
        metrics = []
        for _ in range(done, steps):
            state, m = one_step(state, xb, yb)
            metrics.append(m)
            if should_stop is not None and should_stop():
                break
        return state, jax.tree.map(lambda *v: jnp.stack(v), *metrics) if metrics else {}

    return train_epoch


def make_eval_fn(layers: Sequence[LayerSpec], loss: LossSpec, num_classes: int, *,
                 chunk: int = 1024, reconstruction: bool = False,
                 compiler_options: dict[str, Any] | None = None
                 ) -> Callable[[Any, Array, Array], dict[str, Array]]:
    """A jitted ``evaluate(params, x, labels) -> {"loss", "accuracy", "per_class_accuracy"}``.

    The model runs in evaluation mode over chunks of `chunk` examples (`jax.lax.map`), so memory
    stays bounded. The loss is the data loss only (no penalty), averaged over examples.
    Accuracy entries are present for classification (num_classes > 0); with
    ``reconstruction=True`` (the targets are the inputs) ``"reconstruction_error"``, the mean
    squared difference between output and target over all their entries, whatever the loss.
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
        if reconstruction:
            out["reconstruction_error"] = jnp.mean(jnp.square(preds - labels))
        return out

    return jax.jit(evaluate, compiler_options=compiler_options)


def make_engine_crosscheck(layers: Sequence[LayerSpec], loss: LossSpec,
                           regularizers: Sequence[RegSpec] = ()) -> Callable[..., Array]:
    """A jitted ``(params, x, y, key) -> max relative difference`` between the two engines'
    gradients, leaf by leaf: max |g_auto - g_manual| / max |g_auto|. Both engines run their
    canonical form (no fast paths), so the check compares two independent algorithms."""
    auto = make_grad_fn(layers, loss, regularizers, engine="autodiff")
    manual = make_grad_fn(layers, loss, regularizers, engine="manual")

    def check(params: Any, x: Array, y: Array, key: Array) -> Array:
        ga, gm = auto(params, x, y, key)[1], manual(params, x, y, key)[1]
        rel = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)) /
                           jnp.maximum(jnp.max(jnp.abs(a)), 1e-30), ga, gm)
        leaves = jax.tree_util.tree_leaves(rel)
        return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros(())

    return jax.jit(check)
