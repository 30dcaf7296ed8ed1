"""Numerical against analytic gradient, step by step as lecture 004 computes it.

The model is the lecture's linear classifier s = x Theta for images of 4 pixels and 3 classes
(cat, car, frog): an nnfun dense layer without bias, Theta of shape (4, 3), whose first nine
entries are the slide's 0.34, -1.11, 0.78, 0.12, 0.55, 2.81, -3.1, -1.5, 0.33 (the slide stops
at "..."; the last three, -0.21, 0.91, 1.42, are ours). The loss is the slide's
L = (1/N) sum_i sum_{j != y_i} max(0, s_j - s_{y_i} + 1) + lambda sum_k Theta_k^2 over N = 3
seeded random images, one per class, with lambda = 0.1, in float64.

For every coordinate k, as on the slides: Theta + h e_k with h = 1e-4, its loss, and the
one-sided difference (L(Theta + h e_k) - L(Theta)) / h; then the centred difference
(L(Theta + h e_k) - L(Theta - h e_k)) / 2h, and the analytic gradient from `jax.grad` of
`nnfun.objective.make_objective` and from the hand-written `nnfun.manual.model.value_and_grad`.
Relative errors are |a - n| / max(|a|, |n|). The figure sweeps h from 1e-1 to 1e-13 in float64
and float32. The one-sided error falls like h (its truncation error is h L'' / 2, here lambda h
from the quadratic penalty) until rounding error (~eps L / h) takes over. The hinge is piecewise
linear and the penalty quadratic, so the centred difference has no truncation error at all on
this loss (away from kinks): only rounding. A third panel repeats the float64 sweep with the
smooth softmax loss, where the centred error falls like h^2. Finally
`nnfun.gradcheck.check_gradients`, the library's own check, is run on the hinge objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    figure,
    finish,
    markdown_table,
    parse_args,
    save_figure,
    save_markdown,
    save_table,
)

from nnfun.gradcheck import check_gradients
from nnfun.manual.model import value_and_grad as manual_value_and_grad
from nnfun.models import layer, sequential
from nnfun.objective import make_objective
from nnfun.spec import LossSpec, RegSpec

SLIDE_THETA = [0.34, -1.11, 0.78, 0.12, 0.55, 2.81, -3.1, -1.5, 0.33]
OUR_THETA = [-0.21, 0.91, 1.42]
H, LAM = 1e-4, 0.1
MODEL = sequential([layer("dense", features=3, bias=False)])
LOSS = LossSpec.make("multiclass_hinge")
REGS = (RegSpec.make("l2", lam=LAM),)
HS = 10.0 ** -np.arange(1, 14)


def rel_error(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), 1e-300)


def differences(f, theta: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each h and each coordinate k: L(Theta + h e_k), one-sided and centred differences
    (vmapped over coordinates and steps). Shapes (len(hs), theta.size)."""
    eye = jnp.eye(theta.size, dtype=theta.dtype).reshape(theta.size, *theta.shape)

    def at(h, e):
        plus, minus, base = f(theta + h * e), f(theta - h * e), f(theta)
        return plus, (plus - base) / h, (plus - minus) / (2 * h)

    return jax.jit(jax.vmap(jax.vmap(at, in_axes=(None, 0)), in_axes=(0, None)))(hs, eye)


