"""One grammar on the command line: the same spelling for the model, the data, the output and top-k in
every command, help on every flag, exit codes that mean the same everywhere, input checks before torch."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_catalogue
from skulens.cli import build_parser

# Every command that runs or reads a model.
MODEL_COMMANDS = [("predict",), ("evaluate",), ("explain",), ("robustness",), ("info",), ("export",), ("bench",),
                  ("train",), ("distill",), ("retrain",), ("prune",), ("index", "build"), ("search",), ("align",),
                  ("enroll",), ("fuse",), ("recommend", "for"), ("recommend", "evaluate"), ("serve",),
                  ("inventory", "scan"), ("tag",), ("suggest-labels",), ("unenroll",)]
MODEL_COMMANDS = [c for c in MODEL_COMMANDS if c not in (("train",),)]  # train makes a model, it reads none
DATA_COMMANDS = [("train",), ("demo",), ("evaluate",), ("robustness",), ("export",), ("bench",), ("distill",),
                 ("retrain",), ("prune",), ("index", "build"), ("align",), ("enroll",), ("fuse",),
                 ("recommend", "for"), ("recommend", "generate"), ("recommend", "evaluate"), ("serve",)]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    out = {}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    for name, child in subs[0].choices.items():
        out.update(_leaves(child, (*path, name)))
    return out


@pytest.fixture(scope="module")
def leaves() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    return _leaves(build_parser())


def _visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_every_flag_has_help(leaves) -> None:
    missing = [f"{' '.join(cmd)} {a.option_strings or a.dest}" for cmd, p in leaves.items() for a in p._actions
               if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_every_help_gives_its_default_once_and_says_nothing_of_unset_ones(leaves) -> None:
    """`serve --help` said "(default: the data the bundle was trained on) (default: None)", train's flags
    "(default: None)" eleven times; robustness, bench, prune and others ran defaults their help never gave; the
    explain usage line said `--precision P` beside its choices; `detect export` offered "--backend onnx", which it
    has not."""
    twice, unset, unsaid = [], [], []
    for cmd, p in leaves.items():
        formatter = p._get_formatter()
        for a in p._actions:
            if a.help in (None, argparse.SUPPRESS) or isinstance(a, argparse._HelpAction):
                continue
            text, name = formatter._expand_help(a), f"{' '.join(cmd)} {a.option_strings or a.dest}"
            if text.count("(default:") > 1:
                twice.append(name)
            if "(default: None)" in text or "(default: ())" in text or "(default: [])" in text:
                unset.append(name)
            if a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
                unsaid.append(name)
    assert (twice, unset, unsaid) == ([], [], [])
    for cmd in (("detect", "export"), ("detect", "evaluate"), ("count",)):  # only count has --backend
        detector = next(a for a in leaves[cmd]._actions if "--detector" in a.option_strings)
        assert ("--backend" in detector.help) == ("--backend" in _visible_options(leaves[cmd])), cmd
    for cmd, p in leaves.items():  # a usage line written by hand names each option as argparse would
        if p.usage:
            for a in p._actions:
                if a.choices and a.option_strings:
                    assert "{" + ",".join(a.choices) + "}" in p.usage, (cmd, a.option_strings)


def test_the_model_is_spelled_the_same_everywhere(leaves) -> None:
    for cmd in MODEL_COMMANDS:
        opts = _visible_options(leaves[cmd])
        assert "--model" in opts and "-m" in opts, cmd
        assert "--bundle" not in opts, cmd


def test_data_out_and_top_k_are_spelled_the_same_everywhere(leaves) -> None:
    for cmd in DATA_COMMANDS:
        assert "--data" in _visible_options(leaves[cmd]), cmd
    for cmd, p in leaves.items():
        opts = _visible_options(p)
        assert not opts & {"--catalogue", "--output", "--calibration-data", "--bundle"}, cmd
        if "-o" in opts:
            assert "--out" in opts, cmd
        if "-k" in opts or "--top-k" in opts:
            assert {"-k", "--top-k"} <= opts, cmd


def test_training_flags_are_grouped_in_every_training_command(leaves) -> None:
    for cmd in (("train",), ("retrain",), ("distill",), ("prune",)):
        groups = {g.title: g for g in leaves[cmd]._action_groups}
        group = groups["training options (each is also a key of --config)"]
        flags = {s for a in group._group_actions for s in a.option_strings}
        assert {"--lr", "--epochs", "--freeze", "--weight-decay"} <= flags, cmd


def _run(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI in-process in a fresh interpreter; the last stdout line says whether torch was imported."""
    code = ("import sys\nfrom skulens.cli import main\n"
            f"rc = main({list(args)!r})\n"
            "print('TORCH', 'torch' in sys.modules)\nsys.exit(rc)\n")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                       cwd=cwd, env={**os.environ, "SKULENS_DATA": ""})
    return r, time.perf_counter() - t0


