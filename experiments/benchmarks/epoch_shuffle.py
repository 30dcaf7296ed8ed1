"""What a shuffled epoch costs: nnfun's scanned epoch against a plain-JAX scan over batches
prepared once, on the same small MLP (64-128-128-10, ReLU, Adam, batch 64) and digits data (its
training split tiled ``--repeat`` times, so that an epoch has about a hundred steps).

Variants, timed side by side in interleaved rounds (median epoch time per variant):

- ``plain_prebatched``: plain JAX and optax, the step written inline, `lax.scan` over the
  training set reshaped to (steps, 64, 64) once, never reshuffled (the fastest possible loop);
- ``plain_gather_per_step``: the same step, gathering each batch by index inside the scan;
- ``nnfun_epoch``: `nnfun.train.make_epoch_fn`, which reshuffles every epoch and gathers the
  shuffled batches once per epoch, with ``grad_norm_every=0`` (as plain JAX: no extra metric);
- ``nnfun_epoch_gn10``: the same with ``grad_norm_every=10``, what ``nnfun train`` samples;
- ``nnfun_step_prebatched``: nnfun's step body scanned over the prepared batches.

Prints the table and writes it into ``--out`` (default ``experiments/benchmarks/out/``,
git-ignored)::

    python experiments/benchmarks/epoch_shuffle.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnfun import fast, train
from nnfun.data import load_dataset
from nnfun.models import mlp
from nnfun.spec import LossSpec

BATCH = 64


def _plain_step(optimizer: optax.GradientTransformation):
    def loss_fn(params, x, y):
        h, dense = x, [p for p in params if p]  # nnfun's list has {} for the ReLU layers
        for i, p in enumerate(dense):
            h = h @ p["w"] + p["b"]
            if i < len(dense) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    def step(carry, batch):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step


def variants(x: jax.Array, y: jax.Array) -> dict:
    """name -> (run one epoch and block, initial carry)."""
    model = mlp([128, 128], 10)
    opt = optax.adam(1e-3)
    steps = x.shape[0] // BATCH
    xb = x[: steps * BATCH].reshape(steps, BATCH, -1)
    yb = y[: steps * BATCH].reshape(steps, BATCH)
    idx = jnp.arange(steps * BATCH).reshape(steps, BATCH)
    loss = LossSpec.make("softmax_cross_entropy")
    options = fast.compiler_options(model.layers)
    state0 = train.init_train_state(0, model.layers, (x.shape[1],), opt)
    plain = _plain_step(opt)

    prebatched = jax.jit(lambda c: jax.lax.scan(plain, c, (xb, yb)), donate_argnums=0)
    per_step = jax.jit(lambda c: jax.lax.scan(lambda c, i: plain(c, (x[i], y[i])), c, idx),
                       donate_argnums=0)
    epochs = {gn: train.make_epoch_fn(train.make_step_body(model.layers, loss, (), opt,
                                                           grad_norm_every=gn, fast_paths=True),
                                      BATCH, compiler_options=options) for gn in (0, 10)}
    body = train.make_step_body(model.layers, loss, (), opt, grad_norm_every=0, fast_paths=True)
    nnfun_pre = jax.jit(lambda s: jax.lax.scan(body, s, (xb, yb)), donate_argnums=0,
                        compiler_options=options)

    def fresh_plain():
        params = jax.tree.map(jnp.copy, state0.params)
        return (params, opt.init(params))

    def fresh_state():
        return jax.tree.map(jnp.copy, state0)

    counter = {"epoch": 0}

    def nnfun_epoch(gn):
        def run(s):
            counter["epoch"] += 1
            return epochs[gn](s, x, y, jnp.asarray(counter["epoch"]))
        return run

    return {
        "plain_prebatched": (prebatched, fresh_plain),
        "plain_gather_per_step": (per_step, fresh_plain),
        "nnfun_epoch": (nnfun_epoch(0), fresh_state),
        "nnfun_epoch_gn10": (nnfun_epoch(10), fresh_state),
        "nnfun_step_prebatched": (nnfun_pre, fresh_state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="epochs timed per round")
    parser.add_argument("--repeat", type=int, default=8,
                        help="tile the digits training split this many times (more steps)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    ds = load_dataset("digits", flatten=True)
    x = jnp.asarray(np.tile(ds.x_train, (args.repeat, 1)), jnp.float32)
    y = jnp.asarray(np.tile(ds.y_train, args.repeat))
    runs = variants(x, y)
    carries = {}
    for name, (fn, fresh) in runs.items():  # compile and warm up
        carries[name] = jax.block_until_ready(fn(fresh())[0])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (fn, _) in runs.items():
            carry = carries[name]
            t0 = time.perf_counter()
            for _ in range(args.epochs):
                carry = fn(carry)[0]
            jax.block_until_ready(carry)
            times[name].append((time.perf_counter() - t0) / args.epochs)
            carries[name] = carry
    base = float(np.median(times["plain_prebatched"]))
    rows = {name: {"median_epoch_ms": 1e3 * float(np.median(t)),
                   "speed_vs_plain_prebatched": base / float(np.median(t)),
                   "per_round_ratio": [base_r / t_r for base_r, t_r in
                                       zip(times["plain_prebatched"], t)]}
            for name, t in times.items()}
    print(f"{x.shape[0]} examples, batch {BATCH}, {x.shape[0] // BATCH} steps per epoch, "
          f"{args.rounds} rounds of {args.epochs} epochs, jax {jax.__version__}")
    for name, r in rows.items():
        spread = ", ".join(f"{v:.2f}" for v in r["per_round_ratio"])
        print(f"{name:24s} {r['median_epoch_ms']:8.3f} ms/epoch  "
              f"{r['speed_vs_plain_prebatched']:.2f}x  (rounds: {spread})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "epoch_shuffle.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
