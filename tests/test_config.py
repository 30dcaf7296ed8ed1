"""Configs: every shipped file binds against the functions it feeds; every mistake is one
line naming the file and the key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nnfun import config as C
from nnfun.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


def test_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"xor", "spirals_autodiff", "spirals_manual", "digits_mlp", "digits_cnn",
            "mnist1d_logreg", "mnist1d_mlp", "mnist1d_cnn", "mnist", "fashion_mnist",
            "cifar10"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_binds_to_its_functions(path):
    cfg = load_config(path)
    families = C._families()
    for section in ("data", "model", "loss", "optimizer", "schedule"):
        values = getattr(cfg, section)
        if not values:
            continue
        fn = families[section][values["name"]]
        kwargs = cfg.kwargs(section)
        if section == "optimizer":
            kwargs.pop("learning_rate", None)
            inspect.signature(fn).bind_partial(**kwargs)
        elif section == "loss":
            inspect.signature(fn).bind(None, None, **kwargs)
        else:
            inspect.signature(fn).bind(**kwargs)
    for i, reg in enumerate(cfg.regularizers):
        inspect.signature(families["regularizers"][reg["name"]]).bind(None, **cfg.kwargs(
            "regularizers", i))
    C.build_model(cfg.model)


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


BASE = """
[data]
name = "xor"
[model]
name = "mlp"
hidden = [4]
out = 1
[loss]
name = "binary_cross_entropy_with_logits"
[optimizer]
name = "sgd"
learning_rate = 0.5
[training]
epochs = 2
"""


@pytest.mark.parametrize("edit,expected", [
    (("learning_rate = 0.5", "learning_rat = 0.5"), ["optimizer.learning_rat", "unknown key",
                                                      "learning_rate"]),
    (("learning_rate = 0.5", 'learning_rate = "fast"'), ["optimizer.learning_rate",
                                                         "expected", "'fast'"]),
    (("epochs = 2", 'epochs = "two"'), ["training.epochs", "two"]),
    (("epochs = 2", "epoch = 2"), ["training.epoch", "Extra inputs"]),
    (('name = "xor"', 'name = "xro"'), ["data.name", "'xro'", "spirals"]),
    (('name = "mlp"', 'name = "mpl"'), ["model.name", "'mpl'", "cnn"]),
    (("hidden = [4]", "hidden = [4]\nwidth = 3"), ["model.width", "unknown key"]),
    (('name = "sgd"', 'name = "sgdd"'), ["optimizer.name", "adam"]),
    (("[training]", "[trainign]"), ["trainign", "unknown section"]),
    (('name = "binary_cross_entropy_with_logits"', 'name = "softmax_cross_entropy"\nmargin = 1'),
     ["loss.margin", "unknown key"]),
    (("learning_rate = 0.5", ""), ["optimizer.learning_rate", "missing"]),
    (('[data]\nname = "xor"', '[data]\nname = "xor"\npreprocessing = "pca2"'),
     ["data.preprocessing", "pca2", "zca_whiten"]),
])
def test_config_errors_name_file_key_expected_and_found(tmp_path, edit, expected):
    path = _write(tmp_path, BASE.replace(*edit, 1))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path) in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "[data\nname="))


def test_overrides_are_exactly_as_strict(tmp_path):
    path = _write(tmp_path, BASE)
    cfg = load_config(path, ["optimizer.learning_rate=0.01", "training.engine=manual",
                             "data.name=or"])
    assert cfg.optimizer["learning_rate"] == 0.01
    assert cfg.training.engine == "manual"
    assert cfg.data["name"] == "or"
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rat: unknown key"):
        load_config(path, ["optimizer.learning_rat=0.01"])
    with pytest.raises(ConfigError, match=r"training\.engine"):
        load_config(path, ["training.engine=symbolic"])
    with pytest.raises(ConfigError, match="with --set"):
        load_config(path, ["training.epochs=many"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["learning_rate"])
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(path, ["optimiser.learning_rate=1"])


def test_regularizer_list_and_index_override(tmp_path):
    path = _write(tmp_path, BASE + '\n[[regularizers]]\nname = "l2"\nlam = 0.1\n')
    cfg = load_config(path, ["regularizers.0.lam=0.5"])
    assert cfg.kwargs("regularizers", 0) == {"lam": 0.5}
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.lamda"):
        load_config(path, ["regularizers.0.lamda=0.5"])


def test_schedule_and_learning_rate_are_exclusive(tmp_path):
    text = BASE + ('\n[schedule]\nname = "cosine_decay_schedule"\ninit_value = 0.1\n'
                   'decay_steps = 5\n')
    with pytest.raises(ConfigError, match="together with"):
        load_config(_write(tmp_path, text))
    cfg = load_config(_write(tmp_path, text.replace("learning_rate = 0.5", "")))
    assert cfg.schedule["name"] == "cosine_decay_schedule"
