"""The recognise page reads as words: product names (not keys), attributes as words, bars readable on a phone."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_web import (  # noqa: F401
    KEY,
    MIN_CONFIDENCE,
    _one_confidence_format,
    browser,
    model,
    page,
    playwright_api,
    site,
    site_root,
)

# Names the catalogue could give: one long enough to need two lines beside a bar on a phone.
TITLES = {"oat-milk": "Oatly Oat Drink", "red-apple": "Pink Lady Apple",
          "green-apple": "Granny Smith Apple, Extra Large, Organic, Loose from the Orchard"}


@pytest.fixture(scope="module")
def named_site(site):  # noqa: F811
    """This module's server, its products renamed (PATCH /v1/products): names that are not their keys."""
    import httpx

    for label, title in TITLES.items():
        r = httpx.patch(f"{site}/v1/products/{label}", json={"title": title}, headers={"X-API-Key": KEY},
                        timeout=60)
        assert r.status_code == 200, r.text
    return site


def _photo(tiny_catalogue: Path, label: str = "oat-milk") -> Path:
    return tiny_catalogue.parent / "val" / label / f"{label}_000.jpg"


def _attribute_words(attribute: str) -> str:
    group, sep, value = attribute.partition("=")
    return f"{group}: {value}".replace("_", " ") if sep else attribute.replace("_", " ")


def test_predict_names_the_decision_and_each_candidate(named_site, model,  # noqa: F811
                                                       tiny_catalogue: Path) -> None:
    import httpx

    photo = _photo(tiny_catalogue)
    r = httpx.post(f"{named_site}/v1/predict", data={"top_k": "5"}, timeout=60,
                   files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    p = r.json()["prediction"]
    assert p["label"] == "oat-milk" and p["title"] == TITLES["oat-milk"]
    assert [c["title"] for c in p["top_k"]] == [TITLES[c["label"]] for c in p["top_k"]]
    assert len(p["top_k"]) == len(model.classes)


def test_the_page_shows_product_names_and_attribute_words(named_site, page, model,  # noqa: F811
                                                          tiny_catalogue: Path) -> None:
    photo = _photo(tiny_catalogue)
    expected = model.predict([str(photo)], top_k=5, min_confidence=MIN_CONFIDENCE)[0]
    assert expected.level == "fine" and expected.label == "oat-milk"
    assert dict(expected.attributes)  # colour=yellow and/or lactose_free: something to read
    page.goto(named_site + "/")
    page.set_input_files("#file-input", str(photo))
    expect = playwright_api.expect
    expect(page.locator("#top-label")).to_have_text(TITLES["oat-milk"], timeout=60_000)
    names = page.locator("#topk .bar-label")
    expect(names).to_have_count(len(expected.top_k))
    for i, (label, _) in enumerate(expected.top_k):
        expect(names.nth(i)).to_have_text(TITLES[label])
    chips = page.locator("#attributes .chip")
    expect(chips).to_have_count(len(expected.attributes))
    for i, (attribute, p) in enumerate(expected.attributes):
        expect(chips.nth(i)).to_have_text(f"{_attribute_words(attribute)} ({100 * p:.1f}%)")
    assert "_" not in page.text_content("#attributes") and "=" not in page.text_content("#attributes")
    shown = " ".join(page.text_content(s) for s in ("#top-label", "#top-title", "#topk", "#attributes"))
    assert not [label for label in model.classes if label in shown], shown  # no key where people read
    _one_confidence_format(page.text_content("#result"))


def test_on_a_phone_the_candidate_bars_keep_a_readable_width(named_site, page, model,  # noqa: F811
                                                             tiny_catalogue: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(named_site + "/")
    page.set_input_files("#file-input", str(_photo(tiny_catalogue)))
    expect = playwright_api.expect
    rows = page.locator("#topk li")
    expect(rows).to_have_count(min(5, len(model.classes)), timeout=60_000)
    expect(page.locator("#status")).to_contain_text("Done in", timeout=60_000)
    for i in range(rows.count()):
        row = rows.nth(i)
        name, track, value = (row.locator(s) for s in (".bar-label", ".bar-track", ".bar-value"))
        boxes = {"name": name.bounding_box(), "track": track.bounding_box(), "value": value.bounding_box()}
        assert boxes["track"]["width"] >= 120, boxes  # a bar a thumb's width can compare, not a sliver
        # The whole name shows (wrapped, not cut off) and overlaps neither the bar nor its percentage.
        assert name.evaluate("e => e.scrollWidth <= e.clientWidth"), name.text_content()
        expect(name).to_have_text(TITLES[row.get_attribute("data-label")])
        for other in ("track", "value"):
            a, b = boxes["name"], boxes[other]
            apart = (a["x"] + a["width"] <= b["x"] + 0.5 or b["x"] + b["width"] <= a["x"] + 0.5
                     or a["y"] + a["height"] <= b["y"] + 0.5 or b["y"] + b["height"] <= a["y"] + 0.5)
            assert apart, (other, boxes)
        assert boxes["value"]["x"] + boxes["value"]["width"] <= 390  # the percentage is on the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
