"""The REST API (skulens.serve) on the real tiny bundle: predict, limits, API keys, inventory, metrics, CORS."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import re
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")

from fastapi import Request
from fastapi.testclient import TestClient

import skulens
from _serve_util import SlowModel, bad_uploads, has_gps, photo_bytes
from conftest import modules_loaded_by
from skulens.serve.app import create_app
from skulens.serve.settings import ApiKey, ServeSettings, load_api_keys

KEY = "test-secret-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


@pytest.fixture(scope="module")
def val_photo(tiny_catalogue: Path) -> tuple[bytes, str]:
    path = tiny_catalogue.parent / "val" / "red-apple" / "red-apple_000.jpg"
    return path.read_bytes(), "red-apple"


def _settings(tiny_bundle, tmp_path: Path | None = None, *, inv=None, **kw) -> ServeSettings:
    """inv: the `inventory_db` fixture (SQLite or PostgreSQL) instead of tmp_path/inventory.sqlite."""
    base = {"model": str(tiny_bundle.bundle), "api_keys": (ApiKey("tester", KEY),), "device": "cpu"}
    if inv is not None:
        base["db"] = inv.url("inventory")
        base.update({k: str(v) for k, v in inv.dirs("inventory").items() if k == "labelled_dir"})
    elif tmp_path is not None:
        base["db"] = str(tmp_path / "inventory.sqlite")
    base.update(kw)
    return ServeSettings(**base)


@pytest.fixture(scope="module")
def client(tiny_bundle, model, tmp_path_factory):
    app = create_app(_settings(tiny_bundle, tmp_path_factory.mktemp("serve")), model=model)
    with TestClient(app) as c:
        deadline = time.monotonic() + 60  # the warm-up runs beside the first requests: wait as a load balancer would
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


def _upload(data: bytes, name: str = "photo.jpg", ctype: str = "image/jpeg", field: str = "image"):
    return {field: (name, data, ctype)}


def test_predict_matches_the_python_api(client, model, val_photo) -> None:
    data, _ = val_photo
    r = client.post("/v1/predict", files=_upload(data), data={"top_k": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = model.predict([data], top_k=2)[0]
    p = body["prediction"]
    assert p["fine_label"] == direct.fine_label and p["label"] == direct.label
    assert p["confidence"] == pytest.approx(direct.confidence, abs=1e-4)
    assert [row["label"] for row in p["top_k"]] == [lab for lab, _ in direct.top_k]
    assert len(p["top_k"]) == 2
    assert p["coarse_label"] == direct.coarse_label
    assert body["product"]["id"] == direct.fine_label and body["product"]["stock"] == 0
    assert p["source"] == "photo.jpg"


def test_predict_names_no_product_when_it_declines_to(client, val_photo) -> None:
    """Below min_confidence the decision is coarse or unknown: `product` was still the best fine guess, with its
    stock, for a client to show or count."""
    data, _ = val_photo
    body = client.post("/v1/predict", files=_upload(data), data={"min_confidence": "1"}).json()
    assert body["prediction"]["level"] in ("coarse", "unknown") and body["prediction"]["fine_label"]
    assert body["product"] is None


def test_the_type_comes_from_the_bytes_not_the_name(client, val_photo) -> None:
    data, _ = val_photo
    r = client.post("/v1/predict", files=_upload(data, "notes.txt", "text/plain"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", list(bad_uploads(b"\xff\xd8\xff" + b"0" * 100)))
def test_bad_uploads_are_4xx_with_a_message_and_the_server_stays_healthy(client, val_photo, case) -> None:
    name, data, ctype = bad_uploads(val_photo[0])[case]
    r = client.post("/v1/predict", files=_upload(data, name, ctype))
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    detail = r.json()["detail"]
    assert name in detail and len(detail) > len(name) + 5
    expected = {"bomb": 413, "20000x20000": 413, "text named .jpg": 415, "html named .png": 415}
    assert r.status_code == expected.get(case, 422), (case, r.text)
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/predict", files=_upload(val_photo[0])).status_code == 200


def test_wrong_content_types_are_422_with_a_hint(client, val_photo) -> None:
    for kwargs in ({"json": {"image": "x.jpg"}}, {"content": val_photo[0], "headers": {"content-type": "image/jpeg"}}):
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == 422, r.text
        assert "multipart/form-data" in r.json()["detail"]
    r = client.post("/v1/predict", files=_upload(val_photo[0]), data={"top_k": "0"})
    assert r.status_code == 422 and "top_k" in r.json()["detail"]


def test_the_services_top_k_is_the_default_of_a_request(tiny_bundle, model, val_photo) -> None:
    """`skulens serve -k 2`: a request that sends no top_k gets 2 rows (of the tiny model's 3 classes; the old
    fixed default of 5 gave all 3); one that sends top_k gets its own."""
    with TestClient(create_app(_settings(tiny_bundle, top_k=2), model=model)) as c:
        assert len(c.post("/v1/predict", files=_upload(val_photo[0])).json()["prediction"]["top_k"]) == 2
        assert len(c.post("/v1/predict", files=_upload(val_photo[0]), data={"top_k": "1"}).json()["prediction"]["top_k"]) == 1
    with pytest.raises(Exception, match="top_k"):
        _settings(tiny_bundle, top_k=51)


def test_upload_and_body_limits(tiny_bundle, model, val_photo) -> None:
    settings = _settings(tiny_bundle, max_upload_bytes=len(val_photo[0]) - 1, max_files=2)
    with TestClient(create_app(settings, model=model)) as c:
        r = c.post("/v1/predict", files=_upload(val_photo[0]))
        assert r.status_code == 413 and "larger than" in r.json()["detail"]
        # The whole body is capped too (max_files x max_upload_bytes + framing), before any parsing.
        big = b"\xff\xd8\xff" + b"0" * (3 * len(val_photo[0]))
        r = c.post("/v1/predict", files=_upload(big))
        assert r.status_code == 413, r.text
        assert c.get("/healthz").status_code == 200
    # A JSON body is parsed whole before the key is checked: anything but a multipart upload stops at 1 MiB.
    with TestClient(create_app(_settings(tiny_bundle), model=model)) as c:
        r = c.post("/v1/support/ask", content=b'{"question": "' + b"a" * (2 << 20) + b'"}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "not a photo upload" in r.json()["detail"], r.text
        assert c.post("/v1/predict", files=_upload(b"\xff\xd8\xff" + b"0" * (2 << 20))).status_code != 413
        assert c.post("/v1/predict/", files=_upload(b"\xff\xd8\xff" + b"0" * (2 << 20))).status_code != 413  # redirected
        # A multipart Content-Type on a route that takes no file lifted its limit to the uploads' 128 MB: the body
        # was read whole, in memory, before the key check answered 401
        r = c.patch("/v1/products/milk", content=b"--x\r\n" + b"a" * (2 << 20),
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413 and "not a photo upload" in r.json()["detail"], r.text
        r = c.post("/v1/support/ask", content=b"--x\r\n" + b"a" * (2 << 20),  # a route with a file: its limit
                   headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code != 413, r.text


def test_writes_need_a_valid_key_reads_do_not(client, val_photo) -> None:
    files = _upload(val_photo[0], field="images")
    r = client.post("/v1/inventory/intake", files=files)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/inventory/intake", files=files, headers={"X-API-Key": "wrong-key-123"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
    r = client.post("/v1/inventory/intake", files=files, headers={"Authorization": "Bearer wrong-key-123"})
    assert r.status_code == 401
    assert client.get("/v1/inventory").status_code == 200  # reads are open by default
    # ...but a wrong key on a read is still refused rather than ignored.
    assert client.get("/v1/inventory", headers={"X-API-Key": "nope-nope-nope"}).status_code == 401


def test_no_configured_keys_means_writes_are_disabled(tiny_bundle, model, tmp_path, val_photo) -> None:
    settings = _settings(tiny_bundle, tmp_path, api_keys=())
    with TestClient(create_app(settings, model=model)) as c:
        r = c.post("/v1/inventory/intake", files=_upload(val_photo[0], field="images"))
        assert r.status_code == 403 and "no API keys" in r.json()["detail"]


def test_auth_reads(tiny_bundle, model, val_photo) -> None:
    with TestClient(create_app(_settings(tiny_bundle, auth_reads=True), model=model)) as c:
        assert c.post("/v1/predict", files=_upload(val_photo[0])).status_code == 401
        assert c.post("/v1/predict", files=_upload(val_photo[0]), headers=AUTH).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_inventory_intake_review_export_and_audit(client, model, tiny_catalogue) -> None:
    photos = [photo_bytes("oat-milk", 100 + i) for i in range(3)]
    files = [("images", (f"p{i}.jpg", d, "image/jpeg")) for i, d in enumerate(photos + photos[:1])]
    r = client.post("/v1/inventory/intake", files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duplicate"] >= 1 and body["errors"] == 0
    assert body["counted"] + body["review"] == 3
    preds = model.predict(photos)
    for res, pred in zip(body["results"][:3], preds, strict=True):
        assert res["status"] == ("counted" if pred.fine_confidence >= 0.6 else "review")
    # Sending the same photos again changes nothing.
    again = client.post("/v1/inventory/intake", files=files, headers=AUTH).json()
    assert again["duplicate"] == 4 and again["counted"] == 0
    counts = client.get("/v1/inventory").json()["counts"]
    counted = [p.fine_label for p, res in zip(preds, body["results"], strict=False) if res["status"] == "counted"]
    for label in set(counted):
        assert counts[label] == counted.count(label)
    # CSV export agrees with the counts.
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/inventory/export.csv").text)))
    assert {row["label"]: int(row["count"]) for row in rows} == counts
    audit = client.get("/v1/inventory/audit", headers=AUTH).json()
    assert sum(a["action"] == "intake" for a in audit) >= len(counted)
    assert all(a["actor"] == "tester" for a in audit)


def test_low_confidence_goes_to_review_then_a_correction_counts(tiny_bundle, model, inventory_db, tmp_path) -> None:
    from skulens.data.catalogue import load_catalogue

    # A grey frame: the model is unsure (checked below), so with threshold 1.0 it surely needs review.
    settings = _settings(tiny_bundle, tmp_path, inv=inventory_db, review_threshold=1.0)
    data = photo_bytes(None, 7, gps=True)
    assert has_gps(data)
    assert model.predict([data])[0].fine_confidence < 1.0
    with TestClient(create_app(settings, model=model)) as c:
        r = c.post("/v1/inventory/intake", files=[("images", ("shelf.jpg", data, "image/jpeg"))], headers=AUTH)
        assert r.json()["review"] == 1, r.text
        assert c.get("/v1/inventory").json()["counts"] == {}
        assert c.get("/v1/inventory/review").status_code == 401  # the uploaders' file names: a key, as photos
        queue = c.get("/v1/inventory/review", headers=AUTH).json()
        assert len(queue) == 1 and queue[0]["has_photo"]
        sha = queue[0]["sha256"]
        assert c.get(f"/v1/inventory/photos/{sha}").status_code == 401  # photos need a key
        stored = c.get(f"/v1/inventory/photos/{sha}", headers=AUTH)
        assert stored.status_code == 200 and stored.content[:3] == b"\xff\xd8\xff"
        assert not has_gps(stored.content)  # EXIF (GPS included) stripped from what is kept
        # a decision is never read from a value of another type: {"reject": "yes"} rejected the photo for good
        for body in ({"reject": "yes"}, {"reject": 1}, {"label": "oat-milk", "note": "typo'd field"}):
            r = c.post(f"/v1/inventory/review/{sha}", json=body, headers=AUTH)
            assert r.status_code == 422, (body, r.text)
        r = c.post(f"/v1/inventory/review/{sha}", json={"label": "oat-milk"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] in ("corrected", "confirmed"), r.text
        assert c.post(f"/v1/inventory/review/{sha}", json={"label": "oat-milk"}, headers=AUTH).status_code == 409
        assert c.get("/v1/inventory").json()["counts"] == {"oat-milk": 1}
        assert c.get("/v1/inventory/review", headers=AUTH).json() == []
        bad = c.post(f"/v1/inventory/review/{sha}", json={}, headers=AUTH)
        assert bad.status_code == 422
    # The corrected photo is labelled data that `load_catalogue` (so train/retrain) reads.
    labelled = tmp_path / "inventory-labelled"
    cat = load_catalogue(labelled, val_fraction=0)
    [sample] = cat.split("train")
    assert sample.label == "oat-milk" and not has_gps(sample.path.read_bytes())


def test_a_hand_adjustment_cannot_invent_a_product(tiny_bundle, model, inventory_db, tmp_path) -> None:
    with TestClient(create_app(_settings(tiny_bundle, tmp_path, inv=inventory_db), model=model)) as c:
        typo = c.post("/v1/inventory/products/oat-milkk/adjust", json={"count": 3, "reason": "stock take"},
                      headers=AUTH)
        assert typo.status_code == 422, typo.text
        assert typo.json()["suggestions"] == ["oat-milk"] and "unknown product 'oat-milkk'" in typo.json()["detail"]
        assert c.get("/v1/inventory").json()["counts"] == {}  # no new product row
        ok = c.post("/v1/inventory/products/oat-milk/adjust", json={"count": 3, "reason": "stock take"}, headers=AUTH)
        assert ok.status_code == 200 and ok.json() == {"label": "oat-milk", "count": 3}
        sold = c.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -1, "reason": "sold"}, headers=AUTH)
        assert sold.json()["count"] == 2 and c.get("/v1/inventory").json()["counts"] == {"oat-milk": 2}
        for body in ({"delta": True}, {"delta": "5"}, {"count": 2.5}, {"delta": 1, "reson": "sold"}):  # were +1, +5
            r = c.post("/v1/inventory/products/oat-milk/adjust", json=body, headers=AUTH)
            assert r.status_code == 422, (body, r.text)
        assert c.get("/v1/inventory").json()["counts"] == {"oat-milk": 2}
        # numbers no column holds (PostgreSQL's INTEGER; SQLite's 8 bytes) are a 422, never a 500
        for body in ({"delta": 10**20}, {"count": 3_000_000_000}):
            r = c.post("/v1/inventory/products/oat-milk/adjust", json=body, headers=AUTH)
            assert r.status_code == 422, r.text
        c.post("/v1/inventory/products/oat-milk/adjust", json={"count": 2**31 - 2}, headers=AUTH)
        r = c.post("/v1/inventory/products/oat-milk/adjust", json={"delta": 5}, headers=AUTH)
        assert r.status_code == 422 and "largest stored" in r.json()["detail"]
        assert c.get("/v1/inventory/review", params={"offset": 10**20}, headers=AUTH).status_code == 422
        assert c.get("/v1/inventory").json()["counts"] == {"oat-milk": 2**31 - 2}


def test_a_review_confirmation_cannot_push_a_count_past_the_largest_stored(tiny_bundle, model, inventory_db,
                                                                          tmp_path) -> None:
    """Adjust refused it, but a confirmed photo added past it: 2**31 stored on SQLite (PostgreSQL's column is 4
    bytes)."""
    settings = _settings(tiny_bundle, tmp_path, inv=inventory_db, review_threshold=1.0)  # every photo: a reviewer
    with TestClient(create_app(settings, model=model)) as c:
        assert c.post("/v1/inventory/products/oat-milk/adjust", json={"count": 2**31 - 1}, headers=AUTH).is_success
        r = c.post("/v1/inventory/intake", files=[("images", ("a.jpg", photo_bytes(None, 5), "image/jpeg"))],
                   headers=AUTH)
        assert r.json()["review"] == 1, r.text
        [item] = c.get("/v1/inventory/review", headers=AUTH).json()
        full = c.post(f"/v1/inventory/review/{item['id']}", json={"label": "oat-milk"}, headers=AUTH)
        assert full.status_code == 422 and "largest stored" in full.json()["detail"], full.text
        assert c.get("/v1/inventory").json()["counts"] == {"oat-milk": 2**31 - 1}
        assert c.get("/v1/inventory/review", headers=AUTH).json()[0]["status"] == "review"  # still waiting
        assert c.post(f"/v1/inventory/review/{item['id']}", json={"label": "green-apple"}, headers=AUTH).is_success
        assert c.get("/v1/inventory").json()["counts"] == {"oat-milk": 2**31 - 1, "green-apple": 1}


def test_an_intake_past_the_largest_stored_count_is_a_409_and_counts_nothing(tiny_bundle, model, inventory_db,
                                                                              tmp_path) -> None:
    """It was a bare 500 (an InventoryError from the store), and the client could not tell nothing was counted."""
    settings = _settings(tiny_bundle, tmp_path, inv=inventory_db, review_threshold=0.0)  # every photo: counted
    with TestClient(create_app(settings, model=model)) as c:
        full = {label: 2**31 - 1 for label in model.card.classes}
        for label in full:
            assert c.post(f"/v1/inventory/products/{label}/adjust", json={"count": 2**31 - 1}, headers=AUTH).is_success
        files = [("images", (f"{i}.jpg", photo_bytes(None, i), "image/jpeg")) for i in (5, 6)]
        r = c.post("/v1/inventory/intake", files=files, headers=AUTH)
        assert r.status_code == 409 and "largest stored" in r.json()["detail"], r.text
        assert "nothing in this request was counted" in r.json()["detail"]
        assert c.get("/v1/inventory").json()["counts"] == full


def test_a_file_name_with_control_characters_is_stored_without_them(tiny_bundle, model, inventory_db,
                                                                     tmp_path) -> None:
    """A NUL in an upload's name was a bare 500 on PostgreSQL (no NUL in text), and the request's other photos were
    not counted; a bidi override showed the name reversed wherever it was listed."""
    settings = _settings(tiny_bundle, tmp_path, inv=inventory_db, review_threshold=0.0)  # every photo: counted
    with TestClient(create_app(settings, model=model)) as c:
        label = model.card.classes[0]
        parts = [("ok.jpg", photo_bytes(label, 5)), ("bad\x00name\u202e.jpg", photo_bytes(label, 6))]
        body = b"".join(b'--B\r\nContent-Disposition: form-data; name="images"; filename="' + name.encode() +
                        b'"\r\nContent-Type: image/jpeg\r\n\r\n' + data + b"\r\n" for name, data in parts) + b"--B--\r\n"
        # built by hand: httpx would write the NUL as %00, where a browser or curl sends the byte
        r = c.post("/v1/inventory/intake", content=body,
                   headers={**AUTH, "Content-Type": "multipart/form-data; boundary=B"})
        assert r.status_code == 200, r.text
        assert [x["source"] for x in r.json()["results"]] == ["ok.jpg", "bad?name?.jpg"]
        assert [x["status"] for x in r.json()["results"]] == ["counted", "counted"]
        assert sum(c.get("/v1/inventory").json()["counts"].values()) == 2
    from fastapi import UploadFile

    from skulens.serve.security import upload_name

    assert upload_name(UploadFile(io.BytesIO(), filename="x\x07" + "y" * 400)) == "x?" + "y" * 253  # and short
    assert upload_name(UploadFile(io.BytesIO(), filename="")) == "upload"


def test_an_intake_decodes_a_few_photos_at_a_time(tiny_bundle, model, tmp_path, monkeypatch) -> None:
    """Every photo of an intake was decoded at once: 32 small 36-megapixel PNGs (a PNG decodes whole before it
    is shrunk) took 4.3 GB. The real decoder runs; the wrapper only counts how many run at the same time."""
    import threading
    import time

    import skulens.serve.state as state_module

    running, most, lock = 0, 0, threading.Lock()
    real = state_module.decode_image

    def counted(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)  # long enough for the request's other photos to start, were they allowed to
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(state_module, "decode_image", counted)
    label = model.card.classes[0]
    files = [("images", (f"{i}.png", photo_bytes(label, i, fmt="PNG"), "image/png")) for i in range(12)]
    with TestClient(create_app(_settings(tiny_bundle, tmp_path, review_threshold=0.0), model=model)) as c:
        r = c.post("/v1/inventory/intake", files=files, headers=AUTH)
        assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == ["counted"] * 12, r.text
    assert 1 <= most <= state_module.DECODE_SLOTS, most


def test_a_review_label_must_name_an_existing_product(tiny_bundle, model, inventory_db, tmp_path) -> None:
    settings = _settings(tiny_bundle, tmp_path, inv=inventory_db, review_threshold=1.0)  # every photo: a reviewer
    with TestClient(create_app(settings, model=model)) as c:
        r = c.post("/v1/inventory/intake", files=[("images", ("p.jpg", photo_bytes(None, 8), "image/jpeg"))],
                   headers=AUTH)
        assert r.json()["review"] == 1, r.text
        [item] = c.get("/v1/inventory/review", headers=AUTH).json()
        url = f"/v1/inventory/review/{item['id']}"
        typo = c.post(url, json={"label": "oat-milkk"}, headers=AUTH)
        assert typo.status_code == 422, typo.text
        body = typo.json()
        assert body["label"] == "oat-milkk" and body["suggestions"] == ["oat-milk"]
        assert "unknown product 'oat-milkk': did you mean 'oat-milk'?" in body["detail"]
        invented = c.post(url, json={"label": "Bananna"}, headers=AUTH)
        assert invented.status_code == 422 and "unknown product 'Bananna'" in invented.json()["detail"]
        assert c.get("/v1/inventory").json()["counts"] == {}  # no new product row
        assert c.get("/v1/inventory/review", headers=AUTH).json()[0]["status"] == "review"  # still waiting
        done = c.post(url, json={"label": "green-apple"}, headers=AUTH)
        assert done.status_code == 200 and done.json()["label"] == "green-apple", done.text
        assert c.get("/v1/inventory").json()["counts"] == {"green-apple": 1}
    assert not (tmp_path / "inventory-labelled" / "Bananna").exists()


def test_manual_adjustments(client) -> None:
    r = client.post("/v1/inventory/products/oat-milk/adjust", json={"count": 10, "reason": "stock take"},
                    headers=AUTH)
    assert r.status_code == 200 and r.json()["count"] == 10
    r = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -3}, headers=AUTH)
    assert r.json()["count"] == 7
    r = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -30}, headers=AUTH)
    assert r.status_code == 422
    assert client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": 1}).status_code == 401
    r = client.post("/v1/inventory/products/%20oat-milk/adjust", json={"delta": 1}, headers=AUTH)
    assert r.json() == {"label": "oat-milk", "count": 8}  # the label it changed (" oat-milk" was echoed)


def test_probes_answer_head_and_a_broken_json_body_says_so(client) -> None:
    for path in ("/healthz", "/readyz", "/", "/inventory", "/docs"):  # load balancers and monitors probe with HEAD
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
    ops = [op["operationId"] for item in client.get("/openapi.json").json()["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops))  # a GET+HEAD route had one operationId for both (and it changed between runs)
    r = client.post("/v1/inventory/products/oat-milk/adjust", content=b'{"delta":', headers={
        **AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("the body is not valid JSON (at character 9")


def test_support_answers_stock_from_the_inventory(client, model, val_photo) -> None:
    pred = model.predict([val_photo[0]])[0]
    assert pred.fine_confidence >= 0.5  # the tiny model knows its val photos
    client.post(f"/v1/inventory/products/{pred.fine_label}/adjust", json={"count": 4}, headers=AUTH)
    r = client.post("/v1/support/ask", files=_upload(val_photo[0]), data={"question": "Do you have this in stock?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["product"] == pred.fine_label and body["handoff"] is False
    assert body["field"] == "stock" and "We have 4" in body["answer"]
    r = client.post("/v1/support/ask", files=_upload(val_photo[0]), data={"question": "What's the price?"})
    assert r.json()["handoff"] is True and "price" in r.json()["reason"]
    r = client.post("/v1/support/ask", files=_upload(val_photo[0]))  # no question: what it is
    assert r.json()["handoff"] is False and r.json()["field"] == "name"


def test_full_queue_answers_503_not_a_hang(tiny_bundle, model, val_photo) -> None:
    settings = _settings(tiny_bundle, queue_size=1, max_batch=1, max_wait_ms=0)
    with TestClient(create_app(settings, model=SlowModel(model, 0.5))) as c:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: c.post("/v1/predict", files=_upload(val_photo[0])), range(6)))
        statuses = sorted(r.status_code for r in codes)
        assert 200 in statuses and 503 in statuses, statuses
        busy = next(r for r in codes if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        assert "skulens_queue_rejected_total" in c.get("/metrics").text


def test_request_timeout_is_504(tiny_bundle, model, val_photo, tmp_path: Path) -> None:
    settings = _settings(tiny_bundle, tmp_path, request_timeout_s=0.3)
    with TestClient(create_app(settings, model=SlowModel(model, 1.0))) as c:
        r = c.post("/v1/predict", files=_upload(val_photo[0]))
        assert r.status_code == 504, r.text
        assert c.get("/healthz").status_code == 200



def test_changes_are_answered_however_long_they_take() -> None:
    """A 504 from the middleware cancels the request's task, not the thread doing the work: an enrolment
    answered 504 was made anyway (and a retry failed as a conflict). Writes are not timed; compute-only
    requests are."""
    import anyio
    from fastapi import FastAPI

    from skulens.serve.security import TimeoutMiddleware

    app, made = FastAPI(), []

    def slow_work() -> str:
        time.sleep(0.6)
        made.append(1)
        return "done"

    @app.post("/v1/products")
    async def enrol(request: Request) -> dict[str, str]:
        await request.body()  # as a form upload is read before the route's work
        return {"status": await anyio.to_thread.run_sync(slow_work)}

    @app.delete("/v1/users/{user_id}")
    async def erase(user_id: str) -> dict[str, str]:
        return {"status": await anyio.to_thread.run_sync(slow_work)}

    @app.post("/v1/predict")
    async def predict() -> dict[str, str]:
        return {"status": await anyio.to_thread.run_sync(slow_work)}

    app.add_middleware(TimeoutMiddleware, seconds=0.2)
    with TestClient(app) as c:
        r = c.post("/v1/products", content=b"x" * 1000)  # a body that arrived: the change runs to its answer
        assert r.status_code == 200 and r.json() == {"status": "done"} and made == [1]
        assert c.delete("/v1/users/u1").status_code == 200 and made == [1, 1]  # no body to wait for
        assert c.post("/v1/predict").status_code == 504
    with TestClient(app, root_path="/api") as c:  # behind a proxy's prefix, predict is still timed
        assert c.post("/api/v1/predict").status_code == 504


@pytest.mark.parametrize("method, path, says", [("POST", "/v1/predict", "send the request again"),
                                               ("POST", "/v1/products", "may or may not have been made")])
def test_a_request_cut_off_by_the_shutdown_is_a_503_in_a_line(method: str, path: str, says: str) -> None:
    """uvicorn cancels what still runs when its graceful shutdown times out: the client got a bare text 500 (and the
    log a CancelledError traceback); now one JSON line that says what may have happened."""
    import asyncio
    import json

    from skulens.serve.security import TimeoutMiddleware

    sent: list[dict] = []

    async def app(scope, receive, send):  # a request still waiting at the deadline (an enrolment behind the lock)
        await asyncio.sleep(30)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main() -> None:
        scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", b"0")]}
        request = asyncio.ensure_future(TimeoutMiddleware(app, seconds=60)(scope, receive, send))
        await asyncio.sleep(0.05)
        request.cancel()  # what uvicorn does to every task at the deadline
        await request  # answered, not raised

    asyncio.run(main())
    start, body = sent
    assert start["status"] == 503 and (b"retry-after", b"5") in start["headers"]
    assert says in json.loads(body["body"])["detail"]


def test_a_streaming_answer_cut_off_by_the_shutdown_stops_with_it() -> None:
    """An answer already streaming past the request timeout, then cancelled by the shutdown: its work went on
    sending after the request had ended (the diff review's find)."""
    import asyncio

    from skulens.serve.security import TimeoutMiddleware

    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(20):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main() -> int:
        scope = {"type": "http", "method": "GET", "path": "/v1/stream", "headers": []}
        request = asyncio.ensure_future(TimeoutMiddleware(app, seconds=0.1)(scope, receive, send))
        await asyncio.sleep(0.3)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):  # begun: the server ends the connection
            await request
        at_cancel = len(sent)
        await asyncio.sleep(0.4)
        return len(sent) - at_cancel

    assert asyncio.run(main()) == 0  # nothing more sent once the request's task was cancelled


