"""Decoded images held in memory, so epochs never re-decode JPEGs, and a Dataset over them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .decode import ImageDecodeError, decode_image
from .transforms import to_uint8_tensor

__all__ = ["DecodedImages", "TensorImageDataset", "decode_all"]

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    """uint8 CHW tensors for the files that decoded, and the files that did not (with reasons)."""

    images: list[torch.Tensor]
    kept: list[int]  # index into the input paths of each decoded image
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _decode_one(path: Path, short_side: int) -> torch.Tensor:
    return to_uint8_tensor(decode_image(path, reduce_to=short_side))


def decode_all(paths: Sequence[Path], short_side: int, *, desc: str = "decode", workers: int = 2,
               progress: bool = True) -> DecodedImages:
    """Decode once at the short side training needs; bad files are skipped, counted and listed."""
    images: list[torch.Tensor] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []

    def job(p: Path) -> torch.Tensor | ImageDecodeError:
        try:
            return _decode_one(p, short_side)
        except ImageDecodeError as e:
            return e

    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(job, paths)
        for i, r in enumerate(tqdm(results, total=len(paths), desc=desc, disable=not progress, leave=False)):
            if isinstance(r, ImageDecodeError):
                failed.append((str(paths[i]), r.reason))
            else:
                images.append(r)
                kept.append(i)
    if failed:
        log.warning("%s: skipped %d undecodable image(s), e.g. %s", desc, len(failed), failed[0][0])
    return DecodedImages(images, kept, failed)


class TensorImageDataset(torch.utils.data.Dataset):
    """Items: (image tensor, fine target, coarse target, attribute target vector)."""

    def __init__(self, images: list[torch.Tensor], fine: torch.Tensor, coarse: torch.Tensor,
                 attributes: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images, self.fine, self.coarse, self.attributes = images, fine, coarse, attributes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.fine[i], self.coarse[i], self.attributes[i]
