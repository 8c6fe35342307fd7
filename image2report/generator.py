"""``ReportGenerator``: a trained report model and its tokenizer, ready to write reports.

    gen = ReportGenerator.from_pretrained("runs/report/best")
    reports = gen.generate(images)              # images (B, V, 1, H, W) or (B, 1, H, W), [-1, 1]

What the model needs at inference is saved in its folder and read back here: the decoding settings
(``generation_config.json``: beams, length, n-gram block, the sentence rules) and the image preprocessing
(``preprocessor_config.json``: size, resize-then-crop, normalisation). A folder saved before these files
existed loads with :class:`DecodingConfig`'s defaults and its own ``image_size`` (said in a log line).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from shared.data.transforms import PREPROCESS_FILE, PreprocessConfig
from shared.modeling import RadLoopModel, saved_class
from shared.saved_settings import load_settings, save_settings
from shared.text.tokenizer import ReportTokenizer

from .decoding import DecodingConfig, decode
from .models import REPORT_DECODERS
from .sentence_rules import SentenceRules

__all__ = ["ReportGenerator", "GENERATION_FILE", "save_inference_settings"]

#: the file of a report-model folder that holds its :class:`DecodingConfig`
GENERATION_FILE = "generation_config.json"


def save_inference_settings(directory: str | os.PathLike[str], decoding: DecodingConfig,
                            preprocess: PreprocessConfig) -> None:
    """Write a report model's decoding settings and image preprocessing into its folder."""
    save_settings(directory, GENERATION_FILE, decoding)
    save_settings(directory, PREPROCESS_FILE, preprocess)


class ReportGenerator:
    """A report model with its tokenizer, decoding settings and preprocessing.

    Args:
        decoding: how to decode (default: ``DecodingConfig`` with the tokenizer's ``max_length``).
        preprocess: how images are made for it (default: resized straight to the model's ``image_size``).
    """

    def __init__(self, model: RadLoopModel, tokenizer: ReportTokenizer, decoding: DecodingConfig | None = None,
                 preprocess: PreprocessConfig | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decoding = decoding or DecodingConfig(max_length=tokenizer.max_length)
        self.preprocess = preprocess or PreprocessConfig(image_size=model.config.image_size)
        self._rules: SentenceRules | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], decoding: DecodingConfig | None = None) -> ReportGenerator:
        """Load any registered report model class from its folder or a ``zoo:NAME`` entry (config.json
        names the class), with the decoding settings and preprocessing saved beside it; ``decoding``
        replaces the saved settings."""
        classes = {e.builder.__name__: e.builder for e in REPORT_DECODERS.entries()}
        path, model_class = saved_class(path, classes, f"a report model ({sorted(classes)})")
        model = model_class.from_pretrained(path)
        if model.tokenizer is None:
            raise FileNotFoundError(f"{path} has no report_tokenizer.json beside the weights")
        decoding = decoding or load_settings(path, GENERATION_FILE, DecodingConfig,
                                             max_length=model.tokenizer.max_length)
        preprocess = load_settings(path, PREPROCESS_FILE, PreprocessConfig, image_size=model.config.image_size)
        return cls(model, model.tokenizer, decoding, preprocess)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """The model, its tokenizer, decoding settings and preprocessing into ``directory``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        save_inference_settings(directory, self.decoding, self.preprocess)

    def _rules_for(self, cfg: DecodingConfig) -> SentenceRules | None:
        """The sentence rules over this tokenizer's vocabulary set as ``cfg`` says (None: it has no ``.``);
        built once, so its sentence readings stay cached between calls."""
        period = self.tokenizer.stoi.get(".")
        if period is None:
            return None
        if self._rules is None:
            self._rules = SentenceRules(self.tokenizer.itos, period)
        self._rules.max_sentence_repeats = cfg.max_sentence_repeats
        self._rules.label_consistent, self._rules.refuse_restatements = cfg.label_consistent, cfg.refuse_restatements
        return self._rules

    @torch.no_grad()
    def generate(self, images: torch.Tensor, num_beams: int | None = None, batch_size: int = 32,
                 decoding: DecodingConfig | None = None) -> list[str]:
        """Reports for images (B, V, 1, H, W) or (B, 1, H, W) normalised to [-1, 1].

        ``num_beams`` (None: the saved value) and ``decoding`` (None: the saved settings) change this call only.
        """
        if images.dim() == 4:
            images = images[:, None]
        cfg = dataclasses.replace(decoding or self.decoding, **({} if num_beams is None else {"num_beams": num_beams}))
        rules = self._rules_for(cfg)
        device = next(self.model.parameters()).device
        out: list[str] = []
        for chunk in images.split(batch_size):
            memory = self.model.encode(chunk.to(device))
            # the model itself decodes with its key/value cache (one new token per step)
            ids = decode(self.model, memory, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, cfg, rules)
            out.extend(self.tokenizer.decode(row.tolist()) for row in ids)
        return out

    def generate_for(self, samples: Sequence[dict], num_beams: int | None = None) -> list[str]:
        """Reports for dataset samples (dicts with ``images``)."""
        return self.generate(torch.stack([s["images"] for s in samples]), num_beams)
