"""A run folder is the user's work: no command truncates, overwrites or nulls what is in it,
and a resumed run ends exactly where the uninterrupted one does, whatever cut it short."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from nnfun.checkpoint import CheckpointStore
from nnfun.cli import main
from nnfun.config import load_config
from nnfun.run import RunError, UserError, initial_state, prepare, resume_run, train_run

ROOT = Path(__file__).parents[1]
XOR = ROOT / "configs" / "xor.toml"


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("nnfun.plots.plot_run", lambda run_dir: [])  # not what these check


def _xor(*sets: str):
    return load_config(XOR, ["training.epochs=60", "training.eval_every=10", *sets])


def _snapshot(run: Path) -> dict[str, str]:
    """Every file of the run folder and its content hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def _params(run: Path, config) -> list:
    template = initial_state(prepare(config))
    with CheckpointStore(run / "checkpoints") as store:
        return jax.tree.leaves(store.restore(template).params)


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run everything is compared with."""
    run = tmp_path_factory.mktemp("full") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr("nnfun.plots.plot_run", lambda run_dir: [])
        train_run(_xor(), run, quiet=True)
    return run


def _cut(tmp_path: Path, epochs: int = 30) -> Path:
    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_run(_xor(), run, quiet=True, stop_after_epochs=epochs)
    return run


def test_training_into_a_used_folder_changes_nothing(full, capsys):
    before = _snapshot(full)
    assert main(["train", str(XOR), "--out", str(full), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _snapshot(full) == before


def test_resuming_a_finished_run_changes_nothing(full, capsys):
    before = _snapshot(full)
    assert main(["resume", str(full), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finished at step 60" in err[0]
    assert _snapshot(full) == before


def test_a_folder_held_by_another_process_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running nnfun holds it
        with pytest.raises(UserError, match="another nnfun process"):
            train_run(_xor(), run, quiet=True)
    finally:
        os.close(fd)
    assert list(run.iterdir()) == []


def test_a_record_written_after_the_last_checkpoint_is_not_written_twice(full, tmp_path):
    """A kill between the metrics record and its checkpoint: the checkpoint is gone, the
    record stays; the resumed run neither repeats nor loses a step."""
    run = _cut(tmp_path)
    with CheckpointStore(run / "checkpoints") as store:
        latest = store.latest_step()
    os.rename(run / "checkpoints" / str(latest), tmp_path / "removed")
    resume_run(run, quiet=True)
    assert _steps(run) == _steps(full)
    for a, b in zip(_params(full, _xor()), _params(run, _xor())):
        np.testing.assert_array_equal(a, b)


def test_a_line_cut_by_a_kill_is_kept_aside_and_the_run_resumes(full, tmp_path):
    run = _cut(tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "epoch": 4')  # the write a kill interrupted
    resume_run(run, quiet=True)
    assert _steps(run) == _steps(full)
    assert (run / "metrics.jsonl.cut").read_text() == '{"step": 40, "epoch": 4\n'
    from nnfun.plots import read_metrics

    assert [r["step"] for r in read_metrics(run)] == _steps(full)


def _truncate_the_arrays(step_dir: Path) -> None:
    for p in (step_dir / "default" / "d").iterdir():
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _remove_the_metadata(step_dir: Path) -> None:
    (step_dir / "default" / "_METADATA").unlink()


@pytest.mark.parametrize("damage", [_truncate_the_arrays, _remove_the_metadata])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(full, tmp_path, capsys,
                                                                       damage):
    run = _cut(tmp_path)
    with CheckpointStore(run / "checkpoints") as store:
        steps = store.all_steps()
    assert len(steps) >= 2
    damage(run / "checkpoints" / str(max(steps)))
    summary = resume_run(run, quiet=True, out=sys.stderr)
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'checkpoints' / str(max(steps))} cannot be read" in err
    assert summary["steps"] == 60
    for a, b in zip(_params(full, _xor()), _params(run, _xor())):
        np.testing.assert_array_equal(a, b)


def test_a_diverging_run_keeps_only_finite_checkpoints(tmp_path):
    """The learning rate doubles every step: the parameters overflow a step before the loss
    computed from them does, so a checkpoint taken on the loss alone would hold NaNs."""
    text = (ROOT / "configs" / "spirals_autodiff.toml").read_text().replace(
        "learning_rate = 1.0", "") + (
        '[schedule]\nname = "exponential_decay"\ninit_value = 1.0\ntransition_steps = 1\n'
        'decay_rate = 2.0\n')
    (tmp_path / "diverge.toml").write_text(text)
    config = load_config(tmp_path / "diverge.toml", ["training.eval_every=2"])
    with pytest.raises(RunError, match="non-finite loss"):
        train_run(config, tmp_path / "run", quiet=True)
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl")
                                             .read_text().splitlines())}
    template = initial_state(prepare(config))
    with CheckpointStore(tmp_path / "run" / "checkpoints") as store:
        assert store.all_steps()
        for step in store.all_steps():
            params = store.restore(template, step=step).params
            assert all(np.isfinite(v).all() for v in jax.tree.leaves(params)), step
            assert math.isfinite(records[step]["train_loss"]), step


def _train_cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "nnfun.cli", "train", str(ROOT / "configs" / "xor.toml"),
            "--out", str(run), "-q", "--set", "training.epochs=400",
            "--set", "training.eval_every=1", "--set", "training.checkpoint_every=1"]


@pytest.mark.slow
def test_twenty_kills_at_random_points_resume_bit_for_bit(tmp_path):
    """SIGKILL a training process at random moments, resume each time: the parameters are the
    uninterrupted run's, bit for bit, with every step recorded once."""
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full), check=True, cwd=ROOT, capture_output=True, timeout=600)
    config = load_config(ROOT / "configs" / "xor.toml",
                         ["training.epochs=400", "training.eval_every=1"])
    rng = np.random.default_rng(0)
    run = tmp_path / "killed"
    for _ in range(20):
        started = (run / "config.json").is_file()  # else the kill came before the run began
        cmd = [sys.executable, "-m", "nnfun.cli", "resume", str(run), "-q"] if started \
            else _train_cmd(run)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(float(rng.uniform(4.0, 9.0)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if (run / "summary.json").is_file():
            break
    if not (run / "summary.json").is_file():
        subprocess.run([sys.executable, "-m", "nnfun.cli", "resume", str(run), "-q"],
                       check=True, cwd=ROOT, capture_output=True, timeout=600)
    assert _steps(run) == _steps(full)
    for a, b in zip(_params(full, config), _params(run, config)):
        np.testing.assert_array_equal(a, b)
    assert math.isfinite(json.loads((run / "summary.json").read_text())["train_loss"])
