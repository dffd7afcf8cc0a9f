"""Grocery embeddings cached on disk (.npz, no pickle), shared by the search benchmarks.

    python benchmarks/_grocery_embeddings.py --bundle runs/bench5/bundle

Embeds train, val and the 81 catalogue photos once per model; the cache key is the model's weights file
(size + mtime) so a retrained bundle is re-embedded.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


@dataclass
class GroceryEmbeddings:
    classes: list[str]
    coarse_of: dict[str, str]
    train_x: np.ndarray
    train_y: np.ndarray  # class index
    val_x: np.ndarray
    val_y: np.ndarray
    iconic_x: np.ndarray  # one row per class, in class order
    train_paths: list[str]
    val_paths: list[str]


def _key(model_name: str) -> str:
    if model_name.startswith("pretrained:"):
        return model_name.replace(":", "_")
    w = Path(model_name) / "model.safetensors"
    st = w.stat()
    return "bundle_" + hashlib.sha256(f"{w.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def load_embeddings(model_name: str, data: str, cache_dir: str = "runs/search_cache",
                    progress: bool = True) -> GroceryEmbeddings:
    import skulens
    from skulens.data.catalogue import load_catalogue
    from skulens.search.embeddings import embed_paths

    cat = load_catalogue(data)
    classes = list(cat.classes)
    idx = {c: i for i, c in enumerate(classes)}
    train, val = cat.split("train"), cat.split("val")
    cache = Path(cache_dir) / f"{_key(model_name)}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        tx, vx, ix = z["train"], z["val"], z["iconic"]
    else:
        model = skulens.load(model_name)
        out = []
        for paths in ([s.path for s in train], [s.path for s in val], [cat.products[c].image for c in classes]):
            e = embed_paths(model, paths, progress=progress)
            if e.failed:
                raise RuntimeError(f"undecodable grocery images: {e.failed[:3]}")
            out.append(e.vectors)
        tx, vx, ix = out
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, train=tx, val=vx, iconic=ix)
    return GroceryEmbeddings(
        classes, dict(cat.hierarchy), tx, np.array([idx[s.label] for s in train]), vx,
        np.array([idx[s.label] for s in val]), ix, [str(s.path) for s in train], [str(s.path) for s in val])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="runs/bench5/bundle")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "grocery-store"))
    ns = ap.parse_args()
    for name in (ns.bundle, "pretrained:efficientnet_lite2"):
        e = load_embeddings(name, ns.data)
        print(name, e.train_x.shape, e.val_x.shape, e.iconic_x.shape)
