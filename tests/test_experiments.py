"""The lecture experiments in experiments/lectures/.

Each experiment runs end to end in a subprocess (marked slow: `pytest -m slow`), writing its
figure(s) and table into a temporary folder. Two fast tests import nothing heavy: the
computational-graph experiment (the cheapest) prints lecture 000's and lecture 003's numbers,
and the index (experiments/README.md) lists every experiment with a small committed figure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "experiments" / "lectures"
EXPERIMENTS = sorted(p.stem for p in LECTURES.glob("*.py") if not p.name.startswith("_"))


def run_experiment(name: str, out: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LECTURES / f"{name}.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_there_is_one_experiment_per_lecture_point():
    assert len(EXPERIMENTS) == 11, EXPERIMENTS


def test_backprop_graph_prints_the_lectures_numbers(tmp_path):
    proc = run_experiment("backprop_graph", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "summary: f = -12, df/dx = -4, df/dy = -4, df/dz = 3" in proc.stdout
    assert ("summary: f = 0.73, dw = (-0.20, -0.39, 0.20), dx = (0.39, -0.59)"
            in proc.stdout)
    rows = re.findall(r"^\s+(x|y|z|q|f)\s+\S+(?: \S+)?\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)",
                      proc.stdout, flags=re.M)
    table = {name: (float(v), float(g)) for name, v, g in rows[:5]}
    assert table == {"x": (-2.0, -4.0), "y": (5.0, -4.0), "z": (-4.0, 3.0),
                     "q": (3.0, -4.0), "f": (-12.0, 1.0)}
    numbers = json.loads((tmp_path / "backprop_graph.json").read_text())
    assert numbers["max_abs_difference_between_routes"] < 1e-12
    assert (tmp_path / "backprop_graph.png").stat().st_size > 0


def test_readme_indexes_every_experiment_with_a_small_figure():
    readme = (ROOT / "experiments" / "README.md").read_text(encoding="utf-8")
    for name in EXPERIMENTS:
        assert f"lectures/{name}.py" in readme, name
        figure = LECTURES / "figures" / f"{name}.png"
        assert f"lectures/figures/{name}.png" in readme, name
        assert figure.is_file() and figure.stat().st_size < 200_000, name


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_and_writes_figure_and_table(name, tmp_path):
    proc = run_experiment(name, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    table = json.loads((tmp_path / f"{name}.json").read_text())
    assert table["experiment"] == name
    assert table["runtime_s"] > 0
