"""UAR's Latent Space Unifier (LSU): images and reports as discrete tokens with look-up embeddings.

The image tokenizer is a diffusers ``VQModel`` trained on the dataset (UAR used a dVAE trained on
natural images; we train ours on CXRs, nothing is downloaded). ``tokenize`` maps an image to
``L = (S / 2^(n-1))^2`` codebook indices (n = number of encoder blocks), the argmax of the
encoder's assignment; ``W_I`` and ``W_R`` look the image and text tokens up as (B, L, d) and
(B, T, d) embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from shared.modeling import RadLoopModel
from shared.registry import Registry

__all__ = ["LatentSpaceUnifier", "LSUOutput", "LSUS", "build_lsu"]

@dataclass
class LSUOutput(BaseOutput):
    """``image_embeds`` (B, L, d), ``text_embeds`` (B, T, d), ``image_codes`` (B, L)."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    image_codes: torch.Tensor


class LatentSpaceUnifier(RadLoopModel):
    """VQ image tokenizer plus look-up matrices W_I (codes) and W_R (words) of width ``dim``."""

    @register_to_config
    def __init__(self, vocab_size: int, dim: int = 128, in_channels: int = 1, image_size: int = 64,
                 block_out_channels: tuple[int, ...] = (32, 64, 64, 64), num_codes: int = 512,
                 latent_channels: int = 16, norm_num_groups: int = 16, layers_per_block: int = 1) -> None:
        super().__init__()
        n = len(block_out_channels)
        self.vq = VQModel(
            in_channels=in_channels, out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            latent_channels=latent_channels, num_vq_embeddings=num_codes, vq_embed_dim=latent_channels,
            norm_num_groups=norm_num_groups, sample_size=image_size,
        )
        self.image_embed = nn.Embedding(num_codes, dim)
        self.text_embed = nn.Embedding(vocab_size, dim, padding_idx=0)

    @property
    def tokens_per_image(self) -> int:
        side = self.config.image_size // 2 ** (len(self.config.block_out_channels) - 1)
        return side * side

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) in [-1, 1] -> codes (B, L), row-major over the latent grid."""
        latents = self.vq.encode(images).latents
        _, _, (_, _, idx) = self.vq.quantize(latents)
        return idx.reshape(images.shape[0], -1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> LSUOutput:
        # 1. discrete visual tokens from the (frozen during use) VQ encoder
        codes = self.tokenize(images)
        # 2. look-up embeddings for both modalities (eq. 1)
        return LSUOutput(image_embeds=self.image_embed(codes), text_embeds=self.text_embed(input_ids),
                         image_codes=codes)

    def reconstruction_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """VQ-VAE objective for training the tokenizer: L1 reconstruction + codebook/commitment."""
        out = self.vq(images)
        recon = nn.functional.l1_loss(out.sample, images)
        return {"loss": recon + out.commit_loss.mean(), "recon_loss": recon.detach(),
                "commit_loss": out.commit_loss.mean().detach()}


LSUS = Registry("lsu", "UAR's Latent Space Unifier (VQ image tokenizer) sizes")
LSUS.register("lsu_tiny", LatentSpaceUnifier, help="for tests", image_size=32, block_out_channels=(16, 32, 32),
              num_codes=64, latent_channels=8, norm_num_groups=8)
LSUS.register("lsu_small", LatentSpaceUnifier, help="CPU runs at 64 px", image_size=64,
              block_out_channels=(32, 64, 64, 64), num_codes=512, latent_channels=16, norm_num_groups=16)
LSUS.register("lsu_base", LatentSpaceUnifier, help="GPU runs at 128 px", image_size=128,
              block_out_channels=(64, 128, 128, 256), num_codes=8192, latent_channels=32, norm_num_groups=32)


def build_lsu(name: str, vocab_size: int, dim: int = 128, **overrides: Any) -> LatentSpaceUnifier:
    return LSUS.build(name, vocab_size=vocab_size, dim=dim, **overrides)
