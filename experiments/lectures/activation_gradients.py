"""Activations and vanishing gradients in a deep net (lectures 001, 002, 004).

A 10-layer MLP (nine hidden layers of 64 units, then the 10-way output) is trained on the 8x8
digits with plain minibatch SGD (lr 0.05, batch 64, softmax cross-entropy) three times: with
sigmoid, tanh and ReLU hidden units (Xavier initialisation for sigmoid and tanh, He for ReLU,
nnfun's `default_w_init`). `nnfun.train.layer_grad_norms` gives the norm of each dense layer's
gradient at every step.

With sigmoid (whose derivative is at most 1/4) the gradient shrinks by orders of magnitude on its
way back to the first layer and the net hardly learns in the same number of steps; tanh and
ReLU keep the norms within a small factor across depth. A fourth run, ReLU with a step size ten
times larger (0.5), shows dying ReLUs: the fraction of hidden units that output 0 for every
training image, per layer, before and after training.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from _common import figure, finish, parse_args, save_figure, save_table, sized
from matplotlib import colormaps

from nnfun.data import load_dataset
from nnfun.models import mlp, model_apply
from nnfun.optim import make_optimizer
from nnfun.spec import LossSpec
from nnfun.train import (
    init_train_state,
    make_epoch_fn,
    make_eval_fn,
    make_step_body,
    param_layer_labels,
)

DEPTH, WIDTH, EPOCHS = sized((10, 64, 40), (3, 16, 1))
BATCH, LR = 64, 0.05
RUNS = {"sigmoid": ("sigmoid", LR), "tanh": ("tanh", LR), "relu": ("relu", LR),
        "relu, lr x10": ("relu", 10 * LR)}
RUNS = sized(RUNS, {k: RUNS[k] for k in ("relu, lr x10",)})
LOSS = LossSpec.make("softmax_cross_entropy")


def dead_fraction(model, params, x) -> list[float]:
    """Per hidden ReLU layer: the fraction of units that are 0 on every example of x."""
    out = []
    for i, spec in enumerate(model.layers):
        if spec.name == "relu":
            h = model_apply(params[: i + 1], x, model.layers[: i + 1])
            out.append(float(jnp.mean(jnp.all(h <= 0, axis=0))))
    return out


def train(name: str, activation: str, lr: float, ds) -> dict:
    model = mlp([WIDTH] * (DEPTH - 1), 10, activation=activation)
    opt = make_optimizer("sgd", lr)
    state = init_train_state(0, model.layers, ds.input_shape, opt)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    dead0 = dead_fraction(model, state.params, x) if activation == "relu" else None
    epoch_fn = make_epoch_fn(make_step_body(model.layers, LOSS, (), opt), BATCH)
    norms, losses = [], []
    for e in range(EPOCHS):
        state, m = epoch_fn(state, x, y, jnp.asarray(e))
        norms.append(np.asarray(m["grad_norms"]))
        losses.append(np.asarray(m["loss"]))
    norms, losses = np.concatenate(norms), np.concatenate(losses)
    acc = float(make_eval_fn(model.layers, LOSS, 10)(
        state.params, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))["accuracy"])
    result = {"activation": activation, "lr": lr, "norms": norms, "losses": losses,
              "test_accuracy": acc, "layer_names": param_layer_labels(model.layers),
              "grad_norm_at_init": norms[0], "grad_norm_last_epoch": norms[-len(m["loss"]):]
              .mean(0), "first_over_last_at_init": float(norms[0][0] / norms[0][-1])}
    if activation == "relu":
        result["dead_at_init"] = dead0
        result["dead_after"] = dead_fraction(model, state.params, x)
    print(f"{name:<13} test accuracy {acc:.3f}; gradient norm layer 1 / layer {DEPTH} at init "
          f"{result['first_over_last_at_init']:.2e}; final loss {losses[-1]:.3f}"
          + (f"; dead ReLUs per layer after training {np.round(result['dead_after'], 2)}"
             if activation == "relu" else ""))
    return result


def main() -> None:
    args = parse_args("activation_gradients", __doc__)
    ds = load_dataset("digits", flatten=True)
    results = {name: train(name, act, lr, ds) for name, (act, lr) in RUNS.items()}

    fig, axes = figure(2, 4, size=(3.3, 2.9))
    depth = np.arange(1, DEPTH + 1)
    for name, r in results.items():
        axes[0, 0].plot(depth, r["grad_norm_at_init"], marker="o", ms=3, label=name)
        axes[0, 1].plot(depth, r["grad_norm_last_epoch"], marker="o", ms=3, label=name)
        axes[0, 2].plot(np.arange(1, EPOCHS + 1), r["losses"].reshape(EPOCHS, -1).mean(1),
                        label=name)
    axes[0, 0].set(title="gradient norm per layer at init", xlabel="dense layer (1 = input)",
                   ylabel="||dL/dW||", yscale="log")
    axes[0, 1].set(title="... averaged over the last epoch", xlabel="dense layer (1 = input)",
                   yscale="log")
    axes[0, 2].set(title="training loss", xlabel="epoch", ylabel="cross-entropy (epoch mean)")
    axes[0, 0].legend()
    axes[0, 2].legend()
    for ax, name in zip([axes[0, 3], axes[1, 0], axes[1, 1], axes[1, 2]], RUNS):
        r = results[name]
        per_epoch = r["norms"].reshape(EPOCHS, -1, DEPTH).mean(axis=1)
        for j in range(DEPTH):
            ax.plot(np.arange(1, EPOCHS + 1), per_epoch[:, j], lw=1,
                    color=colormaps["viridis"](j / (DEPTH - 1)),
                    label=f"layer {j + 1}" if j in (0, DEPTH - 1) else None)
        ax.set(title=f"{name}: gradient norm per layer", xlabel="epoch (mean over its steps)",
               yscale="log")
        ax.legend()
    ax = axes[1, 3]
    width = 0.2
    bars = [(name, key) for name in ("relu", "relu, lr x10") if name in results
            for key in ("dead_at_init", "dead_after")]
    for k, (name, key) in enumerate(bars):
        when = "init" if key == "dead_at_init" else "trained"
        ax.bar(np.arange(1, DEPTH) + (k - 1.5) * width, results[name][key], width,
               label=f"{name} ({when})")
    ax.set(title="dead ReLUs (0 on every training image)", xlabel="hidden layer",
           ylabel="fraction of units", ylim=(0, 1))
    ax.legend()
    png = save_figure(fig, args)

    keep = ("activation", "lr", "test_accuracy", "layer_names", "grad_norm_at_init",
            "grad_norm_last_epoch", "first_over_last_at_init", "dead_at_init", "dead_after")
    save_table(args, {"model": f"{DEPTH}-layer MLP, width {WIDTH}, digits 8x8",
                      "optimizer": f"sgd, batch {BATCH}, {EPOCHS} epochs",
                      "runs": {n: {k: r[k] for k in keep if k in r}
                               for n, r in results.items()}})
    finish(args, [png])


if __name__ == "__main__":
    main()