@pytest.mark.parametrize("cmd", [["info"], ["evaluate", "--out", "x"], ["predict", "a.jpg"], ["export"],
                                 ["bench"], ["robustness", "--out", "x"], ["explain", "a.jpg"], ["fuse"],
                                 ["enroll", "--product", "p", "--images", "a.jpg"], ["index", "build", "--out", "i"],
                                 ["inventory", "scan", ".", "--db", "db.sqlite"]])
def test_a_missing_model_is_exit_2_before_torch(cmd: list[str], tmp_path: Path) -> None:
    r, _ = _run(*cmd, "--model", str(tmp_path / "no-bundle"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "is not a bundle (no card.json)" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.strip().endswith("TORCH False")


def test_a_folder_that_is_not_a_bundle_is_refused_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    for cmd in (["info"], ["evaluate", "--out", "x"]):
        r, _ = _run(cmd[0], "--model", str(tmp_path / "run"), *cmd[1:])
        assert r.returncode == 2 and "RUN/bundle" in r.stderr


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_bad_data_is_refused_at_once_without_torch(how: str, tmp_path: Path, tiny_bundle) -> None:
    data = tmp_path / "data"
    if how == "empty":
        data.mkdir()
    for cmd in (["train", "--data", str(data), "--out", str(tmp_path / "run")],
                ["evaluate", "--model", str(tiny_bundle.bundle), "--data", str(data), "--out", str(tmp_path / "e")]):
        r, wall = _run(*cmd)
        assert r.returncode == 2, r.stderr
        assert ("no such file or folder" if how == "missing" else "empty") in r.stderr
        assert r.stdout.strip().endswith("TORCH False") and wall < 8
    assert not (tmp_path / "run").exists()


def test_usage_errors_are_exit_2_with_one_line(tiny_bundle, tmp_path: Path) -> None:
    r, _ = _run("predict", "--model", str(tiny_bundle.bundle), str(tmp_path))  # an empty folder: no images
    assert r.returncode == 2 and "skulens predict: no input images" in r.stderr and "Traceback" not in r.stderr
    r, _ = _run("export", "--model", str(tiny_bundle.bundle), "--format", "torchscript", "--int8")
    assert r.returncode == 2 and "--int8 needs --format onnx" in r.stderr
    r, _ = _run("recommend", "for", "--events", "x.csv")
    assert r.returncode == 2 and "give --user" in r.stderr


def test_evaluate_without_data_uses_the_dataset_in_the_card(tiny_bundle, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "eval"
    r, _ = _run("evaluate", "--model", str(tiny_bundle.bundle), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["n"] == 9  # the tiny catalogue's val split, found through the card
    assert report["extra"]["data"] == tiny_bundle.card.dataset["path"]
    # the recorded catalogue gone: said, not the default dataset (whose labels the model does not know)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_bundle.bundle, moved)
    card = json.loads((moved / "card.json").read_text(encoding="utf-8"))
    card["dataset"]["path"] = card["train_config"]["data"] = str(tmp_path / "gone")
    (moved / "card.json").write_text(json.dumps(card), encoding="utf-8")
    for cmd in (["evaluate", "--out", str(tmp_path / "e2")], ["robustness", "--out", str(tmp_path / "r2")]):
        r, _ = _run(*cmd, "--model", str(moved), "-q")
        assert r.returncode == 2 and "is not here: pass --data" in r.stderr, r.stderr
        assert str(moved) in r.stderr  # the command line names the model
    import skulens
    from skulens.data.locate import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="the model was trained on .* is not here"):  # the API too
        skulens.evaluate(str(moved), progress=False)
    from skulens.cli._common import data_path

    ns = argparse.Namespace(data=None)
    data_path(ns, model=str(moved), required=False)  # data that is optional (tflite's parity photos): no refusal
    write_catalogue(tmp_path / "mine")
    monkeypatch.setenv("SKULENS_DATA", str(tmp_path / "mine"))  # the user's own default is taken, as before
    assert data_path(ns, model=str(moved)) == str(tmp_path / "mine")


def test_the_new_spelling_and_the_old_one_give_the_same_predictions(tiny_bundle, tiny_catalogue: Path,
                                                                    tmp_path: Path) -> None:
    photos = sorted(str(p) for p in (tiny_catalogue.parent / "val").rglob("*.jpg"))[:4]
    new, _ = _run("predict", "-m", str(tiny_bundle.bundle), *photos, "-k", "2", "-o", str(tmp_path / "new.jsonl"),
                  "-q")
    old, _ = _run("predict", str(tiny_bundle.bundle), *photos, "--top-k", "2", "--output", str(tmp_path / "old.jsonl"),
                  "-q")
    assert new.returncode == 0 and old.returncode == 0, (new.stderr, old.stderr)
    assert "deprecated" not in new.stderr
    assert "`skulens predict BUNDLE` is deprecated" in old.stderr and "--output is deprecated" in old.stderr
    rows = [json.loads(line) for line in (tmp_path / "new.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == photos and all(len(r["top_k"]) == 2 for r in rows)
    assert (tmp_path / "new.jsonl").read_text() == (tmp_path / "old.jsonl").read_text()


def test_info_takes_the_model_flag_and_the_old_positional(tiny_bundle) -> None:
    new, _ = _run("info", "--model", str(tiny_bundle.bundle), "--json")
    old, _ = _run("info", str(tiny_bundle.bundle), "--json")
    assert new.returncode == old.returncode == 0
    assert new.stdout == old.stdout and "deprecated" in old.stderr
    both, _ = _run("info", str(tiny_bundle.bundle), "--model", str(tiny_bundle.bundle))
    assert both.returncode == 2 and "unexpected argument" in both.stderr


def test_bad_values_are_one_line_exit_2_before_any_work(tiny_bundle, tiny_catalogue: Path, tmp_path: Path,
                                                       capsys) -> None:
    """Flags whose bad values used to crash deep inside (a traceback), be dropped silently (`--attacks fgm`),
    or fail only after minutes of work (`bench --variants` without baseline): each is refused at once."""
    from skulens.cli import main

    m, d, out = str(tiny_bundle.bundle), str(tiny_catalogue), str(tmp_path / "o")
    photo = str(tiny_catalogue.parent / "val" / "red-apple" / "red-apple_000.jpg")
    robust = ["robustness", "--model", m, "--data", d, "--out", out]
    cases = [
        (robust + ["--attacks", "fgsm,fgm"], "--attacks: unknown 'fgm'"),
        (robust + ["--severities", "1,6"], "--severities: each in 1..5"),
        (robust + ["--eps", "1,abc"], "--eps: 'abc' is not a float"),
        (robust + ["--corruptions", "fog"], "--corruptions: unknown 'fog'"),
        (robust + ["--pgd-steps", "0"], "must be >= 1, got 0"),
        (["predict", "--model", m, d, "--device", "gpu"], "give auto, cpu, cuda or cuda:N"),
        (["predict", "--model", m, d, "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["predict", "--model", m, d, "-k", "0"], "-k/--top-k: must be >= 1"),
        (["predict", "--model", m, d, "--min-confidence", "2"], "must be in [0, 1]"),
        (["predict", "--model", m, photo, "--text", "x"], "--text needs a bundle with a fusion head"),
        (["bench", "--model", m, "--data", d, "--variants", "torch-fp32"], "--variants must include baseline"),
        (["bench", "--model", m, "--data", d, "--variants", "baseline,onnx-fp33"], "--variants: unknown 'onnx-fp33'"),
        (["prune", "--model", m, "--out", out, "--amount", "1.5"], "--amount must be in (0, 1)"),
        (["prune", "--model", m, "--out", out, "--no-recover", "--epochs", "3"], "--epochs: only for the recovery"),
        (["export", "--model", m, "--calibration-images", "10"], "--calibration-images calibrates int8"),
        (["export", "--model", m, "--parity-images", "5"], "--parity-images checks a LiteRT file"),
        (["recommend", "generate", "--data", d, "--out", out, "--users", "0"], "--users: must be >= 1"),
        (["recommend", "generate", "--data", d, "--out", "gen.json"], "the behaviour log is CSV"),  # CSV in .json
        (["explain", "--model", m, photo, "--target", "no-such"],
         "--target 'no-such': not a class"),
    ]
    for argv, expected in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own usage error
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and "Traceback" not in err, (argv, rc, err)
    assert not Path(out).exists()  # nothing was written by any of them


def test_a_device_this_machine_lacks_is_a_user_error() -> None:
    import torch

    from skulens.cli._errors import is_user_error
    from skulens.models.inference import DeviceError, resolve_device

    with pytest.raises(DeviceError, match="give auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available") as e:
            resolve_device("cuda")
        assert is_user_error(e.value)
    else:
        with pytest.raises(DeviceError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("argv, shown", [
    (["serve", "-m", "b", "--api-key", "S3CRET-value"], "--api-key ***"),
    (["serve", "-m", "b", "--token=S3CRET-value"], "--token=***"),
    (["index", "build", "-m", "b", "-o", "x", "--Password", "S3CRET-value"], "--Password ***"),
    (["serve", "-m", "b", "--pass", "S3CRET-value"], "--pass ***"),
    (["serve", "-m", "b", "--api-key", "-S3CRET-value"], "--api-key ***"),  # a token may start with '-'
])
def test_usage_errors_do_not_echo_secret_values(argv: list[str], shown: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt option that carries a secret (API keys come from a file, never a flag): argparse's
    'unrecognized arguments' would print the value onto the terminal or a CI log."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "S3CRET" not in err and shown in err


def test_usage_errors_keep_other_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "-m", "b", "--colour", "red"])
    assert "--colour red" in capsys.readouterr().err


def test_prune_help_shows_the_recovery_defaults_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """prune --help showed train's defaults (10 epochs, freeze partial, baseline on) for a recovery that runs 3,
    full and none."""
    from skulens.config import PRUNE_RECOVERY

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, value in PRUNE_RECOVERY.items():
        assert f"(default: {value})" in text.split(f"--{name.replace('_', '-')}", 2)[-1][:400], name


@pytest.mark.parametrize("argv, key, want", [
    (["search", "--index", "i", "--text", "banana", "--text", "oat milk"], "text", ["banana", "oat milk"]),
    (["search", "--index", "i", "--image", "a.jpg", "b.jpg", "--image", "c.jpg"], "image", ["a.jpg", "b.jpg", "c.jpg"]),
    (["search", "--index", "i", "--product", "Banana", "--product", "Kiwi"], "product", ["Banana", "Kiwi"]),
    (["recommend", "for", "--events", "e.csv", "--user", "a", "--user", "zz"], "user", ["a", "zz"]),
    (["recommend", "for", "--events", "e.csv", "--similar", "Kiwi", "--similar", "Lemon"], "similar", ["Kiwi", "Lemon"]),
    (["enroll", "-m", "b", "--product", "p", "--images", "a.jpg", "--images", "b.jpg"], "images", ["a.jpg", "b.jpg"]),
    (["suggest-labels", "-m", "b", "pool", "--budget", "2", "--labelled", "x", "--labelled", "y"], "labelled",
     ["x", "y"]),
])
def test_a_repeated_query_flag_adds_its_values(argv: list[str], key: str, want: list[str]) -> None:
    """`search --text banana --text 'oat milk'` answered 'oat milk' alone, exit 0: the first query was dropped."""
    from skulens.cli import build_parser

    assert getattr(build_parser().parse_args(argv), key) == want
