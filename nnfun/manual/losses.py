"""Hand-written forward and backward rules of the losses (the reference path).

Contract (it differs from the layers' on purpose):

- ``<loss>_forward(pred, target, **hyper) -> (loss, cache)``: ``loss`` is a scalar;
- ``<loss>_backward(dloss, cache) -> dpred``: ``dloss`` is the scalar upstream gradient
  (1.0 at the top of the graph) and ``dpred`` has pred's shape. The target is data, not a
  parameter, so no gradient is returned for it.

Every loss first computes one value L_i per example (summing over all non-batch axes), then
reduces over the batch: ``reduction="mean"`` is (1/N) sum_i L_i (lecture 003), ``"sum"`` is
sum_i L_i (lecture 003's 20-line NumPy net). The backward rules carry the same factor c: 1/N or 1.
They compute the same functions as `nnfun.losses`, with the same conventions at kinks.

A forward computes the loss value only and caches its inputs (and the batch factor c); the
backward computes the derivative from them. `LOSS_RULES` maps every loss name to its
`Rule(forward, backward)`.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp

from nnfun.manual._checks import check_choice, check_ndim, check_shape
from nnfun.manual.activations import log_softmax_forward
from nnfun.manual.layers import Rule

Array = jax.Array
REDUCTIONS = ("mean", "sum")


@partial(jax.tree_util.register_dataclass, data_fields=["pred", "target", "c"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LossCache:
    """Cache of a loss that compares pred with a target of the same shape element by element
    (squared errors, the binary cross-entropies, the logistic loss).

    Attributes:
      pred: (N, ...) the prediction (scores, logits or probabilities, as the loss names it).
      target: pred's shape, the targets.
      c: scalar batch factor, 1/N for reduction "mean", 1 for "sum".
    """

    pred: Array
    target: Array
    c: Array | float


@partial(jax.tree_util.register_dataclass, data_fields=["pred", "target", "c"],
         meta_fields=["half"])
@dataclasses.dataclass(frozen=True)
class SquaredErrorCache:
    """Cache of `squared_error_forward`.

    Attributes:
      pred: (N, ...) the prediction.
      target: pred's shape.
      c: scalar batch factor, 1/N or 1.
      half: bool, whether the loss has the factor 1/2.
    """

    pred: Array
    target: Array
    c: Array | float
    half: bool


@partial(jax.tree_util.register_dataclass, data_fields=["probs", "y", "c"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropyCache:
    """Cache of `softmax_cross_entropy_forward`.

    Attributes:
      probs: (N, K) p = softmax(z), computed by the forward on the way to log softmax(z).
      y: (N, K) target rows (one-hot rows for class labels).
      c: scalar batch factor, 1/N or 1.
    """

    probs: Array
    y: Array
    c: Array | float


@partial(jax.tree_util.register_dataclass, data_fields=["scores", "y", "margin", "c"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class HingeCache:
    """Cache of `multiclass_hinge_forward`.

    Attributes:
      scores: (N, K) class scores s.
      y: (N, K) one-hot rows of the correct classes.
      margin: scalar margin Delta.
      c: scalar batch factor, 1/N or 1.
    """

    scores: Array
    y: Array
    margin: Array | float
    c: Array | float


def _batch_factor(loss: str, n: int, reduction: str) -> float:
    """c of the batch reduction: 1/N for "mean", 1 for "sum"; ValueError otherwise."""
    check_choice(loss, "reduction", reduction, REDUCTIONS)
    return 1.0 / n if reduction == "mean" else 1.0


def _reduce(per_example: Array, reduction: str) -> Array:
    return jnp.mean(per_example) if reduction == "mean" else jnp.sum(per_example)


def _per_example_sum(v: Array) -> Array:
    """(N, ...) -> (N,): the sum over every non-batch axis."""
    return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def squared_error_forward(pred: Array, target: Array, *, half: bool = True,
                          reduction: str = "mean") -> tuple[Array, SquaredErrorCache]:
    """L_i = h * sum_k (pred_ik - target_ik)^2 with h = 1/2 (or 1 when ``half=False``).

    Args:
      pred: (N, ...).
      target: pred's shape.
      half: include the factor 1/2.
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    check_shape("squared_error", "target", target, pred.shape)
    c = _batch_factor("squared_error", pred.shape[0], reduction)
    h = 0.5 if half else 1.0
    per = h * _per_example_sum(jnp.square(pred - target))
    return _reduce(per, reduction), SquaredErrorCache(pred, target, c, half)


def squared_error_backward(dloss: Array, cache: SquaredErrorCache) -> Array:
    """dpred = dloss * c * 2h * (pred - target) (c = 1/N or 1, h = 1/2 or 1).

    Args:
      dloss: scalar upstream gradient.
      cache: from `squared_error_forward`.

    Returns:
      dpred of pred's shape.
    """
    h = 0.5 if cache.half else 1.0
    return dloss * cache.c * 2.0 * h * (cache.pred - cache.target)


