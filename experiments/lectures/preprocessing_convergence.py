"""Preprocessing and convergence (lecture 001): mean-centring, scaling, PCA and ZCA whitening.

Data: three well-separated Gaussian blobs in 2-D (`load_blobs`, seed 1), then stretched, tilted
and shifted the way raw features often are: x -> x diag(10, 0.1) R + (200, -50), with R a
30 degree rotation. The two features then have means far from 0 and are almost perfectly
correlated: nearly all the variance lies along one diagonal direction, 100 times wider than the
one across it, which is where the classes differ. Each `nnfun.preprocessing` method is fitted
on the training split and applied to every split: none, center, standardize, pca_whiten,
zca_whiten. The top row shows the training inputs after each method (the lecture's
"original / zero-centred / normalised / decorrelated / whitened" picture).

Every variant trains the same 2-32-3 tanh MLP (softmax cross-entropy, plain SGD, minibatches of
32, 40 epochs, the same initial parameters and batch order) at eight learning rates from 1e-5 to
1; all 5 x 8 runs are one vmapped, compiled function. The bottom row shows the loss curves at
each method's best rate, and the final training loss against the rate. Centring and
standardising help a little, but standardising rescales each feature and cannot undo the
correlation: the thin direction stays thin, and the largest stable rate, set by the wide
direction, crawls along it. Whitening makes the covariance the identity, and one rate suits
every direction.
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
    sized,
    train_epochs,
)

from nnfun.data import load_dataset
from nnfun.models import mlp
from nnfun.optim import make_optimizer
from nnfun.preprocessing import apply_preprocessor, fit_preprocessor
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_eval_fn, make_step_body

METHODS = ("none", "center", "standardize", "pca_whiten", "zca_whiten")
LRS = (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0)
EPOCHS, BATCH = sized(40, 2), 32
LOSS = LossSpec.make("softmax_cross_entropy")


def stretched_blobs():
    ds = load_dataset("blobs", num_samples=1000, num_classes=3, cluster_std=1.0, seed=1)
    a = np.deg2rad(30.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = np.diag([10.0, 0.1]) @ rot
    shift = np.array([200.0, -50.0])
    return ds._replace(**{k: (getattr(ds, k) @ m + shift).astype(np.float32)
                          for k in ("x_train", "x_val", "x_test")})


def main() -> None:
    args = parse_args("preprocessing_convergence", __doc__)
    ds = stretched_blobs()
    states = {m: fit_preprocessor(ds.x_train, method=m) for m in METHODS}
    xs = jnp.stack([jnp.asarray(apply_preprocessor(states[m], ds.x_train)) for m in METHODS])
    xts = jnp.stack([jnp.asarray(apply_preprocessor(states[m], ds.x_test)) for m in METHODS])
    y, yt = jnp.asarray(ds.y_train), jnp.asarray(ds.y_test)
    model = mlp([32], 3, activation="tanh")

    def one(x, lr):
        opt = make_optimizer("sgd", lr)
        state = init_train_state(0, model.layers, (2,), opt)
        state, m = train_epochs(make_step_body(model.layers, LOSS, (), opt), BATCH, state, x, y,
                                EPOCHS)
        return state.params, jnp.mean(m["loss"], axis=1)

    over_lrs = jax.vmap(one, in_axes=(None, 0))
    params, curves = jax.jit(jax.vmap(over_lrs, in_axes=(0, None)))(xs, jnp.asarray(LRS))
    evaluate = jax.vmap(jax.vmap(make_eval_fn(model.layers, LOSS, 3), in_axes=(0, None, None)),
                        in_axes=(0, 0, None))
    train = evaluate(params, xs, y)
    test = evaluate(params, xts, yt)
    curves = np.asarray(curves)
    final = np.nan_to_num(np.asarray(train["loss"]), nan=np.inf)
    results = {}
    for i, m in enumerate(METHODS):
        j = int(np.argmin(final[i]))
        results[m] = {"best_lr": LRS[j], "final_train_loss": float(final[i, j]),
                      "test_accuracy": float(test["accuracy"][i, j]),
                      "train_loss_by_lr": {f"{lr:g}": float(final[i, k])
                                           for k, lr in enumerate(LRS)},
                      "epochs_to_loss_0.1": next((e + 1 for e, v in enumerate(curves[i, j])
                                                  if v < 0.1), None)}
        r = results[m]
        print(f"{m:<12} best lr {r['best_lr']:g}: final train loss {r['final_train_loss']:.4f}, "
              f"test accuracy {r['test_accuracy']:.3f}, epochs to loss < 0.1: "
              f"{r['epochs_to_loss_0.1']}")

    fig, axes = figure(2, 5, size=(2.8, 2.7))
    for i, m in enumerate(METHODS):
        ax = axes[0, i]
        v = np.asarray(xs[i])
        ax.scatter(v[:, 0], v[:, 1], c=ds.y_train, s=3, cmap="viridis")
        ax.axhline(0, color="0.6", lw=0.5)
        ax.axvline(0, color="0.6", lw=0.5)
        ax.set(title=f"{m}", xlabel="feature 1", ylabel="feature 2")
        if m in ("none", "center"):
            ax.set_aspect("equal", adjustable="datalim")
    gs = axes[1, 0].get_gridspec()
    for ax in axes[1]:
        ax.remove()
    left, right = fig.add_subplot(gs[1, :3]), fig.add_subplot(gs[1, 3:])
    ep = np.arange(1, EPOCHS + 1)
    for i, m in enumerate(METHODS):
        j = LRS.index(results[m]["best_lr"])
        left.plot(ep, curves[i, j], label=f"{m} (lr {LRS[j]:g})")
        right.plot(LRS, np.minimum(final[i], 10.0), marker="o", ms=3, label=m)
    left.set(title="training loss at each method's best learning rate", xlabel="epoch",
             ylabel="cross-entropy (epoch mean)", yscale="log")
    right.set(title=f"final training loss after {EPOCHS} epochs (diverged: drawn at 10)",
              xlabel="learning rate", ylabel="cross-entropy", xscale="log", yscale="log")
    left.legend()
    right.legend()
    png = save_figure(fig, args)
    rows = [[m, f"{r['best_lr']:g}", r["final_train_loss"], r["test_accuracy"],
             r["epochs_to_loss_0.1"]] for m, r in results.items()]
    save_markdown(args, "Stretched, tilted blobs; 2-32-3 tanh MLP, plain SGD, batch 32, "
                  f"{EPOCHS} epochs\n\n" + markdown_table(
                      ["method", "best lr", "final train loss", "test acc",
                       "epochs to loss < 0.1"], rows))
    save_table(args, {"data": "blobs (3 classes, std 1, seed 1) @ diag(10, 0.1) R(30 deg) "
                              "+ (200, -50)",
                      "model": "2-32-3 tanh MLP", "optimizer": f"sgd, batch {BATCH}",
                      "epochs": EPOCHS, "learning_rates": LRS, "methods": results})
    finish(args, [png])


if __name__ == "__main__":
    main()
