"""Figures of a training run from its ``metrics.jsonl`` (an I/O edge module).

A run folder holds ``metrics.jsonl``, one JSON object per line: ``step`` (int), ``epoch``,
``learning_rate``, ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``time``,
``grad_norms`` (layer name -> mean gradient norm since the previous record) and optionally
``engine_rel_diff``; a reconstruction task (an autoencoder) records ``train_`` and
``val_reconstruction_error`` instead of the accuracies. Every key but ``step`` may be absent
from a record (no accuracy for a regression task, validation every few records).

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas, never through
`pyplot`: no window opens, the user's backend is left alone, and no figure is kept in pyplot's
global registry, so nothing leaks. Non-finite values (a diverged loss) are drawn as gaps.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_run", "read_metrics", "line_plot", "METRICS_FILE"]

Series = tuple[Sequence[float], Sequence[float]]

METRICS_FILE = "metrics.jsonl"
_FIGSIZE = (6.0, 4.0)
_DPI = 100
# (file stem, y label, legend label -> metrics key, log y when all values are positive)
_RUN_FIGURES = (
    ("loss", "loss", {"train": "train_loss", "val": "val_loss"}, True),
    ("accuracy", "accuracy", {"train": "train_accuracy", "val": "val_accuracy"}, False),
    ("reconstruction_error", "reconstruction error (mean squared)",
     {"train": "train_reconstruction_error", "val": "val_reconstruction_error"}, True),
    ("learning_rate", "learning rate", {"learning rate": "learning_rate"}, False),
    ("engine_rel_diff", "relative difference", {"engine": "engine_rel_diff"}, True),
)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Reads the records of ``<run_dir>/metrics.jsonl``, skipping blank lines.

    Args:
        run_dir: the run folder.

    Returns:
        One dict per non-blank line, in file order; a last line cut short (no newline, not
        valid JSON) is left out.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a line is not a JSON object with an integer ``step``; the message names
            the file and the line number.
    """
    path = Path(run_dir) / METRICS_FILE
    lines = path.read_text(encoding="utf-8").split("\n")
    # a last line without its newline was cut by a kill during the write: not a record yet
    unterminated = lines.pop()
    records = [_parse_record(line, path, lineno)
               for lineno, line in enumerate(lines, start=1) if line.strip()]
    if unterminated.strip():
        with contextlib.suppress(ValueError):
            records.append(_parse_record(unterminated, path, len(lines) + 1))
    return records


def _parse_record(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
    # A record of the wrong shape is a malformed line too: ValueError, as for bad JSON.
    if not isinstance(record, dict):
        got = type(record).__name__
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {got}")  # noqa: TRY004
    if not isinstance(record.get("step"), int):
        got = record.get("step")
        raise ValueError(f"{path}:{lineno}: expected an integer 'step', got {got!r}")  # noqa: TRY004
    return record


def line_plot(
    path: str | Path,
    series: dict[str, Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    cmap: str | None = None,
) -> Path:
    """Writes a PNG line plot with one line per named series.

    Args:
        path: the PNG file to write; its folder is created if needed.
        series: label -> (x, y), two sequences of equal length; non-finite y are gaps.
        title: the figure title.
        xlabel: the x axis label.
        ylabel: the y axis label.
        logy: log scale on y (non-positive values are then not drawn).
        cmap: a matplotlib colormap name to colour the series in order (e.g. "viridis" for
            layers by depth); None uses the default colour cycle.

    Returns:
        ``path`` as a Path.
    """
    # matplotlib is imported here, not with the module: a run reads its metrics (this
    # module's `read_metrics`) before its first step, and draws only at the end
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _colors(cmap, len(series))
    for i, (label, (x, y)) in enumerate(series.items()):
        color = colors[i] if colors else None
        marker = "o" if len(x) == 1 else None  # a lone point draws no line
        ax.plot(x, _finite_or_nan(y), label=label, color=color, marker=marker)
    if logy:
        ax.set_yscale("log")
    else:  # short tick labels (3.0 and a x1e-3 offset, not 0.0030), so the margin holds them
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3, which="both" if logy else "major")
    if series:
        ax.legend(fontsize="small", ncol=1 + len(series) // 8)
    # fixed margins that fit the two-line title, tick labels and axis labels of a 600x400
    # figure: tight_layout would measure every text first, half the drawing time
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.87)
    fig.savefig(path, format="png")
    return path


def _colors(cmap: str | None, n: int) -> list[Any] | None:
    if cmap is None:
        return None
    from matplotlib import colormaps

    cm = colormaps[cmap]
    return [cm(i / max(n - 1, 1)) for i in range(n)]


def _finite_or_nan(values: Sequence[float]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def plot_run(run_dir: str | Path, *, out_dir: str | Path | None = None) -> list[Path]:
    """Plots the metrics of a run: loss, accuracy, learning rate, gradient norms, engine diff.

    Writes, for the keys present in ``metrics.jsonl``: ``loss.png`` (train and val loss, log y
    when all values are positive), ``accuracy.png`` (or ``reconstruction_error.png``),
    ``learning_rate.png``, ``grad_norms.png``
    (one line per layer coloured by depth, log y, so vanishing gradients show) and
    ``engine_rel_diff.png``. Each is a 600x400 PNG.

    Args:
        run_dir: the run folder holding ``metrics.jsonl``.
        out_dir: where to write; defaults to ``<run_dir>/plots``.

    Returns:
        The paths written.

    Raises:
        FileNotFoundError, ValueError: as `read_metrics`.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    name = "/".join(run_dir.resolve().parts[-2:])  # e.g. "mlp/2026-01-01T00-00-00"
    written = []
    for stem, ylabel, keys, log_if_positive in _RUN_FIGURES:
        series = {label: _series(records, key) for label, key in keys.items()}
        series = {label: s for label, s in series.items() if s[0]}
        if series:
            logy = log_if_positive and _all_positive(series)
            title = f"{stem.replace('_', ' ')}\n{name}"  # the run on its own line: never cut
            path = out / f"{stem}.png"
            written.append(
                line_plot(path, series, title=title, xlabel="step", ylabel=ylabel, logy=logy)
            )
    grads = _grad_norm_series(records)
    if grads:
        title = f"gradient norm per layer\n{name}"
        written.append(
            line_plot(
                out / "grad_norms.png",
                grads,
                title=title,
                xlabel="step",
                ylabel="gradient norm",
                logy=_any_positive(grads),
                cmap="viridis",
            )
        )
    return written


def _series(records: list[dict[str, Any]], key: str) -> Series:
    """(steps, values) of the records that have ``key``."""
    pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _grad_norm_series(records: list[dict[str, Any]]) -> dict[str, Series]:
    """Legend label -> (steps, norms), layers in order of first appearance; a label reads
    "dense (layer 3)" for the record's "3.dense"."""
    layers: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for layer, norm in (r.get("grad_norms") or {}).items():
            index, _, kind = layer.partition(".")
            label = f"{kind} (layer {index})" if kind and index.isdigit() else layer
            steps, norms = layers.setdefault(label, ([], []))
            steps.append(r["step"])
            norms.append(norm)
    return layers


def _finite_values(series: dict[str, Series]) -> list[float]:
    return [v for _, y in series.values() for v in _finite_or_nan(y) if not math.isnan(v)]


def _all_positive(series: dict[str, Series]) -> bool:
    values = _finite_values(series)
    return bool(values) and min(values) > 0


def _any_positive(series: dict[str, Series]) -> bool:
    return any(v > 0 for v in _finite_values(series))
