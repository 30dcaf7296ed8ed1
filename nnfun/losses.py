"""Losses of the autodiff path: `<loss>(pred, target, *, reduction="mean", ...) -> scalar`.

Every loss first computes one value per example (summing over all non-batch axes), then reduces
over the batch: ``reduction="mean"`` is lecture 003's (1/N) sum_i L_i, ``"sum"`` is the plain sum
of lecture 002 and of lecture 003's 20-line NumPy net. All are written stably (log-sum-exp,
log-sigmoid). Hand-written derivatives live in `nnfun.manual.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnfun.activations import log_softmax

__all__ = ["Loss", "LOSSES", "TARGET_KINDS", "REDUCTIONS", "get_loss", "get_loss_entry",
           "make_targets", "predict_labels", "squared_error", "mean_squared_error",
           "binary_cross_entropy_with_logits", "binary_cross_entropy", "logistic_loss",
           "softmax_cross_entropy", "multiclass_hinge"]

Array = jax.Array
REDUCTIONS = ("mean", "sum")


def _reduce(per_example: Array, reduction: str) -> Array:
    if reduction == "mean":
        return jnp.mean(per_example)
    if reduction == "sum":
        return jnp.sum(per_example)
    raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")


def _per_example_sum(v: Array) -> Array:
    return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def _check_same_shape(pred: Array, target: Array, loss: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{loss}: target shape {tuple(target.shape)} does not match "
                         f"prediction shape {tuple(pred.shape)}")


def squared_error(pred: Array, target: Array, *, half: bool = True,
                  reduction: str = "mean") -> Array:
    """(1/2) sum_k (pred_k - target_k)^2 per example (without the 1/2 when ``half=False``).

    Args:
      pred, target: (N, ...) of equal shape.
    """
    _check_same_shape(pred, target, "squared_error")
    per = _per_example_sum(jnp.square(pred - target))
    return _reduce(0.5 * per if half else per, reduction)


def mean_squared_error(pred: Array, target: Array, *, reduction: str = "mean") -> Array:
    """mean_k (pred_k - target_k)^2 per example, then the batch reduction."""
    _check_same_shape(pred, target, "mean_squared_error")
    d = jnp.square(pred - target).reshape(pred.shape[0], -1)
    return _reduce(jnp.mean(d, axis=1), reduction)


def binary_cross_entropy_with_logits(logits: Array, targets: Array, *,
                                     reduction: str = "mean") -> Array:
    """-sum_k [y_k log s(z_k) + (1 - y_k) log(1 - s(z_k))] per example (lecture 000's K-output
    sigmoid cost), with log s(z) = -softplus(-z) for stability.

    Args:
      logits: (N, K) pre-sigmoid scores z.
      targets: (N, K) in [0, 1].
    """
    _check_same_shape(logits, targets, "binary_cross_entropy_with_logits")
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    return _reduce(_per_example_sum(-(targets * log_p + (1.0 - targets) * log_not_p)), reduction)


def binary_cross_entropy(probs: Array, targets: Array, *, reduction: str = "mean") -> Array:
    """-sum_k [y_k log p_k + (1 - y_k) log(1 - p_k)] per example, on probabilities in (0, 1).

    Prefer `binary_cross_entropy_with_logits` when the logits are at hand: it cannot overflow.
    """
    _check_same_shape(probs, targets, "binary_cross_entropy")
    per = -(targets * jnp.log(probs) + (1.0 - targets) * jnp.log1p(-probs))
    return _reduce(_per_example_sum(per), reduction)


def logistic_loss(scores: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Logistic-regression loss log(1 + exp(-y s)) for labels y in {-1, +1}, summed over outputs.

    Args:
      scores: (N, K) real scores s.
      labels: (N, K) in {-1, +1}.
    """
    _check_same_shape(scores, labels, "logistic_loss")
    return _reduce(_per_example_sum(jax.nn.softplus(-labels * scores)), reduction)


def _class_targets(logits: Array, labels: Array, loss: str) -> Array:
    """One-hot (N, K) targets from integer labels (N,), or the given (N, K) distribution."""
    if logits.ndim != 2:
        raise ValueError(f"{loss}: logits must have shape (N, K), got {tuple(logits.shape)}")
    if labels.ndim == 1:
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"{loss}: labels has {labels.shape[0]} entries, logits has "
                             f"{logits.shape[0]} rows")
        return jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    _check_same_shape(logits, labels, loss)
    return labels.astype(logits.dtype)


