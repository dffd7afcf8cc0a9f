"""What every `skulens` subcommand shares: the one grammar (--model, --data, --out, -k/--top-k), input
checks made before torch is imported, deprecated spellings, and the training flags.

Exit codes, the same in every command: 0 success, 1 a run that failed (e.g. no image could be read),
2 a usage or input error (a missing model or data path, a bad flag or config, an unreadable catalogue).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, get_args

from ..config import apply_preset, config_fields, load_config
from ..data.image_list import is_image_list, non_utf8_names, read_image_list, walk_images
from ..data.locate import card_json, dataset_path, recorded_dataset, resolve_data
from ..detect.options import DETECTOR_ONNX, onnx_export_advice
from ..models.options import EXPORTED_FILES, PRECISIONS, check_precision_backend, is_device_name

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "UsageError",
    "add_data",
    "add_engine",
    "add_key_file",
    "add_model",
    "add_out",
    "add_quiet",
    "add_top_k",
    "add_train_flags",
    "after_resuming",
    "check_engine",
    "check_out_path",
    "csv_list",
    "data_path",
    "deprecated_alias",
    "device_arg",
    "engine_options",
    "engine_out",
    "expand_inputs",
    "fraction",
    "is_rank_zero",
    "model_path",
    "output_format",
    "positive_int",
    "pseudonymizer",
    "refuse_json_out",
    "refuse_out_among_inputs",
    "report_result",
    "say",
    "train_overrides",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE = 0, 1, 2, 3
REMOVED_IN = "0.2"  # deprecated spellings keep working for one release


class UsageError(Exception):
    """A usage or input error the user can fix: printed as one line, exit code 2."""


def is_rank_zero() -> bool:
    """This process speaks for the run: alone, or rank 0 under torchrun ($RANK; read without torch)."""
    return os.environ.get("RANK", "0") in ("", "0")


def say(msg: str) -> None:
    """Human-facing messages go to stderr; stdout carries only results (JSON lines, CSV, tables)."""
    print(msg, file=sys.stderr)


def _warn_deprecated(old: str, new: str) -> None:
    say(f"skulens: {old} is deprecated, use {new} (the old spelling goes away in skulens {REMOVED_IN})")


class _DeprecatedAlias(argparse.Action):
    """An old flag spelling: stores into the new flag's dest and prints one deprecation line."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        _warn_deprecated(str(option_string), self.new)
        setattr(namespace, self.dest, values)


def deprecated_alias(p: argparse.ArgumentParser | Any, old: str, new: str, dest: str) -> None:
    """Accept `old` as a hidden alias of `new` for one release."""
    p.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------- the model

def add_model(p: argparse.ArgumentParser, help_text: str = "model bundle folder (skulens train writes RUN/bundle)",
              *, required: bool = True, positional_legacy: bool = True) -> None:
    """--model/-m, the one spelling; `positional_legacy` also takes the old positional BUNDLE (deprecated)."""
    p.add_argument("-m", "--model", help=help_text + ("" if required else " (optional)"))
    p.set_defaults(model_required=required)
    if positional_legacy:
        p.add_argument("legacy_model", nargs="?", metavar="BUNDLE", help=argparse.SUPPRESS)


def model_path(ns: argparse.Namespace, *, backend: str = "torch") -> str | None:
    """The model argument, checked before torch is imported: a bundle folder (card.json), a card.json,
    an exported .onnx or .tflite file, or pretrained:NAME."""
    legacy = getattr(ns, "legacy_model", None)
    value = ns.model
    if legacy is not None:
        if value is not None:
            raise UsageError(f"unexpected argument {legacy!r} (the model is --model {value})")
        _warn_deprecated(f"`skulens {ns.command} BUNDLE`", f"`skulens {ns.command} --model BUNDLE`")
        value = legacy
    if value is None:
        if getattr(ns, "model_required", True):
            raise UsageError("--model BUNDLE is required")
        return None
    check_model(value, backend=backend)
    return value


