"""The I/O edge shared by the lecture experiments: arguments, tables, figures, a training loop.

Every experiment in this folder is a script, ``python experiments/lectures/<name>.py [--out DIR]
[--smoke] [--update-results]``. It writes its PNG figure(s) and a ``<name>.json`` table of
numbers (several also a ``<name>.md`` table) into ``--out`` (default
``experiments/lectures/out/<name>/``, git-ignored), and nothing else: only
``--update-results`` (alias ``--figures``) also copies the PNGs into
``experiments/lectures/figures/``, the committed copies the README links to.

``--smoke`` runs the same code at toy sizes (a few steps or epochs, fewer seeds, panels or
variants) so that each experiment finishes in seconds; its numbers mean nothing, its default
output folder is ``experiments/lectures/out/smoke/<name>/``, and it cannot be combined with
``--update-results``. An experiment picks its sizes with `sized` (full, smoke) at import time.
At toy sizes XLA's compilation is most of the run time, so a smoke run also turns XLA's
backend (LLVM) optimisation off (``--xla_backend_optimization_level=0`` added to
``XLA_FLAGS``), which about halves it.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot (as
`nnfun.plots` does), at 100 dpi, and written as 256-colour PNGs so that a committed figure stays
well under 200 KB.

Only nnfun's public API is used. Two pieces of plumbing the library lacks live here:
`run_steps`, a full-batch loop of ``n`` steps scanned in one compiled call, and `train_epochs`,
many shuffled epochs scanned so that a sweep over learning rates or seeds can be vmapped and
compiled once (on this 2-core machine a compilation costs more than a whole small run).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from nnfun.train import make_epoch_fn

# The test suite's discipline: silent broadcasting is an error (tests/conftest.py).
jax.config.update("jax_numpy_rank_promotion", "raise")

# Small type, so several panels fit one 100-dpi figure.
matplotlib.rcParams.update({"axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
                            "ytick.labelsize": 7, "legend.fontsize": 7})

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"

#: True when the script was started with ``--smoke`` (read at import, so that module-level
#: sizes can depend on it; `parse_args` accepts the flag).
SMOKE = "--smoke" in sys.argv[1:]
if SMOKE:  # read when JAX starts its backend, which no experiment has done at import time
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()


def sized(full: Any, smoke: Any) -> Any:
    """`full`, or `smoke` when the script runs with ``--smoke`` (the same code at toy sizes)."""
    return smoke if SMOKE else full


#: Figure resolution; a smoke run draws small, quick-to-render figures.
DPI = sized(100, 30)


def parse_args(name: str, doc: str | None) -> argparse.Namespace:
    """``--out DIR``, ``--smoke`` and ``--update-results`` (alias ``--figures``)."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=(doc or "").split("\n\n")[0],
                                     allow_abbrev=False)
    default_out = HERE / "out" / ("smoke" if SMOKE else "") / name
    parser.add_argument("--out", type=Path, default=default_out,
                        help="folder for the figure(s) and the table (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes, finishes in seconds: checks that the script runs "
                             "(its numbers mean nothing)")
    parser.add_argument("--update-results", "--figures", dest="update_results",
                        action="store_true",
                        help=f"also copy the PNGs into {FIGURES} (the committed figures)")
    args = parser.parse_args()
    if args.smoke and args.update_results:
        parser.error("--smoke results are not for committing: drop --update-results")
    args.out.mkdir(parents=True, exist_ok=True)
    args.name = name
    args.t0 = time.perf_counter()
    return args


def figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2),
           **kw: Any) -> tuple[Figure, np.ndarray]:
    """A pyplot-free figure with an (nrows, ncols) array of axes, each about ``size`` inches."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Figure, args: argparse.Namespace, stem: str | None = None) -> Path:
    """Writes ``<out>/<stem>.png`` (stem defaults to the experiment's name)."""
    path = args.out / f"{stem or args.name}.png"
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    # A 256-colour palette keeps a many-line plot well under 200 KB and looks the same.
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256).save(path, format="png", optimize=not SMOKE)
    print(f"wrote {path}")
    return path


def _plain(value: Any) -> Any:
    """JSON-ready: arrays to lists, numpy scalars to Python numbers, non-finite to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return _plain(np.asarray(value).tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_table(args: argparse.Namespace, table: dict[str, Any]) -> Path:
    """Writes ``<out>/<name>.json`` with the experiment's numbers and its runtime."""
    path = args.out / f"{args.name}.json"
    table = {"experiment": args.name, **table, "smoke": SMOKE,
             "runtime_s": round(time.perf_counter() - args.t0, 2)}
    path.write_text(json.dumps(_plain(table), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats with 4 significant digits unless already strings."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_markdown(args: argparse.Namespace, text: str) -> Path:
    """Writes ``<out>/<name>.md`` (a human-readable table beside the JSON)."""
    path = args.out / f"{args.name}.md"
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


def finish(args: argparse.Namespace, pngs: Sequence[Path]) -> None:
    """Copies the PNGs into the committed figures folder when ``--update-results`` was given."""
    if args.update_results:
        FIGURES.mkdir(exist_ok=True)
        for p in pngs:
            shutil.copyfile(p, FIGURES / p.name)
            print(f"copied {p.name} -> {FIGURES}")
    print(f"{args.name}: done in {time.perf_counter() - args.t0:.1f} s")


def run_steps(step_body: Callable[..., tuple], state: Any, x: Any, y: Any, steps: int, *,
              batched: bool = False) -> tuple[Any, dict[str, Any]]:
    """``steps`` train steps on the same batch (x, y), scanned in one compiled call.

    `nnfun.train.make_epoch_fn` shuffles minibatches; a full-batch loop (the XOR truth table,
    lecture 003's 20-line net) needs none, so this scans `step_body` over ``steps`` copies.

    Args:
      batched: `state` is a stack of states (leading axis: one per seed, see `stack_states`);
        the runs are vmapped, so one compilation serves every seed.

    Returns:
      (final state, metrics stacked over the steps: ``loss`` (steps,), ``grad_norms``
      (steps, layers); with a leading seed axis when batched).
    """
    return _compiled_steps(step_body, steps, batched)(state, x, y)


@functools.cache
def _compiled_steps(step_body: Callable[..., tuple], steps: int, batched: bool) -> Callable:
    """One jitted scan per (step body, length), reused across calls (and chunks of a run)."""
    def scan(s: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
        return jax.lax.scan(lambda c, _: step_body(c, (x, y)), s, None, length=steps)

    return jax.jit(jax.vmap(scan, in_axes=(0, None, None)) if batched else scan)


def stack_states(states: Sequence[Any]) -> Any:
    """Stacks equal-structure pytrees (train states of several seeds) along a new axis 0."""
    return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *states)


def unstack(tree: Any, i: int) -> Any:
    """Entry ``i`` of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def train_epochs(step_body: Callable[..., tuple], batch_size: int, state: Any, x: Any, y: Any,
                 epochs: int) -> tuple[Any, dict[str, Any]]:
    """``epochs`` shuffled epochs of `nnfun.train.make_epoch_fn`, scanned.

    Call it inside `jax.jit` (and `jax.vmap` over learning rates or seeds: build the optimiser
    inside the traced function, ``make_optimizer(name, lr)`` with a traced ``lr``) so that a
    whole sweep compiles once.

    Returns:
      (final state, metrics stacked as (epochs, steps per epoch, ...)).
    """
    epoch_fn = make_epoch_fn(step_body, batch_size)
    return jax.lax.scan(lambda s, e: epoch_fn(s, x, y, e), state, jax.numpy.arange(epochs))