def test_health_metrics_docs_and_info(client, val_photo) -> None:
    client.post("/v1/predict", files=_upload(val_photo[0]))
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    text = client.get("/metrics").text
    assert 'skulens_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert "skulens_batch_size_count" in text
    for i in range(3):  # made-up methods are one series, not one each
        client.request(f"X-ODD{i}", "/v1/info")
    text = client.get("/metrics").text
    assert "X-ODD" not in text and 'method="OTHER"' in text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in docs.text  # local (offline)
    assert "cdn." not in docs.text and "<script>" not in docs.text  # no inline script: the CSP holds
    bundle = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "5.35.0" in client.get("/static/swagger-ui/NOTICE").text
    client.get("/no-such-page")
    unmatched = re.search(r'skulens_http_requests_total\{method="GET",route="unmatched",status="(\d+)"\} (\S+)',
                          client.get("/metrics").text)
    assert unmatched is not None and unmatched[1] == "404" and float(unmatched[2]) == 1.0  # the page's files: none
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/predict" in paths and "/v1/inventory/intake" in paths and "/v1/support/ask" in paths
    # /docs lists the errors the routes answer (it listed 200 and 422 only)
    assert {"401", "413", "415", "503", "504"} <= set(paths["/v1/predict"]["post"]["responses"])
    assert {"401", "403", "409"} <= set(paths["/v1/inventory/intake"]["post"]["responses"])
    assert "Retry-After" in paths["/v1/predict"]["post"]["responses"]["503"]["headers"]
    info = client.get("/v1/info").json()
    assert info["features"]["inventory"] and info["model"]["classes"]
    assert info["thresholds"] == {"min_confidence": 0.5, "review": 0.6}  # what the pages decide with


