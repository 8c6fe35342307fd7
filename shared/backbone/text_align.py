"""``radloop train text_align``: teach a trained RadCLIP's text tower real report wording (IU X-ray).

SynthCXR's reports use ~130 words; radiologists' reports use thousands ("opacities", "granuloma",
"unchanged", the anonymiser's ``xxxx``). This trainer takes a trained backbone (the *teacher*, frozen)
and fine-tunes a copy of its text tower (the *student*) on text alone:

* **vocabulary**: the student's tokenizer is the teacher's, ids unchanged, followed by the words seen at
  least ``min_freq`` times in the IU X-ray *training* reports. New rows of the token embedding start as
  the teacher's ``<unk>`` row, so before training the student reads every text exactly as the teacher did.
* **distillation** (SynthCXR training reports): the student's token features (what the diffusion UNet's
  conditioner reads) and pooled embedding stay those of the teacher, so every model trained on the
  teacher (the UNet, the decoders' image tower is untouched anyway) keeps working with the student.
* **findings** (IU training reports): the teacher's frozen findings head, applied to the student's
  embedding, is trained towards the labeler's positives of the report.
* **alignment** (IU training reports): the report's embedding and its mean token feature are pulled to the
  prototype of the SynthCXR training reports that state the same positive findings (the teacher's mean
  embedding / mean token feature of that group): InfoNCE over all prototypes plus a token-mean MSE.

The image tower, findings head and temperature are frozen (the image side keeps its meaning). The IU
reports come from the torchxrayvision wheel (:mod:`shared.data.iu_xray`), split by report id; the test
split is never read here. Selection on the IU validation reports' nearest-neighbour agreement (over the
reports with a positive finding: for normal ones nearly any neighbour agrees).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.dataset import load_records
from ..data.iu_xray import read_iu_reports, split_iu_reports
from ..labels import CHEXPERT_LABELS
from ..metrics import multilabel_auroc
from ..text.labeler import ReportLabeler
from ..text.tokenizer import ReportTokenizer
from ..training import TRAINERS, TrainConfig, Trainer, TrainResult, seed_everything, training_loader
from .clip import RadCLIP
from .zero_shot import zero_shot_probabilities

logger = logging.getLogger(__name__)

__all__ = ["TextAlignDataConfig", "TextAlignModelConfig", "TextAlignExperiment", "extend_vocabulary",
           "finding_keys", "text_side_metrics", "train_text_align", "TextAlignLoss"]


@dataclass
class TextAlignDataConfig:
    #: SynthCXR annotation.json whose training reports the student must keep reading as the teacher does
    annotation: str = ""
    #: NLMCXR_reports.tgz (default: the one inside the installed torchxrayvision wheel)
    iu_archive: str | None = None
    #: an IU training word joins the vocabulary when seen this often (R2Gen's IU threshold)
    min_freq: int = 3
    #: SynthCXR reports per batch; as many IU reports ride along
    batch_size: int = 64
    num_workers: int = 0


@dataclass
class TextAlignModelConfig:
    #: the teacher: a RadCLIP folder or zoo name (with a findings head)
    base: str = "zoo:radclip_small"
    distill_weight: float = 1.0
    findings_weight: float = 1.0
    align_weight: float = 1.0
    #: InfoNCE temperature of the prototype alignment
    temperature: float = 0.07


@dataclass
class TextAlignExperiment:
    data: TextAlignDataConfig = field(default_factory=TextAlignDataConfig)
    model: TextAlignModelConfig = field(default_factory=TextAlignModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/text_align", max_steps=2000,
                                                                   learning_rate=3e-4, eval_every=250,
                                                                   checkpoint_every=500, warmup_steps=100))


def extend_vocabulary(teacher: RadCLIP, reports: Sequence[str], min_freq: int) -> RadCLIP:
    """A copy of ``teacher`` whose tokenizer adds the words of ``reports`` seen ``min_freq`` times.

    Old ids keep their rows; new rows copy the ``<unk>`` row, so the copy reads any text exactly as the
    teacher did until it is trained. The copy's tokenizer is attached.
    """
    tok = teacher.tokenizer
    if tok is None:
        raise ValueError("the teacher backbone has no tokenizer attached")
    counts = Counter(w for r in reports for w in tok.tokenize(r))
    new = sorted((w for w, n in counts.items() if n >= min_freq and w not in tok.stoi), key=lambda w: (-counts[w], w))
    student_tok = ReportTokenizer([*tok.itos, *new], dataset=tok.dataset, max_length=tok.max_length)
    student = RadCLIP(model_cfg=dict(teacher.config.model_cfg), vocab_size=len(student_tok),
                      in_chans=teacher.config.in_chans, num_labels=teacher.config.num_labels)
    state = teacher.state_dict()
    key = "clip.text.token_embedding.weight"
    old = state[key]
    grown = old[tok.stoi["<unk>"]].expand(len(new), -1)
    state[key] = torch.cat([old, grown.clone()]) if new else old
    student.load_state_dict(state)
    student.tokenizer = student_tok
    logger.info("vocabulary %d -> %d words (%d from the IU training reports, seen >= %d times)",
                len(tok), len(student_tok), len(new), min_freq)
    return student


def finding_keys(labels: np.ndarray) -> list[tuple[int, ...]]:
    """Per report (rows of (N, 14) labeler labels), the indices of its positive findings."""
    return [tuple(int(k) for k in np.flatnonzero(row == 1)) for row in labels]


def _encode(model: RadCLIP, reports: Sequence[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm text embeddings (N, E) and masked-mean token features (N, W), no gradients."""
    embeds, means = [], []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(reports), batch_size):
            ids, mask = _ids(model, reports[start:start + batch_size])
            out = model(None, ids.to(device))
            embeds.append(out.text_embeds.float().cpu())
            means.append(_masked_mean(out.text_tokens, mask.to(device)).float().cpu())
    return torch.cat(embeds), torch.cat(means)


