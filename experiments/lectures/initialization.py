"""Initialisation and the symmetry problem (lecture 004).

A 2-16-3 sigmoid MLP is trained on three spirals (SGD with momentum, minibatches of 32) from
five initialisations of every dense weight (biases start at zero in all of them):

- zeros and constant 0.5: every hidden unit computes the same function, so every hidden unit
  receives the same gradient and they stay identical after any number of steps: the net has,
  in effect, one hidden unit;
- uniform in [-eps, eps] with eps = 0.12 (the notes' "random value in [-eps, eps]"), Xavier
  (normal, variance 2 / (n_in + n_out)) and He (normal, variance 2 / n_in) break the symmetry.

Measured after every epoch: the spread of the hidden units' incoming weight vectors (standard
deviation across the 16 units of each entry of [W1; b1], averaged over entries: 0 while the
units are identical; in float32 the symmetric runs pick up rounding noise of ~1e-7 that never
grows), and the number of distinct hidden units (incoming weight vectors more than 1e-4 apart).
All five runs share one compiled epoch (vmapped), the same minibatch order and the same step
size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    figure,
    finish,
    parse_args,
    save_figure,
    save_table,
    sized,
    stack_states,
    unstack,
)

from nnfun.data import load_dataset
from nnfun.models import mlp
from nnfun.optim import make_optimizer
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_epoch_fn, make_eval_fn, make_step_body

HIDDEN, BATCH, SEED = 16, 32, 0
EPOCHS = sized(200, 2)
INITS = {"zeros": "zeros", "constant 0.5": {"name": "constant", "value": 0.5},
         "uniform eps=0.12": {"name": "uniform", "eps": 0.12},
         "Xavier normal": "xavier_normal", "He normal": "he_normal"}
LOSS = LossSpec.make("softmax_cross_entropy")


def spread(params) -> float:
    """Mean over the entries of [W1; b1] of the standard deviation across hidden units."""
    wb = jnp.concatenate([params[0]["w"], params[0]["b"][None, :]], axis=0)  # (D + 1, H)
    return float(jnp.mean(jnp.std(wb, axis=1)))


def distinct_units(params, tol: float = 1e-4) -> int:
    """How many different incoming weight vectors (columns of [W1; b1]) the hidden units
    have: unit j counts as new when it is farther than `tol` from every unit counted so far."""
    wb = np.asarray(jnp.concatenate([params[0]["w"], params[0]["b"][None, :]], axis=0)).T
    kept: list[np.ndarray] = []
    for v in wb:
        if all(np.max(np.abs(v - k)) > tol for k in kept):
            kept.append(v)
    return len(kept)


def main() -> None:
    args = parse_args("initialization", __doc__)
    ds = load_dataset("spirals", num_classes=3, points_per_class=100, noise=0.2)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    models = {name: mlp([HIDDEN], 3, activation="sigmoid", w_init=spec)
              for name, spec in INITS.items()}
    layers = next(iter(models.values())).layers  # the apply path ignores init arguments
    opt = make_optimizer("sgd", 0.5, momentum=0.9)
    states = stack_states([init_train_state(SEED, m.layers, (2,), opt) for m in models.values()])
    epoch = jax.vmap(make_epoch_fn(make_step_body(layers, LOSS, (), opt), BATCH),
                     in_axes=(0, None, None, None))
    evaluate = make_eval_fn(layers, LOSS, 3)
    names = list(INITS)
    history = {n: {"spread": [], "distinct": [], "loss": []} for n in names}

    def record(states, losses=None) -> None:
        for i, n in enumerate(names):
            p = unstack(states.params, i)
            history[n]["spread"].append(spread(p))
            history[n]["distinct"].append(distinct_units(p))
            if losses is not None:
                history[n]["loss"].append(float(np.mean(losses[i])))

    record(states)
    for e in range(EPOCHS):
        states, metrics = epoch(states, x, y, jnp.asarray(e))
        record(states, np.asarray(metrics["loss"]))

    table = {}
    for i, n in enumerate(names):
        p = unstack(states.params, i)
        acc = float(evaluate(p, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))["accuracy"])
        h = history[n]
        table[n] = {"spread_at_init": h["spread"][0], "spread_after": h["spread"][-1],
                    "distinct_hidden_units_at_init": h["distinct"][0],
                    "distinct_hidden_units_after": h["distinct"][-1],
                    "final_train_loss": h["loss"][-1], "test_accuracy": acc}
        print(f"{n:<17} spread {h['spread'][0]:.3g} -> {h['spread'][-1]:.3g}, distinct hidden "
              f"units {h['distinct'][0]} -> {h['distinct'][-1]}, train loss "
              f"{h['loss'][-1]:.3f}, test accuracy {acc:.2f}")

    fig, axes = figure(1, 4, size=(3.4, 3.0))
    ep = np.arange(EPOCHS + 1)
    for n in names:
        style = {"ls": "--" if n in ("zeros", "constant 0.5") else "-", "label": n}
        axes[0, 0].plot(ep, np.maximum(history[n]["spread"], 1e-9), **style)
        axes[0, 1].plot(ep, history[n]["distinct"], **style)
        axes[0, 2].plot(ep[1:], history[n]["loss"], **style)
    axes[0, 0].set(title="spread of hidden-unit weights", xlabel="epoch",
                   ylabel="mean std across units (0 drawn at 1e-9)", yscale="log")
    axes[0, 1].set(title="distinct hidden units (weights > 1e-4 apart)", xlabel="epoch",
                   ylabel=f"of {HIDDEN}")
    axes[0, 2].set(title="training loss", xlabel="epoch", ylabel="softmax cross-entropy")
    axes[0, 0].legend()
    ax = axes[0, 3]
    for n, marker in (("zeros", "o"), ("uniform eps=0.12", "^"), ("He normal", "s")):
        w = np.asarray(unstack(states.params, names.index(n))[0]["w"])
        ax.scatter(w[0], w[1], marker=marker, label=n, alpha=0.7, s=90 if n == "zeros" else 25)
    ax.set(title=f"{HIDDEN} hidden units' (w1, w2) after training\n(zeros: all 16 on one dot)",
           xlabel="w1",
           ylabel="w2")
    ax.legend()
    png = save_figure(fig, args)
    save_table(args, {"model": f"2-{HIDDEN}-3 sigmoid MLP, spirals (3 arms)",
                      "optimizer": "sgd lr 0.5 momentum 0.9, batch 32", "epochs": EPOCHS,
                      "inits": table})
    finish(args, [png])


if __name__ == "__main__":
    main()
