"""Report decoders. ``baseline``: the R2Gen-base setting — CNN grid features of each view, a
3-layer Transformer encoder-decoder, word-level output.

The visual extractor is the shared backbone's CNN image tower architecture (``cxr_resnet_*``,
registered in timm), so a trained RadCLIP folder or a tower pre-trainer trained with
``radloop train tower`` on the same tower can initialise it (``init_visual_from``); the judge
classifier (``radloop train classifier``) never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from shared.modeling import RadLoopModel, saved_class
from shared.registry import Registry

from .kv_cache import CachedSession, transformer_decoder_init, transformer_decoder_next

__all__ = ["BaselineReportModel", "ReportModelOutput", "REPORT_DECODERS", "build_report_model",
           "GridVisualMixin", "ReportDecoderMixin", "pool_grid", "teacher_forced_ce", "image_tower_state",
           "tower_grid_side"]


@dataclass
class ReportModelOutput(BaseOutput):
    """``logits`` (B, T, V) for next-token prediction; ``loss`` (scalar) when targets are given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    #: the loss terms, detached, for logging (e.g. UAR's ce / triplet / mask)
    aux: dict[str, torch.Tensor] | None = None


def _sinusoid(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length).float()[:, None]
    div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


def teacher_forced_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (B, T-1, V) predicted from ``input_ids[:, :-1]`` against ``input_ids[:, 1:]``."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                                       ignore_index=0)


