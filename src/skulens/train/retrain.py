"""`skulens retrain`: fold enrolled products and newly labelled photos into a normal fine-tune.

The run starts from the last bundle (backbone and known head rows, see warm.py) and trains on the
original catalogue plus (a) the photos kept by `skulens enroll` and (b) any extra labelled
catalogues (e.g. the corrected review queue of inventory intake). Val stays the original val, so the
new bundle is measured on the same photos as the old one.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import REMOVED_KEYS, ConfigError, resolve_config, warn_unused
from ..data.catalogue import Catalogue, Product, Sample, load_catalogue, merge_samples
from ..data.image_list import walk_images
from ..evaluate.heldout import card_catalogue, split_settings
from ..models.bundle import atomic_write_text, bundle_folder, read_card
from ..models.card import ModelCard
from ..models.swap import CARD

__all__ = ["merge_samples", "retrain", "retrain_catalogue", "retrain_extra"]

log = logging.getLogger(__name__)


def _enrolled_samples(bundle: Path) -> tuple[list[Sample], dict[str, Product]]:
    card = read_card(bundle)
    samples, products = [], {}
    for e in card.enrolled:
        for rel in e.get("photos", ()):
            p = (bundle / rel).resolve()
            if p.is_file():
                samples.append(Sample(p, e["label"], e.get("coarse_label")))
        products[e["label"]] = Product(e["label"], e.get("coarse_label"), e.get("title", ""), e.get("text", ""))
    return samples, products


def retrain_source(bundle: str | os.PathLike, data: str | os.PathLike | None = None) -> str:
    """The catalogue a retrain reads: `data`, else the path the bundle's run was given (a manifest file keeps its
    name; cards before session 24 record its folder as the dataset path)."""
    card = read_card(bundle)
    tc = card.train_config
    recorded = tc.get("data") if tc.get("data") and Path(tc["data"]).exists() else card.dataset.get("path")
    source = data or recorded
    if not source or not Path(source).exists():
        raise ConfigError(f"the data {bundle} was trained on ({source!r}) is not here: pass --data PATH")
    return os.path.abspath(source)


def _refuse_new_products_without_coarse(cat: Catalogue, samples: Sequence[Sample], source: str | os.PathLike, *,
                                        enrolled: set[str]) -> None:
    """A model with coarse classes needs each new product's: "new product(s) without a coarse label" said neither
    which --extra brought it nor how to give one (a folder of photos, or a filled-in suggest-labels manifest, has
    no coarse column)."""
    if not cat.hierarchy:
        return
    # an enrolled product has its coarse class in the card (the inventory's labelled folder gives none)
    bare = sorted({s.label for s in samples if s.label not in cat.classes and s.label not in enrolled
                   and not s.coarse_label})
    if bare:
        coarse = ", ".join(sorted(set(cat.hierarchy.values()))[:6])
        raise ConfigError(f"--extra {source}: new product(s) {', '.join(bare[:5])} have no coarse class, which this "
                          f"model's products all have ({coarse}, ...): give --extra a manifest CSV with a "
                          "coarse_label column (path,label,coarse_label; paths relative to the CSV)")


def retrain_catalogue(bundle: str | os.PathLike, data: str | os.PathLike | None = None,
                      extra: Sequence[str | os.PathLike] = ()) -> Catalogue:
    """The catalogue a retrain uses: the bundle's training data + its enrolled photos + extra catalogues."""
    bundle = Path(bundle)
    card = read_card(bundle)
    # the same generated val (its fraction and seed), so val stays the photos the bundle never trained on
    cat = card_catalogue(retrain_source(bundle, data), card)
    samples, products = _enrolled_samples(bundle)
    extra_samples: list[Sample] = []
    for path in extra:
        if _holds_no_photo(Path(path)):  # an inventory's labelled folder whose every photo was erased
            log.warning("retrain: --extra %s holds no photo now (no manifest, no image file): nothing is added "
                        "from it", path)
            continue
        more = load_catalogue(path, val_fraction=0.0)
        added = [s if s.coarse_label or not more.hierarchy else replace(s, coarse_label=more.hierarchy.get(s.label))
                 for split in more.splits.values() for s in split]
        _refuse_new_products_without_coarse(cat, added, path, enrolled={s.label for s in samples})
        extra_samples += added
    merged = merge_samples(cat, samples + _new_photos(cat, extra_samples), products)
    have = {s.label for s in merged.split("train")}
    bare = [label for label in products if label not in have]
    if bare:  # a clearer word than the engine's "class with no training photo" for where it comes from
        raise ConfigError(f"enrolled without kept photos, so a retrain has nothing to learn them from: "
                          f"{', '.join(bare[:5])}{' ...' if len(bare) > 5 else ''}; give labelled photos of them "
                          "with --extra, or `skulens unenroll` them (the service keeps enrolment photos only with "
                          "--keep-uploads)")
    return merged