def test_no_db_means_no_inventory_routes(tiny_bundle, model) -> None:
    with TestClient(create_app(_settings(tiny_bundle), model=model)) as c:
        assert c.get("/v1/inventory").status_code == 404
        assert "/v1/inventory/intake" not in c.get("/openapi.json").json()["paths"]


def test_cors_is_off_by_default_and_exact_when_on(client, tiny_bundle, model) -> None:
    origin = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    settings = _settings(tiny_bundle, cors_origins=("https://shop.example",))
    with TestClient(create_app(settings, model=model)) as c:
        ok = c.get("/healthz", headers={"Origin": "https://shop.example"})
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        assert "access-control-allow-origin" not in c.get("/healthz", headers=origin).headers


def test_web_pages_are_served_with_a_strict_csp(client) -> None:
    for path in ("/", "/inventory", "/docs"):
        r = client.get(path)
        assert r.status_code == 200 and "<html" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../settings.py").status_code == 404


def test_no_endpoint_reads_a_server_path_or_url(client) -> None:
    for path in ("/v1/products/..%2F..%2Fetc%2Fpasswd/image", "/v1/products/http:%2F%2Fexample.com/image"):
        assert client.get(path).status_code == 404
    r = client.post("/v1/predict", data={"image": "/etc/passwd"})
    assert r.status_code == 422
    r = client.post("/v1/predict", data={"image": "http://127.0.0.1:1/x.jpg"})
    assert r.status_code == 422


