"""Gradient verification: jax.grad, the hand-written reference and finite differences.

`check_gradients` computes the gradient of a model's objective three ways, in float64 and with
the matmul precision set to "highest" (so TF32 on a GPU cannot pass for a bug):

1. autodiff: `jax.value_and_grad` of `nnfun.objective.make_objective`;
2. manual: `nnfun.manual.model.value_and_grad`;
3. central finite differences (f(t + h) - f(t - h)) / 2h on every coordinate of a leaf with at
   most `max_coords` entries and on a random sample of `max_coords` coordinates of a larger one,
   optionally also along `num_directions` random unit directions per leaf.

Each parameter leaf gets a row: the max absolute and relative error of manual vs autodiff and
of both vs finite differences, and pass / fail at the stated tolerances. A coordinate where the
objective has a kink within h (the one-sided differences disagree: a ReLU, max or hinge input
at its switch point) is counted in the row's ``kinks`` and left out of the finite-difference
comparison, which cannot give a derivative there; manual and autodiff are still compared on
it. The relative error of
two arrays a, b on the compared entries is max |a - b| / max(max |a|, max |b|). A leaf whose
gradient is so small that central differences cannot resolve it passes the finite-difference
test when the absolute error is below their round-off, 10 eps max(1, |f|) / h.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnfun.manual.model import value_and_grad as manual_value_and_grad
from nnfun.objective import make_objective
from nnfun.spec import LayerSpec, LossSpec, RegSpec

__all__ = ["check_gradients", "relative_error", "GradcheckReport", "LeafReport"]

Array = jax.Array


class LeafReport(NamedTuple):
    """One parameter leaf's comparison (errors are max over the compared entries).

    ``kinks`` counts the coordinates left out of the finite-difference comparison because the
    objective is not differentiable within h of them: a ReLU, max or hinge input sits at its
    switch point, so the one-sided differences disagree and no central difference is the
    derivative there."""

    path: str
    shape: tuple[int, ...]
    abs_manual: float
    rel_manual: float
    abs_fd: float
    rel_fd: float
    coords_checked: int
    rel_directional: float | None
    passed: bool
    kinks: int = 0


class GradcheckReport(NamedTuple):
    """All leaves of one check, with the tolerances used and the objective's value."""

    leaves: tuple[LeafReport, ...]
    value_autodiff: float
    value_manual: float
    tol_manual: float
    tol_fd: float

    @property
    def passed(self) -> bool:
        values_agree = abs(self.value_autodiff - self.value_manual) <= self.tol_manual * max(
            1.0, abs(self.value_autodiff))
        return values_agree and all(leaf.passed for leaf in self.leaves)

    def __str__(self) -> str:
        head = (f"{'parameter':<14}{'shape':<16}{'manual abs':>12}{'manual rel':>12}"
                f"{'fd abs':>12}{'fd rel':>12}{'coords':>8}{'kinks':>7}{'dir rel':>10}  result")
        rows = [head, "-" * len(head)]
        for r in self.leaves:
            d = f"{r.rel_directional:10.2e}" if r.rel_directional is not None else f"{'-':>10}"
            rows.append(f"{r.path:<14}{r.shape!s:<16}{r.abs_manual:12.2e}{r.rel_manual:12.2e}"
                        f"{r.abs_fd:12.2e}{r.rel_fd:12.2e}{r.coords_checked:8d}{r.kinks:7d}{d}  "
                        f"{'ok' if r.passed else 'FAIL'}")
        rows.append(f"objective: autodiff {self.value_autodiff:.12g}, manual "
                    f"{self.value_manual:.12g}")
        kinks = sum(r.kinks for r in self.leaves)
        if kinks:
            rows.append(f"kinks: {kinks} coordinate(s) sit within h of a point where the "
                        "objective is not differentiable (a ReLU, max or hinge input at its "
                        "switch point); finite differences skip them, manual vs autodiff "
                        "checks them")
        rows.append(f"tolerances: manual vs autodiff rel <= {self.tol_manual:g}, finite "
                    f"differences rel <= {self.tol_fd:g}: {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(rows)


def relative_error(a: Any, b: Any) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max(max |a|, max |b|)); the latter 0 when both are zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0, 0.0
    err = float(np.max(np.abs(a - b)))
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    return err, (err / scale if scale > 0 else 0.0)


def _to64(tree: Any) -> Any:
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) else v, tree)


