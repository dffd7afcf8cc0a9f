"""The errors a user can cause (bad data, bad files, bad config): the CLI prints them as one line, exit 2.

Matched through `sys.modules`, so classifying an error imports nothing: an exception cannot be an instance
of a class whose module was never imported (and an input error found before torch loads stays torch-free).
"""

from __future__ import annotations

import sys

__all__ = ["USER_ERROR_CLASSES", "is_user_error"]

USER_ERROR_CLASSES = (
    ("skulens.config", "ConfigError"),
    ("skulens.data.catalogue", "CatalogueError"),
    ("skulens.data.decode", "ImageDecodeError"),
    ("skulens.detect.annotations", "AnnotationError"),
    ("skulens.detect.model", "DetectorError"),
    ("skulens.models.backbones", "WeightsError"),
    ("skulens.models.bundle", "BundleError"),
    ("skulens.models.inference", "DeviceError"),
    ("skulens.search.enroll", "EnrolmentError"),
    ("skulens.search.index", "IndexStoreError"),
    ("skulens.recommend.shopping_log", "ShoppingLogError"),
    ("skulens.recommend.recommenders", "UnknownProductError"),
    ("skulens.serve.inventory", "InventoryError"),
)


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, ImportError)):
        return True
    for module, name in USER_ERROR_CLASSES:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(exc, getattr(mod, name)):
            return True
    return False