# -- settings and the CLI (no server) ----------------------------------------------------------------


def test_settings_from_file_and_flags_unknown_keys_are_errors(tmp_path: Path) -> None:
    from skulens.config import ConfigError
    from skulens.serve.settings import resolve_settings

    cfg = tmp_path / "serve.toml"
    cfg.write_text('model = "b"\nmax_batch = 8\ncors_origins = ["https://a.example"]\nauth_reads = true\n')
    s = resolve_settings({"max_batch": "4", "port": None}, cfg)
    assert (s.model, s.max_batch, s.cors_origins, s.auth_reads, s.port) == ("b", 4, ("https://a.example",), True, 8000)
    cfg.write_text('model = "b"\nmax_bach = 8\n')
    with pytest.raises(ConfigError, match="max_bach"):
        resolve_settings({}, cfg)
    cfg.write_text('model = "b"\napi_keys = ["x"]\n')
    with pytest.raises(ConfigError, match="api-keys-file"):
        resolve_settings({}, cfg)
    with pytest.raises(ConfigError, match="api-keys-file"):  # as `skulens serve` calls it: the keys were dropped
        resolve_settings({"api_keys": ()}, cfg)
    # values that were bent into the setting's type: port: yes was 1, top_k: 3.9 was 3, auth_reads: 5 True,
    # host: null bound every interface, cors_origins: 5 and model: null were tracebacks, a NaN timeout passed
    yaml_cfg = tmp_path / "serve.yaml"
    for line, needle in (("port: yes", "port"), ("top_k: 3.9", "top_k"), ("auth_reads: 5", "auth_reads"),
                         ("host: null", "host: cannot be null"), ("cors_origins: 5", "cors_origins"),
                         ("request_timeout_s: .nan", "finite"), ("port: 70000", "port must be in 0..65535"),
                         ("device: {a: 1}", "expected one value")):
        yaml_cfg.write_text(f"model: b\n{line}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=needle):
            resolve_settings({}, yaml_cfg)
    yaml_cfg.write_text("model: null\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="model: cannot be null"):
        resolve_settings({}, yaml_cfg)
    yaml_cfg.write_text("model: b\nport: '8080'\ncors_origins: null\nauth_reads: 'yes'\n", encoding="utf-8")
    ok = resolve_settings({}, yaml_cfg)
    assert (ok.port, ok.cors_origins, ok.auth_reads) == (8080, (), True)
    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"ops:caf\xe9secret123\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_api_keys(keys)
    with pytest.raises(ConfigError, match="cors_origins"):
        resolve_settings({"model": "b", "cors_origins": "*"})
    with pytest.raises(ConfigError, match="review_threshold"):
        resolve_settings({"model": "b", "review_threshold": "1.5"})
    assert "s3cret-key" not in repr(ServeSettings("b", api_keys=(ApiKey("n", "s3cret-key"),)))  # never printed
    assert ServeSettings("b", api_keys=(ApiKey("n", "s3cret-key"),)).public()["api_keys"] == ["n"]


def test_the_old_catalogue_setting_still_works_with_a_warning(tmp_path: Path, caplog) -> None:
    from skulens.config import ConfigError
    from skulens.serve.settings import resolve_settings

    cfg = tmp_path / "serve.toml"
    cfg.write_text('model = "b"\ncatalogue = "shop/manifest.csv"\n')
    with caplog.at_level("WARNING", logger="skulens.serve.settings"):
        assert resolve_settings({}, cfg).data == "shop/manifest.csv"
    assert "'catalogue' is deprecated" in caplog.text and "'data'" in caplog.text
    assert resolve_settings({"data": "other.csv"}, cfg).data == "other.csv"  # the flag still wins over the file
    cfg.write_text('model = "b"\ncatalogue = "a.csv"\ndata = "b.csv"\n')
    with pytest.raises(ConfigError, match="both 'catalogue' and 'data'"):
        resolve_settings({}, cfg)

def test_api_keys_from_a_file_and_the_environment(tmp_path: Path) -> None:
    from skulens.config import ConfigError
    from skulens.serve.settings import load_api_keys

    f = tmp_path / "keys"
    f.write_text("# shop keys\nalice:alice-secret-1\n\nbare-secret-2\n")
    keys = load_api_keys(f, env="bob:bob-secret-3")
    assert [k.name for k in keys][::2] == ["alice", "bob"] and keys[1].name.startswith("key-")
    assert [k.secret for k in keys] == ["alice-secret-1", "bare-secret-2", "bob-secret-3"]
    with pytest.raises(ConfigError, match="shorter than 8"):
        load_api_keys(None, env="short")
    for secret in ("pässwort123", "пароль-секрет", "tab\there-key"):  # a UTF-8 client's bytes never matched
        with pytest.raises(ConfigError, match="printable ASCII"):
            load_api_keys(None, env=f"uni:{secret}")


def test_serve_and_inventory_help_import_neither_torch_nor_fastapi() -> None:
    assert modules_loaded_by([["serve", "--help"], ["inventory", "scan", "--help"]],
                             ("torch", "fastapi", "uvicorn")) == []


def test_explain_route_returns_the_predicted_class_and_a_heatmap(client, val_photo) -> None:
    import base64
    import io

    from PIL import Image

    data, label = val_photo
    r = client.post("/v1/explain", files=_upload(data))
    assert r.status_code == 200, r.text
    body = r.json()
    predicted = client.post("/v1/predict", files=_upload(data)).json()["prediction"]["fine_label"]
    assert body["label"] == predicted == label and 0 < body["confidence"] <= 1
    png = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert png.format == "PNG" and png.size[0] == png.size[1] > 0
    other = client.post("/v1/explain", files=_upload(data), data={"target": "oat-milk"}).json()
    assert other["label"] == "oat-milk" and other["confidence"] < body["confidence"]
    bad = client.post("/v1/explain", files=_upload(data), data={"target": "no-such-product"})
    assert bad.status_code == 422 and "no-such-product" in bad.text
    assert client.post("/v1/explain", files=_upload(b"not an image")).status_code == 415


def test_the_service_runs_the_exported_onnx_model(tiny_bundle, model, tiny_catalogue: Path, tmp_path: Path) -> None:
    """`skulens serve --backend onnx`: the same answers as PyTorch; Grad-CAM and enrolment say why not."""
    import shutil

    pytest.importorskip("onnxruntime")
    from skulens.config import ConfigError
    from skulens.deploy.onnx import export_onnx

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    export_onnx(bundle)  # writes bundle/model.onnx
    photos = sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))
    with TestClient(create_app(_settings(tiny_bundle, model=str(bundle), backend="onnx"))) as c:
        for p in photos:
            r = c.post("/v1/predict", files=_upload(p.read_bytes()), data={"top_k": "3"})
            assert r.status_code == 200, r.text
            direct = model.predict([p.read_bytes()], top_k=3)[0]
            got = r.json()["prediction"]
            assert got["fine_label"] == direct.fine_label
            assert got["confidence"] == pytest.approx(direct.confidence, abs=1e-3)
        r = c.post("/v1/explain", files=_upload(photos[0].read_bytes()))
        assert r.status_code == 501 and "--backend onnx" in r.json()["detail"]
    # the exported file named as --model, with an index: its folder's aligner is read (the .onnx file was read as
    # one: "not a readable text aligner", and the service did not start)
    import numpy as np

    from skulens.data.catalogue import load_catalogue
    from skulens.search.align import TextAligner
    from skulens.search.catalogue_index import build_catalogue_index

    build_catalogue_index(model, load_catalogue(tiny_catalogue), str(tmp_path / "index"))
    rng = np.random.default_rng(0)
    dim = model.card.embedding_dim
    TextAligner(rng.normal(size=(dim, 384)).astype(np.float32), np.zeros(dim, np.float32), 0.07).save(bundle)
    with TestClient(create_app(_settings(tiny_bundle, model=str(bundle / "model.onnx"), backend="onnx",
                                         index=str(tmp_path / "index")))) as c:
        r = c.post("/v1/search", data={"text": "oat milk", "mode": "aligned", "k": "2"})
        assert r.status_code == 200, r.text
    with pytest.raises(ConfigError, match="backend"):
        _settings(tiny_bundle, backend="tensorflow")
    for bad, needle in (({"precision": "fp32"}, "precision must be one of"),
                        ({"precision": "off", "backend": "onnx"}, "for the PyTorch backend")):
        with pytest.raises(ConfigError, match=needle):
            _settings(tiny_bundle, **bad)


