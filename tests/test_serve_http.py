"""The service behind a real uvicorn on localhost: concurrent predictions share batches; concurrent intake
with duplicates counts exactly."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import skulens
from _serve_util import photo_bytes, running_server
from skulens.serve.app import create_app
from skulens.serve.settings import ApiKey, ServeSettings

KEY = "http-test-key"


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


@pytest.fixture(scope="module")
def server(tiny_bundle, model, tmp_path_factory):
    settings = ServeSettings(model=str(tiny_bundle.bundle), device="cpu", api_keys=(ApiKey("bench", KEY),),
                             db=str(tmp_path_factory.mktemp("http") / "inv.sqlite"), max_batch=8, max_wait_ms=20,
                             review_threshold=0.0)  # everything counts: the test is about exactness
    with running_server(create_app(settings, model=model)) as url:
        yield url


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_concurrent_predictions_are_micro_batched(server, tiny_catalogue: Path) -> None:
    photos = sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))
    before = httpx.get(f"{server}/metrics").text
    with httpx.Client(base_url=server, timeout=60) as c, concurrent.futures.ThreadPoolExecutor(16) as pool:
        def post(p: Path) -> httpx.Response:
            return c.post("/v1/predict", files={"image": (p.name, p.read_bytes(), "image/jpeg")})

        responses = list(pool.map(post, photos * 4))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for r, p in zip(responses, photos * 4, strict=True):
        assert r.json()["prediction"]["source"] == p.name
    after = httpx.get(f"{server}/metrics").text
    batches = _metric(after, "skulens_batch_size_count") - _metric(before, "skulens_batch_size_count")
    images = _metric(after, "skulens_batch_size_sum") - _metric(before, "skulens_batch_size_sum")
    assert images == len(responses)
    assert batches < images  # some requests shared a forward pass


def test_concurrent_intake_with_duplicates_counts_exactly(server, model) -> None:
    labels = ("red-apple", "green-apple", "oat-milk")
    unique = [photo_bytes(labels[i % 3], 1000 + i) for i in range(48)]
    uploads = unique + unique[:12]  # 20% of the uploads are photos already sent
    with httpx.Client(base_url=server, timeout=120, headers={"X-API-Key": KEY}) as c, \
            concurrent.futures.ThreadPoolExecutor(16) as pool:
        def post(item: tuple[int, bytes]) -> httpx.Response:
            i, data = item
            return c.post("/v1/inventory/intake", files=[("images", (f"{i}.jpg", data, "image/jpeg"))])

        responses = list(pool.map(post, enumerate(uploads)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        statuses = [r.json()["results"][0]["status"] for r in responses]
        assert statuses.count("counted") == 48 and statuses.count("duplicate") == 12
        counts = c.get("/v1/inventory").json()["counts"]
    expected: dict[str, int] = {}
    for p in model.predict(unique):
        expected[p.fine_label] = expected.get(p.fine_label, 0) + 1
    assert counts == expected and sum(counts.values()) == 48