def softmax_cross_entropy(logits: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """-log softmax(z)_{y} per example: integer labels (N,) or one-hot / soft labels (N, K).

    Args:
      logits: (N, K) unnormalised log-probabilities.
      labels: (N,) class indices, or (N, K) rows summing to one.
    """
    y = _class_targets(logits, labels, "softmax_cross_entropy")
    return _reduce(-jnp.sum(y * log_softmax(logits, axis=-1), axis=-1), reduction)


def multiclass_hinge(scores: Array, labels: Array, *, margin: float = 1.0,
                     reduction: str = "mean") -> Array:
    """Multiclass SVM loss sum_{j != y} max(0, s_j - s_y + margin) per example.

    Args:
      scores: (N, K).
      labels: (N,) integer classes (or (N, K) one-hot, reduced with argmax).
    """
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    y = _class_targets(scores, labels, "multiclass_hinge")
    correct = jnp.sum(scores * y, axis=-1, keepdims=True)
    margins = jax.nn.relu(scores - correct + margin) * (1.0 - y)
    return _reduce(jnp.sum(margins, axis=-1), reduction)


class Loss(NamedTuple):
    """One loss, declared once with what training and the tests need to know about it.

    Attributes:
      fn: ``fn(pred, target, *, reduction="mean", ...) -> scalar``.
      targets: what a classifier's integer labels become for this loss: ``"labels"`` (kept as
        integer classes), ``"one_hot"`` ({0, 1} one-hot rows, or one {0, 1} column for a
        single-output model) or ``"pm1"`` (the same in {-1, +1}).
      threshold: for a single-output classifier, the prediction above which the class is 1
        (0 for logits and scores, 0.5 for probabilities and squared error on {0, 1}).
      preds: what the prediction must be: ``"real"`` or ``"probs"`` (in (0, 1)).
      examples: keyword arguments the three-way gradient tests run.
    """

    fn: Callable[..., Array]
    targets: str
    threshold: float = 0.5
    preds: str = "real"
    examples: tuple[dict[str, Any], ...] = ({},)


TARGET_KINDS = ("labels", "one_hot", "pm1")

#: Every loss, by the name a config uses.
LOSSES: dict[str, Loss] = {
    "squared_error": Loss(squared_error, "one_hot", 0.5,
                          examples=({}, {"half": False, "reduction": "sum"})),
    "mean_squared_error": Loss(mean_squared_error, "one_hot", 0.5,
                               examples=({}, {"reduction": "sum"})),
    "binary_cross_entropy_with_logits": Loss(binary_cross_entropy_with_logits, "one_hot", 0.0),
    "binary_cross_entropy": Loss(binary_cross_entropy, "one_hot", 0.5, preds="probs",
                                 examples=({}, {"reduction": "sum"})),
    "logistic_loss": Loss(logistic_loss, "pm1", 0.0),
    "softmax_cross_entropy": Loss(softmax_cross_entropy, "labels",
                                  examples=({}, {"reduction": "sum"})),
    "multiclass_hinge": Loss(multiclass_hinge, "labels", examples=({}, {"margin": 0.5})),
}


def get_loss(name: str) -> Callable[..., Array]:
    """The loss function `name`; ValueError naming the valid names otherwise."""
    return get_loss_entry(name).fn


def get_loss_entry(name: str) -> Loss:
    """The `LOSSES` entry `name`; ValueError naming the valid names otherwise."""
    if name not in LOSSES:
        raise ValueError(f"loss: unknown name {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]


def make_targets(loss_name: str, labels: Array, out_dim: int, num_classes: int) -> Array:
    """Integer class labels (N,) turned into what `loss_name` expects from a model with
    `out_dim` outputs (its `Loss.targets`); regression targets (``num_classes == 0``) pass
    through.

    Returns:
      (N,) labels, or (N, out_dim) one-hot rows (N, 1 for a single output) in {0, 1} or
      {-1, +1}.
    """
    kind = get_loss_entry(loss_name).targets
    if num_classes == 0 or kind == "labels":
        return labels
    y = labels[:, None].astype(jnp.float32) if out_dim == 1 else jax.nn.one_hot(labels, out_dim)
    return 2.0 * y - 1.0 if kind == "pm1" else y


def predict_labels(loss_name: str, preds: Array) -> Array:
    """Class predictions (N,) from (N, K) predictions: argmax for several outputs; for one
    output, 1 where it exceeds the loss's `Loss.threshold`."""
    if preds.shape[-1] > 1:
        return jnp.argmax(preds, axis=-1)
    return (preds[:, 0] > get_loss_entry(loss_name).threshold).astype(jnp.int32)
