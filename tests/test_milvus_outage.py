"""A Milvus server that goes away under a running service: searches answer 503 with Retry-After (a 422 before, as
if the request were wrong) and /readyz lists it (it said ready). Its own module: it stops its server."""

from __future__ import annotations

from pathlib import Path

import pytest

import skulens


@pytest.mark.timeout(300)
def test_a_milvus_server_that_goes_away_is_a_503_and_readyz_says_so(milvus_server, tiny_bundle,
                                                                      tiny_catalogue: Path) -> None:
    from fastapi.testclient import TestClient

    from skulens.search.catalogue_index import build_catalogue_index
    from skulens.serve.app import create_app
    from test_serve import _settings, _upload

    model = skulens.load(tiny_bundle.bundle, device="cpu")
    where = f"{milvus_server.uri}#outage"
    build_catalogue_index(model, skulens.load_catalogue(tiny_catalogue), where, backend="milvus")
    photo = min((tiny_catalogue.parent / "val").rglob("*.jpg")).read_bytes()
    with TestClient(create_app(_settings(tiny_bundle, index=where, warmup=False))) as client:
        assert client.post("/v1/search", files=_upload(photo), data={"k": "2"}).status_code == 200
        assert client.get("/readyz").status_code == 200
        milvus_server.stop(timeout=1)
        r = client.post("/v1/search", files=_upload(photo), data={"k": "2"})
        assert (r.status_code, r.headers.get("Retry-After")) == (503, "30"), r.text
        assert "the search index cannot be reached now" in r.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "the search index's server cannot be reached" in ready.json()["problems"]
