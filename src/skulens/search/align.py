"""Text -> image alignment: a projection of sentence embeddings into a model's image-embedding space.

Trained CLIP-style (symmetric InfoNCE with a learned temperature) on catalogue pairs: each photo with
its product's name and description, plus the catalogue photos. The image side stays fixed (the
model's own L2-normalised embedding), so one vector index serves image *and* text queries: a text is
projected and searched like a photo. The text side is the bundled MiniLM, also fixed; only the
projection is learned, from a few hundred products' worth of pairs in seconds on a CPU (LiT-style:
locked towers, tuned alignment).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..models.text import DEFAULT_TEXT_MODEL, fitting_text_encoder, head_text_encoder, load_text_encoder

__all__ = ["ALIGN_FILE", "AlignConfig", "AlignerError", "TextAligner", "align_catalogue", "heads_on_other_text",
           "load_aligner", "product_sentences", "train_aligner"]

log = logging.getLogger(__name__)

ALIGN_FILE = "text_align.safetensors"
MODEL_FILE_SUFFIXES = (".onnx", ".tflite", ".pt")  # a model's exported files: never an aligner


@dataclass(frozen=True)
class AlignConfig:
    steps: int = 400
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    init_temperature: float = 0.07
    seed: int = 0


def product_sentences(title: str, description: str = "", info: str = "", *, max_sentences: int = 6) -> list[str]:
    """Several texts per product, so the projection learns from words, not from one string per class."""
    texts = [title]
    if description:
        texts.append(f"{title}. {description}")
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", description) if len(s.strip()) > 12]
        texts += [f"{title}: {s}" for s in sentences[:max_sentences]]
    for line in info.splitlines():
        if line.lower().startswith("title:"):
            texts.append(line.split(":", 1)[1].strip())
    return list(dict.fromkeys(t for t in texts if t))


def probe_photos() -> list[Any]:
    """Four fixed synthetic photos (seeded colour fields with bars): what an aligner's model embeds to be known
    again. Deterministic on every machine."""
    from PIL import Image

    rng = np.random.default_rng(20261206)
    out = []
    for _ in range(4):
        base = rng.integers(0, 256, (1, 1, 3)) * np.ones((96, 96, 3))
        for _ in range(6):
            x, y, w, h = rng.integers(0, 80, 4)
            base[y:y + h // 2 + 8, x:x + w // 2 + 8] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(base.astype(np.uint8)))
    return out


def probe_embeddings(model: Any) -> np.ndarray:
    return np.asarray(model.embed(probe_photos()), dtype=np.float32)


def probe_agreement(model: Any, probe: np.ndarray) -> float:
    """The mean cosine of `model`'s probe embeddings and `probe`, each in the numerics closer to it
    (`search.engine.cosines_to_stored`, as an index is checked against its model)."""
    from .engine import cosines_to_stored

    return float(cosines_to_stored(model, probe_photos(), probe).mean())


class TextAligner:
    """`encode(texts)` -> unit vectors in the image-embedding space of the model it was trained for.

    text_model: the sentence encoder it was fitted on: a name, or "bundle" for its bundle's fine-tuned encoder
    (`skulens text-tune`), whose `fingerprint` it keeps: after a new text-tune it refuses to run
    (TextEncoderMismatch) instead of projecting another encoder's vectors.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, temperature: float,
                 text_model: str = DEFAULT_TEXT_MODEL, info: dict | None = None, *,
                 fingerprint: str | None = None, bundle: str | os.PathLike | None = None,
                 probe: np.ndarray | None = None):
        self.weight = np.asarray(weight, dtype=np.float32)  # image_dim x text_dim
        # the image model's embeddings of PROBE_PHOTOS when it was fitted: which model's space it maps into
        self.probe = None if probe is None else np.asarray(probe, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.temperature = float(temperature)
        self.text_model = text_model
        self.info = dict(info or {})
        self.fingerprint = fingerprint
        self.bundle = bundle

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def project(self, text_vectors: np.ndarray) -> np.ndarray:
        z = np.asarray(text_vectors, dtype=np.float32) @ self.weight.T + self.bias
        return z / np.clip(np.linalg.norm(z, axis=1, keepdims=True), 1e-12, None)

    def check_model(self, model: Any) -> None:
        """AlignerError when `model` is not the image model this aligner was fitted for (its embeddings of the
        probe photos differ: cosine under `search.engine.SAME_MODEL_COSINE`). An aligner of another model mapped
        text into a space the index does not use: wrong rankings, without a word. An aligner written before probes
        were kept is not checked."""
        if self.probe is None or model is None or getattr(model, "card", None) is None:
            return
        from .engine import SAME_MODEL_COSINE

        if self.probe.shape[1] != model.card.embedding_dim:
            raise AlignerError(f"the text aligner maps into {self.probe.shape[1]}-d, the model embeds "
                               f"{model.card.embedding_dim}-d: run `skulens align` for this model")
        same = probe_agreement(model, self.probe)
        if same < SAME_MODEL_COSINE:
            # the advice names the model in use (it named the aligner's own bundle, for which it is right already)
            here = getattr(model, "path", None)
            raise AlignerError(f"the text aligner{f' of {self.bundle}' if self.bundle else ''} was fitted for another "
                               f"image model (its probe photos agree at cosine {same:.2f} < {SAME_MODEL_COSINE}): "
                               f"run `skulens align --model {here or 'BUNDLE'}` to fit one for this model"
                               + ("" if here else " (the bundle this model was loaded from)"))

    def for_model(self, model: Any, where: str) -> TextAligner | None:
        """This aligner, or None with a warning when it was fitted for another image model (`check_model`):
        `where` goes on without it (text search without the image-space part)."""
        try:
            self.check_model(model)
        except AlignerError as exc:
            log.warning("%s; %s goes on without it", exc, where)
            return None
        return self

    def text_encoder(self) -> Any:
        return head_text_encoder(self.bundle, self.text_model, self.fingerprint, what="the text aligner",
                                 refit=f"skulens align --model {self.bundle or 'BUNDLE'}")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.project(self.text_encoder().encode(texts))

    def save(self, path: str | os.PathLike) -> Path:
        """Into a bundle folder (as text_align.safetensors) or to a .safetensors file; atomic."""
        import torch

        from ..models.bundle import atomic_save_tensors

        p = Path(path)
        if p.is_dir():
            p = p / ALIGN_FILE
        meta = {"temperature": str(self.temperature), "text_model": self.text_model, "info": json.dumps(self.info)}
        if self.fingerprint:
            meta["text_fingerprint"] = self.fingerprint
        arrays = {"weight": self.weight, "bias": self.bias, **({"probe": self.probe} if self.probe is not None else {})}
        atomic_save_tensors({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, p, metadata=meta)
        return p


class AlignerError(ValueError):
    """A text aligner file that cannot be read (torn, or not one): the message names it and the fix."""


def load_aligner(path: str | os.PathLike, *, bundle: str | os.PathLike | None = None) -> TextAligner | None:
    """The aligner in a bundle folder or file; None if the bundle has none (text search is then off).

    bundle: the model bundle it serves (whose fine-tuned text encoder it may read); default: `path` itself when
    it is a folder, else the file's folder (an aligner written with `skulens align --out` elsewhere needs it).
    """
    from safetensors import safe_open

    p = Path(path)
    if p.is_file() and (p.name in ("card.json", "model.safetensors") or p.suffix.lower() in MODEL_FILE_SUFFIXES):
        p = p.parent  # a bundle named by its card, weights or an exported file, as --model takes them
    if p.is_dir():
        p = p / ALIGN_FILE
    if not p.is_file():
        return None
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
            probe = f.get_tensor("probe") if "probe" in set(f.keys()) else None
        temperature, info = float(meta.get("temperature", 0.07)), json.loads(meta.get("info", "{}"))
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file, whatever safetensors or json says of it
        raise AlignerError(f"{p}: not a readable text aligner ({type(exc).__name__}: {str(exc)[:200]}); run "
                           "`skulens align` again to rewrite it") from None
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise AlignerError(f"{p}: not a text aligner (weight {weight.shape}, bias {bias.shape}); run `skulens align` "
                           "again to rewrite it")
    return TextAligner(weight, bias, temperature, meta.get("text_model", DEFAULT_TEXT_MODEL), info,
                       fingerprint=meta.get("text_fingerprint"), bundle=bundle if bundle is not None else p.parent,
                       probe=probe)


def train_aligner(image_vectors: np.ndarray, image_products: Sequence[int], product_texts: Sequence[Sequence[str]],
                  *, config: AlignConfig = AlignConfig(), text_model: str = DEFAULT_TEXT_MODEL,
                  bundle: str | os.PathLike | None = None, progress: bool = False) -> TextAligner:
    """Fit the projection on (image, product) pairs and several texts per product.

    bundle: the model bundle the aligner is for; its fine-tuned text encoder (`skulens text-tune`), when it
    has one and `text_model` is the default, is the one fitted on.

    image_vectors: N x D unit vectors; image_products: product index of each row; product_texts[p]: the
    texts of product p. Each step draws a batch of images and one text per product, and minimises the
    symmetric InfoNCE over products (images of the same product are all positives of its text).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import trange

    y = np.asarray(image_products, dtype=np.int64)
    n_products = len(product_texts)
    if len(y) != len(image_vectors) or not len(y):
        raise ValueError("need one product index per image vector, and at least one image")
    if y.min() < 0 or y.max() >= n_products:
        raise ValueError(f"product index out of range 0..{n_products - 1}")
    if any(not texts for texts in product_texts):
        raise ValueError("every product needs at least one text")
    if len(np.unique(y)) < 2:
        raise ValueError("alignment needs images of at least two products")
    flat = [t for texts in product_texts for t in texts]
    owner = np.repeat(np.arange(n_products), [len(t) for t in product_texts])
    if bundle is not None and text_model == DEFAULT_TEXT_MODEL:
        encoder, text_model, fingerprint = fitting_text_encoder(bundle)
    else:
        encoder, fingerprint = load_text_encoder(text_model), None
    text_vecs = torch.from_numpy(encoder.encode(flat))
    images = torch.from_numpy(np.asarray(image_vectors, dtype=np.float32))
    labels = torch.from_numpy(y)

    g = torch.Generator().manual_seed(config.seed)
    proj = torch.nn.Linear(text_vecs.shape[1], images.shape[1])
    torch.nn.init.normal_(proj.weight, std=text_vecs.shape[1] ** -0.5, generator=g)
    torch.nn.init.zeros_(proj.bias)
    log_t = torch.nn.Parameter(torch.tensor(float(np.log(config.init_temperature))))
    opt = torch.optim.AdamW([*proj.parameters(), log_t], lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    by_product = [np.flatnonzero(owner == p) for p in range(n_products)]
    rng = np.random.default_rng(config.seed)
    for _ in trange(config.steps, desc="align", disable=not progress, leave=False):
        batch = torch.from_numpy(rng.choice(len(images), size=min(config.batch_size, len(images)), replace=False))
        pick = torch.from_numpy(np.array([rng.choice(ix) for ix in by_product]))
        t = F.normalize(proj(text_vecs[pick]), dim=-1)  # one text per product
        logits = images[batch] @ t.T / log_t.exp().clamp(min=0.01)
        yb = labels[batch]
        loss_i2t = F.cross_entropy(logits, yb)
        present = torch.unique(yb)
        target = (yb[None, :] == present[:, None]).float()  # text -> all its images in the batch
        loss_t2i = -(target / target.sum(1, keepdim=True) * logits.T[present].log_softmax(-1)).sum(1).mean()
        loss = 0.5 * (loss_i2t + loss_t2i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    info = {"products": n_products, "images": len(images), "texts": len(flat), "final_loss": float(loss.item()),
            "config": config.__dict__, "text_encoder": "fine-tuned" if fingerprint else text_model}
    return TextAligner(proj.weight.detach().numpy(), proj.bias.detach().numpy(), float(log_t.exp().item()), text_model,
                       info, fingerprint=fingerprint, bundle=bundle)


def align_catalogue(model: Any, cat: Any, *, splits: Sequence[str] = ("train",), steps: int = 400,
                    progress: bool = True) -> tuple[TextAligner, int, int]:
    """Learn the text -> image alignment for a model from a catalogue's photos (plus its catalogue photos)
    and product texts. Returns the aligner, the number of products and of photos it learned from."""
    from ..data.catalogue import CatalogueError
    from .catalogue_index import catalogue_records
    from .embeddings import embed_paths

    if not any(p.has_text for p in cat.products.values()):  # none, or a products.csv of labels alone
        raise CatalogueError(f"{cat.root} has no product texts (titles/descriptions) to align with")
    records, paths = catalogue_records(cat, splits=splits, catalogue_photos=True)
    emb = embed_paths(model, paths, progress=progress)
    labels = sorted({records[i].product_id for i in emb.kept} & set(cat.products))
    index = {p: i for i, p in enumerate(labels)}
    rows = [j for j, i in enumerate(emb.kept) if records[i].product_id in index]
    y = [index[records[emb.kept[j]].product_id] for j in rows]
    texts = [product_sentences(cat.products[p].title, cat.products[p].description, cat.products[p].info)
             for p in labels]
    aligner = train_aligner(emb.vectors[rows], y, texts, config=AlignConfig(steps=steps), progress=progress,
                            bundle=getattr(model, "path", None))
    aligner.probe = probe_embeddings(model)  # which model's space: checked where the aligner meets a model
    return aligner, len(labels), len(rows)


def heads_on_other_text(bundle: str | os.PathLike[str]) -> list[str]:
    """The bundle's text heads (the aligner of `skulens align`, the fusion head of `skulens fuse`) that were fitted
    on another text encoder than the bundle's current one: after a text-tune they must be fitted again to use
    it (one fitted on an earlier fine-tuned encoder refuses to run until then)."""
    from ..models.fusion import load_fusion
    from ..models.text import BUNDLE_TEXT_MODEL, bundle_text_model, text_fingerprint

    if Path(bundle).is_file():  # card.json or model.safetensors may name the bundle
        bundle = Path(bundle).parent
    tuned = bundle_text_model(bundle)
    current = (BUNDLE_TEXT_MODEL, text_fingerprint(tuned)) if tuned else (DEFAULT_TEXT_MODEL, None)
    out = []
    aligner = load_aligner(bundle)
    if aligner is not None and (aligner.text_model, aligner.fingerprint) != current:
        out.append("align")
    fusion = load_fusion(bundle)
    if fusion is not None and (fusion.text_model, fusion.text_fingerprint) != current:
        out.append("fuse")
    return out
