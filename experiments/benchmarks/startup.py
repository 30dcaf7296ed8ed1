"""Where the main job's wall time goes, stage by stage, from fresh processes.

    python experiments/benchmarks/startup.py                      # 3 cold + 3 warm processes
    python experiments/benchmarks/startup.py --baseline /path/to/other/checkout
    python experiments/benchmarks/startup.py --update-results     # rewrite startup.md here

Each repeat starts a fresh Python process that runs ``nnfun train CONFIG --out <tmp> -q``
(the README's main job by default) through `nnfun.cli.main`, with timers wrapped around the
stages of `nnfun.run.train_run` (nothing in nnfun is changed: the wrappers are installed by
the child process before it calls the CLI):

- python: process launch to the first line of the child (interpreter start);
- imports: ``import nnfun.cli`` and what the CLI imports at start;
- config: reading and validating the TOML;
- data: `nnfun.run.prepare` (loading the data set, fitting the preprocessing, building the
  model, optimiser and objective);
- init: `nnfun.run.initial_state` (parameters and optimiser state);
- first epoch: building and compiling the step and epoch functions and running epoch 1
  (`train_epoch`'s first call, with the compilation of the epoch program);
- epochs: every later epoch;
- evaluation: the validation and train evaluations at ``eval_every`` (their first call
  compiles the evaluation program);
- checkpoints: orbax saves;
- finish: the test evaluation, ``summary.json`` and the plots (of which plots);
- other: the rest (run-folder checks and files, the progress bar, process exit).

"time to first epoch" is process launch to the end of epoch 1. "cold" runs use an empty JAX
persistent compilation cache, "warm" ones the cache the cold runs filled (what a second run
of the same config sees: `nnfun` keeps compiled programs in ``~/.cache/nnfun/jax``). With
``--baseline DIR``, the same measurement runs on another checkout of nnfun (its ``DIR`` put
first on ``PYTHONPATH`` and its working directory, so its own config file is
used), interleaved with this one, so the two are compared under the same
machine load. Results: a Markdown table printed and written to ``out/startup.md`` (git-ignored)
or, with ``--update-results``, to ``startup.md`` next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STAGES = ("python", "imports", "config", "data", "init", "first_epoch", "epochs", "evaluation",
          "checkpoints", "finish", "plots", "other")

#: The child: wraps timers around train_run's stages, runs the CLI, prints the timings.
CHILD = r"""
import json, sys, time
launch = float(sys.argv[1])
t = {"start": time.time()}
import nnfun.cli
from nnfun import checkpoint, config, plots, run, train
t["imported"] = time.time()
spent = {k: 0.0 for k in ("config", "data", "init", "first_epoch", "epochs", "evaluation",
                          "checkpoints", "finish", "plots")}

def timed(owner, name, stage):
    fn = getattr(owner, name)
    def wrapper(*a, **k):
        t0 = time.time()
        try:
            return fn(*a, **k)
        finally:
            spent[stage] += time.time() - t0
    setattr(owner, name, wrapper)

timed(config, "load_config", "config")
timed(nnfun.cli, "load_config", "config") if hasattr(nnfun.cli, "load_config") else None
timed(run, "prepare", "data")
timed(run, "initial_state", "init")
timed(run.RunRecorder, "_record", "evaluation")
timed(checkpoint.CheckpointStore, "save", "checkpoints")
timed(run, "finish", "finish")
timed(plots, "plot_run", "plots")
make_epoch = train.make_train_epoch
def make_train_epoch(*a, **k):
    fn = make_epoch(*a, **k)
    calls = []
    def train_epoch(*b, **kw):
        t0 = time.time()
        out = fn(*b, **kw)
        __import__("jax").block_until_ready(out[0].params)
        spent["first_epoch" if not calls else "epochs"] += time.time() - t0
        if not calls:
            t["first_epoch_end"] = time.time()
        calls.append(1)
        return out
    return train_epoch
train.make_train_epoch = make_train_epoch
code = nnfun.cli.main(sys.argv[2:])
t["end"] = time.time()
spent["python"] = t["start"] - launch
spent["imports"] = t["imported"] - t["start"]
spent["finish"] -= spent["plots"]
spent["total"] = t["end"] - launch
spent["first_epoch_at"] = t.get("first_epoch_end", t["end"]) - launch
print("STARTUP " + json.dumps({"code": code, **spent}), file=sys.stderr)
"""


def measure(config: str, cache: Path, pythonpath: str | None) -> dict[str, float]:
    """One fresh process; the stage timings in seconds (plus ``exit``: the total wall)."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        launch = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, repr(launch), "train", config,
                               "--out", str(Path(tmp) / "run"), "-q"], cwd=pythonpath or ROOT,
                              env=env,
                              capture_output=True, text=True)
        wall = time.time() - launch
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("STARTUP ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"the child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(line[-1][len("STARTUP "):])
    res["exit"] = wall
    res["other"] = wall - sum(res[s] for s in STAGES if s != "other")
    return res


def table(results: dict[str, list[dict]]) -> str:
    """Medians per stage, one column per (code, cache) variant."""
    names = list(results)
    lines = ["| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [*STAGES, "first_epoch_at", "exit"]
    label = {"first_epoch_at": "**time to the end of epoch 1**", "exit": "**total wall**",
             "first_epoch": "first epoch (compile + run)"}
    for r in rows:
        cells = [f"{statistics.median(x[r] for x in results[n]):.2f}" for n in names]
        lines.append(f"| {label.get(r, r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/digits_mlp.toml")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout of nnfun to measure side by side")
    p.add_argument("--update-results", action="store_true",
                   help="write startup.md next to this script (the committed copy)")
    a = p.parse_args(argv)
    codes = {"this": str(ROOT)}
    if a.baseline is not None:
        codes = {"baseline": str(a.baseline.resolve()), "this": str(ROOT)}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as caches:
        for i in range(a.repeats):
            for name, path in codes.items():  # cold: a fresh, empty cache per process
                cold = Path(caches) / f"cold-{name}-{i}"
                results.setdefault(f"{name} cold", []).append(measure(a.config, cold, path))
                print(f"{name} cold {i}: {results[f'{name} cold'][-1]['exit']:.2f} s",
                      flush=True)
        for i in range(a.repeats):
            for name, path in codes.items():  # warm: the cache the first cold run filled
                warm = Path(caches) / f"cold-{name}-0"
                results.setdefault(f"{name} warm", []).append(measure(a.config, warm, path))
                print(f"{name} warm {i}: {results[f'{name} warm'][-1]['exit']:.2f} s",
                      flush=True)
    def commit(path: str) -> str:
        out = subprocess.run(["git", "-C", path, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=False).stdout.strip()
        return out or "unknown"

    named = ", ".join(f"{n} = {commit(p)}" for n, p in codes.items())
    text = (f"# Start-up of `nnfun train {a.config}`, stage by stage\n\n"
            f"Code measured: {named}.\n\n"
            f"Median seconds over {a.repeats} fresh processes per column, measured side by "
            f"side (`python experiments/benchmarks/startup.py"
            f"{' --baseline DIR' if a.baseline else ''}`), on "
            f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}. Cold: an empty JAX "
            f"compilation cache; warm: the cache a first run filled.\n\n{table(results)}\n")
    print(text)
    dest = HERE if a.update_results else HERE / "out"
    dest.mkdir(exist_ok=True)
    (dest / "startup.md").write_text(text)
    (dest / "startup.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {dest / 'startup.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