def check_model(value: str, *, backend: str = "torch") -> None:
    if value.startswith("pretrained:"):
        return
    p = Path(value)
    if not p.exists():
        from ..models.swap import recover_bundle  # no torch: files only

        if not recover_bundle(p):  # a kill inside a save left it aside as .NAME.old: put back, as load() does
            raise UsageError(f"--model {value}: no such file or folder; it is not a bundle (no card.json)")
    if p.is_dir():
        exported = EXPORTED_FILES.get(backend)  # what the backend runs
        has_export = exported is not None and (p / exported).is_file()
        if not (p / "card.json").is_file() and not has_export:
            raise UsageError(f"--model {value} is not a bundle (no card.json); a training run's bundle is RUN/bundle")
        if exported and not has_export:
            fmt = {"onnx": "", "onnx-int8": " --int8 (or --preset fast)",
                   "tflite-int8": " --format tflite --int8"}.get(backend, f" --format {backend}")
            raise UsageError(f"--model {value}: no {exported}; run `skulens export --model {value}{fmt}` first")
    elif p.suffix not in (".json", ".onnx", ".tflite"):
        raise UsageError(f"--model {value} is not a bundle (no card.json): give the bundle folder, its card.json "
                         "or an exported .onnx / .tflite file")


def check_bundle(value: str, flag: str) -> dict[str, Any]:
    """A bundle folder or its card.json (a bundle to read, not an export), checked before torch is imported: its
    card as JSON (a UsageError naming `flag` otherwise)."""
    p = Path(value)
    if not ((p / "card.json").is_file() or (p.name == "card.json" and p.is_file())):
        raise UsageError(f"{flag} {value}: not a bundle (no card.json there)")
    card = card_json(p)
    if card is None:
        raise UsageError(f"{flag} {value}: unreadable card.json")
    return card


def check_detector(value: str | None, flag: str = "--detector", *, backend: str | None = None) -> str:
    """A detector folder (detector.json), checked before torch is imported; with backend "onnx" also an
    exported .onnx file beside its detector.json (`skulens detect export DET -o FILE`)."""
    if not value:
        raise UsageError(f"{flag} DET is required (a folder written by `skulens detect train`)")
    p = Path(value)
    if p.suffix.lower() == ".onnx" and p.is_file() and (p.parent / "detector.json").is_file():
        if backend != "onnx":
            raise UsageError(f"{flag} {value}: an exported detector (ONNX); "
                             + ("run it with the onnx backend" if backend else "give its detector folder"))
        return value
    if not p.exists():
        raise UsageError(f"{flag} {value}: no such folder (a detector is the folder `skulens detect train` writes)")
    if p.name == "detector.json" and p.is_file():  # it said "not a detector folder, no detector.json" of the file
        raise UsageError(f"{flag} {value}: give the detector's folder, {p.parent}")
    if not (p / "detector.json").is_file():
        bundle = (p / "card.json").is_file()
        hint = (" (that is a classification bundle" + (": give it as -m/--model)" if flag == "--detector" else ")")
                if bundle else "")
        raise UsageError(f"{flag} {value}: not a detector folder, no detector.json{hint}")
    if backend == "onnx" and not (p / DETECTOR_ONNX).is_file():  # told here, before a database or output is made
        raise UsageError(f"{flag} {value}: no {DETECTOR_ONNX} for the onnx backend; {onnx_export_advice(p)}")
    return value


# --------------------------------------------------------------------------- data, outputs, inputs

def add_data(p: argparse.ArgumentParser, help_text: str = "catalogue: class folders, a CSV/JSONL manifest or the "
             "Grocery Store layout (default: the model's recorded dataset, else the grocery dataset)",
             *, legacy: tuple[str, ...] = ()) -> None:
    p.add_argument("--data", help=help_text)
    for old in legacy:
        deprecated_alias(p, old, "--data", "data")


