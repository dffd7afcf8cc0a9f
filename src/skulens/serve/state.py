"""What a running service holds: the model (and the product detector, when configured) behind its
micro-batcher, the inventory store and its writer, the support responder, and (when configured) the search
and recommendation back-ends.

Everything is loaded once, at startup; request handlers only borrow it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from ..config import ConfigError
from ..data.catalogue import Product
from ..data.decode import decode_image
from ..models.card import enrolled_products, model_products
from .batching import MicroBatcher
from .intake import count_shelf
from .inventory import IntakePhoto, IntakeResult, InventoryStore, ShelfPhoto, storage_error
from .metrics import ServiceMetrics
from .people import People
from .privacy import load_pseudonymizer
from .settings import ServeSettings, read_tag_vocabulary

if TYPE_CHECKING:
    from ..detect.count import PhotoCount
    from ..detect.detector import Detector
    from ..models.predictor import Model, Prediction
    from ..search.tags import ListingTags, Tagger, Vocabulary
    from .support import SupportResponder

__all__ = ["Recognizer", "ServiceState"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DECODE_SLOTS = max(2, min(4, os.cpu_count() or 1))  # threads that decode uploads (Recognizer.in_decoder)


@dataclass(frozen=True)
class _Job:
    kind: str  # predict | embed | explain | count | tag
    image: Image.Image
    top_k: int = 5
    min_confidence: float = 0.0
    target: str | None = None  # explain: the class to explain (None: the predicted one)
    vocabulary: Vocabulary | None = None  # tag: the encoded phrases (None: no vocabulary tags)
    min_score: float | None = None  # tag: the score a phrase needs (None: the mode's default)


class Recognizer:
    """The model behind a micro-batcher: `await predict(image)` / `await embed(image)` from any request;
    concurrent requests share forward passes, which run on one inference thread. With a detector,
    `await count(image)` finds and names every product of a shelf photo on that same thread."""

    def __init__(self, model: Model, settings: ServeSettings, metrics: ServiceMetrics,
                 detector: Detector | None = None):
        self.model, self.settings, self.detector = model, settings, detector
        self.tagger: Tagger | None = None  # listing tags: set by ServiceState (its products, the bundle's aligner)
        self.batcher: MicroBatcher[_Job, Any] = MicroBatcher(
            self._run, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000,
            queue_size=settings.queue_size, on_batch=metrics.observe_batch)
        metrics.track_queue(lambda: self.batcher.depth)
        # Uploads are decoded on DECODE_SLOTS threads of their own, over all requests. Only a JPEG decodes at a
        # reduced scale: a PNG, WebP or TIFF is decoded whole before it is shrunk (up to max_pixels: ~120 MB at
        # 40 MP), and one intake of 32 small 36 MP PNGs (117 kB each) decoded them all at once (4.3 GB). Few
        # threads, not only few at a time: glibc keeps what each thread freed for that thread, so 16 such PNGs
        # decoded two at a time on the request threads still held +1.6 GB, and +0.4 GB on two threads of their own.
        self._decoder = ThreadPoolExecutor(max_workers=DECODE_SLOTS, thread_name_prefix="skulens-decode")

    def decode(self, data: bytes, *, full: bool = False) -> Image.Image:
        """Bytes -> RGB at the size the model needs, or (`full`, for the detector) at the photo's own size
        (ImageDecodeError for anything else). Blocks: from a request, `await in_decoder(decode, data)`."""
        reduce_to = None if full else self.model.card.resize_to
        pil = decode_image(data, max_pixels=self.settings.max_pixels, reduce_to=reduce_to)
        if full and self.detector is not None:  # refused here, not inside a batch it would fail for everyone
            from ..detect.detector import check_detectable

            check_detectable(pil.size, self.detector.config, "upload")
        return pil

    async def in_decoder(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """`fn(*args, **kwargs)` on the decoding threads: what decodes an upload (`decode`, and the photo kept for
        review, decoded again whole to be re-encoded)."""
        return await asyncio.get_running_loop().run_in_executor(self._decoder, partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._decoder.shutdown(wait=True)

    def _run(self, jobs: list[_Job]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            if job.kind == "explain":  # Grad-CAM hooks the network: on this thread, between batches
                from ..evaluate.explain import explain

                try:
                    out[i] = explain(self.model, job.image, target=job.target)
                except (ValueError, KeyError) as exc:  # an unknown target class
                    out[i] = exc
            elif job.kind == "count":  # a shelf photo: its own detector pass, and one classifier batch of crops
                assert self.detector is not None
                try:  # its own failure only: not the predict/embed/tag requests batched with it
                    out[i] = count_shelf(self.detector, self.model, job.image,
                                         threshold=self.settings.review_threshold,
                                         min_score=self.settings.detector_min_score, tiles=self.settings.detector_tiles)
                except Exception as exc:  # noqa: BLE001 - handed back in its slot, as explain's are; raised there
                    out[i] = exc
        for kind in ("predict", "embed", "tag"):
            idx = [i for i, j in enumerate(jobs) if j.kind == kind]
            if not idx:
                continue
            if kind == "tag":  # one forward pass; each request keeps its own vocabulary, top-k and floor
                assert self.tagger is not None
                batch = [jobs[i] for i in idx]
                results: Any = self.tagger.tag([j.image for j in batch], vocabulary=[j.vocabulary for j in batch],
                                               top_k=[j.top_k for j in batch],
                                               min_score=[j.min_score for j in batch], batch_size=len(batch))
            elif kind == "predict":  # one forward pass; each request keeps its own top-k and abstention
                batch = [jobs[i] for i in idx]
                results = self.model.predict([j.image for j in batch], top_k=[j.top_k for j in batch],
                                                  min_confidence=[j.min_confidence for j in batch],
                                                  batch_size=len(batch))
            else:  # the coarse probabilities come with the embedding, for routed searches
                vectors, coarse = self.model.embed_with_coarse([jobs[i].image for i in idx], batch_size=len(idx))
                results = [(v, None if coarse is None else coarse[row]) for row, v in enumerate(vectors)]
            for row, i in enumerate(idx):
                out[i] = results[row]
        return out

    async def predict(self, image: Image.Image, *, top_k: int = 5, min_confidence: float = 0.0) -> Prediction:
        return await self.batcher.submit(_Job("predict", image, top_k, min_confidence),
                                         timeout=self.settings.request_timeout_s)

    async def explain(self, image: Image.Image, target: str | None = None) -> Any:
        """Grad-CAM for one photo (an Explanation), or the ValueError for an unknown target."""
        return await self.batcher.submit(_Job("explain", image, target=target), timeout=self.settings.request_timeout_s)

    async def tag(self, image: Image.Image, *, vocabulary: Vocabulary | None = None, top_k: int = 5,
                  min_score: float | None = None) -> ListingTags:
        """Listing tags for one photo; `vocabulary` encoded beforehand (`tagger.vocabulary`, off this thread)."""
        return await self.batcher.submit(_Job("tag", image, top_k, vocabulary=vocabulary, min_score=min_score),
                                         timeout=self.settings.request_timeout_s)

    async def embed(self, image: Image.Image) -> np.ndarray:
        return (await self.embed_with_coarse(image))[0]

    async def embed_with_coarse(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        """The embedding and the coarse-class probabilities (None without coarse classes), for routing."""
        return await self.batcher.submit(_Job("embed", image), timeout=self.settings.request_timeout_s)

    async def count(self, image: Image.Image) -> PhotoCount:
        """Every product in a shelf photo (decoded with `full=True`): boxes, names, counts."""
        result = await self.batcher.submit(_Job("count", image), timeout=self.settings.request_timeout_s)
        if isinstance(result, Exception):
            raise result
        return result


@dataclass(frozen=True)
class _Intake:
    photos: list[IntakePhoto | ShelfPhoto]
    actor: str


class ServiceState:
    """Built by `ServiceState.load(settings)` (slow: the model, the catalogue, MiniLM), then `start()`ed on
    the event loop and `stop()`ped at shutdown."""

    def __init__(self, settings: ServeSettings, model: Model, *, products: dict[str, Product] | None = None,
                 responder: SupportResponder | None = None, support_error: str | None = None,
                 search: Any = None, recommender: Any = None, detector: Detector | None = None,
                 fit_recommender: Callable[[list[Any]], Any] | None = None):
        self.settings, self.model = settings, model
        self.metrics = ServiceMetrics()
        self.recognizer = Recognizer(model, settings, self.metrics, detector)
        self.products = products or {}
        self.responder, self.support_error = responder, support_error
        self.search = search
        # Shelf photos decoded at full size at once, over all requests (memory: see routers.inventory).
        self.shelf_slots = asyncio.Semaphore(2)
        # The vector index is not thread-safe: every use (search, CRUD, enrolment) holds this lock.
        self.index_lock = threading.Lock()
        self._index_warned_at = -math.inf  # product_image: when an index failure was last logged
        self._model_lock = threading.Lock()
        self.store: InventoryStore | None = None
        self.writer: MicroBatcher[_Intake, list[IntakeResult] | Exception] | None = None
        if settings.db:
            self.store = InventoryStore(settings.db, labelled_dir=settings.labelled_path)
            # Intake from concurrent requests commits together: one transaction per batch, not per photo (a
            # request that fails it is written again alone, as is every other: see `intake_batches`).
            self.writer = MicroBatcher(self._write_intake, max_batch=64, max_wait_s=0.005,
                                       queue_size=settings.queue_size)
            if responder is not None:
                responder.stock = self.store.count
        store_dirs = (self.store.photo_dir, self.store.labelled_dir) if self.store is not None else ()
        self.people = People(store=self.store, events_csv=settings.events, fit=fit_recommender,
                             pseudonym=load_pseudonymizer(settings.pseudonym_key_file, data_dirs=store_dirs,
                                                          data_files=(getattr(self.store, "path", None),
                                                                      settings.events)),
                             refit_s=settings.recommend_refit_s, retention_days=settings.upload_retention_days)
        self.people.recommender = recommender
        self.started_at = time.time()
        self.loading_s: float | None = None  # ServiceState.load: model, catalogue, index, text encoder
        self.warming = False
        self.startup: dict[str, Any] = {}  # warm-up report and start-up times, for /readyz and the log
        self.recognizer.tagger = _tagger(model, self.products)
        self.tag_vocabulary: tuple[str, ...] | None = None  # --tag-vocabulary: for requests that send none

    @classmethod
    def load(cls, settings: ServeSettings, model: Model | None = None) -> ServiceState:
        from ..models.predictor import load_model as load

        t0 = time.time()
        detector = _load_detector(settings) if settings.detector else None  # a bad folder fails before the model
        if model is None:
            model = load(settings.model, device=settings.device, backend=settings.backend,
                         precision=settings.precision)
        products, responder, error = _load_support(settings, model)
        search = _load_search(settings, model) if settings.index else None
        if search is not None:
            # products known only to the index (other catalogues), and the enrolled ones: their index records
            # hold the title and text as PATCHed since the enrolment (a catalogue product's sheet is read again)
            enrolled, seen = set(enrolled_products(model.card)), set()
            for r in search.index.records():
                if r.product_id in seen or (r.product_id in products and r.product_id not in enrolled):
                    continue
                seen.add(r.product_id)
                known = products.get(r.product_id)
                products[r.product_id] = Product(
                    label=r.product_id, coarse_label=r.coarse_label or (known.coarse_label if known else None),
                    title=r.title or (known.title if known else "") or r.product_id,
                    description=r.text or (known.description if known else ""),
                    image=r.image and Path(r.image))
        fit = _recommender_fit(model, products) if settings.events or settings.db else None
        if responder is not None:
            responder.products = products
        state = cls(settings, model, products=products, responder=responder, support_error=error, search=search,
                    detector=detector, fit_recommender=fit)
        if settings.tag_vocabulary:
            state.tag_vocabulary = _load_tag_vocabulary(settings.tag_vocabulary, state.recognizer.tagger)
        _tidy_uploads_at_start(state)
        state.people.refit()
        state.loading_s = time.time() - t0
        return state

    @property
    def recommender(self) -> Any:
        """The recommender fitted on the behaviour events (None: no events, or none configured)."""
        return self.people.recommender

    def with_index(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` holding the index lock (call from a worker thread, never on the event loop)."""
        with self.index_lock:
            return fn()

    def reload_model(self) -> None:
        """Load the bundle again (after an enrolment changed it) and swap it in between two batches."""
        from ..models.predictor import load_model as load

        with self._model_lock:
            model = load(self.settings.model, device=self.settings.device, backend=self.settings.backend,
                         precision=self.settings.precision)
            # The bundle on disk may hold another process's enrolments and removals too (a CLI enrol, a second
            # worker): the products follow the model, so a class it predicts is one GET /v1/products/{id} knows.
            before = enrolled_products(self.model.card)
            now = enrolled_products(model.card)
            for label in set(before) - set(now) - set(model.card.classes):
                self.products.pop(label, None)
            for label, product in now.items():
                self.products.setdefault(label, product)
            self.model = model
            self.recognizer.model = model
            tagger = _tagger(model, self.products)  # new classes: the text side is made again, from the vectors
            if self.recognizer.tagger is not None:  # of the texts it has already encoded
                tagger.reuse_text_vectors(self.recognizer.tagger)
            self.recognizer.tagger = tagger
            if self.search is not None:
                self.search.model = model

    def products_changed(self, *, recommender: bool = False) -> None:
        """After an enrolment, a removal or a PATCHed title or text: support answers and listing tags read the
        products as they are now (they kept the start's copy, and the tags their texts' vectors), and with
        `recommender` the recommender is refitted at once, so a removed product leaves its answers and an
        enrolled one joins them when the call returns."""
        if self.responder is not None:
            self.responder.refresh(self.products)
        if self.recognizer.tagger is not None:  # vocabulary tags are scored against the products' texts
            self.recognizer.tagger.products_changed()
        if recommender:
            try:
                self.people.refit()
            except Exception as exc:  # noqa: BLE001 - the change stands; the next background refit tries again
                logger.warning("recommender refit after a product change failed: %s", exc)

    def _write_intake(self, items: list[_Intake]) -> list[list[IntakeResult] | Exception]:
        assert self.store is not None
        return self.store.intake_batches([i.photos for i in items], threshold=self.settings.review_threshold,
                                         actor=[i.actor for i in items], keep_photos=self.settings.keep_uploads)

    async def record_intake(self, photos: list[IntakePhoto | ShelfPhoto], actor: str) -> list[IntakeResult]:
        """Store one request's photos (merged with concurrent requests); the request's own error, raised."""
        assert self.writer is not None
        # not timed: an item the writer has taken commits whatever the client hears, so a 504 could hide a count
        # (a full queue is still a 503 at once)
        result = await self.writer.submit(_Intake(photos, actor))
        if isinstance(result, Exception):
            raise result
        return result

    async def start(self) -> None:
        await self.recognizer.batcher.start()
        if self.writer is not None:
            await self.writer.start()

    async def stop(self) -> None:
        await self.recognizer.batcher.stop()
        self.recognizer.close()
        if self.writer is not None:
            await self.writer.stop()
        if self.store is not None:
            self.store.close()

    def product(self, label: str) -> Product:
        return self.products.get(label) or Product(label=label, title=label.replace("-", " "))

    def product_image(self, label: str, *, strict: bool = False) -> Path | None:
        """The product's catalogue photo, else the first photo the index holds for it (server data only). An index
        that does not answer: None (a listing's has_image false, said once a minute), or with `strict` its error
        (the image route answers 503, not a 404 a cache would keep)."""
        product = self.products.get(label)
        if product is not None and product.image is not None:
            return Path(product.image)
        if self.search is not None:
            try:
                with self.index_lock:
                    records = self.search.index.records(label)
            except Exception:
                if strict:
                    raise
                now = time.monotonic()
                if now - self._index_warned_at > 60:
                    self._index_warned_at = now
                    logger.warning("the index did not answer for %r's photo (said once a minute)", label,
                                   exc_info=True)
                return None
            for r in records:
                if r.image and Path(r.image).is_file():
                    return Path(r.image)
        return None

    def features(self) -> dict[str, bool]:
        return {"inventory": self.store is not None, "support": self.responder is not None,
                "search": self.search is not None, "recommendations": self.recommender is not None,
                "shelf_intake": self.store is not None and self.recognizer.detector is not None}