def test_serve_precision_reaches_the_model(tiny_bundle) -> None:
    """No serve setting chose the numerics: a service on a CPU with bf16 could not be pinned to fp32."""
    from skulens.serve.state import ServiceState

    state = ServiceState.load(_settings(tiny_bundle, precision="off", warmup=False))
    assert state.model.precision == "off"


def test_inventory_counts_carry_names_and_change_times_and_the_csv_names_products(tiny_bundle, model, inventory_db,
                                                                                  tmp_path) -> None:
    from datetime import datetime

    with TestClient(create_app(_settings(tiny_bundle, tmp_path, inv=inventory_db), model=model)) as c:
        for label, body in (("oat-milk", {"count": 3, "reason": "recounted"}),
                            ("red-apple", {"delta": 2, "reason": "received"})):
            assert c.post(f"/v1/inventory/products/{label}/adjust", json=body, headers=AUTH).status_code == 200
        inv = c.get("/v1/inventory").json()
        assert inv["counts"] == {"oat-milk": 3, "red-apple": 2}
        names = {lab: c.get(f"/v1/products/{lab}").json()["title"] for lab in inv["counts"]}
        assert inv["titles"] == names
        assert set(inv["updated_at"]) == {"oat-milk", "red-apple"}
        assert all(datetime.fromisoformat(t).utcoffset().total_seconds() == 0 for t in inv["updated_at"].values())
        assert inv["updated_at"]["red-apple"] >= inv["updated_at"]["oat-milk"]
        text = c.get("/v1/inventory/export.csv").text
        assert text.splitlines()[0] == "label,count,updated_at,title"  # the old columns first, in their order
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {r["label"]: (int(r["count"]), r["updated_at"], r["title"]) for r in rows} == {
            lab: (n, inv["updated_at"][lab], names[lab]) for lab, n in inv["counts"].items()}
        audit = c.get("/v1/inventory/audit?limit=2", headers=AUTH).json()
        assert [(a["label"], a["delta"], a["count_after"], a["actor"], a["detail"]) for a in audit] == [
            ("red-apple", 2, 2, "tester", {"reason": "received", "mode": "delta"}),
            ("oat-milk", 3, 3, "tester", {"reason": "recounted", "mode": "set"})]