def _ids(model: RadCLIP, reports: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask (B, context_length), padded or cut as the text tower reads them."""
    ids, mask = model.tokenizer.batch_encode(list(reports))
    length = model.context_length
    ids = F.pad(ids, (0, max(length - ids.shape[1], 0)))[:, :length]
    mask = F.pad(mask, (0, max(length - mask.shape[1], 0)))[:, :length]
    return ids, mask


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens (B, T, W), mask (B, T) -> (B, W)."""
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


def _prototypes(teacher: RadCLIP, reports: Sequence[str], keys: Sequence[tuple[int, ...]]
                ) -> tuple[dict[tuple[int, ...], int], torch.Tensor, torch.Tensor]:
    """The teacher's mean unit embedding (K, E) and mean token feature (K, W) per positive-finding set."""
    embeds, means = _encode(teacher, reports)
    index: dict[tuple[int, ...], int] = {}
    for key in keys:
        index.setdefault(key, len(index))
    groups = torch.tensor([index[k] for k in keys])
    count = torch.bincount(groups, minlength=len(index)).clamp_min(1)[:, None].float()
    emb = torch.zeros(len(index), embeds.shape[1]).index_add_(0, groups, embeds) / count
    tok = torch.zeros(len(index), means.shape[1]).index_add_(0, groups, means) / count
    return index, F.normalize(emb, dim=-1), tok


class TextAlignLoss(torch.nn.Module):
    """The student's three terms (open_clip style: a module returning a dict of named terms and ``loss``).

    Args:
        teacher: the frozen backbone (its text features are the distillation targets).
        proto_index, proto_embeds (K, E), proto_tokens (K, W): :func:`_prototypes` of the SynthCXR reports.
        token_scale: the teacher's token-feature variance, so the token MSE terms are scale-free.
    """

    def __init__(self, teacher: RadCLIP, proto_index: dict[tuple[int, ...], int], proto_embeds: torch.Tensor,
                 proto_tokens: torch.Tensor, token_scale: float, distill_weight: float = 1.0,
                 findings_weight: float = 1.0, align_weight: float = 1.0, temperature: float = 0.07) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.proto_index = proto_index
        self.register_buffer("proto_embeds", proto_embeds)
        self.register_buffer("proto_tokens", proto_tokens)
        self.token_scale = float(token_scale)
        self.weights = (distill_weight, findings_weight, align_weight)
        self.temperature = temperature

    def forward(self, student: torch.nn.Module, synth_ids: torch.Tensor, synth_mask: torch.Tensor,
                teacher_ids: torch.Tensor, iu_ids: torch.Tensor, iu_mask: torch.Tensor, iu_positive: torch.Tensor,
                iu_keys: Sequence[tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """ids/mask (B, T) in the student's vocabulary, ``teacher_ids`` (B, T) the same SynthCXR reports in the
        teacher's (one token per word in both: positions line up; a word only the student knows is ``<unk>``
        to the teacher); iu_positive (B, 14) in {0, 1}; ``student`` may be DDP-wrapped (only forward runs)."""
        b = len(synth_ids)
        # 1. one student pass over both report sets; the teacher on the SynthCXR ones
        out = student(None, torch.cat([synth_ids, iu_ids]))
        with torch.no_grad():
            target = self.teacher(None, teacher_ids)
        # 2. distillation: SynthCXR token features (masked) and pooled embeddings stay the teacher's
        m = synth_mask.to(out.text_tokens.dtype)[..., None]
        squared = ((out.text_tokens[:b] - target.text_tokens) ** 2) * m
        token_mse = squared.sum() / (m.sum() * out.text_tokens.shape[-1])
        distill = token_mse / self.token_scale + (1 - (out.text_embeds[:b] * target.text_embeds).sum(-1)).mean()
        # 3. findings: the frozen shared head reads the labeler's positives from the IU embedding
        findings = F.binary_cross_entropy_with_logits(out.text_label_logits[b:], iu_positive.to(out.text_embeds))
        # 4. alignment to the prototype of the SynthCXR reports stating the same findings (when any do)
        rows = [i for i, k in enumerate(iu_keys) if k in self.proto_index]
        align = out.text_embeds.new_zeros(())
        if rows:
            target_ids = torch.tensor([self.proto_index[iu_keys[i]] for i in rows], device=out.text_embeds.device)
            emb = out.text_embeds[b:][rows]
            nce = F.cross_entropy(emb @ self.proto_embeds.T / self.temperature, target_ids)
            mean_tok = _masked_mean(out.text_tokens[b:][rows], iu_mask[rows])
            align = nce + ((mean_tok - self.proto_tokens[target_ids]) ** 2).mean() / self.token_scale
        wd, wf, wa = self.weights
        loss = wd * distill + wf * findings + wa * align
        return {"loss": loss, "distill_loss": distill.detach(), "findings_loss": findings.detach(),
                "align_loss": align.detach()}


class _TextPairs(Dataset):
    """Item i: SynthCXR training report i and a random IU training report (drawn under the loader's per-item
    seed, so a resumed run draws the same one)."""

    def __init__(self, synth: Sequence[str], iu: Sequence[str]) -> None:
        self.synth, self.iu = list(synth), list(iu)

    def __len__(self) -> int:
        return len(self.synth)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(torch.randint(len(self.iu), ()).item())
        return {"synth": self.synth[i], "iu": j}


def _collate(items: list[dict[str, Any]]) -> dict[str, list]:
    return {"synth": [it["synth"] for it in items], "iu": [it["iu"] for it in items]}


@torch.no_grad()
def text_side_metrics(model: RadCLIP, iu_reports: Sequence[str], iu_labels: np.ndarray, synth_reports: Sequence[str],
                      synth_labels: np.ndarray, top_k: int = 5) -> dict[str, Any]:
    """How well a backbone's text side reads real reports.

    * ``unk_share``: share of the IU reports' running words its tokenizer maps to ``<unk>``;
    * ``zero_shot_mauc`` (+ per finding): the zoo's zero-shot prompts scored against the IU report
      embeddings, AUROC against the labeler's labels of those reports;
    * ``head_mauc``: the findings head on the IU report embeddings (when the backbone has one);
    * ``nn_top{k}``: share of IU reports with a SynthCXR report stating exactly the same positive findings
      among their ``k`` nearest (cosine), over the IU reports whose finding set occurs among the SynthCXR
      reports at all (``nn_answerable``); ``nn_chance`` is the same share for ``k`` random SynthCXR reports;
      ``*_abnormal``: the same over the IU reports with a positive finding (most reports are normal, and any
      normal neighbour agrees with a normal report).
    """
    tok = model.tokenizer
    words = [w for r in iu_reports for w in tok.tokenize(r)]
    unk = sum(w not in tok.stoi for w in words) / max(len(words), 1)
    iu_emb, _ = _encode(model, iu_reports)
    synth_emb, _ = _encode(model, synth_reports)
    positive = (np.asarray(iu_labels) == 1).astype(float)
    zero = multilabel_auroc(zero_shot_probabilities(model, iu_emb).numpy(), positive, CHEXPERT_LABELS)
    out: dict[str, Any] = {"n_iu": len(iu_reports), "n_synth": len(synth_reports), "unk_share": round(unk, 4),
                           "zero_shot_mauc": zero["mauc"],
                           "zero_shot_auroc": {k.removeprefix("auroc/"): v for k, v in zero.items()
                                               if k.startswith("auroc/")}}
    if model.label_head is not None:
        head = torch.sigmoid(model.label_logits(iu_emb.to(next(model.parameters()).device))).float().cpu().numpy()
        out["head_mauc"] = multilabel_auroc(head, positive, CHEXPERT_LABELS)["mauc"]
    iu_keys, synth_keys = finding_keys(np.asarray(iu_labels)), finding_keys(np.asarray(synth_labels))
    present = set(synth_keys)
    rows = [i for i, k in enumerate(iu_keys) if k in present]
    top = (iu_emb[rows] @ synth_emb.T).topk(min(top_k, len(synth_reports)), dim=1).indices.numpy() if rows else []
    hits = np.array([any(synth_keys[j] == iu_keys[i] for j in neighbours)
                     for i, neighbours in zip(rows, top, strict=True)], dtype=bool)
    rng = np.random.default_rng(0)
    chance = np.array([any(synth_keys[j] == iu_keys[i] for j in rng.choice(len(synth_keys), top_k, replace=False))
                       for i in rows], dtype=bool)
    # most reports of both sets are normal, where any neighbour agrees; the abnormal ones are the test
    normal = (CHEXPERT_LABELS.index("No Finding"),)
    abnormal = np.array([iu_keys[i] != normal for i in rows], dtype=bool)

    def share(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    out.update({f"nn_top{top_k}": share(hits), "nn_answerable": len(rows), "nn_chance": share(chance),
                f"nn_top{top_k}_abnormal": share(hits[abnormal]), "nn_answerable_abnormal": int(abnormal.sum()),
                "nn_chance_abnormal": share(chance[abnormal])})
    return out


def _synth_split(annotation: str, split: str) -> list[str]:
    return [r["report"] for r in load_records(annotation) if r.get("split") == split]


@TRAINERS.register("text_align", help="teach a trained backbone's text tower real (IU X-ray) report wording",
                   meta={"experiment": TextAlignExperiment, "metric": "IU val reports with a finding: same-findings "
                                                                      "SynthCXR report among the 5 nearest"})
def train_text_align(cfg: TextAlignExperiment) -> TrainResult:
    data, mcfg, tcfg = cfg.data, cfg.model, cfg.train
    seed_everything(tcfg.seed)
    if not data.annotation:
        raise ValueError("data.annotation (a SynthCXR annotation.json) is required")
    teacher = RadCLIP.from_pretrained(mcfg.base)
    if teacher.label_head is None:
        raise ValueError(f"model.base={mcfg.base} has no findings head (train it with model.findings_weight > 0)")
    iu = split_iu_reports(read_iu_reports(data.iu_archive))
    iu_train = [r.text for r in iu["train"] if r.text.strip()]
    iu_val = [r.text for r in iu["val"] if r.text.strip()]
    synth_train, synth_val = _synth_split(data.annotation, "train"), _synth_split(data.annotation, "val")
    if not synth_train or not iu_train:
        raise ValueError(f"no training reports: {len(synth_train)} in {data.annotation}, {len(iu_train)} IU")
    student = extend_vocabulary(teacher, iu_train, data.min_freq)
    # 1. only the text tower learns; the image tower, findings head and temperature keep their meaning
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith("clip.text."))
    labeler = ReportLabeler()
    iu_labels, synth_labels = labeler.label_batch(iu_train), labeler.label_batch(synth_train)
    iu_keys = finding_keys(iu_labels)
    iu_positive = torch.as_tensor(iu_labels == 1, dtype=torch.float32)
    index, proto_emb, proto_tok = _prototypes(teacher, synth_train, finding_keys(synth_labels))
    with torch.no_grad():
        sample = teacher(None, _ids(teacher, synth_train[:512])[0]).text_tokens
    covered = sum(k in index for k in iu_keys) / len(iu_keys)
    logger.info("%d finding sets among the SynthCXR training reports; %.0f%% of IU training reports have one",
                len(index), 100 * covered)
    criterion = TextAlignLoss(teacher, index, proto_emb, proto_tok, float(sample.var()), mcfg.distill_weight,
                              mcfg.findings_weight, mcfg.align_weight, mcfg.temperature)
    loader = training_loader(_TextPairs(synth_train, iu_train), data.batch_size, tcfg.seed, _collate,
                             data.num_workers)
    def loss_fn(m: torch.nn.Module, batch: dict[str, list]) -> dict[str, torch.Tensor]:
        device = next(m.parameters()).device
        criterion.to(device)
        s_ids, s_mask = _ids(student, batch["synth"])
        t_ids, _ = _ids(teacher, batch["synth"])
        i_ids, i_mask = _ids(student, [iu_train[j] for j in batch["iu"]])
        return criterion(m, s_ids.to(device), s_mask.to(device), t_ids.to(device), i_ids.to(device),
                         i_mask.to(device), iu_positive[batch["iu"]].to(device), [iu_keys[j] for j in batch["iu"]])

    val_iu_labels, val_synth_labels = labeler.label_batch(iu_val), labeler.label_batch(synth_val)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        metrics = text_side_metrics(m, iu_val, val_iu_labels, synth_val, val_synth_labels)  # type: ignore[arg-type]
        s_emb, _ = _encode(m, synth_val[:512])  # type: ignore[arg-type]
        t_emb, _ = _encode(teacher, synth_val[:512])
        return {"nn_top5": metrics["nn_top5"], "nn_top5_abnormal": metrics["nn_top5_abnormal"],
                "zero_shot_mauc": metrics["zero_shot_mauc"],
                "head_mauc": metrics["head_mauc"], "synth_cosine_to_teacher": float((s_emb * t_emb).sum(-1).mean())}

    trainer = Trainer(student, loader, loss_fn, tcfg, eval_fn=eval_fn, select_metric="nn_top5_abnormal",
                      select_mode="max",
                      save_extra=student.tokenizer.save_pretrained)
    return trainer.train()
