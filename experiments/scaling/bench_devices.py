"""Data-parallel throughput on 1, 2 and 4 forced CPU devices (samples per second).

Each measurement is a fresh subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
that trains an MLP with the unchanged `nnfun.train.make_epoch_fn` (a scanned epoch; the step
built as `nnfun train` builds it, with ``fast_paths=True`` and `nnfun.fast.compiler_options`)
on arrays placed by `nnfun.distributed.Placement` (``mesh = "data"``: replicated state, batch
split over devices; ``"fsdp"``: parameters and Adam moments split too). "1 (no mesh)" is the
plain one-device path (``distributed.enabled = false``). Rounds interleave the settings, so a
change in machine load hits all of them alike. Each process reports its fastest timed epoch
(the one least disturbed by other jobs on a shared machine); the table reports the median over
rounds, and the range.

Forced host devices share the same CPU cores, so on a small machine this cannot speed up: it
measures what the sharding costs (collectives, per-device dispatch), which is what grows with the
device count. On GPUs or TPU hosts the same code splits the work for real.

Usage::

    python experiments/scaling/bench_devices.py                 # ~5 min; writes out/results.md
    python experiments/scaling/bench_devices.py --rounds 1 --epochs 1 --devices 2   # ~30 s
    python experiments/scaling/bench_devices.py --rounds 5 --devices 1 2 4 8
    python experiments/scaling/bench_devices.py --update-results  # rewrite results.md beside it

The table goes to experiments/scaling/out/results.md (git-ignored; --out to choose), rewritten
after every round; only --update-results writes the committed results.md next to this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Workload: 8192 examples of 64 features, 10 classes, MLP 64-512-512-10, global batch 256,
# Adam: 32 steps per epoch; one warm-up epoch (compiles), then `--epochs` timed epochs.
N, D, CLASSES, HIDDEN, BATCH = 8192, 64, 10, [512, 512], 256


def child(mode: str, epochs: int) -> dict:
    """One measurement in this process (its device count is fixed by XLA_FLAGS)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from nnfun import distributed, fast, train
    from nnfun.models import mlp
    from nnfun.spec import LossSpec

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, CLASSES, N).astype(np.int32)
    layers, opt = mlp(hidden=HIDDEN, out=CLASSES).layers, optax.adam(1e-3)
    place = (distributed.Placement() if mode == "none"
             else distributed.make_placement(True, mode, BATCH, "bench"))
    state = place.put_state(train.init_train_state(0, layers, (D,), opt))
    xs, ys = place.put_examples(jnp.asarray(x)), place.put_examples(jnp.asarray(y))
    body = place.step(train.make_step_body(layers, LossSpec.make("softmax_cross_entropy"), (),
                                           opt, fast_paths=True), state)
    run_epoch = train.make_epoch_fn(body, BATCH, compiler_options=fast.compiler_options(layers))
    state, m = run_epoch(state, xs, ys, jnp.asarray(0))
    jax.block_until_ready(m)
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        state, m = run_epoch(state, xs, ys, jnp.asarray(e))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    steps = N // BATCH
    return {"devices": jax.device_count(), "mode": mode,
            "samples_per_s": steps * BATCH / min(times),
            "final_loss": float(np.asarray(m["loss"])[-1])}


def measure(devices: int, mode: str, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--epochs", str(epochs)],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode:
        raise RuntimeError(f"{devices} devices, {mode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def settings(device_counts: list[int]) -> list[tuple[int, str]]:
    rows = [(1, "none")]
    for n in device_counts:
        rows.append((n, "data"))
        if n > 1:
            rows.append((n, "fsdp"))
    return rows


def report(results: dict, args: argparse.Namespace, load: tuple[float, float]) -> str:
    import jax

    base = statistics.median(results[(1, "none")])
    lines = [
        "# Data-parallel scaling on forced CPU devices",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{platform.system()}; shared with other jobs (1-min load average "
        f"{load[0]:.1f} at start, {load[1]:.1f} at end)",
        f"- jax {jax.__version__}, backend cpu, devices forced with "
        f"`--xla_force_host_platform_device_count`",
        f"- workload: {N} examples x {D} features, MLP {D}-"
        f"{'-'.join(map(str, HIDDEN))}-{CLASSES}, Adam, global batch {BATCH} "
        f"({N // BATCH} steps per epoch), scanned epochs; per process the fastest of {args.epochs} "
        f"timed epochs after a compile epoch, then the median over {args.rounds} interleaved "
        "rounds (each setting a fresh process per round)",
        f"- command: `python experiments/scaling/bench_devices.py --rounds {args.rounds} "
        f"--epochs {args.epochs} --devices {' '.join(map(str, args.devices))}`",
        "",
        "| devices | state placement | samples/s (median) | min - max over rounds | "
        "vs 1 device, no mesh |",
        "|---:|---|---:|---:|---:|",
    ]
    names = {"none": "one device, no mesh (enabled = false)", "data": "replicated (mesh = data)",
             "fsdp": "sharded (mesh = fsdp)"}
    for (n, mode), vals in results.items():
        med = statistics.median(vals)
        lines.append(f"| {n} | {names[mode]} | {med:,.0f} | {min(vals):,.0f} - {max(vals):,.0f} "
                     f"| {med / base:.2f}x |")
    lines += [
        "",
        f"Forced host devices are slices of the same {os.cpu_count()} cores, so more devices "
        "cannot be faster here; the table shows the cost of the sharding itself (per-step "
        "all-reduce of gradients, the gather of each batch from the split example array, "
        "per-device dispatch) and how it grows with the device count. The two one-device rows "
        "run the same computation, so their gap is the measurement noise of this machine at the "
        "time. Replicated work (with mesh = data, the whole optimiser update) is repeated by "
        "every forced device on the same cores; mesh = fsdp splits it, which is why it can come "
        "out ahead here.",
        "",
        "GPU figures still missing: no GPU was available for this run. To add them, run the same "
        "script's workload on one and on several GPUs (see README.md).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per measurement")
    p.add_argument("--out", type=Path, default=None,
                   help="the Markdown table to write (default: experiments/scaling/out/"
                        "results.md, git-ignored; with --update-results: the committed "
                        "experiments/scaling/results.md)")
    p.add_argument("--update-results", action="store_true",
                   help="rewrite the committed results.md next to this script")
    p.add_argument("--child", choices=("none", "data", "fsdp"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.epochs)))
        return
    args.out = args.out or (HERE if args.update_results else HERE / "out") / "results.md"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    results: dict[tuple[int, str], list[float]] = {s: [] for s in settings(args.devices)}
    for r in range(args.rounds):
        for n, mode in results:
            res = measure(n, mode, args.epochs)
            assert res["devices"] == n, res
            results[(n, mode)].append(res["samples_per_s"])
            print(f"round {r + 1}: {n} devices, {mode}: {res['samples_per_s']:,.0f} samples/s "
                  f"(loss {res['final_loss']:.4f})", file=sys.stderr)
        # after every round, so an interrupted run keeps the rounds it finished
        text = report(results, args, (load0, os.getloadavg()[0]))
        args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
