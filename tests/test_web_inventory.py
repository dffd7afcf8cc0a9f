"""The inventory page as a shop employee uses it, in a real headless Chromium: stock changed by hand (sold,
broken, received, recounted), the recent changes (audit log), and the counts table (names, search, sort, last
change) with its CSV export."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from test_web import KEY, browser, checked_page, model, page, playwright_api, site, site_root  # noqa: F401

HEADERS = {"X-API-Key": KEY}
expect = playwright_api.expect


def _open(pg, url: str) -> None:
    pg.goto(url + "/inventory")
    pg.fill("#api-key", KEY)
    pg.dispatch_event("#api-key", "change")


def _get(pg, url: str, path: str):
    r = pg.request.get(url + path, headers=HEADERS)
    assert r.ok, r.text()
    return r


def _local(iso: str, tz: str) -> str:
    return datetime.fromisoformat(iso).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def _set_counts(pg, url: str, counts: dict[str, int]) -> None:
    """Stock takes through the API, in this order (each a moment after the one before)."""
    for label, n in counts.items():
        r = pg.request.post(f"{url}/v1/inventory/products/{label}/adjust", headers=HEADERS,
                            data={"count": n, "reason": "test setup"})
        assert r.ok, r.text()
        time.sleep(0.01)


def _adjust(pg, product: str, kind: str, qty: str, note: str = "") -> None:
    pg.select_option("#adjust-product", product)
    pg.select_option("#adjust-kind", kind)
    pg.fill("#adjust-qty", qty)
    pg.fill("#adjust-note", note)
    pg.click("#adjust button[type=submit]")


def _count_cell(pg, label: str):
    return pg.locator(f'#counts tbody tr[data-label="{label}"] td.num')


def test_inventory_page_changes_stock_by_hand_with_a_reason_in_the_history(site, page) -> None:  # noqa: F811
    products = {p["id"]: p["title"] for p in _get(page, site, "/v1/products?limit=1000").json()}
    assert "oat-milk" in products
    title = products["oat-milk"]
    before = _get(page, site, "/v1/inventory").json()["counts"].get("oat-milk", 0)
    _open(page, site)
    # The product is picked from the existing products only (a <select>: nothing to mistype, nothing invented).
    options = page.locator("#adjust-product option:not([value=''])")
    expect(options).to_have_count(len(products), timeout=30_000)
    assert {options.nth(i).get_attribute("value") for i in range(len(products))} == set(products)
    expect(page.locator("#adjust-product option[value='oat-milk']")).to_have_text(
        title if title == "oat-milk" else f"{title} (oat-milk)")

    first = page.locator("#audit tbody tr").first.locator("td")
    row = page.locator('#counts tbody tr[data-label="oat-milk"]')

    # Recounted: the count is set; the history says "set to", with what it was.
    _adjust(page, "oat-milk", "recounted", "10", "shelf count")
    expect(page.locator("#status")).to_have_text(f"Recounted {title}: now 10 in stock (was {before}).",
                                                 timeout=30_000)
    expect(_count_cell(page, "oat-milk")).to_have_text("10")
    expect(first).to_have_text([re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$"), title, f"set to 10 (was {before})",
                                "10", "recounted: shelf count", "web"])
    expect(page.locator("#adjust-current")).to_have_text("in stock: 10")

    # Sold 2: the count drops by 2, the reason is in the history.
    _adjust(page, "oat-milk", "sold", "2", "till 3")
    expect(page.locator("#status")).to_have_text(f"Sold 2 × {title}: now 8 in stock (was 10).", timeout=30_000)
    expect(_count_cell(page, "oat-milk")).to_have_text("8")
    expect(first).to_have_text([re.compile(r"\d\d:\d\d$"), title, "-2", "8", "sold: till 3", "web"])
    expect(row).to_have_count(1)

    # Broken, received (no note: the reason is the kind of change).
    _adjust(page, "oat-milk", "broken", "1")
    expect(_count_cell(page, "oat-milk")).to_have_text("7", timeout=30_000)
    expect(first.nth(2)).to_have_text("-1")
    expect(first.nth(4)).to_have_text("broken")
    _adjust(page, "oat-milk", "received", "3")
    expect(_count_cell(page, "oat-milk")).to_have_text("10", timeout=30_000)
    expect(first.nth(2)).to_have_text("+3")
    expect(first.nth(4)).to_have_text("received")

    # More sold than in stock: refused, nothing changes.
    _adjust(page, "oat-milk", "sold", "11")
    expect(page.locator("#status")).to_contain_text("Not changed: 422", timeout=30_000)
    expect(page.locator("#status")).to_have_class("error")
    expect(_count_cell(page, "oat-milk")).to_have_text("10")
    expect(first.nth(4)).to_have_text("received")

    # The audit log holds what the page said: actor (the key's name), reason, and a stock take as such.
    audit = _get(page, site, "/v1/inventory/audit?limit=4").json()
    assert [(a["action"], a["label"], a["delta"], a["count_after"], a["actor"]) for a in audit] == [
        ("adjust", "oat-milk", 3, 10, "web"), ("adjust", "oat-milk", -1, 7, "web"),
        ("adjust", "oat-milk", -2, 8, "web"), ("adjust", "oat-milk", 10 - before, 10, "web")]
    assert [a["detail"] for a in audit] == [
        {"reason": "received", "mode": "delta"}, {"reason": "broken", "mode": "delta"},
        {"reason": "sold: till 3", "mode": "delta"}, {"reason": "recounted: shelf count", "mode": "set"}]
    assert _get(page, site, "/v1/inventory").json()["counts"]["oat-milk"] == 10
    # Newest first, one row per audit line.
    ids = [str(a["id"]) for a in audit]
    assert [page.locator("#audit tbody tr").nth(i).get_attribute("data-id") for i in range(4)] == ids


def test_inventory_history_refreshes_after_an_intake_and_a_review(site, page, tmp_path: Path) -> None:  # noqa: F811
    from PIL import Image

    shot = tmp_path / "unsure.jpg"
    Image.new("RGB", (72, 72), (131, 127, 119)).save(shot, format="JPEG")  # this server's threshold is 1.0
    _open(page, site)
    with page.expect_response(lambda r: r.url.endswith("/v1/inventory/intake")) as response:
        page.set_input_files("#intake-input", str(shot))
    [result] = response.value.json()["results"]
    assert result["status"] == "review"
    first = page.locator("#audit tbody tr").first.locator("td")
    expect(first.nth(2)).to_have_text("to review", timeout=30_000)  # the intake's line, no reload
    expect(first.nth(4)).to_have_text(f"unsure ({100 * result['confidence']:.1f}%)")
    [queued] = _get(page, site, "/v1/inventory/audit?limit=1").json()
    assert queued["action"] == "review_queued" and queued["photo"] == result["sha256"]

    item = page.locator(f'.review-item[data-id="{result["sha256"]}"]')
    button = item.locator("button.candidate").first
    expect(button).to_be_visible(timeout=30_000)
    label = button.get_attribute("data-label")  # the button reads "name 83.4%"; the key rides along
    title = _get(page, site, f"/v1/products/{label}").json()["title"]
    assert button.text_content().startswith(title)
    before = _get(page, site, "/v1/inventory").json()["counts"].get(label, 0)
    button.click()
    expect(item).to_have_count(0, timeout=30_000)
    expect(first).to_have_text([re.compile(r"\d\d:\d\d$"), title, "+1", str(before + 1),
                                re.compile(r"^review: (confirmed|corrected \(the model said .+\))$"), "web"],
                               timeout=30_000)
    decided = _get(page, site, "/v1/inventory/audit?limit=2").json()
    assert [a["action"] for a in decided][1] == "review_queued"
    assert decided[0]["action"] in ("review_confirmed", "review_corrected") and decided[0]["label"] == label
    rows = page.locator("#audit tbody tr")
    assert [rows.nth(i).get_attribute("data-id") for i in range(2)] == [str(a["id"]) for a in decided]


def test_inventory_counts_have_names_search_sort_last_change_and_csv_titles(site, page) -> None:  # noqa: F811
    # Distinct counts and change times, so every sort order differs from the others.
    _set_counts(page, site, {"oat-milk": 9, "red-apple": 2, "green-apple": 5})
    inv = _get(page, site, "/v1/inventory").json()
    assert set(inv["counts"]) == {"oat-milk", "red-apple", "green-apple"}
    for label in inv["counts"]:  # the API names each product (the server's title), with its last change
        assert inv["titles"][label] == _get(page, site, f"/v1/products/{label}").json()["title"]
        assert datetime.fromisoformat(inv["updated_at"][label]).tzinfo is not None
    titles = inv["titles"]
    _open(page, site)
    rows = page.locator("#counts tbody tr")
    ids = page.locator("#counts tbody tr .label-id")
    expect(rows).to_have_count(3, timeout=30_000)
    for label, n in inv["counts"].items():
        row = page.locator(f'#counts tbody tr[data-label="{label}"]')
        expect(row.locator(".pick")).to_have_text(titles[label])  # the product's name, its id beside it
        expect(row.locator(".label-id")).to_have_text(label)
        expect(row.locator("td.num")).to_have_text(str(n))
        when = row.locator("td.changed time")
        expect(when).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$"))
        expect(when).to_have_attribute("datetime", inv["updated_at"][label])

    by_name = sorted(inv["counts"], key=lambda lab: titles[lab].lower())
    expect(ids).to_have_text(by_name)  # by name at first
    page.click("#counts th[data-sort=count] button")
    expect(ids).to_have_text(["oat-milk", "green-apple", "red-apple"])  # most first
    expect(page.locator("#counts th[data-sort=count]")).to_have_attribute("aria-sort", "descending")
    page.click("#counts th[data-sort=count] button")
    expect(ids).to_have_text(["red-apple", "green-apple", "oat-milk"])
    page.click("#counts th[data-sort=changed] button")
    expect(ids).to_have_text(["green-apple", "red-apple", "oat-milk"])  # newest first
    page.click("#counts th[data-sort=changed] button")
    expect(ids).to_have_text(["oat-milk", "red-apple", "green-apple"])
    page.click("#counts th[data-sort=name] button")
    expect(ids).to_have_text(by_name)

    # The search box hides the rows that do not match, by name or id.
    visible = page.locator("#counts tbody tr:visible .label-id")
    page.fill("#counts-search", "APPLE")
    expect(visible).to_have_text([lab for lab in by_name if "apple" in lab])
    expect(page.locator("#counts-shown")).to_have_text("(2 of 3)")
    expect(page.locator('#counts tbody tr[data-label="oat-milk"]')).to_be_hidden()
    name_only = titles["oat-milk"].lower()[:6]
    if name_only not in "oat-milk":  # the name, not the id, matches (e.g. "oat mi", "oatly ")
        page.fill("#counts-search", name_only)
        expect(visible).to_have_text(["oat-milk"])
    page.fill("#counts-search", "no such product")
    expect(visible).to_have_count(0)
    page.fill("#counts-search", "")
    expect(visible).to_have_count(3)
    expect(page.locator("#counts-shown")).to_have_text("")

    # A row's name picks the product for a change by hand.
    page.click('#counts tbody tr[data-label="red-apple"] .pick')
    expect(page.locator("#adjust-product")).to_have_value("red-apple")
    expect(page.locator("#adjust-current")).to_have_text("in stock: 2")

    # The CSV export: the old columns first, then the product's name.
    with page.expect_download() as dl:
        page.click("#export")
    text = Path(dl.value.path()).read_text(encoding="utf-8")
    assert text.splitlines()[0] == "label,count,updated_at,title"
    exported = list(csv.DictReader(io.StringIO(text)))
    assert {r["label"]: (int(r["count"]), r["updated_at"], r["title"]) for r in exported} == {
        lab: (n, inv["updated_at"][lab], titles[lab]) for lab, n in inv["counts"].items()}


@pytest.fixture
def phone(browser):  # noqa: F811
    """A 390 px wide phone in a time zone half an hour off UTC's hours (so local time is really local)."""
    with checked_page(browser, viewport={"width": 390, "height": 844}, timezone_id="Asia/Kolkata") as pg:
        yield pg


def test_inventory_page_works_on_a_phone_in_local_time(site, phone) -> None:  # noqa: F811
    _open(phone, site)
    _adjust(phone, "red-apple", "recounted", "4", "phone")
    expect(_count_cell(phone, "red-apple")).to_have_text("4", timeout=30_000)
    first = phone.locator("#audit tbody tr").first.locator("td")
    expect(first.nth(4)).to_have_text("recounted: phone")
    entry = _get(phone, site, "/v1/inventory/audit?limit=1").json()[0]
    updated = _get(phone, site, "/v1/inventory").json()["updated_at"]["red-apple"]
    expect(first.nth(0)).to_have_text(_local(entry["ts"], "Asia/Kolkata"))  # "2026-12-02 19:35", not UTC
    expect(phone.locator('#counts tbody tr[data-label="red-apple"] td.changed')).to_have_text(
        _local(updated, "Asia/Kolkata"))
    # Nothing wider than the phone: the form, the counts, the history (its table scrolls in its own box).
    for sel in ("main", "#adjust", "#adjust-product", "#adjust-qty", "#adjust button[type=submit]",
                "#counts-search", "#counts", "#history .table-scroll"):
        box = phone.locator(sel).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390.5, (sel, box)
