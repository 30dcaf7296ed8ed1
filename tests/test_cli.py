"""The `nnfun` command end to end, and every bad-input case: one line, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnfun.cli import main

ROOT = Path(__file__).parents[1]
XOR = str(ROOT / "configs" / "xor.toml")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnfun.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_end_to_end_shrunk_config_through_the_real_cli(tmp_path):
    run = tmp_path / "run"
    p = _cli("train", XOR, "--set", "training.epochs=60", "--set", "training.eval_every=20",
             "--out", str(run), "-q")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["steps"] == 60 and "test_accuracy" in summary
    assert json.loads((run / "summary.json").read_text()) == summary
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((run / "config.json").read_text())["training"]["epochs"] == 60
    assert (run / "checkpoints").is_dir() and (run / "plots" / "loss.png").is_file()
    p = _cli("eval", str(run))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["step"] == 60
    assert (run / "eval.json").is_file()
    # a resumed run trains what was recorded: only [distributed] may be overridden
    p = _cli("resume", str(run), "--set", "training.epochs=90")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "training.epochs=90" in p.stderr and "only distributed.*" in p.stderr
    assert str(run / "config.json") in p.stderr


def test_plot_info_and_help(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", XOR, "--set", "training.epochs=10", "--out", str(run), "-q"]) == 0
    (run / "plots" / "loss.png").unlink()
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "loss.png").is_file()
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend cpu" in out and "devices" in out
    assert main(["info", str(ROOT / "configs" / "digits_cnn.toml")]) == 0
    out = capsys.readouterr().out
    assert "0.conv2d      (N, 8, 8, 32)     320\n" in out
    assert "total parameters: 53,002" in out
    for cmd in ("train", "resume", "eval", "plot", "gradcheck", "info"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


def test_gradcheck_command(capsys):
    spirals = str(ROOT / "configs" / "spirals_manual.toml")
    assert main(["gradcheck", spirals, "--set", "data.points_per_class=50"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "0.w" in out
    # the spiral's centre x = 0 is in the batch: every first-layer ReLU sits on its kink, so
    # the bias coordinates are reported as kinks (that the command can say no is
    # tests/test_gradcheck.py::test_a_planted_wrong_backward_rule_fails_the_shipped_cnn_check)
    assert "kinks: 100 coordinate(s)" in out


def _bad(tmp_path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _assert_user_error(capsys, argv, *parts):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_bad_inputs_exit_2(tmp_path, capsys):
    text = Path(XOR).read_text()
    _assert_user_error(capsys, ["train", str(tmp_path / "missing.toml")], "missing.toml",
                       "not found")
    bad = _bad(tmp_path, text.replace("momentum = 0.9", "momentom = 0.9"))
    _assert_user_error(capsys, ["train", str(bad)], "bad.toml", "optimizer.momentom",
                       "momentum")
    bad = _bad(tmp_path, text.replace("epochs = 300", "epochs = 3.5"))
    _assert_user_error(capsys, ["train", str(bad)], "training.epochs", "3.5")
    _assert_user_error(capsys, ["train", XOR, "--set", "training.batch_size=9"],
                       "training.batch_size", "9")
    _assert_user_error(capsys, ["train", XOR, "--set", "optimizer.learning_rat=1"],
                       "optimizer.learning_rat")
    # data whose shape does not fit the model
    cnn = text.replace('name = "mlp"\nhidden = [4]\nout = 1\nactivation = "tanh"',
                       'name = "cnn"\nconv = [4]\ndense = []\nout = 1')
    _assert_user_error(capsys, ["train", str(_bad(tmp_path, cnn)), "--out",
                                str(tmp_path / "r1")], "model", "input shape")
    wide = text.replace("out = 1", "out = 5")
    _assert_user_error(capsys, ["train", str(_bad(tmp_path, wide)), "--out",
                                str(tmp_path / "r2")], "5 outputs", "2 classes")
    mnist = str(ROOT / "configs" / "mnist.toml")
    _assert_user_error(capsys, ["train", mnist, "--set", f"data.root={tmp_path / 'nowhere'}",
                                "--out", str(tmp_path / "r3")], "nowhere")
    for cmd in ("eval", "resume", "plot"):
        _assert_user_error(capsys, [cmd, str(tmp_path / "not_a_run")], "not_a_run")


@pytest.mark.parametrize("signame", [pytest.param("SIGINT", marks=pytest.mark.slow), "SIGTERM"])
def test_a_stop_signal_saves_a_checkpoint(tmp_path, signame):
    """Ctrl-C, and SIGTERM as SLURM's scancel and time limit send it, stop at a step boundary:
    a checkpoint is saved, the resume command printed and the exit status is 130."""
    import signal
    import time

    run = tmp_path / "run"
    spirals = str(ROOT / "configs" / "spirals_autodiff.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnfun.cli", "train", spirals, "--out", str(run), "-q",
         "--set", "training.epochs=100000", "--set", "training.eval_every=1",
         "--set", "training.batch_size=32", "--set", "training.dispatch=loop"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"nnfun resume {run}" in err
    assert any((run / "checkpoints").iterdir())


BAD_OVERRIDES = [  # sizes, rates and seeds that cannot be
    ("model.hidden=[0]", ("layers[0] (dense)", "positive int", "0")),
    ("model.hidden=[-3]", ("layers[0] (dense)", "-3")),
    ("model.out=0", ("layers[2] (dense)", "got 0")),
    ("training.seed=-1", ("training.seed", "-1")),
    ("training.epochs.max=3", ("training.epochs", "int 300")),
    ("optimizer.learning_rate=nan", ("learning_rate", "finite", "nan")),
    ("optimizer.learning_rate=-0.5", ("learning_rate", "-0.5")),
]


@pytest.mark.parametrize("override,parts", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_impossible_values_are_one_line_before_anything_is_written(tmp_path, capsys, override,
                                                                     parts):
    out = tmp_path / "run"
    _assert_user_error(capsys, ["train", XOR, "--set", override, "--out", str(out)], *parts)
    assert not out.exists() or not any(out.iterdir())


def test_a_folder_that_cannot_hold_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("mine")
    _assert_user_error(capsys, ["train", XOR, "--out", str(tmp_path / "a_file")], "a_file")
    _assert_user_error(capsys, ["train", XOR, "--out", str(tmp_path / "a_file" / "x")],
                       "a_file")
    assert (tmp_path / "a_file").read_text() == "mine"
    pca = ["train", XOR, "--set", "data.preprocessing='pca'", "--set", "data.n_components=5"]
    _assert_user_error(capsys, [*pca, "--out", str(tmp_path / "r")], "data", "n_components")


@pytest.mark.parametrize("argv,parts", [
    (["gradcheck", XOR, "--batch", "0"], ("--batch", "positive", "0")),
    (["gradcheck", XOR, "--tol", "nan"], ("--tol", "nan")),
    (["trian", XOR], ("invalid choice", "trian")),
    (["train"], ("config",)),
])
def test_argument_errors_are_one_line_and_exit_2(argv, parts):
    p = _cli(*argv)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_version_and_a_closed_pipe():
    assert _cli("--version").stdout.strip().startswith("nnfun ")
    proc = subprocess.Popen([sys.executable, "-m", "nnfun.cli", "info"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader went away, as `| head` does
    assert proc.wait(timeout=120) in (0, 1)
    assert b"Traceback" not in proc.stderr.read()


@pytest.mark.slow
def test_the_readme_main_job_reaches_its_target(tmp_path):
    """README's first command, as written, at the config's default seed."""
    p = _cli("train", "configs/digits_mlp.toml", "--out", str(tmp_path / "run"), "-q")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["reached_target"] is True and summary["test_accuracy"] >= 0.945


def test_a_lost_peer_logged_by_a_library_thread_is_left_to_the_one_line(monkeypatch, caplog):
    """orbax logs its background threads' exceptions with a traceback; when the exception is a
    lost peer of a multi-process run, the CLI's one line says it instead."""
    import logging

    import jax

    from nnfun import cli

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    logger = logging.getLogger("absl")
    logger.addFilter(cli._PEER_LOST_FILTER)
    with caplog.at_level(logging.ERROR, logger="absl"):
        for text in ("Gloo AllGather failed: Connection reset by peer", "disk full"):
            try:
                raise ValueError(text)
            except ValueError:
                logger.exception("_SignalingThread.run() raised an exception")
    assert [r.exc_info[1].args[0] for r in caplog.records] == ["disk full"]
