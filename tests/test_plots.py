"""Tests of nnfun.plots: metrics reading, run figures, the generic line plot."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import pytest

from nnfun.plots import line_plot, plot_run, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(n: int = 20, *, accuracy: bool = True, engine: bool = True) -> list[dict]:
    records = []
    for i in range(n):
        step = 10 * (i + 1)
        r = {
            "step": step,
            "epoch": i // 5,
            "learning_rate": 0.1 * (1 - i / n),
            "train_loss": 2.0 * math.exp(-0.1 * i),
            "time": 0.5 * i,
            # a deep sigmoid net: gradients shrink toward the first layer
            "grad_norms": {f"{2 * k}.dense": 0.3 * 10.0 ** (-k) for k in range(6)},
        }
        if i % 2:
            r["val_loss"] = 2.1 * math.exp(-0.09 * i)
        if accuracy:
            r["train_accuracy"] = 1 - math.exp(-0.2 * i)
            if i % 2:
                r["val_accuracy"] = 0.95 * (1 - math.exp(-0.2 * i))
        if engine:
            r["engine_rel_diff"] = 1e-7 * (1 + i)
        records.append(r)
    return records


def _write(run_dir, records, extra_lines=()) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _assert_small_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) < 200_000, (path, len(data))


def test_read_metrics_skips_blank_lines(tmp_path):
    records = _records(3)
    _write(tmp_path, records[:2], extra_lines=["", "   ", json.dumps(records[2])])
    assert read_metrics(tmp_path) == records


def test_malformed_line_names_file_and_line(tmp_path):
    _write(tmp_path, _records(2), extra_lines=["", '{"step": 30, "train_loss": '])
    with pytest.raises(ValueError, match=r"metrics\.jsonl:4: malformed JSON"):
        read_metrics(tmp_path)


@pytest.mark.parametrize("line", ["[1, 2]", '{"epoch": 1}', '{"step": "ten"}'])
def test_record_without_integer_step_raises(tmp_path, line):
    _write(tmp_path, _records(1), extra_lines=[line])
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2:"):
        read_metrics(tmp_path)


def test_plot_run_writes_small_pngs(tmp_path):
    run = tmp_path / "runs" / "mlp" / "2026-01-01T00-00-00"
    _write(run, _records())
    open_before = plt.get_fignums()
    paths = plot_run(run)
    names = {
        "loss.png",
        "accuracy.png",
        "learning_rate.png",
        "grad_norms.png",
        "engine_rel_diff.png",
    }
    assert {p.name for p in paths} == names
    for path in paths:
        assert path.parent == run / "plots"
        _assert_small_png(path)
    assert plt.get_fignums() == open_before


def test_regression_run_has_no_accuracy_plot(tmp_path):
    _write(tmp_path, _records(accuracy=False, engine=False))
    out = tmp_path / "figures"
    paths = plot_run(tmp_path, out_dir=out)
    assert {p.name for p in paths} == {"loss.png", "learning_rate.png", "grad_norms.png"}
    assert not (out / "accuracy.png").exists()
    assert all(p.parent == out for p in paths)


def test_diverged_run_still_plots(tmp_path):
    records = _records(6)
    records[-1]["train_loss"] = float("nan")
    records[-2]["train_loss"] = float("inf")
    records[0]["grad_norms"]["0.dense"] = 0.0
    _write(tmp_path, records)
    for path in plot_run(tmp_path):
        _assert_small_png(path)


def test_line_plot(tmp_path):
    path = line_plot(
        tmp_path / "sub" / "curve.png",
        {"a": ([1, 2, 3], [1.0, 0.1, 0.01]), "b": ([1, 3], [0.5, 0.05])},
        title="curve",
        xlabel="x",
        ylabel="y",
        logy=True,
    )
    assert path == tmp_path / "sub" / "curve.png"
    _assert_small_png(path)