def _tidy_uploads_at_start(state: ServiceState) -> None:
    """The retention purge when it is due (it sweeps too), else a sweep (`InventoryStore.sweep_uploads`): nothing
    past its time is served after a restart, and no photo a crash left behind (an erased user's) outlives it.

    Storage that takes no writes does not stop the start: a service on a read-only or failing database or disk
    still answers reads (predict, search, the counts) and answers writes 503, as it does when its storage fails
    later. So a storage failure (`storage_failure`) is one error line that says what was not done; the next start
    sweeps again. Another OSError (a folder that cannot be read) is a warning, as before; any other error fails
    the start."""
    store = state.store
    if store is None:
        return
    doing = "the retention purge and sweep of the upload folders at start"
    try:
        if state.people.purge_if_due():
            return
        doing = "the sweep of the upload folders at start"
        store.sweep_uploads(actor="startup")
    except Exception as exc:
        error = storage_error(exc, f"{doing} did not finish", "the service starts without it, and the next start "
                              "sweeps again (files it did delete or put back may have no audit line)")
        if error is not None:
            logger.error("inventory %s: %s", store.url, error)
        elif isinstance(exc, OSError):  # an unreadable folder: the service still starts, and says so
            logger.warning("inventory %s: could not purge or sweep the upload folders at start: %s", store.url, exc)
        else:
            raise