def test_support_yes_no_comes_from_the_attribute_table_over_http(client, model, val_photo) -> None:
    """The tiny catalogue's table: only oat-milk is lactose free. The reply is a verdict from the catalogue
    when every likely candidate gives the same one, else a hand-off naming the candidates."""
    pred = model.predict([val_photo[0]], top_k=5)[0]
    r = client.post("/v1/support/ask", files=_upload(val_photo[0]), data={"question": "Is it lactose free?"})
    assert r.status_code == 200, r.text
    body = r.json()
    likely, mass = [], 0.0
    for label, p in pred.top_k:
        if mass >= 0.95:
            break
        likely.append(label)
        mass += p
    if "oat-milk" not in likely:
        assert body["verdict"] == "no" and body["source"] == "catalogue" and body["field"] == "attribute"
        assert body["answer"].startswith("No:") and "not lactose free" in body["answer"]
    else:
        assert body["handoff"] and body["verdict"] is None and "depends on which product" in body["reason"]
    r = client.post("/v1/support/ask", files=_upload(val_photo[0]), data={"question": "Is it vegan?"})
    assert r.json()["handoff"] is True and r.json()["verdict"] is None  # nothing in the catalogue says


def test_readyz_waits_for_the_warm_up_and_reports_it(tiny_bundle, model, tmp_path) -> None:
    """/readyz answers 503 "warming up" until every batch size ran once, then 200 with the report;
    with --no-warmup it is ready at once and reports nothing."""
    import threading

    from skulens.serve import warmup

    gate = threading.Event()
    real = warmup.warm_service

    def held(state):  # the test decides when the warm-up may finish
        gate.wait(30)
        return real(state)

    settings = _settings(tiny_bundle, max_batch=4)
    warmup.warm_service = held
    try:
        with TestClient(create_app(settings, model=model)) as c:
            r = c.get("/readyz")
            assert r.status_code == 503 and any("warming up" in p for p in r.json()["problems"])
            assert "503" in c.get("/openapi.json").json()["paths"]["/readyz"]["get"]["responses"]  # documented too
            assert c.get("/healthz").status_code == 200  # alive while warming
            gate.set()
            for _ in range(300):
                r = c.get("/readyz")
                if r.status_code == 200:
                    break
                time.sleep(0.05)
            assert r.status_code == 200, r.json()
            report = r.json()["startup"]["warmup"]
            assert report["model"]["batch_sizes"] == [1, 2, 3, 4] and report["seconds"] > 0
            assert "text" in report or "support" not in c.get("/v1/info").json().get("features", {})
    finally:
        warmup.warm_service = real
    with TestClient(create_app(_settings(tiny_bundle, warmup=False), model=model)) as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["startup"] == {}


