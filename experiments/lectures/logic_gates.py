"""Logic gates from sigmoid neurons (lecture 004), and why XOR needs a hidden layer.

- AND: one neuron g(-30 + 20 x1 + 20 x2), i.e. a dense layer with w = (20, 20), b = -30 and a
  sigmoid: g(-30), g(-10), g(-10), g(10) ~ 0, 0, 0, 1.
- OR: g(-10 + 20 x1 + 20 x2): g(-10), g(10), g(10), g(30) ~ 0, 1, 1, 1.
- XOR: a single neuron's decision boundary is a line, and no line separates (0, 1), (1, 0) from
  (0, 0), (1, 1), so a threshold unit gets at most 3 of 4 points right; trained on the
  logistic loss (Adam, full batch) the neuron goes to the loss's best linear answer, w = 0 and
  output 0.5 everywhere (loss log 2). A 2-4-1 net (tanh hidden layer) learns XOR. Both are
  trained from five seeds at once (vmapped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    figure,
    finish,
    parse_args,
    run_steps,
    save_figure,
    save_table,
    sized,
    unstack,
)

from nnfun.data import load_dataset
from nnfun.layers import dense_apply
from nnfun.models import layer, sequential
from nnfun.optim import make_optimizer
from nnfun.spec import LossSpec
from nnfun.train import init_train_state, make_step_body

STEPS = sized(3000, 20)
SEEDS = range(sized(5, 2))
LOSS = LossSpec.make("binary_cross_entropy_with_logits")
NEURON = sequential([layer("dense", features=1, w_init="xavier_normal")])
HIDDEN = sequential([layer("dense", features=4, w_init="xavier_normal"), layer("tanh"),
                     layer("dense", features=1, w_init="xavier_normal")])
FIXED = sequential([layer("dense", features=1), layer("sigmoid")])
NOTES_WEIGHTS = {"AND": (-30.0, 20.0, 20.0), "OR": (-10.0, 20.0, 20.0)}


def fixed_gate(b: float, w1: float, w2: float) -> list[dict]:
    """The notes' neuron as nnfun parameters: dense {w: (2, 1), b: (1,)} then sigmoid."""
    return [{"w": jnp.array([[w1], [w2]]), "b": jnp.array([b])}, {}]


def train(model, x: jax.Array, y: jax.Array):
    """Full-batch Adam on the logistic loss from every seed at once (vmapped).

    Returns:
      (params stacked over seeds, losses (seeds, STEPS)).
    """
    opt = make_optimizer("adam", 0.05)
    # every seed's initial state in one compiled call (the same values as one by one)
    states = jax.jit(jax.vmap(lambda s: init_train_state(s, model.layers, (2,), opt)))(
        jnp.asarray(list(SEEDS)))
    states, metrics = run_steps(make_step_body(model.layers, LOSS, (), opt), states, x, y,
                                STEPS, batched=True)
    return states.params, np.asarray(metrics["loss"])