def _tagger(model: Model, products: dict[str, Product]) -> Tagger:
    """Listing tags with the service's products (titles, texts) and the bundle's text aligner, if it has one."""
    from ..search.align import load_aligner
    from ..search.tags import Tagger

    return Tagger(model, products=products, aligner=load_aligner(model.path) if model.path is not None else None)


def _load_tag_vocabulary(path: str, tagger: Tagger | None) -> tuple[str, ...]:
    """The --tag-vocabulary phrases (`read_tag_vocabulary`), encoded at startup: a bad file or a model that cannot
    score it fails here, not on the first request."""
    from ..search.tags import TaggingError

    assert tagger is not None
    phrases = read_tag_vocabulary(path)
    try:
        tagger.vocabulary(phrases)
    except TaggingError as exc:
        raise ConfigError(f"tag_vocabulary {path}: {exc}") from None
    return phrases


def _load_detector(settings: ServeSettings) -> Detector:
    """The product detector of shelf intake; a folder that is not one is a configuration error."""
    from ..detect.backends import open_detector
    from ..detect.model import DetectorError

    assert settings.detector is not None
    if not settings.db:
        logger.warning("detector %s is used by inventory intake only, and no db is set", settings.detector)
    try:
        return open_detector(settings.detector, device=settings.device,
                             backend=settings.detector_backend).with_settings(max_detections=settings.detector_max_boxes)
    except DetectorError as exc:
        raise ConfigError(f"detector: {exc}") from None