def data_path(ns: argparse.Namespace, *, model: str | None = None, required: bool = True) -> str | None:
    """--data, else the dataset recorded in the model's card (refused when it is gone), else the default dataset.
    Checked here, before torch is imported: a missing or empty path is refused at once."""
    recorded = recorded_dataset(model) if model and not model.startswith("pretrained:") else None
    if recorded is None and model and card_json(model) is None:  # an exported file alone: the card inside it (the
        from ..models.card import exported_card_json  # grocery default scored another catalogue's model)

        recorded = dataset_path(exported_card_json(model))
    found = resolve_data(getattr(ns, "data", None), recorded=recorded, required=required, model=model or "the model")
    return None if found is None else str(found)


def add_out(p: argparse.ArgumentParser, help_text: str, *, required: bool = False, default: str | None = None,
            legacy_output: bool = False) -> None:
    p.add_argument("-o", "--out", required=required, default=default, help=help_text)
    if legacy_output:
        deprecated_alias(p, "--output", "--out", "out")


def refuse_out_in_catalogue(out: str | os.PathLike[str] | None, data: str | None, flag: str = "--out") -> None:
    """An output folder inside a folder-per-class catalogue became a class (or a stray split) of the next run,
    evaluation or index build over it (`skulens train` refuses it for its run folder too)."""
    from ..data.catalogue import inside_folder_catalogue

    if out and data and inside_folder_catalogue(out, data):
        raise UsageError(f"{flag} {out} is inside the catalogue folder {data}: the next command over it would read "
                         "these files as a class; choose a folder outside it")


def check_out_path(value: str | os.PathLike[str] | None, flag: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: a file where a folder is wanted (or the
    other way round), or a file where one of its parent folders would have to be."""
    if not value:
        return
    path = Path(value)
    if path.exists() and path.is_dir() != folder:
        raise UsageError(f"{flag} {value}: {'a file' if folder else 'a folder'} is there; name "
                         f"{'a folder' if folder else 'a file'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {value}: {parent} is a file, not a folder")
            break


def refuse_json_out(out: str | None) -> None:
    """Results files hold JSON lines (one photo a line), which a JSON reader refuses in a file named .json."""
    if out and Path(out).suffix.lower() == ".json":
        raise UsageError(f"--out {out}: use a .jsonl (JSON lines) or .csv file name")


def add_top_k(p: argparse.ArgumentParser, default: int, help_text: str = "results per query", *,
              allow_zero: bool = False) -> None:
    p.add_argument("-k", "--top-k", dest="top_k", type=non_negative_int if allow_zero else positive_int,
                   default=default,
                   help=f"{help_text} (default: {default})")


def add_key_file(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument("--pseudonym-key-file", help="file holding the key user ids are pseudonymised with, kept "
                   f"outside the data (default: $SKULENS_PSEUDONYM_KEY){extra}")


def pseudonymizer(ns: argparse.Namespace, *, required: bool = False, data_dirs: tuple[Any, ...] = (),
                  data_files: tuple[Any, ...] = ()) -> Any:
    """The Pseudonymizer of --pseudonym-key-file or $SKULENS_PSEUDONYM_KEY (None if neither, unless `required`);
    a key file inside `data_dirs` or beside `data_files` is refused (`load_pseudonymizer`)."""
    from ..serve.privacy import KEY_ENV, load_pseudonymizer

    key = load_pseudonymizer(ns.pseudonym_key_file, data_dirs=data_dirs, data_files=data_files)
    if key is None and required:
        raise UsageError(f"no pseudonym key: give --pseudonym-key-file FILE or set ${KEY_ENV}")
    return key


def add_quiet(p: argparse.ArgumentParser, help_text: str = "no progress bars") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help_text)


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (their images, recursively), globs, Parquet/CSV lists with a `path` column, or '-' /
    nothing: paths read from stdin. Names that are not UTF-8 are refused (:func:`non_utf8_names`)."""
    out = _expand(items or ["-"])
    bad = non_utf8_names(out)
    if bad:
        raise UsageError(bad)
    return out


def _expand(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:  # (an empty stdin is no input, not stdin again: that recursed until RecursionError)
        if item == "-":  # stdin's paths in its place, also among other inputs ("photo.jpg - more/")
            out += _expand([line.strip() for line in sys.stdin if line.strip() and line.strip() != "-"])
            continue
        if not Path(item).exists() and any(ch in item for ch in "*?["):
            # A quoted glob: each match is read as it would be given by name (a folder's images, a list's paths).
            matches = sorted(glob.glob(item, recursive=True))
            out += _expand(matches) if matches else []
            continue
        p = Path(item)
        if p.is_dir():
            found = sorted(walk_images(p), key=str)
            broken = [f for f in found if not f.is_file()]  # left out, as every folder of photos leaves them
            if broken:  # ... but said: a moved photo library's links were skipped without a word
                links = sum(f.is_symlink() and not f.exists() for f in broken)  # the rest: FIFOs, sockets, devices
                what = "broken link(s)" if links == len(broken) else "entries that are not files (broken links, " \
                    "pipes, devices)"
                say(f"skulens: {len(broken)} {what} under {p} left out, e.g. {broken[0]}")
            out += [str(f) for f in found if f.is_file()]
        elif is_image_list(p):
            out += read_image_list(p)
        else:
            out.append(item)  # a missing file becomes a per-file error, not a crash
    return out


def add_engine(p: argparse.ArgumentParser, note: str = "") -> None:
    """--engine local|ray, --actors, --cpus-per-actor, --ray-address: where a batch job runs (on Ray:
    skulens.deploy.ray_jobs)."""
    g = p.add_argument_group("batch engine")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: an actor pool on Ray Data, each actor loading the "
                        "model once" + (f"; {note}" if note else ""))
    g.add_argument("--actors", type=positive_int, help="--engine ray: actors in the pool (default: 1)")
    g.add_argument("--cpus-per-actor", type=float,
                   help="--engine ray: CPUs each actor reserves, and its torch threads (default: 1)")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="--engine ray: the cluster (default: $RAY_ADDRESS, else a local Ray for the job)")


