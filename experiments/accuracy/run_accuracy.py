"""Test accuracy of the shipped digits and MNIST-1D configs (and the autoencoders' test
reconstruction error), mean over training seeds.

Runs every config below through the real command line, once per seed,

    nnfun train configs/<name>.toml --set training.seed=<s> --out <tmp> -q

one run at a time, reads ``test_accuracy`` (``test_reconstruction_error`` for the
autoencoders, judged against PCA's with as many components) from the printed JSON summary,
and writes
``results.md`` and ``results.json`` into experiments/accuracy/out/ (git-ignored; --out to
choose), rewritten after every config so that an interrupted run keeps the configs it
finished. Only ``--update-results`` writes the committed copies next to this file.
``training.seed`` changes the initialisation, the shuffling, the dropout masks and which
training examples are held out for validation; the test sets are fixed (digits: the second
half; MNIST-1D: data_seed 42).

Usage (from the repository root):

    python experiments/accuracy/run_accuracy.py [--seeds 0 1 2] [--configs digits_mlp ...]
    python experiments/accuracy/run_accuracy.py --seeds 0 --configs mnist1d_logreg  # ~15 s
    python experiments/accuracy/run_accuracy.py --update-results  # rewrite results.md / .json

Run folders go to experiments/accuracy/out/runs/ (git-ignored) and are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: config name -> (target description, lower bound, upper bound); None bounds: reported only.
TARGETS: dict[str, tuple[str, float | None, float | None]] = {
    "digits_mlp": (">= 0.945", 0.945, None),
    "digits_cnn": (">= 0.97", 0.97, None),
    "mnist1d_logreg": ("about 0.32 (0.30-0.34)", 0.30, 0.34),
    "mnist1d_mlp": (">= 0.68", 0.68, None),
    "mnist1d_cnn": (">= 0.94", 0.94, None),
    "mnist1d_gru": (">= 0.91", 0.91, None),
    "mnist1d_lstm": ("reported", None, None),
    "mnist1d_rnn": ("reported", None, None),
    # reconstruction configs: the bound is PCA's test error with as many components as the
    # code is wide, computed by `pca_baseline` (the entry's bounds are filled in at run time)
    "digits_autoencoder": ("< PCA", None, None),
    "digits_denoising_autoencoder": ("< PCA", None, None),
}
RECONSTRUCTION = ("digits_autoencoder", "digits_denoising_autoencoder")
REFERENCE = {
    "digits_mlp": "SVC 0.969 (scikit-learn example)",
    "digits_cnn": "SVC 0.969 (scikit-learn example)",
    "mnist1d_logreg": "0.32 (Greydanus 2020)",
    "mnist1d_mlp": "0.68 (Greydanus 2020)",
    "mnist1d_cnn": "0.94 (Greydanus 2020)",
    "mnist1d_gru": "GRU 0.91 (Greydanus 2020)",
    "digits_autoencoder": "PCA with 2 components (nnfun.preprocessing, same split)",
    "digits_denoising_autoencoder": "PCA with 8 components (nnfun.preprocessing, same split)",
}


def metric(name: str) -> str:
    """The summary key a config is judged on."""
    return "test_reconstruction_error" if name in RECONSTRUCTION else "test_accuracy"


def pca_baseline(name: str) -> tuple[int, float]:
    """(k, PCA's test reconstruction error with k components) for a reconstruction config,
    k its code width, on the same splits and preprocessing as the run."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from nnfun import preprocessing
    from nnfun.config import load_config
    from nnfun.run import prepare

    config = load_config(ROOT / "configs" / f"{name}.toml")
    k = int(config.model["code"])
    ds = prepare(config).data
    state = preprocessing.fit_preprocessor(ds.x_train, method="pca", n_components=k)
    recon = preprocessing.invert_preprocessor(
        state, preprocessing.apply_preprocessor(state, ds.x_test))
    return k, float(np.mean((recon - ds.x_test) ** 2))


def nnfun_command() -> list[str]:
    """The installed ``nnfun`` next to this Python, else ``python -m nnfun.cli``."""
    exe = Path(sys.executable).with_name("nnfun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nnfun.cli"]


def run_one(name: str, seed: int, out_root: Path, keep: bool) -> dict:
    """One training run through the CLI; returns its summary plus wall-clock seconds."""
    run_dir = out_root / f"{name}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [*nnfun_command(), "train", f"configs/{name}.toml", "--set",
           f"training.seed={seed}", "--out", str(run_dir), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}:\n"
                         f"{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout)
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    key = metric(name)
    return {"seed": seed, "test": summary[key], "val": summary.get(key.replace("test_", "val_")),
            "train": summary.get(key.replace("test_", "train_")),
            "train_seconds": summary["seconds"], "wall_seconds": round(wall, 2),
            "steps": summary.get("steps"), "num_params": summary.get("num_params"),
            "command": " ".join(cmd[-7:])}