def main() -> None:
    args = parse_args("numerical_gradient", __doc__)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        theta = jnp.asarray(np.array(SLIDE_THETA + OUR_THETA).reshape(4, 3))
        x = jnp.asarray(rng.standard_normal((3, 4)))
        y = jnp.asarray([0, 1, 2])
        objective = make_objective(MODEL.layers, LOSS, REGS)
        f = jax.jit(lambda t: objective([{"w": t}], x, y))
        loss0 = float(f(theta))
        analytic = np.asarray(jax.grad(f)(theta)).ravel()
        manual = np.asarray(manual_value_and_grad(MODEL.layers, LOSS, REGS)(
            [{"w": theta}], x, y)[1][0]["w"]).ravel()
        plus, one_sided, centred = (np.asarray(a) for a in differences(
            f, theta, jnp.asarray([H])))
        sweep64 = [np.asarray(a) for a in differences(f, theta, jnp.asarray(HS))[1:]]
        f32 = jax.jit(lambda t: objective([{"w": t}], x.astype(jnp.float32), y))
        sweep32 = [np.asarray(a, np.float64) for a in differences(
            f32, theta.astype(jnp.float32), jnp.asarray(HS, jnp.float32))[1:]]
        soft = make_objective(MODEL.layers, LossSpec.make("softmax_cross_entropy"), REGS)
        f_soft = jax.jit(lambda t: soft([{"w": t}], x, y))
        analytic_soft = np.asarray(jax.grad(f_soft)(theta)).ravel()
        sweep_soft = [np.asarray(a) for a in differences(f_soft, theta, jnp.asarray(HS))[1:]]
        report = check_gradients(MODEL.layers, LOSS, [{"w": theta}], x, y, regularizers=REGS)

    print(f"current Theta: {np.round(np.asarray(theta).ravel()[:9], 2).tolist()} ...")
    print(f"loss {loss0:.5f}")
    rows = []
    for k in range(theta.size):
        e1, e2 = rel_error(analytic[k], one_sided[0, k]), rel_error(analytic[k], centred[0, k])
        rows.append([k, float(np.asarray(theta).ravel()[k]), float(plus[0, k]),
                     float(one_sided[0, k]), float(centred[0, k]), float(analytic[k]),
                     float(manual[k]), float(e1), float(e2)])
        if k < 3:
            print(f"Theta + h (dim {k + 1}): loss {plus[0, k]:.5f}; ({plus[0, k]:.5f} - "
                  f"{loss0:.5f}) / {H:g} = {one_sided[0, k]:.4f}")
    print("gradient dTheta, one-sided: "
          + str(np.round(one_sided[0], 4).tolist()) + "\n        analytic (jax.grad): "
          + str(np.round(analytic, 4).tolist()))
    worst1 = float(np.max(rel_error(analytic, one_sided[0])))
    worst2 = float(np.max(rel_error(analytic, centred[0])))
    manual_vs_auto = float(np.max(np.abs(manual - analytic)))
    print(f"max relative error at h = {H:g}: one-sided {worst1:.2e}, centred {worst2:.2e}; "
          f"manual vs jax.grad max abs difference {manual_vs_auto:.1e}")
    print(f"nnfun.gradcheck.check_gradients: {'PASSED' if report.passed else 'FAILED'}")

    fig, axes = figure(1, 3, size=(4.0, 3.4))
    labels = ("one-sided (f(x+h) - f(x)) / h", "centred (f(x+h) - f(x-h)) / 2h")
    for ax, sweep, name, exact in (
            (axes[0, 0], sweep64, "hinge + L2, float64", analytic),
            (axes[0, 1], sweep32, "hinge + L2, float32", analytic),
            (axes[0, 2], sweep_soft, "softmax + L2 (smooth), float64", analytic_soft)):
        for diff, label, ls in zip(sweep, labels, ("-", "--")):
            err = np.max(rel_error(exact[None, :], diff), axis=1)
            ax.loglog(HS, np.maximum(err, 1e-17), marker="o", ms=3, ls=ls, label=label)
        ax.axvline(H, color="0.5", ls=":", lw=1)
        ax.text(H, ax.get_ylim()[1], " h = 1e-4", fontsize=7, va="top")
        ax.set(title=f"{name}\nworst relative error over the 12 entries", xlabel="step h",
               ylabel="|analytic - numerical| / max(|.|, |.|)")
        ax.invert_xaxis()
        ax.legend()
    png = save_figure(fig, args)

    header = ["k", "Theta_k", "L(Theta + h e_k)", "one-sided", "centred", "jax.grad", "manual",
              "rel err one-sided", "rel err centred"]
    shown = [[k, f"{t:.2f}", f"{lp:.6f}", f"{a:.6f}", f"{b:.6f}", f"{c:.6f}", f"{d:.6f}",
              f"{e:.1e}", f"{g:.1e}"] for k, t, lp, a, b, c, d, e, g in rows]
    save_markdown(args, f"Loss at Theta: {loss0:.6f}; h = {H:g}; float64\n\n"
                  + markdown_table(header, shown) + "\n\n`nnfun.gradcheck.check_gradients` "
                  "(centred, h = 1e-6):\n\n```\n" + str(report) + "\n```")
    save_table(args, {"h": H, "lambda": LAM, "loss": loss0,
                      "rows": [dict(zip(header, r)) for r in rows],
                      "max_rel_error_one_sided": worst1, "max_rel_error_centred": worst2,
                      "manual_vs_autodiff_max_abs": manual_vs_auto,
                      "sweep_h": HS,
                      "sweep_float64_max_rel_error": {
                          lab: np.max(rel_error(analytic[None, :], d), axis=1)
                          for lab, d in zip(("one_sided", "centred"), sweep64)},
                      "sweep_float32_max_rel_error": {
                          lab: np.max(rel_error(analytic[None, :], d), axis=1)
                          for lab, d in zip(("one_sided", "centred"), sweep32)},
                      "sweep_softmax_float64_max_rel_error": {
                          lab: np.max(rel_error(analytic_soft[None, :], d), axis=1)
                          for lab, d in zip(("one_sided", "centred"), sweep_soft)},
                      "gradcheck_passed": report.passed})
    finish(args, [png])


if __name__ == "__main__":
    main()
