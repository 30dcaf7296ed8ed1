"""SGD, SGD + momentum, RMSProp, Adagrad and Adam on one problem (lectures 001, 002, 003).

A 2-64-64-3 ReLU MLP learns three spirals (softmax cross-entropy, minibatches of 32, 150
epochs, the same initial parameters and minibatch order for every run). Each optimiser, by
optax's names through `nnfun.optim.make_optimizer`, runs at seven learning rates from 1e-3 to 1
("which one of these learning rates is best to use?", lecture 003); the figure shows the loss
curves with every optimiser at lr 0.01, then each at its best rate (lowest mean loss over the
last 20 epochs), and the final training loss against the rate.
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
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_eval_fn, make_step_body

EPOCHS, BATCH = sized(150, 2), 32
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
OPTIMIZERS = {"SGD": ("sgd", {}), "SGD + momentum 0.9": ("sgd", {"momentum": 0.9}),
              "RMSProp": ("rmsprop", {}), "Adagrad": ("adagrad", {}), "Adam": ("adam", {})}
OPTIMIZERS = sized(OPTIMIZERS, {"Adam": OPTIMIZERS["Adam"]})
LOSS = LossSpec.make("softmax_cross_entropy")
SHARED_LR = 1e-2


def smooth(curve: np.ndarray, k: int = 5) -> np.ndarray:
    """Running mean over k epochs (the first k - 1 points average what there is)."""
    c = np.cumsum(np.insert(curve, 0, 0.0))
    n = np.minimum(np.arange(1, len(curve) + 1), k)
    return (c[1:] - c[np.arange(1, len(curve) + 1) - n]) / n


def sweep_rates(model, ds, name: str, kwargs: dict) -> dict:
    """Every learning rate of LRS at once: the optimiser is built inside a vmapped function
    of the rate, so the whole sweep is one compilation.

    Returns:
      {lr: {"curve": per-epoch mean training loss, "test_accuracy", "final_train_loss"}}.
    """
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def one(lr: jax.Array):
        opt = make_optimizer(name, lr, **kwargs)
        state = init_train_state(0, model.layers, (2,), opt)
        state, m = train_epochs(make_step_body(model.layers, LOSS, (), opt), BATCH, state, x, y,
                                EPOCHS)
        return state.params, jnp.mean(m["loss"], axis=1)

    params, curves = jax.jit(jax.vmap(one))(jnp.asarray(LRS))
    evaluate = jax.vmap(make_eval_fn(model.layers, LOSS, 3), in_axes=(0, None, None))
    test = evaluate(params, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))["accuracy"]
    train = evaluate(params, x, y)["loss"]
    return {lr: {"curve": np.asarray(curves[i]), "test_accuracy": float(test[i]),
                 "final_train_loss": float(train[i])} for i, lr in enumerate(LRS)}


def main() -> None:
    args = parse_args("optimizer_comparison", __doc__)
    ds = load_dataset("spirals", num_classes=3, points_per_class=100, noise=0.2)
    model = mlp([64, 64], 3, activation="relu")
    sweep: dict = {}
    for label, (name, kwargs) in OPTIMIZERS.items():
        sweep[label] = sweep_rates(model, ds, name, kwargs)
        best = min(LRS, key=lambda r: np.nan_to_num(np.mean(sweep[label][r]["curve"][-20:]),
                                                    nan=np.inf))
        sweep[label]["best"] = best
        b = sweep[label][best]
        print(f"{label:<19} best lr {best:g}: final train loss {b['final_train_loss']:.4f}, "
              f"test accuracy {b['test_accuracy']:.3f}")

    fig, axes = figure(1, 3, size=(4.2, 3.4))
    ep = np.arange(1, EPOCHS + 1)
    for label in OPTIMIZERS:
        best = sweep[label]["best"]
        axes[0, 0].plot(ep, smooth(sweep[label][SHARED_LR]["curve"]), label=label)
        axes[0, 1].plot(ep, smooth(sweep[label][best]["curve"]), label=f"{label} (lr {best:g})")
        axes[0, 2].plot(LRS, [sweep[label][r]["final_train_loss"] for r in LRS], marker="o",
                        ms=3, label=label)
    axes[0, 0].set(title=f"training loss, every optimiser at lr {SHARED_LR:g}", xlabel="epoch",
                   ylabel="cross-entropy (epoch mean, 5-epoch running mean)", yscale="log")
    axes[0, 1].set(title="... each at its best learning rate", xlabel="epoch", yscale="log")
    axes[0, 2].set(title=f"final training loss after {EPOCHS} epochs", xlabel="learning rate",
                   ylabel="cross-entropy on the training set", xscale="log", yscale="log")
    for ax in axes[0]:
        ax.legend()
    png = save_figure(fig, args)

    rows = [[label, f"{sweep[label]['best']:g}",
             sweep[label][sweep[label]["best"]]["final_train_loss"],
             sweep[label][sweep[label]["best"]]["test_accuracy"]]
            + [sweep[label][r]["final_train_loss"] for r in LRS] for label in OPTIMIZERS]
    save_markdown(args, "Final training loss (and test accuracy at the best rate), 2-64-64-3 "
                  f"ReLU MLP on spirals, {EPOCHS} epochs, batch {BATCH}\n\n"
                  + markdown_table(["optimiser", "best lr", "loss", "test acc"]
                                   + [f"loss @ {r:g}" for r in LRS], rows))
    save_table(args, {"model": "2-64-64-3 ReLU MLP, spirals (3 arms)", "epochs": EPOCHS,
                      "batch": BATCH, "learning_rates": LRS,
                      "results": {label: {"best_lr": sweep[label]["best"],
                                          **{f"lr={r:g}": {k: v for k, v in
                                                           sweep[label][r].items()
                                                           if k != "curve"} for r in LRS}}
                                  for label in OPTIMIZERS}})
    finish(args, [png])


if __name__ == "__main__":
    main()