def check_engine(ns: argparse.Namespace) -> bool:
    """True for --engine ray, checked before torch or ray is imported: Ray installed, a sensible pool."""
    if getattr(ns, "engine", "local") != "ray":
        ray_only = [flag for flag, name in (("--actors", "actors"), ("--cpus-per-actor", "cpus_per_actor"),
                                            ("--ray-address", "ray_address")) if getattr(ns, name, None) is not None]
        if ray_only:
            raise UsageError(f"{', '.join(ray_only)}: settings of --engine ray (this run is local)")
        return False
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError("--engine ray needs Ray Data: pip install 'skulens[ray]'")
    ns.actors = 1 if ns.actors is None else ns.actors
    ns.cpus_per_actor = 1.0 if ns.cpus_per_actor is None else ns.cpus_per_actor
    if ns.actors < 1 or not 0 < ns.cpus_per_actor < math.inf:  # `not <`: NaN too
        raise UsageError("--actors must be >= 1 and --cpus-per-actor a number > 0")
    if getattr(ns, "batch_size", None) is not None and ns.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if getattr(ns, "precision", None) == "fp16" and not str(getattr(ns, "device", "auto")).startswith("cuda"):
        # checked here, not by each actor (a page of Ray tracebacks): only --device cuda gives the actors a GPU
        raise UsageError("--precision fp16: for CUDA; with --engine ray give --device cuda (one GPU per actor)")
    return True


def refuse_out_among_inputs(out: str | os.PathLike[str] | None, inputs: Sequence[str], files: Sequence[str] = ()
                            ) -> None:
    """An --out that is one of the inputs (a photo list given as CSV or Parquet, a photo) would be written over
    with the results: refused before any work."""
    if not out or not Path(out).exists() or Path(out).is_dir():
        return
    target = Path(out).resolve()
    if any(i != "-" and Path(i).is_file() and Path(i).resolve() == target for i in [*inputs, *files]):
        raise UsageError(f"--out {out}: one of the input files; name another file")


