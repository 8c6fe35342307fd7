"""RadCLIP: an open_clip CLIP (ViT image tower, transformer text tower) for grayscale CXRs and our
word-level report tokenizer.

Built from JSON model configs shipped in ``shared/backbone/model_configs/`` and discovered at import
(open_clip's own format: ``embed_dim``,
``vision_cfg``, ``text_cfg``); the text tower's vocabulary is the tokenizer's, pooled at
``<eos>``. It exposes what both directions need:

* image: pooled, projected embedding (B, E) and patch/grid tokens (B, L, W);
* text: pooled, projected embedding (B, E) and token features (B, T, W);
* optionally (``num_labels > 0``) a findings head: one linear map from either unit-norm embedding
  to the CheXpert logits, shared by both modalities so that the findings occupy the same
  directions of the joint space (trained with the labeler's labels of the paired reports).

Trained with open_clip's ``ClipLoss``. Pretrained open_clip weights load from a local file or
folder, or from a hub id the user passes (``hf-hub:...``) when online; defaults train from scratch.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# diffusers loads a pipeline component from the module it was saved from and finds its load
# method through that module's ``ModelMixin`` attribute.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ..modeling import RadLoopModel, load_state_dict_file
from ..registry import Registry
from ..text.tokenizer import ReportTokenizer
from . import towers  # noqa: F401  (registers the CXR timm towers by name)

logger = logging.getLogger(__name__)

__all__ = ["RadCLIP", "BackboneOutput", "BACKBONES", "build_backbone", "load_model_config", "MODEL_CONFIG_DIR"]

#: the JSON model configs that ship inside the package (``*_tiny`` for tests, ``small`` for CPU runs,
#: ``base`` for GPUs); ``BACKBONES.add_model_config(folder)`` adds a user's own.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def load_model_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model config by registry name or JSON path."""
    return BACKBONES.read_config(name_or_path)