def _path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def _finite_differences(f: Any, params: Any, leaf_index: int, coords: np.ndarray,
                        h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At `coords` of one leaf: the central differences with step h, and how far apart the
    forward and backward differences are with steps h and h / 2."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shape = leaves[leaf_index].shape

    def at(c: Array, step: float) -> Array:
        flat = leaves[leaf_index].ravel().at[c].add(step)
        new = list(leaves)
        new[leaf_index] = flat.reshape(shape)
        return f(jax.tree_util.tree_unflatten(treedef, new))

    f0 = float(f(params))
    steps = (h, -h, h / 2, -h / 2)
    values = jax.jit(jax.vmap(lambda c: tuple(at(c, s) for s in steps)))(jnp.asarray(coords))
    plus, minus, plus2, minus2 = (np.asarray(v) for v in values)
    jump = np.abs((plus - f0) - (f0 - minus)) / h
    jump_half = np.abs((plus2 - f0) - (f0 - minus2)) / (h / 2)
    return (plus - minus) / (2 * h), jump, jump_half


def _kinks(analytic: np.ndarray, central: np.ndarray, jump: np.ndarray, jump_half: np.ndarray,
           tol: float, noise: float) -> np.ndarray:
    """The coordinates whose finite difference misses `analytic` only because the objective
    has a kink there. At a kink the central difference is the mean of the one-sided slopes and
    the derivative is one of them, so the slopes differ by at least the miss, and by the same
    amount with half the step; on a smooth objective they differ by h |f''|, which halves with
    the step, so a real error is never explained away. Slopes apart by less than 100 times the
    round-off of a difference are not told from round-off."""
    miss = np.abs(central - analytic)
    scale = max(float(np.max(np.abs(analytic), initial=0.0)),
                float(np.max(np.abs(central), initial=0.0)))
    return ((miss > max(tol * scale, noise)) & (jump >= miss) & (jump > 100 * noise)
            & (jump_half > 0.75 * jump))


def _directional(f: Any, params: Any, leaf_index: int, grad_leaf: Array, key: Array,
                 num: int, h: float) -> float:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    vs = jax.random.normal(key, (num, *grad_leaf.shape), jnp.float64)
    vs = vs / jnp.linalg.norm(vs.reshape(num, -1), axis=1).reshape((num,) + (1,) * grad_leaf.ndim)

    def fd(v: Array) -> Array:
        def shifted(s: float) -> Array:
            new = list(leaves)
            new[leaf_index] = leaves[leaf_index] + s * h * v
            return f(jax.tree_util.tree_unflatten(treedef, new))
        return (shifted(1.0) - shifted(-1.0)) / (2 * h)

    numeric = np.asarray(jax.jit(jax.vmap(fd))(vs))
    analytic = np.asarray(jnp.tensordot(vs, grad_leaf, axes=grad_leaf.ndim))
    return relative_error(analytic, numeric)[1]


def check_gradients(layers: Sequence[LayerSpec], loss: LossSpec, params: Any, x: Array,
                    y: Array, *, regularizers: Sequence[RegSpec] = (), key: Array | None = None,
                    tol_manual: float = 1e-10, tol_fd: float = 1e-6, max_coords: int = 512,
                    num_directions: int = 0, h: float = 1e-6, seed: int = 0) -> GradcheckReport:
    """Compares autodiff, manual and finite-difference gradients of the objective.

    Args:
      layers, loss, regularizers: the model and objective (see `nnfun.objective`).
      params: parameters (cast to float64 for the check).
      x, y: a batch; float inputs are cast to float64.
      key: the dropout key (the same mask is used by every evaluation).
      tol_manual: relative tolerance of manual vs autodiff.
      tol_fd: relative tolerance of both vs finite differences.
      max_coords: per leaf, all coordinates up to this size, else a random sample of this many.
      num_directions: random directional-derivative checks per leaf (0 = none).
      h: the finite-difference step.

    Returns:
      A `GradcheckReport`; ``str(report)`` is a readable table.
    """
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        params, x, y = _to64(params), _to64(x), _to64(y)
        objective = make_objective(layers, loss, regularizers)
        value_a, grads_a = jax.jit(jax.value_and_grad(objective))(params, x, y, key)
        value_m, grads_m = jax.jit(manual_value_and_grad(tuple(layers), loss,
                                                         tuple(regularizers)))(params, x, y, key)
        f = lambda p: objective(p, x, y, key)  # noqa: E731
        fd_noise = 10 * np.finfo(np.float64).eps * max(1.0, abs(float(value_a))) / h
        rng = np.random.default_rng(seed)
        paths = jax.tree_util.tree_flatten_with_path(params)[0]
        ga, gm = jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_m)
        rows = []
        for i, ((path, leaf), a, m) in enumerate(zip(paths, ga, gm)):
            coords = (np.arange(leaf.size) if leaf.size <= max_coords
                      else rng.choice(leaf.size, max_coords, replace=False))
            numeric, jump, jump_half = _finite_differences(f, params, i, coords, h)
            kink = _kinks(np.asarray(a).ravel()[coords], numeric, jump, jump_half, tol_fd,
                          fd_noise)
            abs_m, rel_m = relative_error(a, m)
            smooth = coords[~kink]  # finite differences mean nothing across a kink
            abs_fa, rel_fa = relative_error(np.asarray(a).ravel()[smooth], numeric[~kink])
            abs_fm, rel_fm = relative_error(np.asarray(m).ravel()[smooth], numeric[~kink])
            rel_d = (_directional(f, params, i, a, jax.random.PRNGKey(seed + i), num_directions,
                                  h) if num_directions else None)
            rel_fd, abs_fd = max(rel_fa, rel_fm), max(abs_fa, abs_fm)
            # central differences cannot resolve below their round-off, ~eps |f| / h
            fd_ok = rel_fd <= tol_fd or abs_fd <= fd_noise
            ok = rel_m <= tol_manual and fd_ok and (rel_d is None or rel_d <= tol_fd)
            rows.append(LeafReport(_path_name(path), tuple(leaf.shape), abs_m, rel_m, abs_fd,
                                   rel_fd, len(smooth), rel_d, ok, int(kink.sum())))
        return GradcheckReport(tuple(rows), float(value_a), float(value_m), tol_manual, tol_fd)