def engine_out(ns: argparse.Namespace) -> Path:
    """--engine ray writes Parquet: -o a .parquet file, or a new (or empty) folder for part files."""
    if not ns.out:
        raise UsageError("--engine ray writes Parquet: give -o OUT.parquet or -o FOLDER")
    out = Path(ns.out)
    if out.suffix.lower() != ".parquet":
        if out.suffix and not out.is_dir():
            raise UsageError(f"--out {ns.out}: with --engine ray, a .parquet file or a folder")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {ns.out}: not empty; give a new or empty folder for the Parquet part files")
    else:
        check_out_path(out, "--out")  # a .parquet name that is a folder, or under a file: before the job runs
    return out


def engine_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The keywords of skulens.deploy.ray_jobs' runners; --device cuda asks one GPU per actor, --device auto one
    where the cluster has a GPU for every actor (`ray_jobs.actor_gpus`)."""
    device = getattr(ns, "device", "auto") or "auto"
    gpus = None if device == "auto" else 1.0 if device.startswith("cuda") else 0.0
    return {"actors": ns.actors, "cpus_per_actor": ns.cpus_per_actor, "address": ns.ray_address,
            "progress": not getattr(ns, "quiet", False), "gpus_per_actor": gpus}


def check_format_matches_out(ns: argparse.Namespace) -> None:
    """--format that contradicts the --out file's name (CSV written into x.jsonl) is refused."""
    if ns.out and ns.format:
        named = "csv" if ns.out.lower().endswith(".csv") else "jsonl" if ns.out.lower().endswith(".jsonl") else None
        if named is not None and named != ns.format:
            raise UsageError(f"--format {ns.format} into {ns.out}: the name says {named}; name the file .{ns.format}")


def output_format(ns: argparse.Namespace) -> str:
    """--format, else what the --out file's name says: csv for a .csv file, jsonl otherwise (and for stdout)."""
    if ns.format:
        return ns.format
    return "csv" if ns.out and ns.out.lower().endswith(".csv") else "jsonl"


def csv_list(text: str, kind: type = str, *, flag: str = "", allowed: Sequence[str] | None = None) -> list[Any]:
    """"a, b" -> ["a", "b"] (each converted by `kind`); a value that does not convert, or is not one of
    `allowed`, is a UsageError naming `flag`."""
    name = flag or "a list"
    out = []
    for v in (v.strip() for v in text.split(",")):
        if not v:
            continue
        try:
            out.append(kind(v))
        except ValueError:
            raise UsageError(f"{name}: {v!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
        if allowed is not None and out[-1] not in allowed:
            raise UsageError(f"{name}: unknown {v!r} (one of {', '.join(allowed)})")
    return out


# --------------------------------------------------------------------------- argparse value types
# Checked while parsing, so a bad value is the usage line and exit 2 before anything is loaded.

def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_precision(p: argparse.ArgumentParser, of: str = "") -> None:
    """of: whose numerics, where the command runs more than one network (count: 'of the classifier (-m)')."""
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help=f"PyTorch inference numerics{' ' + of if of else ''}: auto (default) is bf16 on CPUs with AVX512-BF16/AMX and on "
                        "CUDA, fp32 elsewhere, so answers can differ a little between machines; off is fp32 "
                        "everywhere (as ONNX Runtime runs); fp16 is for CUDA")


def check_precision_flag(ns: argparse.Namespace, backend: str | None = None) -> None:
    """--precision sets PyTorch's numerics: with an exported backend it would do nothing (refused before the model
    is looked for). backend: the model's, where ns.backend is another part's (count's detector)."""
    try:
        check_precision_backend(ns.precision, backend or getattr(ns, "backend", "torch"))
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if ns.precision == "fp16" and ns.device == "cpu":  # with auto, the model's loader knows whether CUDA is there
        raise UsageError("--precision fp16: for CUDA (--device cuda); on the CPU use bf16 or off")


