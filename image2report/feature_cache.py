"""A frozen image tower's grid features of a whole data set, computed once.

When a report decoder trains on a frozen tower (``model.freeze_visual=true``) the CNN computes the
same grid for a study at every epoch; :class:`GridFeatureCache` computes it once (no augmentation:
the tower's input is the evaluation transform) and, given a folder, keeps it on disk under a key
of everything it depends on: the tower's weights and ``grid_size``, the annotation file's content,
the split, the image transform sizes, the view count and every image file's size and mtime. A
second run on the same data and tower reads the file instead of running the CNN.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from shared.data.dataset import ReportImageDataset, collate_samples
from shared.data.shard_cache import module_digest

logger = logging.getLogger(__name__)

__all__ = ["GridFeatureCache", "CachedFeatureDataset", "collate_cached", "feature_cache_key"]


def feature_cache_key(model: torch.nn.Module, dataset: ReportImageDataset, image_size: int,
                      resize: int | None) -> str:
    """A hex key of everything the cached grids depend on (see the module docstring)."""
    h = hashlib.sha256()
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for rec in dataset.records
             for p in rec["paths"][: dataset.max_views]]
    meta = {"tower": module_digest(model.image_encoder), "grid_size": model.config.grid_size,
            "annotation": hashlib.sha256(dataset.annotation.read_bytes()).hexdigest(),
            "ids": [rec["id"] for rec in dataset.records], "image_size": image_size, "resize": resize,
            "max_views": dataset.max_views, "files": files}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:24]


class GridFeatureCache:
    """Tower grids (N, V, C, h, w) of N studies, looked up by study id.

    Build it with :meth:`build`; ``cache[ids]`` gives the (B, V, C, h, w) grids of a batch.
    """

    def __init__(self, ids: Sequence[str], features: torch.Tensor) -> None:
        if len(ids) != len(features):
            raise ValueError(f"{len(ids)} study ids for {len(features)} feature rows")
        self.index = {sid: i for i, sid in enumerate(ids)}
        self.features = features

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, ids: Sequence[str]) -> torch.Tensor:
        missing = next((sid for sid in ids if sid not in self.index), None)
        if missing is not None:
            raise KeyError(f"study '{missing}' is not in the feature cache")
        return self.features[[self.index[sid] for sid in ids]]

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any, dataset: ReportImageDataset, image_size: int, resize: int | None = None,
              cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 128) -> GridFeatureCache:
        """Run ``model.tower_grid`` (a frozen tower) over every study of ``dataset`` once.

        ``dataset`` must use the evaluation transform (no random crops): the cache stores one grid per
        study. With ``cache_dir`` the grids are read from / written to
        ``<cache_dir>/grid_<key>.safetensors`` (written to a temporary name, then renamed).
        """
        from safetensors.torch import load_file, save_file

        if not getattr(model, "visual_frozen", False):
            raise ValueError("cached tower features need a frozen tower (model.freeze_visual=true)")
        ids = [rec["id"] for rec in dataset.records]
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"grid_{feature_cache_key(model, dataset, image_size, resize)}.safetensors"
            if path.is_file():
                logger.info("tower features of %d studies read from %s", len(ids), path)
                return cls(ids, load_file(str(path))["features"])
        device = next(model.parameters()).device
        chunks = []
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples):
            images = batch["images"].to(device)  # (B, V, 1, H, W)
            grid = model.tower_grid(images.flatten(0, 1))
            chunks.append(grid.reshape(*images.shape[:2], *grid.shape[1:]).float().cpu())
        features = torch.cat(chunks)
        logger.info("tower features of %d studies computed: %s, %.0f MB", len(ids), tuple(features.shape[1:]),
                    features.numel() * 4 / 2**20)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            save_file({"features": features.contiguous()}, str(tmp))
            os.replace(tmp, path)
        return cls(ids, features)


class CachedFeatureDataset(Dataset):
    """The studies of a dataset as ``{"study_id", "report", "features"}`` (no image is read)."""

    def __init__(self, dataset: ReportImageDataset, cache: GridFeatureCache) -> None:
        self.records = [(rec["id"], rec["report"]) for rec in dataset.records]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sid, report = self.records[index]
        return {"study_id": sid, "report": report, "features": self.cache.features[self.cache.index[sid]]}


def collate_cached(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"study_id": [s["study_id"] for s in samples], "report": [s["report"] for s in samples],
            "features": torch.stack([s["features"] for s in samples])}
