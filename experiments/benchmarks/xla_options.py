"""XLA:CPU's defaults against nnfun's CPU compiler options, side by side.

    python experiments/benchmarks/xla_options.py               # ~2 min on 2 cores
    python experiments/benchmarks/xla_options.py --rounds 1 --models mlp_small   # ~30 s
    python experiments/benchmarks/xla_options.py --update-results  # rewrite xla_options.md

jax 0.10's XLA:CPU hands single dots, convolutions and reductions to the YNNPACK library by
default. With its fast paths on (``training.fast_paths = true``, the default of ``nnfun
train``), nnfun compiles the steps of models with convolutions with
`nnfun.fast.CPU_CONV_COMPILER_OPTIONS`, which keep YNNPACK for single dots only, so
convolutions run on XLA's own kernels, and every model's steps with
`nnfun.fast.CPU_COMPILER_OPTIONS` (copy insertion that drops the per-step copies of the
parameters). This measures XLA's defaults against all of them
(`nnfun.fast.compiler_options(None)`), interleaved in the same rounds (medians, ms):

1. single convolutions of the benchmark models' shapes (`nnfun.layers.conv2d_apply` /
   `conv1d_apply`, one `lax.conv_general_dilated` each): forward plus the input and weight
   gradients in one jitted call, compiled once with XLA's defaults and once with the options;
2. nnfun's train epoch on the benchmark models (bench.py's MODELS and its nnfun runner: fast
   paths on, nnfun's automatic dispatch), built once as bench.py's ``@xladefaults`` variant
   (XLA's defaults) and once with the options (the conv options forced on the MLPs too, which
   nnfun itself leaves out there: this shows why).

Writes xla_options.md into experiments/benchmarks/out/ (git-ignored; --out to choose), or
over the committed copy next to this file with --update-results.
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import frameworks as fw  # noqa: E402

#: name -> (input shape (N, *spatial, C_in), kernel shape (*K, C_in, C_out)); SAME padding.
CONVS = {
    "LeNet conv 1: 28x28x1, 5x5 -> 32, batch 128": ((128, 28, 28, 1), (5, 5, 1, 32)),
    "LeNet conv 2: 14x14x32, 5x5 -> 64, batch 128": ((128, 14, 14, 32), (5, 5, 32, 64)),
    "16x16x16, 3x3 -> 32, batch 64": ((64, 16, 16, 16), (3, 3, 16, 32)),
    "digits conv 2: 4x4x32, 3x3 -> 64, batch 32": ((32, 4, 4, 32), (3, 3, 32, 64)),
    "MNIST-1D conv 2: 20x32, 5 -> 64, batch 100": ((100, 20, 32), (5, 32, 64)),
    "MNIST-1D conv 3: 10x64, 5 -> 64, batch 100": ((100, 10, 64), (5, 64, 64)),
}
CONV_MODELS = ("lenet", "digits_cnn", "mnist1d_cnn")
OTHER_MODELS = ("mlp", "mlp_small")


def _timed(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def conv_table(rounds: int) -> list[tuple[str, float, float]]:
    import jax
    import jax.numpy as jnp

    from nnfun.fast import compiler_options
    from nnfun.layers import conv1d_apply, conv2d_apply

    rows = []
    for name, (xs, ws) in CONVS.items():
        key = jax.random.PRNGKey(0)
        x, w = jax.random.normal(key, xs), jax.random.normal(key, ws) * 0.1
        apply = conv2d_apply if len(xs) == 4 else conv1d_apply

        def conv(x, w, apply=apply):
            return apply({"w": w}, x, padding="SAME")

        def fwd_and_grads(x, w, g, conv=conv):
            y, back = jax.vjp(conv, x, w)
            return y, back(g)

        g = jnp.ones_like(conv(x, w))
        low = jax.jit(fwd_and_grads).lower(x, w, g)
        calls = {"defaults": low.compile(), "options": low.compile(
            compiler_options=compiler_options(None))}
        run = {k: (lambda c=c, args=(x, w, g): jax.block_until_ready(c(*args)))
               for k, c in calls.items()}
        for f in run.values():
            f()
        reps = max(1, int(0.2 / max(_timed(run["options"], 1), 1e-6)))
        times = {k: [] for k in run}
        for _ in range(rounds):
            for k in random.sample(list(run), len(run)):
                times[k].append(_timed(run[k], reps))
        d, o = (float(np.median(times[k])) * 1e3 for k in ("defaults", "options"))
        rows.append((name, d, o))
        print(f"  {name}: XLA defaults {d:.3f} ms, nnfun's options {o:.3f} ms ({d / o:.2f}x)",
              flush=True)
    return rows


def step_table(models: list[str], rounds: int) -> list[tuple[str, float, float]]:
    from nnfun import fast

    rows = []
    for m in models:
        ops, shape, batch, steps, _ = bench.MODELS[m]
        steps = steps[0]
        data = bench.make_data(m, steps)
        variant = f"nnfun-autodiff-{bench.nnfun_auto_dispatch(m)}"
        runners = {}
        chooser = fast.compiler_options
        # nnfun gives models without convolutions no conv options; forced here, to measure why.
        fast.compiler_options = lambda layers=None, backend=None, c=chooser: c(None, backend)
        try:
            for label, name in (("defaults", variant + fw.XLA_DEFAULTS), ("options", variant)):
                r = fw.make_runner(name, ops, shape, batch, steps)
                r.prepare(*data)
                r.build()
                bench.first_call(r)
                runners[label] = r
        finally:
            fast.compiler_options = chooser
        times = {k: [] for k in runners}
        for _ in range(rounds):
            for k in random.sample(list(runners), len(runners)):
                times[k].append(bench.timed_epoch(runners[k]) / steps)
        d, o = (float(np.median(times[k])) * 1e3 for k in ("defaults", "options"))
        rows.append((f"{m} ({variant})", d, o))
        print(f"  {m}: XLA defaults {d:.3f} ms/step, nnfun's options {o:.3f} ms/step "
              f"({d / o:.2f}x)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", default=",".join(CONV_MODELS + OTHER_MODELS))
    p.add_argument("--out", default=None,
                   help="the Markdown table to write (default: experiments/benchmarks/out/"
                        "xla_options.md, git-ignored; with --update-results: the committed "
                        "experiments/benchmarks/xla_options.md)")
    p.add_argument("--update-results", action="store_true",
                   help="rewrite the committed xla_options.md next to this script")
    a = p.parse_args(argv)
    here = Path(__file__).resolve().parent
    a.out = Path(a.out or (here if a.update_results else here / "out") / "xla_options.md")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    import jax

    from nnfun.fast import compiler_options

    options = compiler_options()
    if jax.default_backend() != "cpu" or not options:
        sys.exit("xla_options.py: needs a CPU backend whose XLA accepts nnfun's CPU options")
    t0 = time.time()
    print("single convolutions (forward + input and weight gradients):", flush=True)
    convs = conv_table(a.rounds)
    print("nnfun train steps:", flush=True)
    steps = step_table(a.models.split(","), a.rounds)
    lines = [
        "# XLA:CPU's defaults against nnfun's CPU compiler options",
        "",
        f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {bench.machine()}, "
        f"jax {jax.__version__}, by `python experiments/benchmarks/xla_options.py "
        f"--rounds {a.rounds}` ({time.time() - t0:.0f} s); medians of {a.rounds} interleaved "
        "rounds. nnfun's options: "
        + ", ".join(f"`{k}={v}`" for k, v in options.items()) + ".",
        "",
        "| convolution (forward + both gradients) | XLA defaults, ms | nnfun's options, ms | "
        "speed-up |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {d:.3f} | {o:.3f} | {d / o:.2f}x |" for n, d, o in convs),
        "",
        "| nnfun train step | XLA defaults, ms | nnfun's options, ms | speed-up |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {d:.3f} | {o:.3f} | {d / o:.2f}x |" for n, d, o in steps),
        "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
