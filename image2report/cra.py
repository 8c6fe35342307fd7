"""UAR's Cross-modal Representation Aligner (CRA) and its triplet contrastive loss (eqs. 6-10).

CRA is modality-agnostic: image and text embeddings (B, N, d) pass through the same
orthonormal basis and dual-gate fusion.

* eq. 6: a basis B (num_basis x d) with orthonormal columns (QR of a Gaussian matrix, i.e.
  Gram-Schmidt), adjusted like a LayerNorm: B^ = gamma * B + beta (gamma, beta trainable).
* eq. 7: multi-head attention of the embeddings E over B^: F~ = Attention(E, B^, B^).
* eqs. 8-9: gates G(X, Y) = sigmoid(X W1 + Y W2); F = G_I(E, F~) * tanh(E + F~) + G_F(E, F~) * E + F~.
* eq. 10: L = ReLU(a - <F_I, F_R> + <F_I, F_R^->) + ReLU(a - <F_I, F_R> + <F_I^-, F_R>) with cosine
  similarity and in-batch hard negatives (the most similar non-matching item).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from shared.modeling import RadLoopModel

__all__ = ["CrossModalAligner", "CRAOutput", "TripletContrastiveLoss", "DualGate"]


class DualGate(nn.Module):
    """G(X, Y) = sigmoid(X W1 + Y W2) (eq. 8)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w1(x) + self.w2(y))


@dataclass
class CRAOutput(BaseOutput):
    """``features`` (B, N, d) per token; ``pooled`` (B, d) mean over valid tokens."""

    features: torch.Tensor
    pooled: torch.Tensor


class CrossModalAligner(RadLoopModel):
    """CRA over embeddings of width ``dim``.

    Args:
        dim: embedding width d.
        num_basis: rows of the basis (paper: 2048).
        num_heads: attention heads.
        use_basis, use_gates: ablation switches (the paper's "integration"): without the basis,
            F~ = E; without the gates, F = E + F~.
        seed: seed of the basis draw (the basis is a saved buffer, so loading restores it exactly).
    """

    @register_to_config
    def __init__(self, dim: int, num_basis: int = 2048, num_heads: int = 8, dropout: float = 0.0,
                 use_basis: bool = True, use_gates: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(num_basis, dim, generator=g))
        if num_basis < dim:  # QR of a wide matrix: orthonormal rows instead
            q = torch.linalg.qr(torch.randn(dim, num_basis, generator=g))[0].T
        self.register_buffer("basis", q.contiguous())
        self.gain = nn.Parameter(torch.ones(num_basis, dim))
        self.bias = nn.Parameter(torch.zeros(num_basis, dim))
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.input_gate = DualGate(dim)
        self.forget_gate = DualGate(dim)

    def forward(self, embeds: torch.Tensor, padding_mask: torch.Tensor | None = None) -> CRAOutput:
        """embeds (B, N, d); padding_mask (B, N) True where a token is padding."""
        e = embeds
        if self.config.use_basis:
            # 1. eq. 6: the adjusted basis, shared by both modalities
            basis = (self.gain * self.basis + self.bias).unsqueeze(0).expand(e.shape[0], -1, -1)
            # 2. eq. 7: represent each embedding over the basis
            f_tilde, _ = self.attn(e, basis, basis, need_weights=False)
        else:
            f_tilde = e
        # 3. eqs. 8-9: dual-gate fusion
        if self.config.use_gates:
            feats = self.input_gate(e, f_tilde) * torch.tanh(e + f_tilde) + self.forget_gate(e, f_tilde) * e + f_tilde
        else:
            feats = e + f_tilde
        # 4. pooled feature for the global (triplet) alignment
        if padding_mask is None:
            pooled = feats.mean(1)
        else:
            keep = (~padding_mask).float().unsqueeze(-1)
            pooled = (feats * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return CRAOutput(features=feats, pooled=pooled)


class TripletContrastiveLoss(nn.Module):
    """Eq. 10 with in-batch hard negatives; returns ``{"triplet_loss": scalar}``.

    Args:
        margin: alpha.
    ``same`` (B, B) marks pairs that must not serve as negatives (e.g. identical reports).
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                same: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        sim = nn.functional.normalize(image, dim=-1) @ nn.functional.normalize(text, dim=-1).T
        pos = sim.diag()
        blocked = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        if same is not None:
            blocked = blocked | same.to(sim.device)
        masked = sim.masked_fill(blocked, float("-inf"))
        hard_text = masked.max(dim=1).values  # for each image anchor, its hardest wrong report
        hard_image = masked.max(dim=0).values  # for each report anchor, its hardest wrong image
        valid_t, valid_i = torch.isfinite(hard_text), torch.isfinite(hard_image)
        loss_t = torch.relu(self.margin - pos + hard_text)[valid_t]
        loss_i = torch.relu(self.margin - pos + hard_image)[valid_i]
        loss = (loss_t.sum() + loss_i.sum()) / max(1, len(sim))
        return {"triplet_loss": loss}
