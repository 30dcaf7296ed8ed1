"""What XLA:CPU's per-call buffer allocations cost, and what keeping freed memory buys.

    python experiments/benchmarks/host_memory.py                  # ~20 min on 2 cores
    python experiments/benchmarks/host_memory.py --rounds 5 --cases lenet:nnfun-autodiff-loop
    python experiments/benchmarks/host_memory.py --rounds 1 --cases mlp_small:nnfun-autodiff-scan
    python experiments/benchmarks/host_memory.py --update-results   # rewrite host_memory.md

XLA:CPU allocates a compiled call's scratch buffers and outputs with posix_memalign. glibc serves
a block above its mmap threshold (32 MiB at most), or one its thread arenas cannot hold, with
fresh pages from mmap and unmaps it at free, so a step whose buffers are that big pays a page
fault and a zero-fill per 4 KiB page on every call. glibc can be told to keep freed memory
instead, with no code change:

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

Each case runs in fresh processes, alternately with XLA's allocations as they are ("default")
and with that setting ("retained"); per process: the runner of `frameworks.py` is built, two
epochs warm it up, three epochs are timed. Reported: median step time over rounds, minor page
faults per step (getrusage), and the process's peak RSS (VmHWM). A case is a model of bench.py
and a variant of frameworks.py; nnfun's variants run as `nnfun train` runs them (fast paths and
nnfun's CPU compiler options on).

Needs Linux with glibc (the tunables and /proc/self/status). Cases whose framework is not
installed (haiku for ``mlp_small:haiku``) are listed in one line at the start and skipped; a
case whose process fails is reported and skipped. Writes host_memory.md into
experiments/benchmarks/out/ (git-ignored; --out to choose) after every case, so an interrupted
run keeps the cases it finished; --update-results writes the committed copy next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            "glibc.malloc.trim_threshold=2147483647")
CASES = ("lenet:nnfun-autodiff-loop", "lenet:jax-loop", "lenet:nnfun-manual-scan",
         "mlp_b1024:nnfun-autodiff-scan", "digits_cnn:nnfun-autodiff-loop",
         "mlp_small:nnfun-autodiff-scan", "mlp_small:haiku")


def child(model: str, variant: str) -> None:
    import resource

    import bench
    import frameworks as fw

    ops, shape, batch, (_, steps), _ = bench.MODELS[model]
    x, y = bench.make_data(model, steps)
    r = fw.make_runner(variant, ops, shape, batch, steps)
    r.prepare(x, y)
    r.build()
    r.epoch()
    r.epoch()
    faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(3):
        r.epoch()
    seconds, faults = time.perf_counter() - t0, resource.getrusage(
        resource.RUSAGE_SELF).ru_minflt - faults0
    print(json.dumps({"ms": seconds / (3 * steps) * 1e3, "faults": faults / (3 * steps),
                      "hwm_mib": bench._rss_kib("VmHWM") / 1024}))


def run(case: str, retained: bool) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if retained:
        env["GLIBC_TUNABLES"] = TUNABLES
    out = subprocess.run([sys.executable, __file__, "--child", case], env=env, check=False,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_table(path: Path, rows: list[tuple[str, dict, dict]], rounds: int,
                skipped: list[str]) -> None:
    lines = ["# XLA:CPU buffer allocations: glibc's defaults vs freed memory retained", "",
             f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
             f"{os.cpu_count()} logical cores; {platform.platform()}",
             f"- command: `python experiments/benchmarks/host_memory.py --rounds {rounds}`",
             f"- retained: `GLIBC_TUNABLES={TUNABLES}`",
             *([f"- skipped: {', '.join(skipped)}"] if skipped else []), "",
             "| model: variant | step ms default | step ms retained | speed-up | "
             "faults/step default | faults/step retained | peak RSS MiB default | "
             "peak RSS MiB retained | RSS ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, d, r in rows:
        lines.append(f"| {case} | {d['ms']:.3g} | {r['ms']:.3g} | {d['ms'] / r['ms']:.2f}x | "
                     f"{d['faults']:,.0f} | {r['faults']:,.0f} | {d['hwm_mib']:,.0f} | "
                     f"{r['hwm_mib']:,.0f} | {r['hwm_mib'] / d['hwm_mib']:.2f}x |")
    path.write_text("\n".join(lines) + "\n")


def missing_module(case: str) -> str | None:
    """The module a case's variant needs when it is not installed, else None."""
    import importlib.util

    import frameworks as fw

    variant = case.split(":")[1]
    mod = fw.VARIANTS[variant.partition("@")[0]]
    return mod if mod is not None and importlib.util.find_spec(mod) is None else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="model:variant,...")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None,
                   help="the Markdown table to write (default: experiments/benchmarks/out/"
                        "host_memory.md, git-ignored; with --update-results: the committed "
                        "experiments/benchmarks/host_memory.md)")
    p.add_argument("--update-results", action="store_true",
                   help="rewrite the committed host_memory.md next to this script")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child.split(":"))
    out = Path(a.out or (HERE if a.update_results else HERE / "out") / "host_memory.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = a.cases.split(",")
    skipped = [f"{c} ({m} not installed)" for c in cases if (m := missing_module(c))]
    if skipped:
        print(f"skipping {len(skipped)} cases whose framework is not installed: "
              + ", ".join(skipped), flush=True)
    rows = []
    for case in cases:
        if missing_module(case):
            continue
        got: dict[bool, list[dict]] = {False: [], True: []}
        try:
            for k in range(a.rounds):
                for retained in ((False, True) if k % 2 == 0 else (True, False)):
                    got[retained].append(run(case, retained))
        except (RuntimeError, ValueError, IndexError) as e:
            print(f"{case} failed, skipped: {e}", flush=True)
            skipped.append(f"{case} (failed)")
            continue
        med = {r: {key: float(np.median([g[key] for g in got[r]])) for key in got[r][0]}
               for r in got}
        rows.append((case, med[False], med[True]))
        print(case, med, flush=True)
        write_table(out, rows, a.rounds, skipped)  # after every case: partial results stay
    write_table(out, rows, a.rounds, skipped)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