def test_warm_up_batch_sizes() -> None:
    from skulens.serve.warmup import batch_sizes

    assert batch_sizes(4) == [1, 2, 3, 4]
    assert batch_sizes(16) == list(range(1, 17))
    assert batch_sizes(100) == [*range(1, 17), 32, 64, 100]


def test_serve_says_a_taken_port_in_one_line_before_loading_the_model(tiny_bundle, capsys) -> None:
    """A port another process held was uvicorn's startup failure: a log line and exit 3 (skulens' code for
    storage refusing writes), after the model had loaded. `--api-keys SECRET` was taken as --api-keys-file."""
    import socket

    from skulens.cli import main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", "-m", str(tiny_bundle.bundle), "--port", str(port), "--no-warmup"]) == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "-m", str(tiny_bundle.bundle), "--api-keys", "ops:s3cret-key"])


def test_form_fields_the_route_does_not_read_are_refused(client, val_photo) -> None:
    """A misspelt form field was dropped: min_confidense=1 answered with the default threshold, a second image
    was ignored. Form bodies are now as strict as the JSON ones."""
    data, _ = val_photo
    r = client.post("/v1/predict", files=_upload(data), data={"min_confidense": "1"})
    assert r.status_code == 422 and "'min_confidense'" in r.json()["detail"] and "min_confidence" in r.json()["detail"]
    two = [("image", ("a.jpg", data, "image/jpeg")), ("image", ("b.jpg", data, "image/jpeg"))]
    r = client.post("/v1/predict", files=two)
    assert r.status_code == 422 and "'image' sent 2 times" in r.json()["detail"]
    r = client.post("/v1/tag", files=_upload(data), data={"topk": "3"})
    assert r.status_code == 422 and "'topk'" in r.json()["detail"]
    for route, field in (("/v1/predict", "min_confidence"), ("/v1/tag", "min_score")):  # it said "<= 1" of a NaN
        r = client.post(route, files=_upload(data), data={field: "nan"})
        assert r.status_code == 422 and r.json()["detail"] == f"{field}: Input should be a finite number", r.text
    for field in ({"top_k": "3"}, {"min_score": "0.9"}):  # no vocabulary here: read by nothing, answered 200
        r = client.post("/v1/tag", files=_upload(data), data=field)
        assert r.status_code == 422 and "settings of the vocabulary tags" in r.json()["detail"]
    r = client.post("/v1/predict", files=_upload(data), data={"top_k": "2" * (1024 * 1024 + 10)})
    assert r.status_code == 400 and "maximum size" in r.json()["detail"]  # Starlette's own words, kept
    assert client.post("/v1/predict", files=_upload(data), data={"top_k": "2"}).status_code == 200
    # query strings too: a misspelt or misplaced parameter answered 200 as if nothing had been asked
    r = client.post("/v1/predict?top_k=1", files=_upload(data))
    assert r.status_code == 422 and "unknown query parameter(s) 'top_k': /v1/predict takes no query" in r.text
    r = client.get("/v1/products?limt=1")
    assert r.status_code == 422 and "'limt'" in r.text and "reads limit, offset, q" in r.text
    assert client.get("/v1/products?limit=1").status_code == 200