def _holds_no_photo(path: Path) -> bool:
    """A folder with no manifest and no image name at any depth (empty class folders left by erasures; a broken
    link to a photo is a photo gone, which loading the catalogue names)."""
    if not path.is_dir() or any(path.glob("manifest.*")):
        return False
    return next(walk_images(path), None) is None  # the catalogue's own walk: linked class folders count


def _new_photos(cat: Catalogue, extra: list[Sample]) -> list[Sample]:
    """The --extra photos that are not the catalogue's own, each once. A val (or test) photo labelled again and
    trained on would inflate the very scores the retrain is judged by; a train photo is trained on already (the
    folder `skulens suggest-labels` filled in may hold both)."""
    own = {s.path.resolve(): name for name, split in cat.splits.items() for s in split}
    kept: dict[Path, Sample] = {}
    for s in extra:
        kept.setdefault(s.path.resolve(), s)
    ours = Counter(own[p] for p in kept if p in own)
    if ours:
        log.warning("retrain --extra: %s of the catalogue's own photos left out (they keep their split and label)",
                    ", ".join(f"{n} {name}" for name, n in sorted(ours.items())))
    if len(kept) < len(extra):
        log.warning("retrain --extra: %d photo(s) given twice, taken once", len(extra) - len(kept))
    return [s for p, s in kept.items() if p not in own]


def retrain(bundle: str | os.PathLike, *, out: str, data: str | os.PathLike | None = None,
            extra: str | os.PathLike | Sequence[str | os.PathLike] = (), progress: bool = True, **overrides: Any):
    """Fine-tune again from `bundle` on its data plus what was enrolled or labelled since; returns TrainResult.
    `extra`: one more labelled catalogue, or a list of them."""
    from .engine import fit

    if isinstance(extra, (str, os.PathLike)):  # one path: it was read letter by letter ("/": no train/ there)
        extra = [extra]
    if "init_from" in overrides:  # it was overwritten silently
        raise ConfigError("init_from: a retrain starts from its bundle; pass that one as the bundle")
    card = read_card(bundle)
    source_folder = Path(bundle_folder(bundle)).resolve()
    if Path(out).resolve().is_relative_to(source_folder):  # its run (bundle/, report/, config) went in there
        raise ConfigError(f"--out {out} is inside the bundle it retrains ({bundle}): choose a new run folder")
    split = {"val_fraction": 0.1, "seed": 0, **split_settings(card)}
    changed = [k for k in split if k in overrides and overrides[k] != split[k]]
    if changed and card.dataset.get("val_generated"):
        # The retrain splits as the bundle's run did (`retrain_catalogue`) but would record the new values, and
        # `evaluate` would then carve another val out of train: photos this model trained on.
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in changed)}: a retrain keeps the val its "
                          f"bundle's run carved out of train ({', '.join(f'{k} {v}' for k, v in split.items())}), "
                          "so that val stays photos the model never trained on; drop it, or train anew")
    source = retrain_source(bundle, data)  # a manifest file, not its folder (which may hold another manifest)
    extra = retrain_extra(bundle, extra)
    cat = retrain_catalogue(bundle, source, extra)
    # The recorded config, less this run's own keys and keys removed since that run was trained.
    # A recorded teacher (a distilled or self-trained bundle) is not distilled from again: it does not know
    # the products enrolled since, and the retrain learns from labels.
    # weights, head_init: the bundle's backbone and heads are the start (its run's ImageNet or random start, or
    # its linear probe, is long gone)
    skip = {"resume", "out", "init_from", "data", "teacher", "unlabeled", "weights", "head_init", "pseudo_rounds",
            "pseudo_precision", *REMOVED_KEYS}
    values = {k: v for k, v in card.train_config.items() if k not in skip}
    values.update({"baseline": False, **overrides, "out": out, "init_from": str(bundle), "data": source})
    # what resumes it: this retrain again (config.yaml records neither --extra nor the enrolled photos, so
    # `train --config RUN/config.yaml --resume` met a catalogue without them and was refused)
    again = " ".join(["skulens retrain --model", shlex.quote(str(bundle)), *(f"--extra {shlex.quote(e)}" for e in extra),
                      "--out", shlex.quote(str(out))] + (["--data", shlex.quote(str(data))] if data else [])
                     + _as_flags(overrides))  # its settings too: without them a --resume was another run
    advice = f"{again} --resume"
    cfg = resolve_config(values)
    warn_unused(cfg)
    result = fit(cfg, catalogue=cat, progress=progress,
                 resume_advice=f"{advice} (with the options it was started with)")
    if os.environ.get("RANK", "0") in ("", "0"):  # rank 0 writes, as for the rest of the bundle
        result = replace(result, card=_carry_enrolled(Path(bundle), result.bundle, extra))
        _say_what_reproduces(Path(out) / "config.yaml", again, extra)
    return result