def best_line_accuracy(x: np.ndarray, labels: np.ndarray, n: int = 20000) -> float:
    """The best accuracy of any threshold unit step(b + w . x) among n random lines."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, n)
    w = np.stack([np.cos(angle), np.sin(angle)], 1)
    b = rng.uniform(-2, 2, n)
    pred = (x @ w.T + b) > 0
    return float(np.max(np.mean(pred == labels[:, None], axis=0)))


def surface(ax, predict, title: str, x: np.ndarray, y: np.ndarray) -> None:
    """The output probability over [-0.5, 1.5]^2, the 0.5 contour and the four points."""
    g = np.linspace(-0.5, 1.5, 101)
    xx, yy = np.meshgrid(g, g)
    p = np.asarray(predict(jnp.asarray(np.c_[xx.ravel(), yy.ravel()], jnp.float32)))
    p = p.reshape(xx.shape)
    ax.contourf(xx, yy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.8)
    ax.contour(xx, yy, p, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", vmin=0, vmax=1, edgecolors="k", s=60)
    ax.set(title=title, xlabel="x1", ylabel="x2", aspect="equal")


def main() -> None:
    args = parse_args("logic_gates", __doc__)
    fig, axes = figure(1, 5, size=(3.0, 3.1))
    table: dict = {"fixed_neurons": {}, "xor": {}}

    print("the notes' fixed neurons h(x) = g(b + w1 x1 + w2 x2):")
    for i, (name, (b, w1, w2)) in enumerate(NOTES_WEIGHTS.items()):
        ds = load_dataset(name.lower())
        params = fixed_gate(b, w1, w2)
        x = jnp.asarray(ds.x_train)
        z = np.asarray(dense_apply(params[0], x))[:, 0]
        h = np.asarray(FIXED.apply(params, x))[:, 0]
        rows = [{"x1": int(a), "x2": int(c), "z": float(zz), "h": float(hh),
                 "prediction": int(hh > 0.5), "target": int(t)}
                for (a, c), zz, hh, t in zip(ds.x_train, z, h, ds.y_train)]
        table["fixed_neurons"][name] = {"weights_b_w1_w2": [b, w1, w2], "rows": rows,
                                        "all_correct": all(r["prediction"] == r["target"]
                                                           for r in rows)}
        print(f"  {name}: " + ", ".join(f"g({r['z']:g}) = {r['h']:.5f}" for r in rows))
        surface(axes[0, i], lambda v, p=params: FIXED.apply(p, v)[:, 0],
                f"{name}: g({b:g} + {w1:g} x1 + {w2:g} x2)", ds.x_train, ds.y_train)

    ds = load_dataset("xor")
    x, labels = jnp.asarray(ds.x_train), ds.y_train
    y = jnp.asarray(labels[:, None], jnp.float32)
    curves = {}
    for name, model, col in (("single neuron", NEURON, 2), ("2-4-1 tanh", HIDDEN, 3)):
        params, losses = train(model, x, y)
        runs = []
        for i, seed in enumerate(SEEDS):
            p = unstack(params, i)
            probs = np.asarray(jax.nn.sigmoid(model.apply(p, x)))[:, 0]
            runs.append({"seed": seed, "final_loss": float(losses[i, -1]),
                         "correct": int(np.sum((probs > 0.5) == labels)),
                         "outputs": probs.round(4).tolist(), "params": p,
                         "losses": losses[i]})
        best = min(runs, key=lambda r: r["final_loss"])
        solved = sum(r["correct"] == 4 for r in runs)
        print(f"XOR, {name}: {solved}/{len(runs)} seeds get all 4 points right; "
              f"best final loss {best['final_loss']:.4f}, outputs {best['outputs']}")
        surface(axes[0, col], lambda v, p=best["params"], m=model: jax.nn.sigmoid(
            m.apply(p, v))[:, 0], f"XOR, {name}\n(best of {len(runs)} seeds)", ds.x_train,
            labels)
        curves[name] = runs
        table["xor"][name] = {
            "seeds_solving_all_4": solved, "seeds": len(runs),
            "runs": [{k: r[k] for k in ("seed", "final_loss", "correct", "outputs")}
                     for r in runs]}

    best_line = best_line_accuracy(ds.x_train, labels)
    table["xor"]["best_accuracy_of_any_line (20000 random threshold units)"] = best_line
    print(f"XOR: the best of 20000 random lines classifies {best_line:.0%} of the points "
          "(a line can get 3 of 4, never 4)")
    ax = axes[0, 4]
    for (name, runs), color in zip(curves.items(), ("tab:red", "tab:blue")):
        for r in runs:
            ax.plot(r["losses"], color=color, alpha=0.6,
                    label=name if r["seed"] == 0 else None)
    ax.axhline(np.log(2), color="0.4", ls=":", lw=1, label="log 2 (output 0.5)")
    ax.set(title=f"XOR training loss ({len(SEEDS)} seeds each)", xlabel="step",
           ylabel="logistic loss", yscale="log")
    ax.legend(fontsize="small")
    png = save_figure(fig, args)
    save_table(args, {**table, "steps": STEPS, "optimizer": "adam lr 0.05, full batch"})
    finish(args, [png])


if __name__ == "__main__":
    main()
