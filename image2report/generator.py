"""``ReportGenerator``: a trained report model and its tokenizer, ready to write reports.

    gen = ReportGenerator.from_pretrained("runs/report/best")
    reports = gen.generate(images)              # images (B, V, 1, H, W) or (B, 1, H, W), [-1, 1]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from shared.config import read_json
from shared.modeling import RadLoopModel
from shared.text.tokenizer import ReportTokenizer
from shared.zoo import resolve_zoo

from .decoding import DecodingConfig, decode
from .models import REPORT_DECODERS

__all__ = ["ReportGenerator"]


class ReportGenerator:
    def __init__(self, model: RadLoopModel, tokenizer: ReportTokenizer, decoding: DecodingConfig | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decoding = decoding or DecodingConfig(max_length=tokenizer.max_length)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], decoding: DecodingConfig | None = None) -> ReportGenerator:
        """Load any registered report model class from its folder or a ``zoo:NAME`` entry (config.json
        names the class)."""
        path = Path(resolve_zoo(path))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no saved report model in {path} (config.json missing)")
        name = read_json(path / "config.json").get("_class_name")
        classes = {e.builder.__name__: e.builder for e in REPORT_DECODERS.entries()}
        if name not in classes:
            raise ValueError(f"{path} holds a checkpoint of {name}, not of a report model ({sorted(classes)})")
        model = classes[name].from_pretrained(path)
        if model.tokenizer is None:
            raise FileNotFoundError(f"{path} has no report_tokenizer.json beside the weights")
        return cls(model, model.tokenizer, decoding)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, num_beams: int | None = None, batch_size: int = 32) -> list[str]:
        """Reports for images (B, V, 1, H, W) or (B, 1, H, W) normalised to [-1, 1]."""
        if images.dim() == 4:
            images = images[:, None]
        cfg = self.decoding if num_beams is None else DecodingConfig(**{**self.decoding.__dict__,
                                                                        "num_beams": num_beams})
        device = next(self.model.parameters()).device
        out: list[str] = []
        for chunk in images.split(batch_size):
            memory = self.model.encode(chunk.to(device))
            # the model itself decodes with its key/value cache (one new token per step)
            ids = decode(self.model, memory, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, cfg)
            out.extend(self.tokenizer.decode(row.tolist()) for row in ids)
        return out

    def generate_for(self, samples: Sequence[dict], num_beams: int | None = None) -> list[str]:
        """Reports for dataset samples (dicts with ``images``)."""
        return self.generate(torch.stack([s["images"] for s in samples]), num_beams)