def mean_squared_error_forward(pred: Array, target: Array, *,
                               reduction: str = "mean") -> tuple[Array, LossCache]:
    """L_i = (1/K) sum_k (pred_ik - target_ik)^2, K the number of elements per example.

    Args:
      pred: (N, ...).
      target: pred's shape.
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    check_shape("mean_squared_error", "target", target, pred.shape)
    c = _batch_factor("mean_squared_error", pred.shape[0], reduction)
    per = jnp.mean(jnp.square(pred - target).reshape(pred.shape[0], -1), axis=1)
    return _reduce(per, reduction), LossCache(pred, target, c)


def mean_squared_error_backward(dloss: Array, cache: LossCache) -> Array:
    """dpred = dloss * c * (2 / K) * (pred - target) (c = 1/N or 1, K elements per example).

    Args:
      dloss: scalar upstream gradient.
      cache: from `mean_squared_error_forward`.

    Returns:
      dpred of pred's shape.
    """
    k = math.prod(cache.pred.shape[1:])
    return dloss * cache.c * (2.0 / k) * (cache.pred - cache.target)


def _log_sigmoid(z: Array) -> Array:
    """log s(z) = -softplus(-z) = -log(1 + exp(-z)), stable."""
    return -jnp.logaddexp(-z, 0.0)


def binary_cross_entropy_with_logits_forward(
        logits: Array, targets: Array, *, reduction: str = "mean") -> tuple[Array, LossCache]:
    """L_i = -sum_k [y_k log s(z_k) + (1 - y_k) log(1 - s(z_k))], with log s(z) = -softplus(-z)
    and log(1 - s(z)) = log s(-z), so it cannot overflow.

    Args:
      logits: (N, ...) pre-sigmoid scores z.
      targets: logits' shape, in [0, 1].
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    loss = "binary_cross_entropy_with_logits"
    check_shape(loss, "targets", targets, logits.shape)
    c = _batch_factor(loss, logits.shape[0], reduction)
    per = -(targets * _log_sigmoid(logits) + (1.0 - targets) * _log_sigmoid(-logits))
    return _reduce(_per_example_sum(per), reduction), LossCache(logits, targets, c)


def binary_cross_entropy_with_logits_backward(dloss: Array, cache: LossCache) -> Array:
    """dz = dloss * c * (s(z) - y) (c = 1/N or 1).

    Args:
      dloss: scalar upstream gradient.
      cache: from `binary_cross_entropy_with_logits_forward`.

    Returns:
      dlogits of the logits' shape.
    """
    return dloss * cache.c * (jax.nn.sigmoid(cache.pred) - cache.target)


def binary_cross_entropy_forward(probs: Array, targets: Array, *,
                                 reduction: str = "mean") -> tuple[Array, LossCache]:
    """L_i = -sum_k [y_k log p_k + (1 - y_k) log1p(-p_k)], on probabilities p in (0, 1).

    No clipping: p = 0 or 1 gives infinities, exactly as the plain formula.

    Args:
      probs: (N, ...) probabilities p.
      targets: probs' shape, in [0, 1].
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    check_shape("binary_cross_entropy", "targets", targets, probs.shape)
    c = _batch_factor("binary_cross_entropy", probs.shape[0], reduction)
    per = -(targets * jnp.log(probs) + (1.0 - targets) * jnp.log1p(-probs))
    return _reduce(_per_example_sum(per), reduction), LossCache(probs, targets, c)


def binary_cross_entropy_backward(dloss: Array, cache: LossCache) -> Array:
    """dp = dloss * c * (-y / p + (1 - y) / (1 - p)) (c = 1/N or 1).

    Args:
      dloss: scalar upstream gradient.
      cache: from `binary_cross_entropy_forward`.

    Returns:
      dprobs of the probs' shape.
    """
    p, y = cache.pred, cache.target
    return dloss * cache.c * (-y / p + (1.0 - y) / (1.0 - p))


def logistic_loss_forward(scores: Array, labels: Array, *,
                          reduction: str = "mean") -> tuple[Array, LossCache]:
    """L_i = sum_k log(1 + exp(-y_k s_k)) for labels y in {-1, +1} (stable softplus).

    Args:
      scores: (N, ...) real scores s.
      labels: scores' shape, in {-1, +1}.
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    check_shape("logistic_loss", "labels", labels, scores.shape)
    c = _batch_factor("logistic_loss", scores.shape[0], reduction)
    per = _per_example_sum(jnp.logaddexp(-labels * scores, 0.0))
    return _reduce(per, reduction), LossCache(scores, labels, c)


def logistic_loss_backward(dloss: Array, cache: LossCache) -> Array:
    """ds = dloss * c * (-y * sigmoid(-y s)) (c = 1/N or 1).

    Args:
      dloss: scalar upstream gradient.
      cache: from `logistic_loss_forward`.

    Returns:
      dscores of the scores' shape.
    """
    s, y = cache.pred, cache.target
    return dloss * cache.c * (-y * jax.nn.sigmoid(-y * s))


