"""The skulens service: REST API, web page, inventory intake and customer-service replies.

`create_app(settings)` builds the FastAPI app (imports fastapi); `ServeSettings` and the inventory
store need neither fastapi nor torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `skulens serve --help` and `skulens inventory` must not import fastapi.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServeSettings":
        from .settings import ServeSettings

        return ServeSettings
    raise AttributeError(name)