def user_id_arg(text: str) -> str:
    """A user id as the behaviour log keeps it: its reader strips ids, so ' u42' matched no row (an erasure that
    erased nothing, exit 0; recommendations for a new user, unsaid)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty user id")
    if text != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} has spaces around it, which no recorded id has (the behaviour "
                                         f"log's ids are stripped): give {text.strip()!r}")
    return text


def device_arg(text: str) -> str:
    """auto, cpu, cuda or cuda:N (whether that GPU exists is checked when the model loads)."""
    if is_device_name(text.strip()):
        return text.strip()
    raise argparse.ArgumentTypeError(f"{text!r}: give auto, cpu, cuda or cuda:N")


def help_with_default(help_text: str, default: Any) -> str:
    """`help_text (default: X)`; nothing added for an unset default (None, no values) or a help that gives its own."""
    if default is None or default == () or default == [] or "default" in help_text:
        return help_text
    return f"{help_text} (default: {default})"


# --------------------------------------------------------------------------- training flags

def add_train_flags(p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None,
                    omit: Collection[str] = ()) -> None:
    """The TrainConfig flags shared by train, retrain, distill and prune, in one help group. `defaults`: the
    command's own, where they are not TrainConfig's (prune's recovery), so its help says what it runs. `omit`:
    settings the command sets itself (a retrain's start is its bundle: no --init-from, --weights, --head-init),
    not offered as flags that could never take effect."""
    p.add_argument("--config", help="YAML/TOML/JSON file of config keys (CLI flags override it)")
    add_quiet(p)
    g = p.add_argument_group("training options (each is also a key of --config)")
    for name, hint, default, help_text in config_fields():
        if name in ("data", "out") or name in omit:
            continue
        default = (defaults or {}).get(name, default)
        flag = "--" + name.replace("_", "-")
        args = get_args(hint)
        if hint is bool or (args and bool in args and len(args) == 1):
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_with_default(help_text, default))
            continue
        choices = args if "Literal" in repr(hint) and args and all(isinstance(a, str) for a in args) else None
        g.add_argument(flag, dest=name, default=None, choices=choices, metavar=None if choices else name.upper(),
                       help=help_with_default(help_text, default))


def train_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """A preset's values (--preset, or the file's `preset` key), then the --config file's, then the flags given."""
    values = apply_preset(load_config(ns.config) if ns.config else {}, getattr(ns, "preset", None))
    for name, *_ in config_fields():
        v = getattr(ns, name, None)
        if v is not None:
            values[name] = v
    return values


def after_resuming(result: Any) -> str:
    """What follows a run's epoch count: a resumed run's TrainResult counts this process's epochs (and time)."""
    return " more, after resuming" if result.card.metrics.get("resumed") else ""


def report_result(result: Any) -> None:
    """The end of a training run, for a person: the report summary and where the outputs are."""
    from ..evaluate.report import format_summary

    say(format_summary(result.report, baseline=result.baseline))
    say(f"trained {result.epochs_run} epoch(s){after_resuming(result)} in {result.wall_time_s / 60:.1f} min, best epoch "
        f"{result.best_epoch}")
    if result.skipped:
        say(f"skipped {len(result.skipped)} undecodable image(s): {result.run_dir / 'skipped_images.tsv'}")
    say(f"model bundle: {result.bundle}")
    say(f"report:       {result.run_dir / 'report' / 'report.md'}")
    val = result.card.metrics.get("val")
    if val is not None:  # --select-on holdout: the summary above is the hold-out; val chose nothing
        coarse = f", coarse top-1 {val['coarse_top1']:.2%}" if val.get("coarse_top1") is not None else ""
        say(f"untouched val: top-1 {val['top1']:.2%}{coarse}, macro F1 {val['macro_f1']:.2%} "
            f"({result.run_dir / 'report-val' / 'report.md'})")

