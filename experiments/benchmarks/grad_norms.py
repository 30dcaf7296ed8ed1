"""What the per-layer gradient-norm metric costs a train step, side by side in one process.

    python experiments/benchmarks/grad_norms.py            # about 1.5 minutes on 2 cores
    python experiments/benchmarks/grad_norms.py --rounds 1 --steps 10   # a quick check

`nnfun.train.make_step_body(..., grad_norm_every=k)` measures the norms on every k-th step
(k = 1: every step; k = 0: never); `nnfun train` samples every min(10, steps per epoch) steps.
For each model this times the three settings as `nnfun train` runs them (fast paths on,
`nnfun.fast.compiler_options`, `nnfun.train.make_train_epoch` with the dispatch
`nnfun.fast.choose_dispatch` picks: a scanned epoch for MLPs, a Python loop of jitted steps
for CNNs) in interleaved rounds and prints the median microseconds per step and the speed-up
over measuring every step. Synthetic N(0, 1) inputs, Adam; the digits models are the shipped
configs' (with their dropout). It prints its table and writes no file.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnfun import fast, train
from nnfun.config import build_model, load_config
from nnfun.models import mlp
from nnfun.spec import LossSpec

EVERY = (1, 10, 0)


def cases() -> dict[str, tuple]:
    """name -> (layers, per-example input shape, batch)."""
    return {
        "MLP 64-128-128-10 b64": (mlp([128, 128], 10).layers, (64,), 64),
        "MLP 784-512-512-10 b128": (mlp([512, 512], 10).layers, (784,), 128),
        "configs/digits_mlp.toml b32": (
            build_model(load_config("configs/digits_mlp.toml").model).layers, (8, 8, 1), 32),
        "configs/digits_cnn.toml b32": (
            build_model(load_config("configs/digits_cnn.toml").model).layers, (8, 8, 1), 32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    runs = {}
    for name, (layers, shape, batch) in cases().items():
        n = batch * a.steps
        x = jnp.asarray(rng.normal(size=(n, *shape)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, n))
        opt = optax.adam(1e-3)
        dispatch = fast.choose_dispatch(layers)
        options = fast.compiler_options(layers)
        for every in EVERY:
            body = train.make_step_body(layers, LossSpec.make("softmax_cross_entropy"), (), opt,
                                        grad_norm_every=every, fast_paths=True)
            state = train.init_train_state(0, layers, shape, opt)
            epoch = train.make_train_epoch(body, batch, dispatch=dispatch,
                                           compiler_options=options)

            def run(s, epoch=epoch, x=x, y=y):
                # the epoch that continues from s.step (one epoch = a.steps steps)
                return epoch(s, x, y, int(s.step) // a.steps)[0]
            runs[(name, every)] = [run, jax.block_until_ready(run(state)), []]
        print(f"built {name} ({dispatch})", flush=True)
    for _ in range(a.rounds):
        for key in np.random.default_rng().permutation(len(runs)):
            r = runs[list(runs)[key]]
            t = time.perf_counter()
            r[1] = jax.block_until_ready(r[0](r[1]))
            r[2].append((time.perf_counter() - t) / a.steps * 1e6)
    print(f"\nmedian us/step over {a.rounds} interleaved rounds (speed-up over every step)")
    for name in cases():
        base = np.median(runs[(name, 1)][2])
        cells = [f"every={k}: {np.median(runs[(name, k)][2]):,.0f} "
                 f"({base / np.median(runs[(name, k)][2]):.2f}x)" for k in EVERY]
        print(f"{name:30s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