def _load_search(settings: ServeSettings, model: Model) -> Any:
    from ..models.text import BUNDLE_TEXT_MODEL, TextEncoderMismatch
    from ..search.align import load_aligner
    from ..search.engine import RouteError, SearchEngine
    from ..search.index import open_index

    assert settings.index is not None
    # the model's folder: --model may name its exported file (BUNDLE/model.onnx), which is no aligner
    aligner = load_aligner(model.path) if model.path is not None else None
    if aligner is not None and aligner.text_model == BUNDLE_TEXT_MODEL:
        try:
            aligner.text_encoder()
        except TextEncoderMismatch as exc:  # text search still runs, without the image-space part
            logger.warning("%s", exc)
    index = open_index(settings.index)
    try:
        return SearchEngine(model, index, aligner, route=settings.search_route)
    except ValueError as exc:  # search_route the model cannot serve (RouteError), or an index of another model
        index.close()
        raise ConfigError(f"search_route: {exc}" if isinstance(exc, RouteError)
                          else f"index {settings.index}: {exc}") from None


def _recommender_fit(model: Model, products: dict[str, Product]) -> Callable[[list[Any]], Any]:
    """events -> the hybrid recommender, built as `skulens recommend` builds it. The product content is
    computed at the first fit (none when there are no events yet) and reused by every refit."""
    from ..recommend.recommenders import fit_recommender, item_vectors

    content: list[dict[str, np.ndarray] | None] = []

    def fit(events: list[Any]) -> Any:
        # only products this service has (a removed enrolment, a log's product no catalogue holds): recommended,
        # one would be a product that GET /v1/products/{id} does not know
        kept = [e for e in events if e.product_id in products]
        if len(kept) < len(events):
            gone = {e.product_id for e in events} - set(products)
            logger.info("recommender: left out %d event(s) of %d product(s) this service does not have, e.g. %r",
                        len(events) - len(kept), len(gone), min(gone))
        if not kept:
            return None
        if not content:
            try:
                content.append(item_vectors(products, model))
            except (ImportError, FileNotFoundError) as exc:  # product content needs the text encoder
                logger.warning("recommendations from the behaviour log only, without product content: %s", exc)
                content.append(None)
        elif content[0] is not None and (new := {k: p for k, p in products.items() if k not in content[0]}):
            content[0].update(item_vectors(new, model))  # enrolled since: theirs only (they had none until a restart)
        # the products the service has now: a removed one's vector would make it a candidate again
        vectors = None if content[0] is None else {k: v for k, v in content[0].items() if k in products}
        return fit_recommender(kept, products, item_vectors=vectors)

    return fit