def _as_flags(values: dict[str, Any]) -> list[str]:
    """TrainConfig settings as the CLI's flags (`--epochs 2`, `--ema` / `--no-ema`), in their order."""
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            flags += [flag, shlex.quote(",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))]
    return flags


def _say_what_reproduces(config_file: Path, command: str, extra: Sequence[str]) -> None:
    """A retrain's config.yaml names the catalogue alone: fed to `skulens train --config`, it trained without the
    extra catalogues and the enrolled products (dropped, the warning advising a flag train lacks). Its head says
    so, in YAML comments that the config reader skips."""
    if not config_file.is_file():
        return
    text = config_file.read_text(encoding="utf-8")
    lines = ["# Written by `skulens retrain`: this file names the catalogue alone"
             + (f" (not the extra catalogue(s) {', '.join(extra)} nor" if extra else " (not")
             + " the bundle's enrolled products' photos).", f"# Made by: {command} (another --out for a new run like it)", ""]
    config_file.write_text("\n".join(lines) + text, encoding="utf-8")


def retrain_extra(bundle: str | os.PathLike, extra: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The extra catalogues of a retrain: those an earlier retrain of `bundle` recorded (the ones still there; a
    gone one is named in the log) and `extra`, each once, as absolute paths."""
    recorded = read_card(bundle).dataset.get("extra") or []
    gone = [p for p in recorded if not Path(p).exists()]
    if gone:
        log.warning("retrain: the extra catalogue(s) %s an earlier retrain used are gone; their products leave "
                    "the model unless given again with --extra", ", ".join(gone))
    out: list[str] = []
    for path in [*[p for p in recorded if p not in gone], *extra]:
        path = os.path.abspath(path)
        if path not in out:
            out.append(path)
    return out


def _carry_enrolled(old: Path, new: Path, extra: Sequence[str] = ()) -> ModelCard:
    """The enrolled products' photos and card entries, and the extra catalogues, into the retrained bundle: its
    recorded data is the catalogue alone, so without them the next retrain would not know those products, and
    drop them unsaid."""
    card = read_card(new)
    entries = [e for e in read_card(old).enrolled if e["label"] in card.classes]
    if not entries and not extra:
        return card
    for e in entries:
        for rel in e.get("photos", ()):
            src, dst = old / rel, new / rel
            if src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    card = card.with_(enrolled=tuple(entries), dataset={**card.dataset, **({"extra": list(extra)} if extra else {})})
    atomic_write_text(new / CARD, card.to_json())
    return card
