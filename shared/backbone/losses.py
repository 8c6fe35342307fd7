"""Contrastive losses for RadCLIP, as open_clip-style modules returning a dict.

Report-image datasets hold many studies with the same findings (most of them normal), so the
plain CLIP loss pushes apart pairs that a radiologist would call matches ("false negatives").
:class:`LabelAwareClipLoss` softens the targets with the findings of each report, in the spirit of
MedCLIP's semantic matching loss: the target distribution of a query is a mix of its own pair and
every pair in the (gathered) batch whose report has the same set of positive findings.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

__all__ = ["LabelAwareClipLoss", "same_findings_targets"]


def same_findings_targets(labels: torch.Tensor, label_weight: float) -> torch.Tensor:
    """Soft targets (N, N) from report labels (N, L): ``(1 - w) * I + w * same / same.sum(1)``.

    ``same[i, j]`` is 1 when the positive-label sets of i and j are equal (the diagonal always is),
    so each row sums to 1 and ``label_weight=0`` gives the plain CLIP identity targets.
    """
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be in [0, 1], got {label_weight}")
    pos = (labels == 1).float()
    same = (pos[:, None, :] == pos[None, :, :]).all(-1).float()
    eye = torch.eye(len(labels), device=labels.device)
    return (1.0 - label_weight) * eye + label_weight * same / same.sum(1, keepdim=True)


def _gather_labels(labels: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return labels
    parts = [torch.zeros_like(labels) for _ in range(world_size)]
    torch.distributed.all_gather(parts, labels)
    return torch.cat(parts)


class LabelAwareClipLoss(open_clip.ClipLoss):
    """open_clip's ``ClipLoss`` with same-findings soft targets (see module docstring).

    Features are gathered across processes exactly as in ``ClipLoss`` (``local_loss=False``), so
    the targets cover the global batch. Returns ``{"contrastive_loss": scalar}``.
    """

    def __init__(self, label_weight: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if kwargs.get("local_loss"):
            raise ValueError("LabelAwareClipLoss needs the global batch (local_loss=False)")
        self.label_weight = label_weight

    def forward(  # type: ignore[override]
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
        labels: torch.Tensor, output_dict: bool = True,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """image/text features (B, E) unit-norm; labels (B, L) with 1 = positive finding."""
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        targets = same_findings_targets(_gather_labels(labels, self.world_size), self.label_weight)
        loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets.T)) / 2
        return {"contrastive_loss": loss} if output_dict else loss
