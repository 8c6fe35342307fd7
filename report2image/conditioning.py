"""What the UNet attends to: pathology tokens from the report, identity tokens from an image.

* **Vision-aware textual learning** (Diff-CXR): :class:`VisionAwareTextRefiner` scores each
  token feature of the domain backbone's text tower, keeps the concise, important ones (a sigmoid
  gate pushed towards sparsity) and is trained so that the gated report embedding matches the
  backbone's image embedding of the paired image. Its output replaces the raw token features.
* **Structured attributes** (paper 001): one token per CheXpert finding built from the labeler's
  status, severity and laterality, so "large left effusion" and "small right effusion" condition
  differently even when the free text is paraphrased.
* **Identity** (paper 001): :class:`ReportConditioner` encodes an image of the *same patient*
  (another study in training, the source image for counterfactuals) into a few anatomy tokens.
  Group supervision pulls identity codes of one patient together and pathology codes of one
  finding set together; an independence penalty decorrelates the two.

Every part is switchable in the config, which is how the ablation table is produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# diffusers loads a pipeline component from the module it was saved from and finds its load
# method through that module's ``ModelMixin`` attribute.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from shared.backbone.losses import same_findings_targets
from shared.labels import CHEXPERT_LABELS
from shared.modeling import RadLoopModel
from shared.text.labeler import LATERALITIES, SEVERITIES, LabelResult, ReportLabeler

__all__ = ["encode_attributes", "attributes_from_results", "VisionAwareTextRefiner", "ReportConditioner",
           "ConditionOutput", "group_supervision_loss", "independence_loss"]

#: status index of an attribute token: 0 not mentioned, 1 negative, 2 uncertain, 3 positive
_STATUS = {0.0: 1, -1.0: 2, 1.0: 3}


def encode_attributes(reports: Sequence[str], labeler: ReportLabeler | None = None) -> torch.Tensor:
    """(B, 14, 3) long: per CheXpert finding (status, severity + 1, laterality + 1); 0 = none."""
    labeler = labeler or ReportLabeler()
    return attributes_from_results([labeler.label(r) for r in reports])


def attributes_from_results(results: Sequence[LabelResult]) -> torch.Tensor:
    """:func:`encode_attributes` from the labeler's results, for callers that also need the labels
    (``result.vector()``) and so label each report once."""
    out = torch.zeros(len(results), len(CHEXPERT_LABELS), 3, dtype=torch.long)
    for b, result in enumerate(results):
        attrs = {a.name: a for a in result.attributes}
        for i, name in enumerate(CHEXPERT_LABELS):
            value = result.labels[name]
            out[b, i, 0] = _STATUS.get(float(value), 0) if value == value else 0
            a = attrs.get(name)
            if a is not None:
                out[b, i, 1] = SEVERITIES.index(a.severity) + 1 if a.severity in SEVERITIES else 0
                out[b, i, 2] = LATERALITIES.index(a.laterality) + 1 if a.laterality in LATERALITIES else 0
    return out


class VisionAwareTextRefiner(nn.Module):
    """Gate and project backbone token features (B, T, W) to conditioning tokens (B, T, D).

    ``forward`` returns the gated tokens and the gate (B, T) in [0, 1]; ``alignment_loss`` is the
    InfoNCE between the gate-weighted mean token (projected to the backbone's embedding size)
    and the backbone image embedding, plus ``sparsity`` times the mean gate (keep few tokens); it
    also returns each pair's cosine, which the noise filter reads (pairs that stay misaligned).
    """

    def __init__(self, text_width: int, dim: int, embed_dim: int, sparsity: float = 0.05) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, text_width // 2), nn.GELU(),
                                   nn.Linear(text_width // 2, 1))
        self.proj = nn.Linear(text_width, dim)
        self.to_embed = nn.Linear(text_width, embed_dim)
        self.sparsity = sparsity

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.score(tokens).squeeze(-1)) * mask
        return self.proj(tokens) * gate[..., None], gate

    def alignment_loss(self, tokens: torch.Tensor, gate: torch.Tensor, image_embeds: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, W), gate (B, T), unit-norm image_embeds (B, E) -> (scalar loss, per-pair cosine (B,))."""
        pooled = (tokens * gate[..., None]).sum(1) / gate.sum(1, keepdim=True).clamp_min(1e-6)
        text = F.normalize(self.to_embed(pooled), dim=-1)
        logits = text @ image_embeds.T / 0.07
        target = torch.arange(len(text), device=text.device)
        nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        cosine = (text * image_embeds).sum(-1).detach()
        return nce + self.sparsity * gate.sum(1).div(gate.shape[1]).mean(), cosine


class _IdentityEncoder(nn.Module):
    """A small CNN: image (B, 1, S, S) -> identity code (B, C) and K identity tokens (B, K, D)."""

    def __init__(self, dim: int, num_tokens: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, 2, 1), nn.GroupNorm(8, c), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GroupNorm(8, 2 * c), nn.SiLU(),
            nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.GroupNorm(8, 4 * c), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.code = nn.Linear(16 * c, 4 * c)
        self.tokens = nn.Linear(4 * c, num_tokens * dim)
        self.num_tokens, self.dim, self.code_dim = num_tokens, dim, 4 * c

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.code(self.net(images))

    def to_tokens(self, code: torch.Tensor) -> torch.Tensor:
        return self.tokens(F.silu(code)).view(len(code), self.num_tokens, self.dim)


@dataclass
class ConditionOutput(BaseOutput):
    """``hidden_states`` (B, L, D) and ``mask`` (B, L) for the UNet's cross-attention, plus the
    pooled pathology (B, D) and identity (B, C) codes and the refiner gate (B, T) for the losses."""

    hidden_states: torch.Tensor
    mask: torch.Tensor
    pathology: torch.Tensor
    identity: torch.Tensor | None = None
    gate: torch.Tensor | None = None


class ReportConditioner(RadLoopModel):
    """Turns backbone token features (+ attributes, + an identity image) into UNet conditioning.

    Args:
        text_width: width of the backbone's text token features.
        embed_dim: the backbone's joint embedding size (refiner alignment target).
        dim: the UNet's ``cross_attention_dim``.
        use_refiner: Diff-CXR's vision-aware textual learning (else a linear projection).
        use_attributes: the 14 structured attribute tokens.
        use_identity: identity tokens from an image of the same patient (causal disentanglement).
        identity_tokens: K, the number of identity tokens.
        refiner_sparsity: weight of the gate-sparsity term in the refiner loss.
        identity_bank_size: identity codes of training images kept with the model, drawn from when
            a report is generated without a source image (a random "patient").
    """

    @register_to_config
    def __init__(self, text_width: int, embed_dim: int, dim: int = 64, use_refiner: bool = True,
                 use_attributes: bool = True, use_identity: bool = True, identity_tokens: int = 4,
                 refiner_sparsity: float = 0.05, identity_bank_size: int = 64) -> None:
        super().__init__()
        if use_refiner:
            self.refiner = VisionAwareTextRefiner(text_width, dim, embed_dim, refiner_sparsity)
        else:
            self.text_proj = nn.Linear(text_width, dim)
        if use_attributes:
            self.attr_finding = nn.Parameter(torch.randn(len(CHEXPERT_LABELS), dim) * 0.02)
            self.attr_status = nn.Embedding(4, dim)
            self.attr_severity = nn.Embedding(len(SEVERITIES) + 1, dim)
            self.attr_laterality = nn.Embedding(len(LATERALITIES) + 1, dim)
        if use_identity:
            self.identity_encoder = _IdentityEncoder(dim, identity_tokens)
            self.register_buffer("identity_bank", torch.zeros(identity_bank_size, self.identity_encoder.code_dim))
            self.register_buffer("identity_bank_filled", torch.zeros((), dtype=torch.long))
        # What classifier-free guidance drops to: one learned "no report" token.
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, attributes: torch.Tensor | None = None,
                identity_images: torch.Tensor | None = None, drop: torch.Tensor | None = None,
                identity_codes: torch.Tensor | None = None) -> ConditionOutput:
        """text_tokens (B, T, W), text_mask (B, T) in {0, 1}, attributes (B, 14, 3) long,
        identity_images (B, 1, S, S) in [-1, 1] or identity_codes (B, C) (e.g. from the bank),
        drop (B,) bool: replace the pathology tokens by the null token (classifier-free guidance;
        identity is kept so that guidance acts on pathology only)."""
        b = len(text_tokens)
        mask = text_mask.float()
        # 1. report tokens: gated by the vision-aware refiner, or projected as they are
        gate = None
        if self.config.use_refiner:
            tokens, gate = self.refiner(text_tokens, mask)
        else:
            tokens = self.text_proj(text_tokens) * mask[..., None]
        parts, masks = [tokens], [mask]
        # 2. structured attribute tokens (status, severity, laterality of each finding)
        if self.config.use_attributes:
            if attributes is None:
                raise ValueError("this conditioner uses attribute tokens: pass attributes=encode_attributes(reports)")
            attr = (self.attr_finding[None] + self.attr_status(attributes[..., 0])
                    + self.attr_severity(attributes[..., 1]) + self.attr_laterality(attributes[..., 2]))
            parts.append(attr)
            masks.append(torch.ones(attr.shape[:2], device=attr.device))
        path_tokens, path_mask = torch.cat(parts, 1), torch.cat(masks, 1)
        pathology = (path_tokens * path_mask[..., None]).sum(1) / path_mask.sum(1, keepdim=True).clamp_min(1.0)
        # 3. classifier-free guidance: dropped rows see only the null token in place of pathology
        if drop is not None and drop.any():
            keep = (~drop).float()[:, None]
            path_tokens = path_tokens * keep[..., None]
            path_mask = path_mask * keep
        null = self.null_token.expand(b, -1, -1)
        hidden, hmask = [null, path_tokens], [torch.ones(b, 1, device=null.device), path_mask]
        # 4. identity tokens from an image of the same patient
        identity = None
        if self.config.use_identity:
            if identity_codes is None:
                if identity_images is None:
                    raise ValueError("this conditioner uses identity tokens: pass identity_images or identity_codes")
                identity_codes = self.identity_encoder(identity_images)
            identity = identity_codes
            id_tokens = self.identity_encoder.to_tokens(identity)
            hidden.append(id_tokens)
            hmask.append(torch.ones(id_tokens.shape[:2], device=id_tokens.device))
        return ConditionOutput(torch.cat(hidden, 1), torch.cat(hmask, 1), pathology, identity, gate)

    @torch.no_grad()
    def fill_identity_bank(self, images: torch.Tensor) -> None:
        """Keep the identity codes of up to ``identity_bank_size`` training images (B, 1, S, S)."""
        if not self.config.use_identity:
            raise ValueError("this conditioner has use_identity=false: there is no identity bank to fill")
        n = min(len(images), len(self.identity_bank))
        self.identity_bank[:n] = self.identity_encoder(images[:n])
        self.identity_bank_filled.fill_(n)

    def identity_from_bank(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, C) identity codes drawn from the bank (a random training patient each)."""
        filled = int(self.identity_bank_filled)
        if filled == 0:
            raise ValueError("the identity bank is empty: pass identity_images (a source image per report)")
        pick = torch.randint(filled, (n,), generator=generator, device=generator.device if generator else "cpu")
        return self.identity_bank[pick.to(self.identity_bank.device)]


def group_supervision_loss(identity: torch.Tensor, pathology: torch.Tensor, patient_ids: Sequence[str],
                           labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Soft-target InfoNCE: identity codes (B, C) of one patient together, pathology codes (B, D)
    of one positive-finding set together. labels (B, 14) from the report labeler."""
    same_patient = torch.tensor([[a == b for b in patient_ids] for a in patient_ids], dtype=torch.float32,
                                device=identity.device)
    loss = 0.0
    for codes, target in ((identity, same_patient / same_patient.sum(1, keepdim=True)),
                          (pathology, same_findings_targets(labels, 1.0))):
        z = F.normalize(codes, dim=-1)
        logits = z @ z.T / temperature
        # A code trivially matches itself: exclude the diagonal unless it is the only positive.
        off = target.clone().fill_diagonal_(0)
        has_other = off.sum(1) > 0
        target = torch.where(has_other[:, None], off / off.sum(1, keepdim=True).clamp_min(1e-8), target)
        logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device) & has_other[:, None], -1e4)
        loss = loss + F.cross_entropy(logits, target)
    return loss / 2


def independence_loss(identity: torch.Tensor, pathology: torch.Tensor) -> torch.Tensor:
    """Squared cross-correlation between standardised identity (B, C) and pathology (B, D) codes
    (a linear-kernel HSIC): zero when no linear function of one predicts the other."""
    if len(identity) < 2:
        return identity.new_zeros(())
    zi = (identity - identity.mean(0)) / identity.std(0).clamp_min(1e-4)
    zp = (pathology - pathology.mean(0)) / pathology.std(0).clamp_min(1e-4)
    cross = zi.T @ zp / (len(identity) - 1)
    return cross.pow(2).mean()
