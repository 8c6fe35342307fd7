"""The diffusion trainer's data: report-image pairs with their labeler readings, and what the frozen models make of
them computed once (latents, text tokens, image embeddings), in memory or in sharded safetensors caches."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch.utils.data import Dataset

from shared.backbone.clip import RadCLIP
from shared.data.dataset import ReportImageDataset
from shared.data.region_masks import load_region_mask, read_region_masks
from shared.data.shard_cache import ShardedCache, files_digest, module_digest
from shared.data.transforms import PreprocessConfig
from shared.labels import CHEXPERT_LABELS
from shared.text.labeler import ReportLabeler

from .conditioning import attributes_from_results
from .pipeline import backbone_image_embeds, backbone_text_features

logger = logging.getLogger(__name__)

__all__ = ["DiffusionPairs", "CachedPairs"]


class DiffusionPairs(Dataset):
    """Report-image pairs with what the diffusion losses need.

    Each item: ``image`` (1, S, S) in [-1, 1], ``report``, ``index`` (for the noise filter),
    ``identity_image`` (another study of the same patient; the study itself when it is the
    patient's only one), ``patient_id``, ``attributes`` (14, 3) and ``labels`` (14,) from the
    report labeler (never from a labels file: real data has none). With ``region_masks`` (a masks file,
    :mod:`shared.data.region_masks`) also ``region`` (1, S, S) in {0, 1}: where the study's finding is,
    zeros for a study the file does not name.
    """

    def __init__(self, annotation: str, split: str, image_size: int, labeler: ReportLabeler | None = None,
                 image_root: str | None = None, allow_outside_root: bool = False,
                 region_masks: str | None = None) -> None:
        self.base = ReportImageDataset(annotation, split, image_root, image_size=image_size,
                                       allow_outside_root=allow_outside_root)
        self.region_paths = _region_paths(region_masks, self.base.records, split) if region_masks else None
        self.preprocess = PreprocessConfig(image_size)
        labeler = labeler or ReportLabeler()
        # one labeler pass per report gives both the attribute tokens and the finding labels
        results = [labeler.label(r) for r in self.base.reports]
        self.attributes = attributes_from_results(results)
        self.labels = torch.as_tensor(np.stack([r.vector() for r in results]) if results
                                      else np.zeros((0, len(CHEXPERT_LABELS)), np.float32)).nan_to_num(0.0)
        by_patient: dict[str, list[int]] = {}
        for i, rec in enumerate(self.base.records):
            by_patient.setdefault(rec["patient_id"], []).append(i)
        self.partner = [0] * len(self.base)
        for members in by_patient.values():
            for k, i in enumerate(members):
                self.partner[i] = members[(k + 1) % len(members)]

    def __len__(self) -> int:
        return len(self.base)

    def region(self, index: int) -> torch.Tensor:
        """(1, S, S) region mask of study ``index`` in {0, 1} (zeros where the masks file names none)."""
        path = None if self.region_paths is None else self.region_paths[index]
        if path is None:
            size = self.preprocess.image_size
            return torch.zeros(1, size, size)
        return load_region_mask(path, self.preprocess)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        partner = self.partner[index]
        identity = item["images"][0] if partner == index else self.base[partner]["images"][0]
        out = {"image": item["images"][0], "report": item["report"], "index": torch.tensor(index),
               "identity_image": identity, "patient_id": item["patient_id"],
               "attributes": self.attributes[index], "labels": self.labels[index]}
        if self.region_paths is not None:
            out["region"] = self.region(index)
        return out


def _region_paths(masks_file: str, records: Sequence[dict[str, Any]], split: str) -> list[Path | None]:
    """Each record's mask PNG (None: no mask); a file that names none of the split's studies is an error, the
    sign of masks made for other data."""
    masks = read_region_masks(masks_file)
    paths = [masks.get(r["id"]) for r in records]
    if records and split == "train" and not any(p is not None for p in paths):
        raise ValueError(f"{masks_file}: none of its {len(masks)} masks names a {split} study of the annotation")
    logger.info("%s: region masks for %d of %d %s studies", masks_file, sum(p is not None for p in paths),
                len(records), split)
    return paths


class CachedPairs(Dataset):
    """What the frozen models make of every training pair, computed once: the autoencoder's
    latent distribution (mean, std), the backbone's text tokens and image embedding, the image
    itself (for the trained identity encoder) and, with region masks, ``region`` (1, h, w) at the latents'
    size. Items carry the keys the UNet stage reads.

    In memory by default; with ``cache_dir`` the rows go to a :class:`~shared.data.shard_cache.ShardedCache`
    under it (every ``accelerate`` process computes its share of the shards on its device; training reads
    them memory-mapped, so memory stays flat as the data set grows), keyed by the data (annotation, ids,
    image files, size) and the frozen models' weights. A ``shard_size`` that is a multiple of ``batch_size``
    (the defaults: 4096, 64) runs the frozen models on the same batches as in memory, so the rows are the
    same floats either way.
    """

    @torch.no_grad()
    def __init__(self, pairs: DiffusionPairs, vae: AutoencoderKL, backbone: RadCLIP, image_embeds: bool,
                 batch_size: int = 64, cache_dir: str | None = None, shard_size: int = 4096) -> None:
        self.pairs = pairs
        self.with_embeds = image_embeds
        self.cache: ShardedCache | None = None
        if cache_dir is not None:
            self.cache = self._sharded(vae, backbone, batch_size, cache_dir, shard_size)
            return
        rows = self._compute(vae, backbone, range(len(pairs)), batch_size, torch.device("cpu"))
        self.images, self.latent_mean, self.latent_std = rows["image"], rows["latent_mean"], rows["latent_std"]
        self.tokens, self.mask = rows["tokens"], rows["mask"]
        self.image_embeds, self.region = rows.get("image_embeds"), rows.get("region")

    def _compute(self, vae: AutoencoderKL, backbone: RadCLIP, items: range, batch_size: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
        """The rows of ``items``: {name: (len(items), ...)} on the CPU, computed on ``device``."""
        out: dict[str, list[torch.Tensor]] = {}
        for k in range(items.start, items.stop, batch_size):
            batch = [self.pairs.base[i] for i in range(k, min(k + batch_size, items.stop))]
            x = torch.stack([it["images"][0] for it in batch]).to(device)
            dist = vae.encode(x).latent_dist
            tok, mask = backbone_text_features(backbone, [it["report"] for it in batch], device)
            row = {"image": x, "latent_mean": dist.mean, "latent_std": dist.std, "tokens": tok, "mask": mask}
            if self.pairs.region_paths is not None:
                # a latent cell is in the region when any of its pixels is: a finding one pixel wide keeps its cell
                masks = torch.stack([self.pairs.region(i) for i in range(k, min(k + batch_size, items.stop))])
                row["region"] = torch.nn.functional.adaptive_max_pool2d(masks, dist.mean.shape[-2:])
            if self.with_embeds:
                row["image_embeds"] = backbone_image_embeds(backbone, x)
            for name, value in row.items():
                out.setdefault(name, []).append(value.cpu())
        return {name: torch.cat(values) for name, values in out.items()}

    def _sharded(self, vae: AutoencoderKL, backbone: RadCLIP, batch_size: int, cache_dir: str,
                 shard_size: int) -> ShardedCache:
        from accelerate import PartialState

        base = self.pairs.base
        description = {
            "kind": "diffusion_pairs", "annotation": hashlib.sha256(base.annotation.read_bytes()).hexdigest(),
            "ids": hashlib.sha256("\n".join(r["id"] for r in base.records).encode()).hexdigest(),
            "files": files_digest([r["paths"][0] for r in base.records]), "image_size": base[0]["images"].shape[-1],
            "vae": module_digest(vae), "backbone": module_digest(backbone), "image_embeds": self.with_embeds,
            "context_length": backbone.context_length}
        if self.pairs.region_paths is not None:
            description["region_masks"] = files_digest([p for p in self.pairs.region_paths if p is not None])
        device = PartialState().device
        vae.to(device)
        backbone.to(device)
        try:
            return ShardedCache.build(cache_dir, description, len(self.pairs),
                                      lambda items: self._compute(vae, backbone, items, batch_size, device),
                                      shard_size)
        finally:
            vae.to("cpu")
            backbone.to("cpu")

    def identity_images(self, indices: Sequence[int]) -> torch.Tensor:
        """The images (B, 1, S, S) of studies ``indices`` (the identity bank is filled from them)."""
        if self.cache is not None:
            return torch.stack([self.cache[int(i)]["image"] for i in indices])
        return self.images[list(indices)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        partner = self.pairs.partner[index]
        if self.cache is not None:
            row = self.cache[index]
            identity = row["image"] if partner == index else self.cache[partner]["image"]
        else:
            row = {"latent_mean": self.latent_mean[index], "latent_std": self.latent_std[index],
                   "tokens": self.tokens[index], "mask": self.mask[index]}
            if self.image_embeds is not None:
                row["image_embeds"] = self.image_embeds[index]
            if self.region is not None:
                row["region"] = self.region[index]
            identity = self.images[partner]
        item = {"index": torch.tensor(index), "latent_mean": row["latent_mean"], "latent_std": row["latent_std"],
                "tokens": row["tokens"], "mask": row["mask"], "identity_image": identity,
                "patient_id": self.pairs.base.records[index]["patient_id"],
                "attributes": self.pairs.attributes[index], "labels": self.pairs.labels[index]}
        if self.with_embeds:
            item["image_embeds"] = row["image_embeds"]
        if self.pairs.region_paths is not None:
            item["region"] = row["region"]
        return item
