"""Capacity and regularisation on a toy 2-D problem (lectures 002, 003, 004).

The ConvNetJS "classify2d" demo the notes show, redone with nnfun: a one-hidden-layer tanh net
(softmax output) learns two noisy moons (60 training points, Gaussian noise 0.3, so the classes
overlap) by full-batch Adam (lr 0.02, 5000 steps). The 3x3 grid of decision boundaries:

- row 1, capacity: 3, 6 and 20 hidden units, no regularisation: every net reaches 100 %
  training accuracy by carving islands around single noisy points ("do not use the size of the
  network as a regulariser");
- row 2, L2 on 20 hidden units with lambda = 0.001, 0.01, 0.1 in lecture 000's convention,
  loss + lambda / (2 m) sum w^2 with m = 60 (`nnfun.regularizers.l2(convention="over_2m")`,
  biases not penalised): the islands shrink and vanish as lambda grows. (Under lectures
  003 / 004's "lambda sum w^2" convention the same three values would be 2 m = 120 times
  stronger);
- row 3, other regularisers on 20 hidden units: dropout (drop rate 0.3 after the hidden layer)
  and L1, lambda sum |w| with lambda = 0.0003 and 0.003.

The table gives training and test accuracy (test: 540 held-out points of the same
distribution) and the sum of squared weights for each panel.
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
    run_steps,
    save_figure,
    save_markdown,
    save_table,
    sized,
)

from nnfun.data import load_dataset
from nnfun.models import layer, sequential
from nnfun.optim import make_optimizer
from nnfun.spec import LossSpec, RegSpec
from nnfun.train import init_train_state, make_eval_fn, make_step_body

STEPS, LR, NOISE = sized(5000, 10), 0.02, 0.3
LOSS = LossSpec.make("softmax_cross_entropy")
PANELS = [  # (title, hidden units, drop rate, regulariser)
    ("3 hidden units", 3, 0.0, None), ("6 hidden units", 6, 0.0, None),
    ("20 hidden units", 20, 0.0, None),
    ("20 units, L2 lambda = 0.001", 20, 0.0, ("l2", 0.001)),
    ("20 units, L2 lambda = 0.01", 20, 0.0, ("l2", 0.01)),
    ("20 units, L2 lambda = 0.1", 20, 0.0, ("l2", 0.1)),
    ("20 units, dropout 0.3", 20, 0.3, None),
    ("20 units, L1 lambda = 0.0003", 20, 0.0, ("l1", 0.0003)),
    ("20 units, L1 lambda = 0.003", 20, 0.0, ("l1", 0.003)),
]
PANELS = sized(PANELS, [PANELS[k] for k in (5, 6, 7)])  # L2, dropout, L1


def net(hidden: int, drop_rate: float):
    specs = [layer("dense", features=hidden, w_init="xavier_normal"), layer("tanh")]
    if drop_rate:
        specs.append(layer("dropout", drop_rate=drop_rate))
    return sequential(specs + [layer("dense", features=2, w_init="xavier_normal")])


def main() -> None:
    args = parse_args("capacity_regularization", __doc__)
    ds = load_dataset("moons", num_samples=600, noise=NOISE, val_fraction=0.0,
                      test_fraction=0.9, seed=0)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    xx, yy = np.meshgrid(np.linspace(-1.8, 2.8, 121), np.linspace(-1.3, 1.8, 91))
    grid = jnp.asarray(np.c_[xx.ravel(), yy.ravel()], jnp.float32)
    xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    fig, axes = figure(-(-len(PANELS) // 3), 3, size=(3.3, 2.75))
    rows, table = [], {}
    for k, (title, hidden, drop, reg) in enumerate(PANELS):
        model = net(hidden, drop)
        regs = ()
        if reg:
            kw = {"convention": "over_2m"} if reg[0] == "l2" else {}
            regs = (RegSpec.make(reg[0], lam=reg[1], **kw),)
        opt = make_optimizer("adam", LR)
        state = init_train_state(0, model.layers, (2,), opt)
        state, _ = run_steps(make_step_body(model.layers, LOSS, regs, opt), state, x, y, STEPS)
        evaluate = make_eval_fn(model.layers, LOSS, 2)

        def measures(params, model=model, evaluate=evaluate):
            """Train and test accuracy, sum of squared weights, P(class 1) on the grid."""
            return (evaluate(params, x, y)["accuracy"], evaluate(params, xt, yt)["accuracy"],
                    sum(jnp.sum(p["w"] ** 2) for p in params if "w" in p),
                    jax.nn.softmax(model.apply(params, grid))[:, 1])

        train_acc, test_acc, sq, p = jax.jit(measures)(state.params)  # one compiled call
        train_acc, test_acc, sq = float(train_acc), float(test_acc), float(sq)
        table[title] = {"hidden": hidden, "drop_rate": drop, "regularizer": reg,
                        "train_accuracy": train_acc, "test_accuracy": test_acc,
                        "sum_squared_weights": sq}
        rows.append([title, train_acc, test_acc, sq])
        print(f"{title:<28} train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}, "
              f"sum w^2 {sq:.1f}")
        p = np.asarray(p).reshape(xx.shape)
        ax = axes[k // 3, k % 3]
        ax.contourf(xx, yy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.7)
        ax.contour(xx, yy, p, levels=[0.5], colors="k", linewidths=1)
        ax.scatter(ds.x_train[:, 0], ds.x_train[:, 1], c=ds.y_train, cmap="RdBu_r",
                   edgecolors="k", s=14)
        ax.set(title=f"{title}\ntrain {train_acc:.2f}, test {test_acc:.2f}", xticks=[],
               yticks=[], aspect="equal")
    for ax in axes.flat[len(PANELS):]:
        ax.axis("off")
    png = save_figure(fig, args)
    save_markdown(args, f"One-hidden-layer tanh net on noisy moons ({len(ds.x_train)} "
                  f"training, {len(ds.x_test)} test points), full-batch Adam lr {LR}, "
                  f"{STEPS} steps\n\n" + markdown_table(
                      ["panel", "train acc", "test acc", "sum w^2"], rows))
    save_table(args, {"data": f"moons, noise {NOISE}",
                      "l2_convention": "lambda / (2 m) sum w^2, m = training set size",
                      "n_train": len(ds.x_train),
                      "n_test": len(ds.x_test), "steps": STEPS, "optimizer": f"adam {LR}",
                      "panels": table})
    finish(args, [png])


if __name__ == "__main__":
    main()
