"""Build a product index from a catalogue: every photo of the chosen splits plus each catalogue photo."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.catalogue import Catalogue, CatalogueError, class_products
from .index import typed_value

if TYPE_CHECKING:
    from ..models.predictor import Model
    from .embeddings import EmbeddedImages
    from .index import VectorIndex

__all__ = ["BuildResult", "build_catalogue_index", "catalogue_records", "read_metadata_table"]


@dataclass(frozen=True)
class BuildResult:
    index: VectorIndex
    entries: int
    products: int
    failed: tuple[tuple[str, str], ...]  # (image, reason) skipped


def read_metadata_table(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A CSV with a `product_id` column plus any metadata columns (in_stock, price, ...), each cell typed by
    `typed_value` (true/false, numbers; "0012345" stays text; spaces around a cell dropped), as `--filter` types
    what it is compared with. A UTF-8 BOM and spaces around the column names are ignored; blank cells are left out."""
    p = Path(path)
    try:
        return _read_metadata_table(p)
    except UnicodeDecodeError:  # a binary file, another encoding
        from ..data.encoding import not_utf8

        raise CatalogueError(f"{p}: {not_utf8(p)}") from None
    except csv.Error as exc:  # NUL bytes, a runaway quoted field
        raise CatalogueError(f"{p}: not a CSV file ({exc})") from None
    except OSError as exc:  # missing, a folder, unreadable: named as --vocabulary's is
        raise CatalogueError(f"{p}: cannot read it ({exc.strerror or exc})") from None


def _read_metadata_table(p: Path) -> dict[str, dict[str, Any]]:
    with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f, strict=True)  # a quote left open: an error, not rows swallowed
        if reader.fieldnames:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if not reader.fieldnames or "product_id" not in reader.fieldnames:
            raise CatalogueError(f"{p}: needs a 'product_id' column (got {reader.fieldnames})")
        twice = next((n for i, n in enumerate(reader.fieldnames) if n in reader.fieldnames[:i]), None)
        if twice is not None:  # the last cell won, silently (a manifest refuses such a header too)
            raise CatalogueError(f"{p}: header: column {twice!r} is named twice")
        from .index import _check_metadata

        # the column names are metadata keys (filter fields): checked here, naming the file, not a photo later
        _check_metadata({k: "" for k in reader.fieldnames if k != "product_id"}, f"{p}: header")
        out: dict[str, dict[str, Any]] = {}
        first: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            if row.get(None):  # type: ignore[call-overload]  # DictReader's restkey: cells past the header
                raise CatalogueError(f"{p}:{line}: more cells than the header has columns")
            pid = (row.pop("product_id") or "").strip()
            if not pid:
                raise CatalogueError(f"{p}:{line}: empty product_id")
            if pid in first:  # two rows for one product: which one holds is not for the file's order to decide
                raise CatalogueError(f"{p}:{line}: product {pid!r} again (first on line {first[pid]})")
            first[pid] = line
            out[pid] = {k: typed_value(v) for k, v in row.items() if k and v is not None and v.strip()}
    return out


