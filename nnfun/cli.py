"""The `nnfun` command: train, resume, eval, plot, gradcheck and info.

A user's mistake (a bad config key or value, a missing file, data that does not fit the model)
prints one line to stderr and exits with status 2; a failed gradient check or a diverged run
exits with 1; an interrupted run exits with 130 after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "COMMANDS", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


def _version() -> str:
    from nnfun import __version__

    return __version__


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``nnfun train: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text}")
    return value


def _tolerance(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # rejects nan too
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, found {text}")
    return value


def _overrides(p: argparse.ArgumentParser, metavar: str = "SECTION.KEY=VALUE",
               help: str = "override a config value (repeatable)") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar,
                   help=help)


def _run_commands(sub: Any) -> None:
    """train, resume, eval and plot: the commands that make or read a run folder."""
    t = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train from a config; writes runs/<config>/<timestamp>/.")
    t.add_argument("config", help="path to a TOML config, e.g. configs/digits_mlp.toml")
    _overrides(t)
    t.add_argument("--out", help="run folder (default: runs/<config name>/<timestamp>)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint",
                       description="Continue an interrupted run from its newest readable "
                       "checkpoint, to exactly the parameters of an uninterrupted run.")
    r.add_argument("run_dir")
    _overrides(r, "distributed.KEY=VALUE",
               "override the [distributed] section (e.g. this process's process_id)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="evaluate a run's best checkpoint on val and test data",
                       description="Evaluate a run's best (or latest) checkpoint on its "
                       "validation and test splits; writes eval.json.")
    e.add_argument("run_dir")
    e.add_argument("--which", choices=("best", "latest"), default="best")
    pl = sub.add_parser("plot", help="(re)draw a run's PNG plots from metrics.jsonl",
                        description="Redraw a run's PNG plots from its metrics.jsonl.")
    pl.add_argument("run_dir")


def _check_commands(sub: Any) -> None:
    """gradcheck and info: the commands that only read a config."""
    g = sub.add_parser("gradcheck", help="compare autodiff, manual and finite-difference "
                       "gradients on a config's model, loss and a batch of its data",
                       description="Compare the gradients of jax.grad, the hand-written "
                       "reference and finite differences on a config's model and a seeded "
                       "batch of its data; exit 1 when a tolerance fails.")
    g.add_argument("config")
    _overrides(g)
    g.add_argument("--batch", type=_positive_int, default=8,
                   help="examples in the checked batch")
    g.add_argument("--tol", type=_tolerance, default=1e-6, help="relative tolerance")
    g.add_argument("--max-coords", type=_positive_int, default=512,
                   help="finite differences on all coordinates up to this many per leaf, "
                        "a random sample beyond")
    i = sub.add_parser("info", help="JAX version, backend, processes and devices; with a "
                       "config, its model's layers, output shapes and parameter counts",
                       description="Print nnfun's and JAX's versions, the backend, processes "
                       "and devices; given a config, also a summary of its model.")
    i.add_argument("config", nargs="?", help="a TOML config whose model to summarise")
    _overrides(i)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnfun", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"nnfun {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)
    _run_commands(sub)
    _check_commands(sub)
    return p


@contextlib.contextmanager
def _stdout_kept_for_the_summary() -> Iterator[None]:
    """Sends whatever is written to file descriptor 1 while training (native libraries write
    there: gloo prints a line per process when it connects) to stderr, so that stdout carries
    the JSON summary alone."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no real descriptors (an embedding host): leave them be
        yield
        return
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_and_print_summary(run: Callable[[], dict]) -> int:
    """Runs a training call with stdout kept for its JSON summary, printed by process 0 only
    (one summary per run, not one per process)."""
    with _stdout_kept_for_the_summary():
        summary = run()
    from nnfun.distributed import is_lead

    if is_lead():
        print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from nnfun.config import load_config
    from nnfun.run import default_run_dir, train_run

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    return _run_and_print_summary(lambda: train_run(config, run_dir, quiet=args.quiet))


def _resume(args: argparse.Namespace) -> int:
    from nnfun.run import resume_run

    return _run_and_print_summary(lambda: resume_run(args.run_dir, quiet=args.quiet,
                                                     overrides=args.overrides))


def _eval(args: argparse.Namespace) -> int:
    from nnfun.run import eval_run

    print(json.dumps(eval_run(args.run_dir, which=args.which), indent=2))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from nnfun.plots import plot_run
    from nnfun.run import UserError

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir / 'metrics.jsonl'}: not found; is {run_dir} a run "
                        f"folder made by 'nnfun train'?")
    try:
        paths = plot_run(run_dir)
    except ValueError as e:  # a malformed line, named with its number
        raise UserError(str(e)) from None
    for path in paths:
        print(path)
    return 0