def _load_support(settings: ServeSettings, model: Model) -> tuple[dict[str, Product], SupportResponder | None,
                                                                  str | None]:
    """Catalogue products (--data, else the bundle's training data) and the responder over `text_model`."""
    from .support import SupportResponder, load_products

    fallback = model.card.dataset.get("path")
    try:
        products = load_products(settings.data, fallback)
    except Exception as exc:
        if settings.data:
            raise
        logger.warning("catalogue %s could not be loaded (%s); support replies know only the labels", fallback, exc)
        products = {}
    products = model_products(model.card, products)  # + the enrolled ones, and every class by its name
    try:
        from ..models.text import BUNDLE_TEXT_MODEL, DEFAULT_TEXT_MODEL, bundle_text_model, load_text_encoder

        # The frozen MiniLM by default: the search-tuned encoder answered the grocery question sets 1.7-2.1
        # points worse (benchmarks/RESULTS.md); "bundle" picks the bundle's fine-tuned one all the same.
        if settings.text_model == BUNDLE_TEXT_MODEL:
            tuned = bundle_text_model(model.path)
            if tuned is None:
                raise ConfigError(f"--text-model bundle: {model.path} has no fine-tuned text encoder "
                                  "(run `skulens text-tune`)")
            encoder = load_text_encoder(tuned)
        else:
            encoder = load_text_encoder(settings.text_model or DEFAULT_TEXT_MODEL)
    except ConfigError:
        raise
    except ImportError as exc:  # no sentence-transformers here: the service runs without support replies
        logger.warning("support replies disabled: %s", exc)
        return products, None, str(exc)
    except Exception as exc:
        if settings.text_model not in (None, DEFAULT_TEXT_MODEL):  # a typo started a service that answered every
            # question 503 while /readyz said ready; a folder holding no model, a transformers traceback
            raise ConfigError(f"--text-model {settings.text_model}: cannot load a text encoder from it ({exc})") \
                from None
        if not isinstance(exc, FileNotFoundError):  # the bundled MiniLM package is missing: replies are off
            raise
        logger.warning("support replies disabled: %s", exc)
        return products, None, str(exc)
    responder = SupportResponder(products, encoder, min_confidence=settings.support_min_confidence,
                                 min_score=settings.support_min_score, vocabulary=model.card.attributes)
    return products, responder, None
