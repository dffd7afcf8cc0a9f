"""The web pages: plain HTML/JS/CSS shipped in the package, no build step."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


def _page(name: str) -> HTMLResponse:
    html = (resources.files("skulens.serve") / "static" / name).read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> HTMLResponse:
    return _page("index.html")


@router.api_route("/inventory", methods=["GET", "HEAD"])
async def inventory_page() -> HTMLResponse:
    return _page("inventory.html")


@router.api_route("/docs", methods=["GET", "HEAD"])
async def api_docs() -> HTMLResponse:
    """The API reference: Swagger UI 5 (OpenAPI 3.1) from static/swagger-ui/, so it works offline."""
    return _page("docs.html")