def met(name: str, mean: float) -> bool | None:
    """Whether the mean meets the config's target; None where the config has none."""
    _, lo, hi = TARGETS[name]
    if lo is None and hi is None:
        return None
    return (lo is None or mean >= lo) and (hi is None or mean <= hi)


def machine() -> str:
    """CPU model, core count and OS (no host name)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPU cores, no GPU used, {platform.system()} " \
           f"{platform.release()}"


def jax_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.__version__, "
                          "jax.default_backend())"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def write_results(rows: list[dict], seeds: list[int], meta: dict, dest: Path) -> None:
    """Writes results.json and results.md into `dest`."""
    (dest / "results.json").write_text(json.dumps({"meta": meta, "configs": rows}, indent=2)
                                       + "\n")
    lines = [
        "# Test accuracy (and reconstruction error) of the shipped configs",
        "",
        f"Mean over training seeds {', '.join(map(str, seeds))} of the test accuracy of the "
        "final parameters, each run through `nnfun train CONFIG --set training.seed=S -q`; "
        "for the autoencoders the test reconstruction error (mean squared, over all pixels) "
        "instead, lower is better, against PCA's with as many components as the code.",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- jax: {meta['jax']}; python {meta['python']}",
        f"- reproduce: `{meta['command']}`",
        "",
        "| config | metric | seeds | mean | min | max | target | met? | s/run (wall) | "
        "s/run (training) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdict = {True: "yes", False: "NO", None: "-"}
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['metric']} | {len(r['runs'])} | {r['mean']:.4f} | "
            f"{r['min']:.4f} | {r['max']:.4f} | {r['target']} | {verdict[r['met']]} | "
            f"{r['wall_seconds_mean']:.1f} | {r['train_seconds_mean']:.1f} |")
    lines += [
        "",
        "Wall seconds include process start, JAX compilation, data loading and writing the run "
        "folder (plots, checkpoints); training seconds are the summary's `seconds`. The "
        "machine is shared, so times vary with its load. How the configs were tuned: "
        "[README.md](README.md).",
        "",
        "## Per run",
        "",
        "| config | seed | test | val | train | wall s | training s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        for run in r["runs"]:
            lines.append(f"| {r['config']} | {run['seed']} | {run['test']:.4f} | "
                         f"{fmt(run['val'])} | {fmt(run['train'])} | "
                         f"{run['wall_seconds']:.1f} | {run['train_seconds']:.1f} |")
    lines += ["", "References: " + "; ".join(f"{k}: {v}" for k, v in REFERENCE.items()) + "."]
    (dest / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--keep", action="store_true", help="keep the run folders in out/runs/")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for results.md / results.json (default: "
                        "experiments/accuracy/out, git-ignored; with --update-results: "
                        "experiments/accuracy)")
    p.add_argument("--update-results", action="store_true",
                   help="rewrite the committed results.md / results.json next to this script")
    args = p.parse_args(argv)
    dest = args.out or (HERE if args.update_results else HERE / "out")
    dest.mkdir(parents=True, exist_ok=True)
    out_root = HERE / "out" / "runs"
    out_root.mkdir(parents=True, exist_ok=True)
    seeds_arg = " ".join(map(str, args.seeds))
    command = "python experiments/accuracy/run_accuracy.py"
    if args.seeds != [0, 1, 2]:
        command += f" --seeds {seeds_arg}"
    if args.configs != list(TARGETS):
        command += f" --configs {' '.join(args.configs)}"
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "jax": jax_version(), "python": platform.python_version(), "command": command,
            "seeds": args.seeds}
    rows = []
    for name in args.configs:
        if name in RECONSTRUCTION:
            k, err = pca_baseline(name)
            TARGETS[name] = (f"< PCA-{k} {err:.4f}", None, err)
        runs = []
        for seed in args.seeds:
            run = run_one(name, seed, out_root, args.keep)
            runs.append(run)
            print(f"{name} seed {seed}: {metric(name)} {run['test']:.4f} "
                  f"({run['wall_seconds']:.1f} s)", flush=True)
        accs = [r["test"] for r in runs]
        mean = statistics.fmean(accs)
        rows.append({"config": name, "metric": metric(name), "target": TARGETS[name][0],
                     "mean": mean,
                     "min": min(accs), "max": max(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "met": met(name, mean),
                     "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in runs),
                     "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
                     "runs": runs})
        write_results(rows, args.seeds, meta, dest)  # after every config: partial results stay
    print(f"wrote {dest / 'results.md'}")
    verdict = {True: "met", False: "NOT met", None: "reported"}
    for r in rows:
        print(f"{r['config']:16s} mean {r['mean']:.4f} [{r['min']:.4f}, {r['max']:.4f}] "
              f"target {r['target']}: {verdict[r['met']]}")
    return 0 if all(r["met"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
