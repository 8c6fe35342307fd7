"""CMCRL's RadCARE pre-training: a multiway transformer with four objectives.

The multiway transformer shares self-attention across modalities and routes each token to a
modality-specific feed-forward expert (vision or language). Objectives, each with a weight
(0 switches it off, for ablations):

* ``restoration`` — degradation-aware masked image restoration: the input is a *degraded
  low-resolution* image (down-sampled by ``degrade_scale``, blurred, with noise); its patch
  tokens are masked at ``mask_ratio`` (paper: 0.85) and the model reconstructs the
  *high-resolution* patches at the masked positions (MSE on per-patch normalised pixels).
* ``mlm`` — masked language modelling (15% of report tokens) with the degraded image in context.
* ``postfix`` — text postfix generation: given the degraded image and a random text prefix
  (attended bidirectionally), predict the rest causally.
* ``alignment`` — image-text alignment: contrastive loss (open_clip ``ClipLoss``) between pooled
  unimodal image and text features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from shared.modeling import RadLoopModel
from shared.registry import Registry

__all__ = ["RadCARE", "MultiwayBlock", "RADCARES", "build_radcare", "OBJECTIVES", "RadCAREWeights"]

OBJECTIVES = ("restoration", "mlm", "postfix", "alignment")

@dataclass
class RadCAREWeights:
    """Objective weights (the ``loss`` section of a RadCARE config)."""

    restoration: float = 1.0
    mlm: float = 1.0
    postfix: float = 1.0
    alignment: float = 1.0


class MultiwayBlock(nn.Module):
    """Pre-norm transformer block: shared attention, a vision and a language feed-forward expert."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.experts = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) for m in ("vision", "language")
        })

    def forward(self, x: torch.Tensor, n_image: int, attn_mask: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n_image + n_text, dim): image tokens first. Masks follow nn.MultiheadAttention (True = blocked)."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=padding_mask, need_weights=False)[0]
        h = self.norm2(x)
        routed = torch.cat([self.experts["vision"](h[:, :n_image]), self.experts["language"](h[:, n_image:])], dim=1)
        return x + routed


