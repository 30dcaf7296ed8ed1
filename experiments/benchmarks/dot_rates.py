"""The matmuls of the MLP train steps: XLA:CPU's dot against NumPy's BLAS, side by side.

    python experiments/benchmarks/dot_rates.py               # ~1 min on 2 cores
    python experiments/benchmarks/dot_rates.py --rounds 11 --models mlp

bench.py's "% GEMM" divides a model's matmul FLOPs per step by the float32 GEMM limit, the faster
of NumPy's and XLA's (2048 x 2048) @ (2048 x 2048) matmul. This times every matmul of an MLP's
train step (per dense layer: forward ``x @ W``, weight gradient ``x^T @ dy``, and input gradient
``dy @ W^T`` except the first layer's) as one jitted ``lax.dot_general`` compiled with nnfun's
CPU compiler options, and as the NumPy product on the same operands, interleaved in the same
rounds (medians). From those it gives the "% GEMM" a step would reach if it were nothing but
its matmuls at XLA's rate: the ceiling for nnfun, plain JAX, Flax and Haiku alike, which all
hand their matmuls to XLA. XLA's matmuls run as a compiled loop of the same dot (no dispatch
per product, as inside a compiled train step). Writes dot_rates.md next to this file (--out to
change).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

MLP_MODELS = ("mlp", "mlp_b1024", "mlp_small", "digits_mlp", "mnist1d_mlp")


def step_matmuls(model: str) -> list[tuple[str, tuple[int, int], tuple[int, int], int, int]]:
    """(name, lhs shape, rhs shape, lhs contracting dim, rhs contracting dim) of every matmul in
    one train step of an MLP of bench.MODELS (the first layer's input gradient is not taken)."""
    ops, in_shape, batch, _, _ = bench.MODELS[model]
    width = int(np.prod(in_shape))
    out, first = [], True
    for op in ops:
        if op[0] != "dense":
            continue
        d_in, d_out = width, op[1]
        tag = f"{d_in}x{d_out}"
        out.append((f"{tag} forward x @ W", (batch, d_in), (d_in, d_out), 1, 0))
        out.append((f"{tag} weight gradient x^T @ dy", (batch, d_in), (batch, d_out), 0, 0))
        if not first:
            out.append((f"{tag} input gradient dy @ W^T", (batch, d_out), (d_in, d_out), 1, 1))
        first, width = False, d_out
    return out


def _repeated(contract: tuple, reps: int):
    """`reps` dots in one compiled loop. Each iteration writes one element of the left operand
    (in place) from the sum of the previous product times 0, so no dot can be hoisted out of
    the loop or left out; the sum is one pass over the output (~1-2% of a large matmul)."""
    import jax
    import jax.numpy as jnp

    def run(a, b):
        def body(_, a):
            out = jax.lax.dot_general(a, b, (contract, ((), ())))
            return a.at[0, 0].add(jnp.sum(out) * 0.0)
        return jax.lax.fori_loop(0, reps, body, a)
    return run


def _rate(flops: float, seconds: list[float]) -> float:
    return flops / float(np.median(seconds))


def measure(model: str, rounds: int, options: dict) -> list[tuple[str, float, float, float]]:
    """(name, MFLOP, XLA GFLOP/s, NumPy GFLOP/s) per matmul of `model`'s step."""
    import jax

    rng = np.random.default_rng(0)
    cases = []
    for name, a_shape, b_shape, ca, cb in step_matmuls(model):
        a = rng.standard_normal(a_shape, dtype=np.float32)
        b = rng.standard_normal(b_shape, dtype=np.float32)
        an = a.T if ca == 0 else a
        bn = b.T if cb == 1 else b
        flops = 2.0 * an.shape[0] * an.shape[1] * bn.shape[1]
        reps = max(3, int(2e-2 / max(flops / 1e11, 1e-6)))  # ~20 ms of work per timing
        aj, bj = jax.device_put(a), jax.device_put(b)
        xla = jax.jit(_repeated(((ca,), (cb,)), reps)).lower(aj, bj).compile(options)
        xla(aj, bj).block_until_ready()
        cases.append((name, flops, xla, (aj, bj), (an, bn), reps, [], []))
    for _ in range(rounds):
        for _, _, xla, args, (an, bn), reps, t_xla, t_np in cases:
            t = time.perf_counter()
            xla(*args).block_until_ready()
            t_xla.append((time.perf_counter() - t) / reps)
            t = time.perf_counter()
            for _ in range(reps):
                an @ bn
            t_np.append((time.perf_counter() - t) / reps)
    return [(name, flops / 1e6, _rate(flops, tx) / 1e9, _rate(flops, tn) / 1e9)
            for name, flops, _, _, _, _, tx, tn in cases]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", default=",".join(MLP_MODELS))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "dot_rates.md"))
    a = p.parse_args(argv)
    import jax

    from nnfun.train import compiler_options

    models = a.models.split(",")
    unknown = [m for m in models if m not in MLP_MODELS]
    if unknown:
        sys.exit(f"dot_rates.py: --models: expected some of {', '.join(MLP_MODELS)}, "
                 f"found {', '.join(unknown)}")
    options = compiler_options()
    t0 = time.time()
    limits = [bench.gemm_rate() for _ in range(a.rounds)]
    np_limit = float(np.median([n for n, _ in limits]))
    xla_limit = float(np.median([x for _, x in limits]))
    limit = max(np_limit, xla_limit)
    lines = [
        "# The MLP train steps' matmuls: XLA:CPU's dot against NumPy's BLAS",
        "",
        f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {bench.machine()}, "
        f"jax {jax.__version__}, numpy {np.__version__}, by `python "
        f"experiments/benchmarks/dot_rates.py --rounds {a.rounds}` (TIME s); medians of "
        f"{a.rounds} interleaved rounds. XLA's dots compiled with nnfun's CPU options ("
        + ", ".join(f"`{k}={v}`" for k, v in options.items()) + ").",
        "",
        f"GEMM limit as bench.py defines it: {limit / 1e9:.0f} GFLOP/s (float32 2048^3; NumPy "
        f"{np_limit / 1e9:.0f}, XLA {xla_limit / 1e9:.0f}).",
        "",
        "`ceiling` = the `% GEMM` of a step that did nothing but these matmuls, each at the rate "
        "measured here: total FLOPs / sum of the matmul times / GEMM limit.",
        "",
    ]
    for m in models:
        print(f"{m} ...", flush=True)
        rows = measure(m, a.rounds, options)
        total = sum(f for _, f, _, _ in rows)
        t_xla = sum(f / x for _, f, x, _ in rows)
        t_np = sum(f / n for _, f, _, n in rows)
        lines += [
            f"## {m}: {bench.MODELS[m][4]}",
            "",
            "| matmul | MFLOP | XLA GFLOP/s | NumPy GFLOP/s | XLA / NumPy |",
            "|---|---:|---:|---:|---:|",
            *(f"| {n} | {f:.1f} | {x:.0f} | {v:.0f} | {x / v:.2f} |" for n, f, x, v in rows),
            f"| **step's matmuls** | {total:.1f} | {total / t_xla:.0f} | {total / t_np:.0f} | "
            f"{t_np / t_xla:.2f} |",
            "",
            f"Ceiling: {100 * total / t_xla * 1e9 / limit:.0f}% of the GEMM limit with XLA's "
            f"dots, {100 * total / t_np * 1e9 / limit:.0f}% with NumPy's.",
            "",
        ]
    text = "\n".join(lines).replace("(TIME s)", f"({time.time() - t0:.0f} s)")
    Path(a.out).write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
