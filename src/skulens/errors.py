"""The errors a user can cause (bad data, bad files, bad config); the CLI prints them as one line."""

from __future__ import annotations

__all__ = ["USER_ERRORS"]


def _collect() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data.catalogue import CatalogueError
    from .data.decode import ImageDecodeError
    from .models.backbones import WeightsError
    from .models.bundle import BundleError
    from .search.enroll import EnrolmentError
    from .search.index import IndexStoreError
    from .search.shopping_log import ShoppingLogError

    return (ConfigError, CatalogueError, ImageDecodeError, WeightsError, BundleError, ShoppingLogError,
            IndexStoreError, EnrolmentError,
            FileNotFoundError,
            ImportError)


USER_ERRORS = _collect()