class ReportDecoderMixin:
    """What every report decoder shares: the view-count check and the decoding step.

    The host defines ``decode_step(memory, tokens) -> logits (N, T, V)`` (every position: training
    and the uncached reference), and for cached decoding ``init_cache(memory) -> cache`` and
    ``decode_next(tokens, cache) -> logits (N, V)`` (see :mod:`image2report.kv_cache`); it has
    ``max_views`` in its config.
    """

    def positions(self, n: int) -> torch.Tensor:
        """The first ``n`` rows of the sinusoid position table ``pos`` (n, d), extended when a
        memory is longer than the table (a full-resolution grid without ``grid_size``)."""
        if n <= len(self.pos):
            return self.pos[:n]
        return _sinusoid(n, self.pos.shape[1]).to(self.pos)

    def freeze_visual(self) -> None:
        """Freeze the image tower (``image_encoder``): no gradients, BatchNorm statistics kept (it stays in
        evaluation mode when the model trains), so its grid features can be computed once and cached."""
        encoder = getattr(self, "image_encoder", None)
        if encoder is None:
            raise ValueError(f"{type(self).__name__} with these options reads no timm image tower to freeze "
                             "(UAR: model.options.use_lsu=false; CMCRL fine-tunes its RadCARE encoder)")
        encoder.requires_grad_(False)
        encoder.eval()
        self._visual_frozen = True

    @property
    def visual_frozen(self) -> bool:
        return bool(getattr(self, "_visual_frozen", False))

    def train(self, mode: bool = True):  # noqa: D102  (nn.Module.train, keeping a frozen tower in eval mode)
        super().train(mode)  # type: ignore[misc]
        if self.visual_frozen:
            self.image_encoder.eval()
        return self

    def tower_grid(self, views: torch.Tensor) -> torch.Tensor:
        """views (N, 1 or 3, H, W) in [-1, 1] -> the image tower's grid (N, C, h, w), pooled to at most
        ``grid_size`` per side: what :class:`image2report.feature_cache.GridFeatureCache` stores."""
        if views.shape[1] == 1:
            views = views.expand(-1, 3, -1, -1)
        return pool_grid(self.image_encoder.forward_features(views), self.config.grid_size)

    def check_views(self, images: torch.Tensor) -> None:
        """images (B, V, ...): refuse more views than the model was built for."""
        if images.shape[1] > self.config.max_views:
            raise ValueError(f"got {images.shape[1]} views, the model takes at most {self.config.max_views}")

    def next_token_log_probs(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, V) of the token after ``tokens`` (N, t), recomputed over the whole
        prefix: the uncached reference of :meth:`decoding_session`."""
        return torch.log_softmax(self.decode_step(memory, tokens)[:, -1].float(), dim=-1)

    def decoding_session(self, memory: torch.Tensor) -> CachedSession:
        """A cached decoding session over ``memory`` (N, S, d) (evaluation mode: no dropout)."""
        return CachedSession(self, memory)


def pool_grid(features: torch.Tensor, grid_size: int | None) -> torch.Tensor:
    """A feature map (N, C, h, w) average-pooled to at most ``grid_size`` x ``grid_size`` (None: as is).

    The decoders' memory then holds ``grid_size ** 2`` tokens per view at any input size, as
    R2Gen's 7 x 7 ResNet grid does: a 512 px film through a stride-8 tower would otherwise hand the
    decoder 4,096 tokens per view.
    """
    h, w = features.shape[-2:]
    if grid_size is None or (h <= grid_size and w <= grid_size):
        return features
    return nn.functional.adaptive_avg_pool2d(features, (min(h, grid_size), min(w, grid_size)))


class GridVisualMixin(ReportDecoderMixin):
    """CNN grid features of every view, for decoders built on a timm image tower.

    The host creates ``image_encoder`` (timm, ``num_classes=0``), ``visual_proj``, ``view_embed`` and
    the sinusoid buffer ``pos``; its config has ``visual``, ``max_views`` and ``grid_size`` (the
    most grid cells per side handed to the decoder; None keeps the tower's grid).
    """

    image_encoder: nn.Module
    visual_proj: nn.Linear
    view_embed: nn.Embedding
    pos: torch.Tensor

    def grid_tokens(self, images: torch.Tensor | None, transform=None,
                    features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, V, 1, H, W) in [-1, 1] -> grid tokens (B, V * L, d) with grid position and view added.

        ``transform`` (optional) maps the (B * V, 1, H, W) views before the image tower. ``features``
        (B, V, C, h, w): the tower's grids computed beforehand (:meth:`tower_grid`, a frozen tower's
        cache) in place of ``images``.
        """
        if features is None:
            self.check_views(images)
            b, v = images.shape[:2]
            x = images.flatten(0, 1)
            if transform is not None:
                x = transform(x)
            # 1. grid features of every view, at most grid_size x grid_size: (B*V, C, h, w) -> (B*V, h*w, d)
            grid = self.tower_grid(x)
        else:
            if transform is not None:
                raise ValueError("precomputed tower features skip the transform before the tower; "
                                 "train without it (IFNet: model.options.use_enhancement=false)")
            self.check_views(features)
            b, v = features.shape[:2]
            grid = features.flatten(0, 1)
        grid = self.visual_proj(grid.flatten(2).transpose(1, 2))
        n = grid.shape[1]
        # 2. positions within the grid and which view each token comes from
        grid = grid + self.positions(n) + self.view_embed(torch.arange(v, device=grid.device).repeat(b))[:, None]
        return grid.reshape(b, v * n, -1)

    def init_visual_from(self, source_dir: str) -> int:
        """Copy a trained image tower into the visual extractor; returns the number of tensors copied.

        ``source_dir``: a RadCLIP folder (its image tower) or a TowerPretrainer folder (its timm
        backbone; a one-channel stem is spread over the three input channels, which keeps its
        output on grey images unchanged). Every tensor of the tower must match by name and shape.
        """
        state = image_tower_state(source_dir)
        own = self.image_encoder.state_dict()
        for k, v in state.items():
            # The report towers take the grey view repeated to 3 channels; a 1-channel stem spread
            # over them (weights / 3) gives the same first-layer output.
            if k in own and v.ndim == 4 and v.shape[1] == 1 and own[k].shape == (v.shape[0], 3, *v.shape[2:]):
                state[k] = v.repeat(1, 3, 1, 1) / 3
        # A tower of another architecture can share a few names and shapes; loading those alone
        # would be a silent half-initialisation, so every tensor must fit.
        misfit = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if misfit:
            raise ValueError(f"the image tower in {source_dir} does not fit visual='{self.config.visual}' "
                             f"({len(misfit)} of {len(own)} tensors missing or of another shape, e.g. '{misfit[0]}')")
        self.image_encoder.load_state_dict({k: state[k] for k in own})
        return len(own)


def image_tower_state(source_dir: str | Path) -> dict[str, torch.Tensor]:
    """The timm image-tower state dict of a RadCLIP or TowerPretrainer folder, as saved (a pre-trainer's
    stem may take one channel; :meth:`GridVisualMixin.init_visual_from` spreads it over three).

    A judge classifier's folder (``CXRClassifier``) is refused: the model that scores generated
    images must never share weights with a generator.
    """
    from shared.backbone import RadCLIP
    from shared.backbone.classifier import TowerPretrainer

    # the judge is named only to be refused: image2report never imports the evaluation package
    towers = {"RadCLIP": RadCLIP, "TowerPretrainer": TowerPretrainer, "CXRClassifier": None}
    try:
        folder, kind = saved_class(source_dir, towers, "a RadCLIP or TowerPretrainer image tower")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; give a RadCLIP or TowerPretrainer folder") from None
    if kind is None:
        raise ValueError(f"{folder} holds the judge classifier, which never initialises a generator; "
                         "pre-train the tower with `radloop train tower`")
    if kind is RadCLIP:
        return RadCLIP.from_pretrained(folder).clip.visual.trunk.state_dict()
    return TowerPretrainer.from_pretrained(folder).backbone.state_dict()


def tower_grid_side(encoder: nn.Module, image_size: int) -> int:
    """Cells per side of a timm tower's feature map for ``image_size`` inputs, from its output stride
    (no forward pass: ``from_pretrained`` builds models on the meta device, where none can run)."""
    return math.ceil(image_size / int(encoder.feature_info[-1]["reduction"]))


def build_image_tower(visual: str) -> nn.Module:
    """A timm image tower without head (``cxr_resnet_*`` registered by :mod:`shared.backbone.towers`)."""
    import timm

    import shared.backbone.towers  # noqa: F401  (registers cxr_resnet_*)

    return timm.create_model(visual, pretrained=False, num_classes=0, in_chans=3)


class BaselineReportModel(GridVisualMixin, RadLoopModel):
    """CNN grid features -> Transformer encoder-decoder -> report tokens.

    Args:
        vocab_size: report tokenizer size (pad 0, bos 1, eos 2).
        visual: timm name of the image tower (``cxr_resnet_small``, ``cxr_resnet_tiny``, ``resnet18``...).
        image_size: input side; max_views: views per study (IU X-ray 2, MIMIC-CXR 1).
        grid_size: the tower's grid pooled to at most this many cells per side (None: as it comes).
    """

    @register_to_config
    def __init__(self, vocab_size: int, visual: str = "cxr_resnet_small", image_size: int = 64, max_views: int = 1,
                 d_model: int = 256, num_layers: int = 3, num_heads: int = 8, ff_dim: int = 512,
                 dropout: float = 0.1, max_length: int = 100, grid_size: int | None = None) -> None:
        super().__init__()
        self.image_encoder = build_image_tower(visual)
        self.visual_proj = nn.Linear(self.image_encoder.num_features, d_model)
        self.view_embed = nn.Embedding(max_views, d_model)
        self.token_embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.register_buffer("pos", _sinusoid(max(max_length, 1024), d_model), persistent=False)
        self.transformer = nn.Transformer(d_model, num_heads, num_layers, num_layers, ff_dim, dropout,
                                          batch_first=True)
        self.head = nn.Linear(d_model, vocab_size)

    def encode(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, V, 1, H, W) in [-1, 1] (or the tower's grids ``features`` (B, V, C, h, w))
        -> encoder memory (B, V * L, d)."""
        # 1-2. grid features of all views (with grid position and view), 3. the Transformer encoder
        return self.transformer.encoder(self.grid_tokens(images, features=features))

    def decode_step(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) of the next token at every position of ``tokens`` (N, T)."""
        t = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos[:t]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), 1)
        h = self.transformer.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=tokens == 0)
        return self.head(h)

    def init_cache(self, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        return transformer_decoder_init(self.transformer.decoder, memory)

    def decode_next(self, tokens: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, V) of the token after ``tokens`` (N, t); only the last token is new to ``cache``."""
        t = tokens.shape[1]
        x = self.token_embed(tokens[:, -1:]) + self.pos[t - 1:t]
        return self.head(transformer_decoder_next(self.transformer.decoder, x, cache))[:, -1]

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor,
                features: torch.Tensor | None = None) -> ReportModelOutput:
        """Teacher-forced logits for ``input_ids`` (B, T) (``<bos> ... <eos>``, right-padded) and the CE loss;
        ``features``: precomputed tower grids in place of ``images`` (see :meth:`grid_tokens`)."""
        memory = self.encode(images, features)
        logits = self.decode_step(memory, input_ids[:, :-1])
        return ReportModelOutput(logits=logits, loss=teacher_forced_ce(logits, input_ids))


#: every report decoder; ``*_small`` for CPU runs, ``*_tiny`` for tests. The other decoders' modules
#: register theirs on import (``import image2report`` imports them all).
REPORT_DECODERS = Registry("report_decoder", "image -> report decoders (baseline, UAR, CMCRL, IFNet)")
REPORT_DECODERS.register("baseline", BaselineReportModel, help="R2Gen-base setting", visual="cxr_resnet_small",
                         d_model=256, num_layers=3)
REPORT_DECODERS.register("baseline_small", BaselineReportModel, help="CPU size: a minute or two of training",
                         visual="cxr_resnet_tiny", d_model=128, num_layers=2, num_heads=4, ff_dim=256)
REPORT_DECODERS.register("baseline_tiny", BaselineReportModel, help="for tests", visual="cxr_resnet_tiny",
                         image_size=32, d_model=32, num_layers=1, num_heads=2, ff_dim=64)


def build_report_model(name: str, vocab_size: int, **overrides: Any) -> RadLoopModel:
    """The registered model ``name`` with ``overrides`` over its registered arguments (unknown ones are named)."""
    return REPORT_DECODERS.build(name, vocab_size=vocab_size, **overrides)
