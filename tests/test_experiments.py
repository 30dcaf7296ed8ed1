"""The lecture experiments in experiments/lectures/.

Every experiment runs end to end in smoke mode (``--smoke``: the same code at toy sizes,
seconds each) in the default suite, in two subprocesses (one per half of the scripts), writing
its figure and table into a temporary folder; the full runs are marked slow (`pytest -m
slow`). Both check that the script writes where it is told and nowhere else: ``git status
--porcelain`` of the repository is the same before and after (no committed figure or result
rewritten). The computational-graph experiment (which has no sizes to shrink) also prints
lecture 000's and lecture 003's numbers, and the index (experiments/README.md) lists every
experiment with a small committed figure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "experiments" / "lectures"
EXPERIMENTS = sorted(p.stem for p in LECTURES.glob("*.py") if not p.name.startswith("_"))


def run_experiment(name: str, out: Path, timeout: float, *flags: str
                   ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LECTURES / f"{name}.py"), "--out", str(out),
                           *flags], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=ROOT)


def git_status() -> str | None:
    """``git status --porcelain`` of the repository, or None outside a git checkout."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def run_and_check(name: str, out: Path, timeout: float, *flags: str
                  ) -> subprocess.CompletedProcess:
    """Runs the experiment into `out`; checks its exit status, that it wrote its figure and
    its table there, and that it left the repository's files as they were."""
    before = git_status()
    proc = run_experiment(name, out, timeout, *flags)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / f"{name}.png").stat().st_size > 0
    table = json.loads((out / f"{name}.json").read_text())
    assert table["experiment"] == name
    assert table["smoke"] is ("--smoke" in flags)
    assert table["runtime_s"] > 0
    assert git_status() == before, "the experiment changed files of the repository"
    return proc


def check_backprop_graph_numbers(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert "summary: f = -12, df/dx = -4, df/dy = -4, df/dz = 3" in proc.stdout
    assert ("summary: f = 0.73, dw = (-0.20, -0.39, 0.20), dx = (0.39, -0.59)"
            in proc.stdout)
    rows = re.findall(r"^\s+(x|y|z|q|f)\s+\S+(?: \S+)?\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)",
                      proc.stdout, flags=re.M)
    table = {name: (float(v), float(g)) for name, v, g in rows[:5]}
    assert table == {"x": (-2.0, -4.0), "y": (5.0, -4.0), "z": (-4.0, 3.0),
                     "q": (3.0, -4.0), "f": (-12.0, 1.0)}
    numbers = json.loads((out / "backprop_graph.json").read_text())
    assert numbers["max_abs_difference_between_routes"] < 1e-12


def test_there_is_one_experiment_per_lecture_point():
    assert len(EXPERIMENTS) == 13, EXPERIMENTS


#: Runs every lecture experiment's script as ``__main__`` in one Python process (each into
#: its own folder), so the suite pays for starting Python, JAX and matplotlib once, not once
#: per script; a failing script is recorded and the next one still runs.
SMOKE_ALL = """
import runpy, sys, traceback
from pathlib import Path
lectures, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
sys.path.insert(0, str(lectures))
failed = []
for name in names:
    sys.argv = [str(lectures / f"{name}.py"), "--out", str(out / name), "--smoke"]
    print(f"=== {name}", flush=True)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except BaseException as e:  # SystemExit included: a script that exits non-zero fails
        if not (isinstance(e, SystemExit) and e.code in (0, None)):
            failed.append(name)
            traceback.print_exc()
print("FAILED:", " ".join(failed), flush=True)
sys.exit(1 if failed else 0)
"""


#: The smoke runs in two halves, one process each, so that two test workers share them.
HALVES = (EXPERIMENTS[0::2], EXPERIMENTS[1::2])


@pytest.mark.parametrize("half", [0, 1])
def test_every_experiment_smoke_run_writes_only_into_out(tmp_path, half):
    names = HALVES[half]
    before = git_status()
    proc = subprocess.run([sys.executable, "-c", SMOKE_ALL, str(LECTURES), str(tmp_path),
                           *names], capture_output=True, text=True, timeout=600,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-4000:])
    for name in names:
        out = tmp_path / name
        assert (out / f"{name}.png").stat().st_size > 0, name
        table = json.loads((out / f"{name}.json").read_text())
        assert table["experiment"] == name and table["smoke"] is True and table["runtime_s"] > 0
    assert git_status() == before, "an experiment changed files of the repository"
    if "backprop_graph" not in names:
        return
    # no sizes to shrink in the computational-graph experiment: its smoke run is the full run
    graph = proc.stdout.split("=== backprop_graph")[1].split("===")[0]
    check_backprop_graph_numbers(subprocess.CompletedProcess([], 0, graph, ""),
                                 tmp_path / "backprop_graph")


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_smoke_run_alone(name, tmp_path):
    """Each script on its own, as a user starts it."""
    proc = run_and_check(name, tmp_path, 180, "--smoke")
    if name == "backprop_graph":
        check_backprop_graph_numbers(proc, tmp_path)


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
    proc = run_and_check(name, tmp_path, 600)
    if name == "backprop_graph":
        check_backprop_graph_numbers(proc, tmp_path)