class RadCARE(RadLoopModel):
    """Multiway transformer for RadCARE pre-training (see the module docstring).

    Args:
        vocab_size: the report tokenizer's vocabulary (pad 0, ``<unk>`` 3 used as [MASK]).
        image_size, patch_size: high-resolution input and patch side; the degraded input has
            ``image_size / degrade_scale`` pixels and patches of ``patch_size / degrade_scale``, so both
            have the same token grid.
    """

    @register_to_config
    def __init__(self, vocab_size: int, image_size: int = 64, patch_size: int = 8, in_channels: int = 1,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, max_text_len: int = 128,
                 degrade_scale: int = 2, mask_ratio: float = 0.85, mlm_ratio: float = 0.15, noise_std: float = 0.05,
                 embed_dim: int = 128) -> None:
        super().__init__()
        if image_size % patch_size or patch_size % degrade_scale:
            raise ValueError("image_size must be a multiple of patch_size, and patch_size of degrade_scale")
        self.grid = image_size // patch_size
        lr_patch = patch_size // degrade_scale
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=lr_patch, stride=lr_patch)
        self.image_pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.text_embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.text_pos = nn.Parameter(torch.zeros(1, max_text_len, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([MultiwayBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.restore_head = nn.Linear(dim, patch_size * patch_size * in_channels)
        self.lm_head = nn.Linear(dim, vocab_size)
        self.image_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))
        nn.init.trunc_normal_(self.image_pos, std=0.02)
        nn.init.trunc_normal_(self.text_pos, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # -- inputs -----------------------------------------------------------------------------
    def degrade(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Low-resolution, blurred, noisy version of images (B, C, S, S) -> (B, C, S/scale, S/scale)."""
        s = self.config.degrade_scale
        low = nn.functional.avg_pool2d(images, kernel_size=s, stride=s)
        low = nn.functional.avg_pool2d(nn.functional.pad(low, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        noise = torch.randn(low.shape, generator=generator, device=low.device, dtype=low.dtype)
        return low + self.config.noise_std * noise

    def image_tokens(self, degraded: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(degraded).flatten(2).transpose(1, 2) + self.image_pos

    def text_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids[:, : self.config.max_text_len]
        return self.text_embed(input_ids) + self.text_pos[:, : input_ids.shape[1]]

    def encode(self, image_tokens: torch.Tensor | None, text_tokens: torch.Tensor | None,
               attn_mask: torch.Tensor | None = None, text_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Run the multiway blocks over [image; text] tokens; either part may be absent."""
        parts = [t for t in (image_tokens, text_tokens) if t is not None]
        x = torch.cat(parts, dim=1)
        n_image = image_tokens.shape[1] if image_tokens is not None else 0
        padding = None
        if text_padding is not None:
            padding = torch.cat([torch.zeros(x.shape[0], n_image, dtype=torch.bool, device=x.device), text_padding], 1)
        for block in self.blocks:
            x = block(x, n_image, attn_mask, padding)
        return self.norm(x)

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        b, c, _, _ = images.shape
        x = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, g, g, p, p)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(b, self.grid * self.grid, c * p * p)

    # -- objectives -------------------------------------------------------------------------
    def restoration_loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruct high-resolution patches at masked positions of the degraded input."""
        tokens = self.image_tokens(self.degrade(images, generator))
        b, n, _ = tokens.shape
        n_mask = max(1, int(round(self.config.mask_ratio * n)))
        order = torch.rand(b, n, generator=generator, device=images.device).argsort(1)
        masked = torch.zeros(b, n, dtype=torch.bool, device=images.device)
        masked.scatter_(1, order[:, :n_mask], True)
        tokens = torch.where(masked.unsqueeze(-1), self.mask_token.expand(b, n, -1) + self.image_pos, tokens)
        pred = self.restore_head(self.encode(tokens, None))
        target = self._patches(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.std(-1, keepdim=True) + 1e-6)
        return ((pred - target) ** 2).mean(-1)[masked].mean()

    def mlm_loss(self, images: torch.Tensor, input_ids: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Predict 15% masked report tokens (not specials) with the degraded image in context."""
        ids = input_ids[:, : self.config.max_text_len]
        candidates = ids > 3
        pick = (torch.rand(ids.shape, generator=generator, device=ids.device) < self.config.mlm_ratio) & candidates
        # guarantee one masked token per report that has any word
        first = candidates.float().argmax(1)
        has = candidates.any(1)
        pick[has, first[has]] |= ~pick[has].any(1)
        masked_ids = ids.masked_fill(pick, 3)
        img = self.image_tokens(self.degrade(images, generator))
        out = self.encode(img, self.text_tokens(masked_ids), text_padding=ids == 0)
        logits = self.lm_head(out[:, img.shape[1]:])
        return nn.functional.cross_entropy(logits[pick], ids[pick]) if pick.any() else logits.sum() * 0

    def postfix_loss(self, images: torch.Tensor, input_ids: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate the text after a random prefix, from the degraded image and the prefix."""
        ids = input_ids[:, : self.config.max_text_len]
        b, t = ids.shape
        lengths = (ids != 0).sum(1)
        frac = torch.rand(b, generator=generator, device=ids.device) * 0.5 + 0.1
        prefix = (frac * lengths).long().clamp(min=1)
        img = self.image_tokens(self.degrade(images, generator))
        n_img = img.shape[1]
        # Attention: image tokens see each other; the prefix sees image + prefix; postfix tokens are causal.
        pos = torch.arange(t, device=ids.device)
        causal = pos[None, :, None] < pos[None, None, :]  # key after query
        in_prefix_key = pos[None, None, :] < prefix[:, None, None]
        text_block = causal & ~in_prefix_key  # (B, T, T): block future keys that are not prefix
        mask = torch.zeros(b, n_img + t, n_img + t, dtype=torch.bool, device=ids.device)
        mask[:, :n_img, n_img:] = True  # image tokens do not read the text
        mask[:, n_img:, n_img:] = text_block
        heads = self.config.heads
        out = self.encode(img, self.text_tokens(ids), attn_mask=mask.repeat_interleave(heads, 0),
                          text_padding=ids == 0)
        logits = self.lm_head(out[:, n_img:-1])
        target = ids[:, 1:]
        predict = (pos[None, 1:] >= prefix[:, None]) & (target != 0)
        return nn.functional.cross_entropy(logits[predict], target[predict]) if predict.any() else logits.sum() * 0

    def embed(self, images: torch.Tensor | None = None, input_ids: torch.Tensor | None = None
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Unimodal pooled, unit-norm embeddings (image from the clean input at low resolution)."""
        img_e = txt_e = None
        if images is not None:
            tokens = self.image_tokens(nn.functional.avg_pool2d(images, self.config.degrade_scale))
            img_e = nn.functional.normalize(self.image_proj(self.encode(tokens, None).mean(1)), dim=-1)
        if input_ids is not None:
            ids = input_ids[:, : self.config.max_text_len]
            out = self.encode(None, self.text_tokens(ids), text_padding=ids == 0)
            keep = (ids != 0).float().unsqueeze(-1)
            txt_e = nn.functional.normalize(self.text_proj((out * keep).sum(1) / keep.sum(1).clamp_min(1)), dim=-1)
        return img_e, txt_e

    def alignment_loss(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        from shared.backbone.train import contrastive_loss

        img_e, txt_e = self.embed(images, input_ids)
        return contrastive_loss(img_e, txt_e, self.logit_scale.exp())

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, weights: RadCAREWeights | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All switched-on objectives: ``{"loss": weighted sum, "<objective>": value, ...}``."""
        weights = weights or RadCAREWeights()
        losses: dict[str, torch.Tensor] = {}
        # 1. degradation-aware masked image restoration
        if weights.restoration:
            losses["restoration"] = self.restoration_loss(images, generator)
        # 2. masked language modelling with the degraded image
        if weights.mlm:
            losses["mlm"] = self.mlm_loss(images, input_ids, generator)
        # 3. text postfix generation from the degraded image and a prefix
        if weights.postfix:
            losses["postfix"] = self.postfix_loss(images, input_ids, generator)
        # 4. image-text alignment
        if weights.alignment:
            losses["alignment"] = self.alignment_loss(images, input_ids)
        if not losses:
            raise ValueError("every RadCARE objective is switched off")
        total = sum(getattr(weights, k) * v for k, v in losses.items())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}


RADCARES = Registry("radcare", "CMCRL's RadCARE multiway encoder sizes")
RADCARES.register("radcare_tiny", RadCARE, help="for tests", image_size=32, patch_size=8, dim=32, depth=2, heads=2,
                  max_text_len=64)
RADCARES.register("radcare_small", RadCARE, help="CPU runs at 64 px", image_size=64, patch_size=8, dim=128, depth=4,
                  heads=4, max_text_len=128)
RADCARES.register("radcare_base", RadCARE, help="GPU runs at 224 px", image_size=224, patch_size=16, dim=768,
                  depth=12, heads=12, max_text_len=128)


def build_radcare(name: str, vocab_size: int, **overrides: Any) -> RadCARE:
    return RADCARES.build(name, vocab_size=vocab_size, **overrides)