def catalogue_records(cat: Catalogue, *, splits: Sequence[str] = ("train",), catalogue_photos: bool = True,
                      metadata: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[list[Any], list[Path]]:
    """Index records and their image paths: one per photo; ids are paths relative to the catalogue root. A
    product's title and text are its sheet's, else its photos' listing text (a manifest's title/text columns),
    else its label's words (`class_products`, as the service's products)."""
    from .index import IndexRecord
    from .text_tune import catalogue_text

    products = class_products(cat)
    metadata = metadata or {}
    records, paths = [], []
    seen: set[Path] = set()

    def add(path: Path, label: str, coarse: str | None) -> None:
        if path.resolve() in seen:  # a catalogue photo that is also a listed photo is indexed once
            return
        seen.add(path.resolve())
        prod = products.get(label)
        rid = str(path)
        # relative to the root as written first: split folders that are symbolic links (which catalogues may
        # be) resolve outside the root, and the id would become an absolute path
        for inside, root in ((Path(os.path.abspath(path)), Path(os.path.abspath(cat.root))),
                             (path.resolve(), cat.root.resolve())):
            if inside.is_relative_to(root):
                rid = inside.relative_to(root).as_posix()
                break
        records.append(IndexRecord(
            id=rid, product_id=label, label=label, coarse_label=coarse or cat.hierarchy.get(label),
            title=prod.title if prod else label.replace("-", " "),
            text=catalogue_text(prod) if prod else "",
            image=str(path), metadata=dict(metadata.get(label, {}))))
        paths.append(path)

    for split in splits:
        for s in cat.split(split):
            add(s.path, s.label, s.coarse_label)
    if catalogue_photos:
        for label, prod in cat.products.items():
            if prod.image is not None and Path(prod.image).is_file():
                add(Path(prod.image), label, prod.coarse_label)
    unknown = sorted(set(metadata) - {r.product_id for r in records})
    if unknown:
        raise CatalogueError(f"metadata for unknown product(s): {', '.join(unknown[:5])}")
    return records, paths


def build_catalogue_index(model: Model, cat: Catalogue, path: str, *, backend: str = "faiss",
                          splits: Sequence[str] = ("train",), catalogue_photos: bool = True,
                          metadata: Mapping[str, Mapping[str, Any]] | None = None, progress: bool = False,
                          batch_size: int = 32, embed: Callable[[Sequence[Path]], EmbeddedImages] | None = None,
                          **options: Any) -> BuildResult:
    """Embed the catalogue's photos with `model` and write them into a new index at `path`.

    embed: computes the embeddings of the photos elsewhere (e.g. on a Ray cluster, `skulens.deploy.ray_jobs`);
    the index is still written here, by this process: the index backends are not distributed writers.

    An existing index (without `overwrite`) and records Milvus cannot hold are refused before the embedding; no
    photo that decodes is refused after it, before anything is written (CatalogueError).
    FAISS keeps the old index until the new one is saved; Milvus `overwrite` replaces the collection when the
    photos are embedded, so a server error while inserting leaves it partly filled: to keep the old one live
    meanwhile, build into another `collection` and switch to it.
    """
    from .embeddings import embed_paths
    from .index import IndexStoreError, create_index

    records, paths = catalogue_records(cat, splits=splits, catalogue_photos=catalogue_photos, metadata=metadata)
    if not records:
        raise CatalogueError(f"{cat.root}: no images to index in split(s) {', '.join(splits)}")
    dim = model.card.embedding_dim
    # Everything that can refuse the build is asked before the embedding, which can take hours.
    early = None
    if backend == "faiss":  # a FAISS index writes nothing until it is saved: safe to create first
        early = create_index(backend, path, dim, **options)
    elif backend == "milvus":
        from ._milvus import MilvusIndex, check_record_lengths, split_location

        for r in records:  # before --overwrite drops the old collection, not after
            check_record_lengths(r)
        where = {k: options[k] for k in ("collection", "token") if k in options}
        if not options.get("overwrite") and MilvusIndex.exists(path, **where):
            named = split_location(path, where.get("collection"))[1]  # LOCATION#NAME too: it said 'skulens'
            raise IndexStoreError(f"{path}: collection {named!r} already exists "
                                  "(open it, or replace it: --overwrite, overwrite=True in Python)")
    emb = embed(paths) if embed is not None else embed_paths(model, paths, batch_size=batch_size, progress=progress)
    if not emb.kept:  # before anything is written: --overwrite must not replace an index with an empty one
        first = f" (e.g. {emb.failed[0][0]}: {emb.failed[0][1]})" if emb.failed else ""
        kept = "the existing index is left as it was" if options.get("overwrite") else "no index written"
        raise CatalogueError(f"{cat.root}: none of the {len(paths)} image(s) could be read{first}; {kept}")
    index = early if early is not None else create_index(backend, path, dim, **options)
    index.add([records[i] for i in emb.kept], emb.vectors.reshape(len(emb.kept), dim))
    index.save()
    return BuildResult(index, len(emb.kept), len({records[i].product_id for i in emb.kept}), tuple(emb.failed))
