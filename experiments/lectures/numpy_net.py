"""Lecture 003's 20-line NumPy network against nnfun, number for number.

The lecture's two-layer net, kept line for line below (`numpy_reference`): N, D_in, H, D_out =
64, 1000, 100, 10; x, y, w1, w2 standard normal; h = sigmoid(x w1), y_pred = h w2 (no
biases); loss = sum (y_pred - y)^2; hand-written backprop; w -= 1e-4 grad. (The slide draws
from ``np.random.randn``; here a seeded ``np.random.default_rng(0)`` draws the same
distribution, so the run is reproducible.)

The same net in nnfun: ``dense(bias=False) -> sigmoid -> dense(bias=False)``, loss
``squared_error(half=False, reduction="sum")``, ``make_optimizer("sgd", 1e-4)``, started from
the same w1 and w2, in float64, and trained with both gradient engines of `nnfun.train`
(autodiff: `jax.value_and_grad`; manual: the hand-written reference). Reported: the largest
absolute and relative difference of the losses over 500 iterations (the slide runs 2000; NumPy
needs about 15 ms an iteration on this 2-core machine), and of w1 and w2 every 50 iterations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import figure, finish, parse_args, run_steps, save_figure, save_table, sized

from nnfun.models import layer, sequential
from nnfun.optim import make_optimizer
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_step_body

N, D_IN, H, D_OUT = 64, 1000, 100, 10
T, CHUNK = sized((500, 50), (4, 2))
LR = 1e-4


def data(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    randn = rng.standard_normal
    x, y = randn((N, D_IN)), randn((N, D_OUT))
    w1, w2 = randn((D_IN, H)), randn((H, D_OUT))
    return x, y, w1, w2


def numpy_reference(x, y, w1, w2, steps: int):
    """The lecture's loop (print replaced by recording); returns losses and snapshots."""
    w1, w2 = w1.copy(), w2.copy()
    losses, snaps = [], []
    for t in range(steps):
        h = 1 / (1 + np.exp(-x.dot(w1)))
        y_pred = h.dot(w2)
        loss = np.square(y_pred - y).sum()
        losses.append(loss)

        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h.T.dot(grad_y_pred)
        grad_h = grad_y_pred.dot(w2.T)
        grad_w1 = x.T.dot(grad_h * h * (1 - h))

        w1 -= 1e-4 * grad_w1
        w2 -= 1e-4 * grad_w2
        if (t + 1) % CHUNK == 0:
            snaps.append((w1.copy(), w2.copy()))
    return np.array(losses), snaps


MODEL = sequential([layer("dense", features=H, bias=False), layer("sigmoid"),
                    layer("dense", features=D_OUT, bias=False)])
LOSS = LossSpec.make("squared_error", half=False, reduction="sum")


def nnfun_run(x, y, w1, w2, engine: str):
    """The same training in nnfun; the loss of step t is taken before its update, as in the
    NumPy loop. Returns losses (T,) and (w1, w2) after every CHUNK steps."""
    opt = make_optimizer("sgd", LR)
    state = init_train_state(0, MODEL.layers, (D_IN,), opt, jnp.float64)
    params = [{"w": jnp.asarray(w1)}, {}, {"w": jnp.asarray(w2)}]
    state = state._replace(params=params, opt_state=opt.init(params))
    body = make_step_body(MODEL.layers, LOSS, (), opt, engine=engine)
    losses, snaps = [], []
    for _ in range(T // CHUNK):
        state, m = run_steps(body, state, jnp.asarray(x), jnp.asarray(y), CHUNK)
        losses.append(np.asarray(m["loss"]))
        snaps.append((np.asarray(state.params[0]["w"]), np.asarray(state.params[2]["w"])))
    return np.concatenate(losses), snaps


def main() -> None:
    args = parse_args("numpy_net", __doc__)
    x, y, w1, w2 = data()
    ref_losses, ref_snaps = numpy_reference(x, y, w1, w2, T)
    results = {}
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        for engine in ("autodiff", "manual"):
            losses, snaps = nnfun_run(x, y, w1, w2, engine)
            dl = np.abs(losses - ref_losses)
            dw = [max(float(np.max(np.abs(a - ra))), float(np.max(np.abs(b - rb))))
                  for (a, b), (ra, rb) in zip(snaps, ref_snaps)]
            results[engine] = {
                "max_abs_loss_difference": float(dl.max()),
                "max_rel_loss_difference": float(np.max(dl / np.abs(ref_losses))),
                "max_abs_weight_difference": max(dw),
                "weight_difference_every_chunk": dw, "loss_difference": dl, "losses": losses}
            print(f"nnfun ({engine}) vs NumPy over {T} iterations: max |loss diff| "
                  f"{dl.max():.3e} (relative {results[engine]['max_rel_loss_difference']:.1e}),"
                  f" max |w diff| {max(dw):.3e}")
    print(f"loss: iteration 0 {ref_losses[0]:.6f}, iteration {T - 1} {ref_losses[-1]:.6f} "
          f"(NumPy); {results['autodiff']['losses'][-1]:.6f} (nnfun)")

    fig, axes = figure(1, 2, size=(4.4, 3.4))
    it = np.arange(T)
    axes[0, 0].plot(it, ref_losses, label="NumPy (lecture 003)", lw=3, alpha=0.5)
    axes[0, 0].plot(it, results["autodiff"]["losses"], label="nnfun, autodiff", ls="--")
    axes[0, 0].plot(it, results["manual"]["losses"], label="nnfun, manual", ls=":")
    axes[0, 0].set(title="loss = sum (y_pred - y)^2", xlabel="iteration", ylabel="loss",
                   yscale="log")
    for engine in ("autodiff", "manual"):
        r = results[engine]
        axes[0, 1].plot(it, np.maximum(r["loss_difference"] / ref_losses, 1e-18), lw=0.6,
                        label=f"|loss diff| / loss, {engine}")
        axes[0, 1].plot(np.arange(CHUNK, T + 1, CHUNK), np.maximum(
            r["weight_difference_every_chunk"], 1e-18), marker="o", ms=3,
            label=f"max |w diff|, {engine}")
    axes[0, 1].set(title="nnfun vs NumPy, float64 (0 drawn at 1e-18)", xlabel="iteration",
                   ylabel="difference", yscale="log", ylim=(1e-18, 1e-12))
    axes[0, 0].legend()
    axes[0, 1].legend()
    png = save_figure(fig, args)
    save_table(args, {"N_Din_H_Dout": [N, D_IN, H, D_OUT], "iterations": T, "lr": LR,
                      "chunk": CHUNK,
                      "dtype": "float64", "numpy_loss_first_last": [ref_losses[0],
                                                                     ref_losses[-1]],
                      "engines": {e: {k: v for k, v in r.items()
                                      if k not in ("loss_difference", "losses")}
                                  for e, r in results.items()}})
    finish(args, [png])


if __name__ == "__main__":
    main()