def _gradcheck(args: argparse.Namespace) -> int:
    from nnfun.run import gradcheck_config

    report = gradcheck_config(args.config, args.overrides, batch=args.batch, tol=args.tol,
                          max_coords=args.max_coords)
    print(report)
    return 0 if report.passed else 1


def _info(args: argparse.Namespace) -> int:
    import jax

    import nnfun
    from nnfun.config import DistributedConfig
    from nnfun.distributed import initialize

    initialize(DistributedConfig(enabled=True), where="info")  # joins a detected cluster (srun)
    print(f"nnfun {nnfun.__version__}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    print(f"processes {jax.process_count()} (this is process {jax.process_index()})")
    print(f"global devices {jax.device_count()}: "
          + ", ".join(str(d) for d in jax.devices()))
    print(f"local devices {jax.local_device_count()}: "
          + ", ".join(str(d) for d in jax.local_devices()))
    if args.config:
        _print_model_summary(args.config, args.overrides)
    return 0


def _print_model_summary(path: str, overrides: Sequence[str]) -> None:
    from nnfun.config import build_model, load_config
    from nnfun.data import load_dataset
    from nnfun.models import summary

    config = load_config(path, overrides)
    kw = {k: v for k, v in config.kwargs("data").items()}
    input_shape = load_dataset(config.data["name"], seed=config.training.seed, **kw).input_shape
    model = build_model(config.model)
    try:
        rows = summary(model.layers, input_shape)
    except ValueError as e:
        raise ValueError(f"{config.source}: model: {e}") from None
    print(f"model of {config.source} on inputs (N, {', '.join(map(str, input_shape))}):")
    names = [f"{i}.{name}" for i, (name, _, _) in enumerate(rows)]
    shapes = [f"(N, {', '.join(map(str, shape))})" for _, shape, _ in rows]
    counts = [f"{count:,}" for _, _, count in rows]
    w = [max(map(len, col)) for col in (names, shapes, counts)]
    for row in zip(names, shapes, counts):
        print(f"  {row[0]:<{w[0]}}  {row[1]:<{w[1]}}  {row[2]:>{w[2]}}")
    print(f"  total parameters: {sum(r[2] for r in rows):,}")


COMMANDS = {"train": _train, "resume": _resume, "eval": _eval, "plot": _plot,
            "gradcheck": _gradcheck, "info": _info}


def _compilation_cache() -> None:
    """Keeps compiled programs between runs in JAX's persistent cache: a second run of a
    config skips most of its compilation. ``JAX_COMPILATION_CACHE_DIR`` picks the folder;
    the default is ``$XDG_CACHE_HOME/nnfun/jax`` (``~/.cache/nnfun/jax``)."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(base, "nnfun", "jax"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nnfun` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    _compilation_cache()
    logging.getLogger("absl").addFilter(_PEER_LOST_FILTER)  # once: the same object
    from nnfun.config import ConfigError
    from nnfun.data import DataError
    from nnfun.run import RunError, UserError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UserError, DataError) as e:
        print(f"nnfun: error: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # the reader went away (`nnfun eval RUN | head`): nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except RunError as e:
        print(f"nnfun: run stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not _peer_lost(e):
            raise
        # the others cannot go on without it; JAX's exit barrier would wait for the lost
        # process, then abort in C++: say it in one line and leave at once
        print(f"nnfun: run stopped: a process of this multi-process run was lost "
              f"({str(e).splitlines()[0][:200]}); the saved checkpoints are kept: start "
              f"every process again with 'nnfun resume RUN_DIR'", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


#: What a collective reports when another process of the run is gone.
_PEER_LOST = ("Connection closed by peer", "Gloo", "heartbeat", "coordination service",
              "Connection reset by peer")


def _peer_lost(e: BaseException) -> bool:
    """Whether `e` is a failed collective of a multi-process run (a peer died or left)."""
    jax = sys.modules.get("jax")
    return (jax is not None and jax.process_count() > 1
            and any(s in str(e) for s in _PEER_LOST))


class _PeerLostFilter(logging.Filter):
    """Drops a library's log record of a lost peer (orbax logs its background threads'
    exceptions with their traceback): the main thread reports it, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not _peer_lost(exc)


_PEER_LOST_FILTER = _PeerLostFilter()


if __name__ == "__main__":
    sys.exit(main())
