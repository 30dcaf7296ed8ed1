"""Learning-rate schedules (lecture 003), built with `nnfun.optim.make_schedule`.

Over T = 100 epochs, from alpha_0 = 0.1:

- constant: alpha_t = alpha_0;
- step: multiply by 0.1 after epochs 30, 60 and 90 (``piecewise_constant_schedule``);
- cosine: alpha_t = alpha_0 (1 + cos(t pi / T)) / 2 (``cosine_decay_schedule``);
- linear: alpha_t = alpha_0 (1 - t / T) (``linear_schedule`` to 0);
- inverse sqrt: alpha_t = alpha_0 / sqrt(t) with t counted in epochs from 1
  (``inverse_sqrt_schedule`` with timescale = steps per epoch).

Each drives SGD with momentum 0.9 on a 2-64-64-3 ReLU MLP for three noisy, overlapping spirals
(200 points per arm, angular noise 0.4; minibatches of 32, softmax cross-entropy, the same
initial parameters and batch order). The classes overlap, so the loss cannot reach 0 and a
constant rate leaves SGD bouncing around the minimum: the decaying schedules settle lower. The
figure shows the schedules and the training loss; the table, the final training loss and test
accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    SMOKE,
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
from nnfun.optim import make_optimizer, make_schedule
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_eval_fn, make_step_body

EPOCHS, BATCH, LR0 = sized(100, 3), 32, 0.1
#: the step schedule's drops (x0.1), at 30 %, 60 % and 90 % of the run
DROPS = tuple(round(f * EPOCHS) for f in (0.3, 0.6, 0.9))
LOSS = LossSpec.make("softmax_cross_entropy")


def schedules(steps_per_epoch: int) -> dict:
    t = EPOCHS * steps_per_epoch
    return {
        "constant": make_schedule("constant_schedule", value=LR0),
        f"step (x0.1 at {', '.join(map(str, DROPS))})": make_schedule(
            "piecewise_constant_schedule", init_value=LR0,
            boundaries_and_scales={e * steps_per_epoch: 0.1 for e in DROPS}),
        "cosine": make_schedule("cosine_decay_schedule", init_value=LR0, decay_steps=t),
        "linear": make_schedule("linear_schedule", init_value=LR0, end_value=0.0,
                                transition_steps=t),
        "inverse sqrt": make_schedule("inverse_sqrt_schedule", init_value=LR0,
                                      timescale=steps_per_epoch),
    }


def main() -> None:
    args = parse_args("lr_schedules", __doc__)
    ds = load_dataset("spirals", num_classes=3, points_per_class=200, noise=0.4)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    steps_per_epoch = x.shape[0] // BATCH
    model = mlp([64, 64], 3, activation="relu")
    evaluate = make_eval_fn(model.layers, LOSS, 3)
    results = {}
    runs = schedules(steps_per_epoch)
    if SMOKE:  # one schedule, the one with drops
        runs = {k: v for k, v in runs.items() if k.startswith("step")}
    for name, schedule in runs.items():
        opt = make_optimizer("sgd", schedule, momentum=0.9)
        state = init_train_state(0, model.layers, ds.input_shape, opt)
        body = make_step_body(model.layers, LOSS, (), opt)
        state, m = jax.jit(lambda s, b=body: train_epochs(b, BATCH, s, x, y, EPOCHS))(state)
        test = evaluate(state.params, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))
        steps = np.arange(EPOCHS * steps_per_epoch)
        results[name] = {
            "lr": np.asarray(jax.vmap(schedule)(jnp.asarray(steps))),
            "curve": np.asarray(jnp.mean(m["loss"], axis=1)),
            "final_train_loss": float(evaluate(state.params, x, y)["loss"]),
            "test_accuracy": float(test["accuracy"]), "test_loss": float(test["loss"])}
        r = results[name]
        print(f"{name:<26} lr at epochs 0/{EPOCHS // 2}/{EPOCHS - 1}: {r['lr'][0]:.4f} / "
              f"{r['lr'][EPOCHS // 2 * steps_per_epoch]:.4f} / {r['lr'][-1]:.5f}; final train loss "
              f"{r['final_train_loss']:.2e}, test accuracy {r['test_accuracy']:.3f}")

    fig, axes = figure(1, 2, size=(4.6, 3.4))
    for name, r in results.items():
        axes[0, 0].plot(np.arange(len(r["lr"])) / steps_per_epoch, r["lr"], label=name)
        axes[0, 1].plot(np.arange(1, EPOCHS + 1), r["curve"], label=name)
    axes[0, 0].set(title=f"learning rate (alpha_0 = {LR0:g}, T = {EPOCHS} epochs)",
                   xlabel="epoch", ylabel="learning rate")
    axes[0, 1].set(title="training loss, SGD + momentum 0.9", xlabel="epoch",
                   ylabel="cross-entropy (epoch mean)", yscale="log")
    axes[0, 0].legend()
    axes[0, 1].legend()
    png = save_figure(fig, args)
    rows = [[n, r["final_train_loss"], r["test_loss"], r["test_accuracy"]]
            for n, r in results.items()]
    save_markdown(args, "2-64-64-3 ReLU MLP on noisy spirals, SGD + momentum 0.9, "
                  f"{EPOCHS} epochs, batch {BATCH}, alpha_0 = {LR0}\n\n"
                  + markdown_table(["schedule", "final train loss", "test loss", "test acc"],
                                   rows))
    save_table(args, {"model": "2-64-64-3 ReLU MLP, spirals (3 arms, noise 0.4)", "epochs": EPOCHS,
                      "steps_per_epoch": steps_per_epoch, "lr0": LR0,
                      "results": {n: {k: v for k, v in r.items() if k not in ("lr", "curve")}
                                  | {"lr_every_10_epochs": r["lr"][::10 * steps_per_epoch]}
                                  for n, r in results.items()}})
    finish(args, [png])


if __name__ == "__main__":
    main()