def config_image_size(model_cfg: dict[str, Any]) -> int:
    """The image side of a model config (open_clip allows an int or a (h, w) pair)."""
    size = model_cfg["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


@dataclass
class BackboneOutput(BaseOutput):
    """Unit-norm embeddings (B, E), token features, and the contrastive temperature; a modality the
    forward pass was not given is None (as open_clip's ``CLIP.forward(image=None, text=...)``)."""

    image_embeds: torch.Tensor | None
    text_embeds: torch.Tensor | None
    image_tokens: torch.Tensor | None
    text_tokens: torch.Tensor | None
    logit_scale: torch.Tensor
    image_label_logits: torch.Tensor | None = None
    text_label_logits: torch.Tensor | None = None


class RadCLIP(RadLoopModel):
    """open_clip ``CustomTextCLIP`` over grayscale images and the report tokenizer.

    Args:
        model_cfg: open_clip config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        vocab_size: the tokenizer's vocabulary size.
        in_chans: image channels given to :meth:`encode_image` (1: repeated to the tower's 3).
        num_labels: size of the shared findings head over the unit-norm embeddings (0: none).
    """

    @register_to_config
    def __init__(self, model_cfg: dict, vocab_size: int, in_chans: int = 1, num_labels: int = 0) -> None:
        super().__init__()
        import open_clip

        cfg = copy.deepcopy(dict(model_cfg))
        cfg["text_cfg"] = {**cfg["text_cfg"], "vocab_size": int(vocab_size)}
        self.clip = open_clip.CustomTextCLIP(**cfg)
        self.label_head = nn.Linear(int(cfg["embed_dim"]), num_labels) if num_labels > 0 else None

    @property
    def image_size(self) -> int:
        return config_image_size(self.config.model_cfg)

    @property
    def context_length(self) -> int:
        return int(self.config.model_cfg["text_cfg"]["context_length"])

    @property
    def is_timm_tower(self) -> bool:
        return bool(self.config.model_cfg["vision_cfg"].get("timm_model_name"))

    @property
    def image_width(self) -> int:
        if self.is_timm_tower:
            return int(self.clip.visual.trunk.num_features)
        return int(self.config.model_cfg["vision_cfg"]["width"])

    @property
    def text_width(self) -> int:
        return int(self.config.model_cfg["text_cfg"]["width"])

    @property
    def embed_dim(self) -> int:
        return int(self.config.model_cfg["embed_dim"])

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, in_chans, S, S) normalised to [-1, 1] -> (embeds (B, E), grid tokens (B, L, W))."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.is_timm_tower:
            # One pass through the CNN: its feature map gives the grid tokens, its pooled head the embedding.
            visual = self.clip.visual
            fmap = visual.trunk.forward_features(images)
            pooled = visual.head(visual.trunk.forward_head(fmap))
            return pooled, fmap.flatten(2).transpose(1, 2)
        pooled, tokens = self.clip.visual(images)
        return pooled, tokens

    def encode_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) with ``<bos> ... <eos>`` and right padding -> (embeds (B, E), tokens (B, T, W))."""
        # open_clip's causal mask is built for exactly context_length positions: pad (id 0) or cut.
        length = self.context_length
        if input_ids.shape[1] < length:
            input_ids = nn.functional.pad(input_ids, (0, length - input_ids.shape[1]), value=0)
        input_ids = input_ids[:, :length]
        pooled, tokens = self.clip.text(input_ids)
        return pooled, tokens

    def label_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """Findings logits (B, num_labels) of unit-norm image or text embeddings (B, E)."""
        if self.label_head is None:
            raise ValueError("this RadCLIP has no findings head (built with num_labels=0)")
        # Unit vectors have entries of about 1/sqrt(E); rescaling them to unit variance lets the
        # head reach confident logits at ordinary learning rates.
        return self.label_head(embeds * embeds.shape[-1] ** 0.5)

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor | None = None) -> BackboneOutput:
        """images (B, in_chans, S, S) and/or input_ids (B, T); either may be None (one tower runs, e.g. a
        text-only fine-tune through a DDP wrapper, which only ``forward`` passes through)."""
        if images is None and input_ids is None:
            raise ValueError("RadCLIP.forward needs images, input_ids or both")
        image_embeds = image_tokens = text_embeds = text_tokens = None
        # 1. image tower: pooled embedding and patch tokens
        if images is not None:
            image_embeds, image_tokens = self.encode_image(images)
            image_embeds = nn.functional.normalize(image_embeds, dim=-1)
        # 2. text tower: pooled (at <eos>) embedding and token features
        if input_ids is not None:
            text_embeds, text_tokens = self.encode_text(input_ids)
            text_embeds = nn.functional.normalize(text_embeds, dim=-1)
        # 3. the shared findings head on the unit-norm embeddings, when there is one
        with_head = self.label_head is not None
        return BackboneOutput(
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_tokens=image_tokens,
            text_tokens=text_tokens,
            logit_scale=self.clip.logit_scale.exp(),
            image_label_logits=self.label_logits(image_embeds) if with_head and image_embeds is not None else None,
            text_label_logits=self.label_logits(text_embeds) if with_head and text_embeds is not None else None,
        )

    def load_open_clip_weights(self, source: str | os.PathLike[str]) -> dict[str, int]:
        """Copy matching tensors from pretrained open_clip weights.

        ``source`` is a local checkpoint file (``.bin``/``.pt``/``.safetensors``), a folder holding
        one, or an ``hf-hub:ORG/NAME`` id (needs network; only when the user passes it). Tensors
        whose name or shape differ (e.g. the token embedding of another vocabulary) are skipped
        and counted. Returns ``{"loaded": n, "skipped": m}``.
        """
        if str(source).startswith("hf-hub:"):
            import open_clip

            state = open_clip.create_model(str(source), pretrained=str(source)).state_dict()
        else:
            path = Path(source)
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
                if not found:
                    raise FileNotFoundError(f"no open_clip checkpoint (.bin/.pt/.safetensors) in {path}")
                path = found[0]
            if not path.is_file():
                raise FileNotFoundError(f"open_clip checkpoint not found: {path}")
            state = load_state_dict_file(path)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = self.clip.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise ValueError(f"no tensor of {source} fits this RadCLIP configuration")
        self.clip.load_state_dict(fitting, strict=False)
        counts = {"loaded": len(fitting), "skipped": len(state) - len(fitting)}
        logger.info("open_clip weights from %s: %s", source, counts)
        return counts


def build_backbone(name: str | os.PathLike[str], tokenizer: ReportTokenizer, num_labels: int = 0,
                   **overrides: Any) -> RadCLIP:
    """A registered (or JSON-path) backbone sized for ``tokenizer``; the tokenizer travels with it.

    ``num_labels > 0`` adds the shared findings head; ``overrides`` update config sections.
    """
    cfg = load_model_config(name)
    for section, values in overrides.items():
        if section not in cfg or not isinstance(values, dict):
            raise KeyError(f"unknown model config section '{section}'")
        cfg[section] = {**cfg[section], **values}
    return _radclip(tokenizer, num_labels, **cfg)


def _radclip(tokenizer: ReportTokenizer, num_labels: int = 0, **model_cfg: Any) -> RadCLIP:
    """The registry's builder: an open_clip config's sections as keywords, plus the tokenizer."""
    model = RadCLIP(model_cfg=model_cfg, vocab_size=len(tokenizer), num_labels=num_labels)
    model.tokenizer = tokenizer
    return model


BACKBONES = Registry("backbone", "vision-language backbones (open_clip JSON configs)",
                     required=("embed_dim", "vision_cfg", "text_cfg"))
BACKBONES.add_model_config(MODEL_CONFIG_DIR, _radclip)