def _class_targets(loss: str, name: str, scores: Array, labels: Array) -> Array:
    """(N, K) targets in scores' dtype: one-hot rows from integer labels (N,) (all zeros for an
    out-of-range label), or the given (N, K) rows. `name` is what the scores are called."""
    check_ndim(loss, name, scores, 2, "(N, K)")
    if labels.ndim == scores.ndim:
        check_shape(loss, "labels", labels, scores.shape)
        return labels.astype(scores.dtype)
    check_shape(loss, "labels", labels, scores.shape[:1])
    classes = jnp.arange(scores.shape[1])
    return (labels[:, None] == classes[None, :]).astype(scores.dtype)


def softmax_cross_entropy_forward(
        logits: Array, labels: Array, *,
        reduction: str = "mean") -> tuple[Array, SoftmaxCrossEntropyCache]:
    """L_i = -sum_k y_ik log softmax(z_i)_k (= -log softmax(z_i)_{y_i} for class labels).

    Args:
      logits: (N, K) unnormalised log-probabilities z.
      labels: (N,) integer classes, or (N, K) one-hot / probability rows
        (told apart by ``labels.ndim == logits.ndim``).
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    y = _class_targets("softmax_cross_entropy", "logits", logits, labels)
    c = _batch_factor("softmax_cross_entropy", logits.shape[0], reduction)
    log_p, sm_cache = log_softmax_forward({}, logits, axis=-1)
    per = -jnp.sum(y * log_p, axis=1)
    return _reduce(per, reduction), SoftmaxCrossEntropyCache(sm_cache.probs, y, c)


def softmax_cross_entropy_backward(dloss: Array, cache: SoftmaxCrossEntropyCache) -> Array:
    """dz = dloss * c * (p * sum_k y_k - y), with p = softmax(z); that is the familiar
    dloss * c * (p - y) when the label rows sum to one (c = 1/N or 1).

    Args:
      dloss: scalar upstream gradient.
      cache: from `softmax_cross_entropy_forward`.

    Returns:
      dlogits (N, K).
    """
    p, y = cache.probs, cache.y
    return dloss * cache.c * (p * jnp.sum(y, axis=1, keepdims=True) - y)


def _hinge_margins(scores: Array, y: Array, margin: Array | float) -> Array:
    """(N, K) margins s_j - s_y + Delta (Delta itself at the correct class)."""
    return scores - jnp.sum(scores * y, axis=1, keepdims=True) + margin


def multiclass_hinge_forward(scores: Array, labels: Array, *, margin: float = 1.0,
                             reduction: str = "mean") -> tuple[Array, HingeCache]:
    """Multiclass SVM loss L_i = sum_{j != y_i} max(0, s_ij - s_iy_i + margin).

    Args:
      scores: (N, K).
      labels: (N,) integer classes (or (N, K) one-hot rows, reduced with argmax).
      margin: the margin Delta.
      reduction: "mean" or "sum" over the batch.

    Returns:
      (scalar loss, cache).
    """
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    y = _class_targets("multiclass_hinge", "scores", scores, labels)
    c = _batch_factor("multiclass_hinge", scores.shape[0], reduction)
    per = jnp.sum(jnp.maximum(_hinge_margins(scores, y, margin), 0.0) * (1.0 - y), axis=1)
    return _reduce(per, reduction), HingeCache(scores, y, margin, c)


def multiclass_hinge_backward(dloss: Array, cache: HingeCache) -> Array:
    """ds_j = dloss * c * [margin_j > 0] for j != y (strictly: no gradient at margin_j = 0),
    and ds_y = -dloss * c * (number of such j) (c = 1/N or 1).

    Args:
      dloss: scalar upstream gradient.
      cache: from `multiclass_hinge_forward`.

    Returns:
      dscores (N, K).
    """
    y = cache.y
    active = (_hinge_margins(cache.scores, y, cache.margin) > 0).astype(y.dtype) * (1.0 - y)
    return dloss * cache.c * (active - y * jnp.sum(active, axis=1, keepdims=True))


LOSS_RULES: dict[str, Rule] = {
    "squared_error": Rule(squared_error_forward, squared_error_backward),
    "mean_squared_error": Rule(mean_squared_error_forward, mean_squared_error_backward),
    "binary_cross_entropy_with_logits": Rule(binary_cross_entropy_with_logits_forward,
                                             binary_cross_entropy_with_logits_backward),
    "binary_cross_entropy": Rule(binary_cross_entropy_forward, binary_cross_entropy_backward),
    "logistic_loss": Rule(logistic_loss_forward, logistic_loss_backward),
    "softmax_cross_entropy": Rule(softmax_cross_entropy_forward, softmax_cross_entropy_backward),
    "multiclass_hinge": Rule(multiclass_hinge_forward, multiclass_hinge_backward),
}
"""Every loss of the reference path: name -> Rule(forward, backward)."""

__all__ = ["LOSS_RULES", "REDUCTIONS", "LossCache", "SquaredErrorCache",
           "SoftmaxCrossEntropyCache", "HingeCache",
           *(f"{name}_{part}" for name in LOSS_RULES for part in ("forward", "backward"))]
