"""Tests for skulens.config and the `skulens train` flags built from it: validation, coercion, files."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from skulens.config import ConfigError, TrainConfig, load_config, resolve_config


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, check=False)


def test_defaults_resolve_unchanged() -> None:
    assert resolve_config() == TrainConfig()
    assert resolve_config({"epochs": 3}).epochs == 3


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="lerning_rate"):
        resolve_config({"lerning_rate": 0.1, "epochs": 2})


def test_bad_literal_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"freeze: 'bogus' is not one of full, head, partial, gradual"):
        resolve_config({"freeze": "bogus"})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("lr", 0, "lr: must be > 0"),
    ("epochs", 0, "epochs: must be > 0"),
    ("dropout", 1.2, "dropout: 1.2 is outside"),
    ("image_size", 5, "image_size: 5 is outside 16..2048"),
    ("train_image_size", 4096, "train_image_size: 4096 is outside"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("monitor", "loss", "monitor: 'loss'"),
    ("loggers", "tensorboard,comet", "comet"),
    ("epochs", 2.5, "epochs: 2.5 is not a valid int"),
    ("batch_size", "many", "batch_size: 'many' is not a valid int"),
    ("ema", "maybe", "ema: 'maybe' is not a valid bool"),
    ("epochs", None, "epochs: may not be null"),
    ("epochs", True, "epochs: True is not a valid int"),  # YAML `epochs: yes` was a silent 1
    ("patience", 0, "patience: must be >= 1"),
    ("max_steps", 0, "max_steps: must be >= 1"),
    ("num_workers", -1, "num_workers: must be >= 0"),
    ("trainable_stages", -2, "trainable_stages: must be >= 0"),
    ("ema_decay", 1.5, "ema_decay: 1.5 is outside"),
    ("coarse_fallback", -0.1, "coarse_fallback"),
    ("weight_decay", -0.01, "weight_decay: must be >= 0"),
    ("backbone_lr_mult", -1, "backbone_lr_mult: must be >= 0"),
    ("seed", 10**20, "seed: 100000000000000000000 is outside 0..4294967295"),  # a traceback mid-run
    ("seed", -1, "seed: -1 is outside"),
])
def test_bad_values_raise(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config({key: value})


def test_cli_strings_are_coerced() -> None:
    cfg = resolve_config({"ema": "false", "channels_last": "true", "epochs": "3", "lr": "2e-4",
                          "max_steps": "none", "image_size": "null", "weights": "None",
                          "loggers": "tensorboard, mlflow", "trainable_stages": 4.0})
    assert cfg.ema is False and cfg.channels_last is True
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.lr == pytest.approx(2e-4)
    assert cfg.max_steps is None and cfg.image_size is None and cfg.weights is None
    assert cfg.loggers == ("tensorboard", "mlflow")
    assert cfg.trainable_stages == 4 and isinstance(cfg.trainable_stages, int)
    assert resolve_config({"max_steps": "7"}).max_steps == 7
    assert resolve_config({"loggers": ""}).loggers == ()
    assert resolve_config({"loggers": ["wandb"]}).loggers == ("wandb",)


def test_overrides_apply_on_a_base() -> None:
    base = resolve_config({"epochs": 9, "lr": 0.01})
    cfg = resolve_config({"lr": 0.02}, base=base)
    assert (cfg.epochs, cfg.lr) == (9, 0.02)


def test_sgd_without_momentum_and_an_unquoted_yaml_off(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Nesterov"):
        resolve_config({"optimizer": "sgd", "momentum": 0})
    y = tmp_path / "run.yaml"
    y.write_text("mixed_precision: off\n", encoding="utf-8")  # YAML 1.1 reads it as false
    assert resolve_config(load_config(y)).mixed_precision == "off"


def test_load_yaml_and_toml(tmp_path: Path) -> None:
    y = tmp_path / "run.yaml"
    y.write_text("epochs: 4\nfreeze: head\nloggers: [mlflow]\nmax_steps: null\n", encoding="utf-8")
    t = tmp_path / "run.toml"
    t.write_text('epochs = 5\noptimizer = "sgd"\nlr = 0.05\nema = false\n', encoding="utf-8")
    from_yaml = resolve_config(load_config(y))
    assert (from_yaml.epochs, from_yaml.freeze, from_yaml.loggers, from_yaml.max_steps) == (4, "head", ("mlflow",), None)
    from_toml = resolve_config(load_config(t))
    assert (from_toml.epochs, from_toml.optimizer, from_toml.lr, from_toml.ema) == (5, "sgd", 0.05, False)


def test_empty_yaml_is_no_overrides(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("", encoding="utf-8")
    assert load_config(p) == {}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("list.yaml", "- epochs\n- 3\n", "expected a mapping"),
    ("scalar.yml", "just a string\n", "expected a mapping"),
    ("broken.yaml", "epochs: [3\n", "cannot parse config"),
    ("broken.toml", "epochs = \n", "cannot parse config"),
    # a key given twice: the last one won, silently (epochs 3 trained)
    ("twice.yaml", "data: cat\nepochs: 2\nepochs: 3\n", r"twice.yaml: key 'epochs' is given twice \(lines 2 and 3\)"),
    ("twice.json", '{"epochs": 2, "epochs": 3}', "twice.json: key 'epochs' is given twice"),
    ("twice.toml", "epochs = 2\nepochs = 3\n", "cannot parse config"),
])
def test_bad_config_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "typo.yaml"
    p.write_text("epoch: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="epoch"):
        resolve_config(load_config(p))


@pytest.mark.parametrize("name", ["old.yaml", "old.toml", "old.json"])
def test_a_removed_key_in_a_file_says_it_was_removed(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    text = {"yaml": "epochs: 3\ncompile: true\n", "toml": "epochs = 3\ncompile = true\n",
            "json": '{"epochs": 3, "compile": true}'}[p.suffix[1:]]
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"old\.\w+: compile: this key was removed: it never did anything"):
        load_config(p)


def test_a_removed_key_in_python_says_it_was_removed() -> None:
    assert "compile" not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ConfigError, match="compile: this key was removed: it never did anything") as e:
        resolve_config({"compile": False})
    assert "unknown" not in str(e.value)


def test_train_help_lists_config_flags() -> None:
    r = _run("-m", "skulens.cli", "train", "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--freeze", "--trainable-stages", "--max-steps", "--resume", "--no-ema", "--config"):
        assert flag in r.stdout


def test_cli_import_does_not_import_torch() -> None:
    r = _run("-c", "import skulens.cli, sys; assert 'torch' not in sys.modules, 'torch imported'")
    assert r.returncode == 0, r.stderr


def test_unknown_cli_flag_fails() -> None:
    r = _run("-m", "skulens.cli", "train", "--bogus-flag")
    assert r.returncode != 0
    assert "--bogus-flag" in r.stderr


def test_bad_cli_choice_fails() -> None:
    r = _run("-m", "skulens.cli", "train", "--freeze", "bogus")
    assert r.returncode != 0
    assert "bogus" in r.stderr


def _train_values(*argv: str) -> dict:
    from skulens.cli import build_parser
    from skulens.cli._common import train_overrides

    return train_overrides(build_parser().parse_args(["train", *argv]))


def test_preset_best_is_a_full_fine_tune_at_native_resolution() -> None:
    cfg = resolve_config(_train_values("--preset", "best"))
    assert (cfg.freeze, cfg.image_size, cfg.train_image_size) == ("full", None, None)
    assert resolve_config(_train_values("--preset", "default")) == resolve_config(_train_values())


def test_flags_and_config_files_override_a_preset(tmp_path: Path) -> None:
    assert resolve_config(_train_values("--preset", "best", "--image-size", "224")).image_size == 224
    p = tmp_path / "run.yaml"
    p.write_text("preset: best\nepochs: 3\n", encoding="utf-8")
    cfg = resolve_config(_train_values("--config", str(p)))
    assert (cfg.freeze, cfg.image_size, cfg.epochs) == ("full", None, 3)
    p.write_text("preset: best\nfreeze: partial\n", encoding="utf-8")
    assert resolve_config(_train_values("--config", str(p))).freeze == "partial"  # the file's own key wins
    # a flag's preset replaces the file's
    assert resolve_config(_train_values("--config", str(p), "--preset", "default")).image_size == 224


def test_unknown_preset_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("preset: fastest\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown preset 'fastest'; choose from default, best"):
        _train_values("--config", str(p))
    r = _run("-m", "skulens.cli", "train", "--preset", "fastest")
    assert r.returncode != 0 and "fastest" in r.stderr


def test_the_python_api_and_a_started_config_take_presets_too(tmp_path: Path) -> None:
    from skulens.config import apply_preset

    p = tmp_path / "run.yaml"
    p.write_text("preset: best\nepochs: 3\n", encoding="utf-8")
    values = apply_preset(load_config(p))  # what skulens.train(config_file=...) resolves
    assert "preset" not in values and resolve_config(values).freeze == "full"
    assert resolve_config(apply_preset({}, "best")).image_size is None
    # "default" means the defaults even over a config that started elsewhere (retrain from a best bundle)
    started = resolve_config({"freeze": "full", "image_size": None})
    back = resolve_config(apply_preset({}, "default"), base=started)
    assert (back.freeze, back.image_size, back.train_image_size) == ("partial", 224, None)


def test_a_config_that_overrides_a_preset_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from skulens.config import apply_preset

    saved = tmp_path / "config.yaml"  # a run's resolved config sets every key, the preset's too
    saved.write_text("freeze: partial\nimage_size: 224\ntrain_image_size: null\nepochs: 3\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="skulens.config"):
        values = apply_preset(load_config(saved), "best")
    assert resolve_config(values).freeze == "partial"  # the file still wins, as documented
    assert "preset 'best'" in caplog.text and "freeze='partial'" in caplog.text and "image_size=224" in caplog.text
    assert "train_image_size" not in caplog.text  # the same value as the preset's is no override
    caplog.clear()
    with caplog.at_level("WARNING", logger="skulens.config"):
        apply_preset({"epochs": 3}, "best")
        apply_preset({"freeze": "full"}, "best")
    assert caplog.text == ""


def test_the_package_lists_its_lazy_names_and_reaches_its_modules_without_torch_at_import() -> None:
    """help(skulens) and dir() showed train and evaluate only; `skulens.api` (which their docstrings name) and
    `skulens.deploy` were AttributeErrors after `import skulens`."""
    r = _run("-c", "import skulens, sys\n"
                   "names = dir(skulens)\n"
                   "assert all(n in names for n in skulens.__all__), names\n"
                   "assert 'torch' not in sys.modules, 'torch imported'\n"
                   "assert skulens.config.TrainConfig is skulens.TrainConfig\n"
                   "assert callable(skulens.api.train) and skulens.deploy.__name__ == 'skulens.deploy'\n"
                   "assert callable(skulens.train) and callable(skulens.evaluate)  # still the functions\n")
    assert r.returncode == 0, r.stderr


def test_config_files_odd_keys_folders_bom_and_upper_case_suffixes(tmp_path: Path) -> None:
    """YAML's `1: 2` was a TypeError traceback, a folder "not found", a BOM refused in JSON and TOML, and
    E.TOML read as YAML."""
    odd = tmp_path / "odd.yaml"
    odd.write_text("epochs: 2\n1: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="keys are setting names, got 1"):
        load_config(odd)
    with pytest.raises(ConfigError, match="a folder"):
        load_config(tmp_path)
    for name, text in (("bom.json", '{"epochs": 2}'), ("bom.toml", "epochs = 2\n"), ("E.TOML", "epochs = 2\n")):
        f = tmp_path / name
        f.write_text(("\ufeff" if name.startswith("bom") else "") + text, encoding="utf-8")
        assert load_config(f) == {"epochs": 2}, name


def test_a_cli_spelling_and_a_container_for_a_string_are_told(tmp_path: Path) -> None:
    """`batch-size: 8` in a file was "unknown config key(s): batch-size" (the README calls every flag a key);
    `backbone: [a, b]` became the text "['a', 'b']" and `loggers: {tensorboard: 1}` its keys."""
    with pytest.raises(ConfigError, match="config keys use underscores: batch-size -> batch_size"):
        resolve_config({"batch-size": 8})
    for key, value in (("backbone", ["a", "b"]), ("device", {"cuda": 0}), ("loggers", {"tensorboard": 1})):
        with pytest.raises(ConfigError, match=f"{key}: .* is not a valid"):
            resolve_config({key: value})
    assert resolve_config({"loggers": ["tensorboard"]}).loggers == ("tensorboard",)


def test_the_python_api_says_what_the_cli_says(tiny_catalogue: Path, tmp_path: Path, caplog) -> None:
    """skulens.train(out=<a file>) was mkdir's FileExistsError traceback, and settings the CLI warns are unused
    (holdout_fraction without --select-on holdout) passed without a word."""
    import logging

    import skulens

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="a file is there"):
        skulens.train(tiny_catalogue, out=str(tmp_path / "afile"), progress=False, epochs=1)
    from conftest import TINY

    with caplog.at_level(logging.WARNING, logger="skulens"):
        skulens.train(tiny_catalogue, out=str(tmp_path / "run"), progress=False, holdout_fraction=0.3,
                      **{**TINY, "epochs": 1, "max_steps": 1})
    assert "holdout_fraction 0.3 is not used" in caplog.text
