"""Word-level report tokenizer with the R2Gen cleaning rules for IU X-ray and MIMIC-CXR.

The cleaning follows the protocol of R2Gen (Chen et al., 2020), which most report-generation
papers report against: lower-case, split into sentences, strip punctuation from each sentence,
rejoin as ``"w w w . w w ."``. Words seen fewer than ``min_freq`` times in the training reports
map to ``<unk>``. The vocabulary saves as ``report_tokenizer.json`` beside each model (a name that does
not clash with transformers' ``tokenizer.json``) and also converts to
a transformers ``PreTrainedTokenizerFast`` for use with generation utilities.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ReportTokenizer", "clean_report", "TOKENIZER_FILE"]

TOKENIZER_FILE = "report_tokenizer.json"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# Characters R2Gen removes inside a sentence (after lower-casing): . , ? ; * ! % ^ & _ + ( ) :
# - [ ] { } and everything between ':' and '[' in ASCII (; < = > ? @), plus quotes and slashes.
_STRIP = re.compile(r"[.,?;*!%^&_+():<=>@\-\[\]{}\"/\\']")
_NUMBERED = re.compile(r"(^|\s|\.)\s*\d\.\s+")


def _sentences_iu(text: str) -> list[str]:
    text = text.replace("\n", " ")
    while ".." in text:
        text = text.replace("..", ".")
    # Enumerated findings ("1. ... 2. ...") become plain sentences.
    text = _NUMBERED.sub(lambda m: ". " if m.group(1) == "." else " ", text)
    return text.strip().lower().split(". ")


def _sentences_mimic(text: str) -> list[str]:
    text = text.replace("\n", " ").replace("__", "_")
    text = re.sub(r"\s{2,}", " ", text)
    while ".." in text:
        text = text.replace("..", ".")
    text = _NUMBERED.sub(lambda m: ". " if m.group(1) == "." else " ", text)
    return text.strip().lower().split(". ")


def clean_report(text: str, dataset: str = "iu_xray") -> str:
    """R2Gen cleaning: ``"The heart is normal. No effusion."`` -> ``"the heart is normal . no effusion ."``.

    Args:
        text: raw report text.
        dataset: ``"iu_xray"`` or ``"mimic_cxr"`` (MIMIC also folds newlines, double underscores
            and runs of spaces before sentence splitting).
    """
    if dataset not in ("iu_xray", "mimic_cxr"):
        raise ValueError(f"dataset must be 'iu_xray' or 'mimic_cxr', got {dataset!r}")
    split = _sentences_iu if dataset == "iu_xray" else _sentences_mimic
    sentences = []
    for sent in split(text):
        words = _STRIP.sub("", sent).split()
        if words:
            sentences.append(" ".join(words))
    return " . ".join(sentences) + " ." if sentences else ""


class ReportTokenizer:
    """Word-level tokenizer: ids 0..3 are ``<pad> <bos> <eos> <unk>``, then words by frequency."""

    def __init__(self, vocab: Sequence[str], dataset: str = "iu_xray", max_length: int = 100) -> None:
        if list(vocab[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocabulary holds duplicate words")
        self.itos: list[str] = list(vocab)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.dataset = dataset
        self.max_length = int(max_length)

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

    @classmethod
    def fit(
        cls, reports: Iterable[str], min_freq: int = 3, dataset: str = "iu_xray", max_length: int = 100
    ) -> ReportTokenizer:
        """Build the vocabulary from training reports (R2Gen thresholds: 3 for IU X-ray, 10 for MIMIC-CXR)."""
        counts: Counter[str] = Counter()
        n = 0
        for report in reports:
            counts.update(clean_report(report, dataset).split())
            n += 1
        if n == 0:
            raise ValueError("cannot fit a tokenizer on zero reports")
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([*SPECIAL_TOKENS, *words], dataset=dataset, max_length=max_length)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        return clean_report(text, self.dataset).split()

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """Ids of a report; with special tokens ``<bos> ... <eos>``, truncated to ``max_length`` in total."""
        limit = self.max_length if max_length is None else max_length
        ids = [self.stoi.get(w, self.unk_token_id) for w in self.tokenize(text)]
        if add_special_tokens:
            ids = [self.bos_token_id, *ids[: max(0, limit - 2)], self.eos_token_id]
        else:
            ids = ids[:limit]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ids; stops at the first ``<eos>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id:
                break
            if skip_special_tokens and i in (self.pad_token_id, self.bos_token_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)

    def batch_encode(self, texts: Sequence[str], max_length: int | None = None) -> tuple[Any, Any]:
        """``(input_ids, attention_mask)`` as LongTensors of shape (B, L), right-padded with ``<pad>``."""
        import torch

        rows = [self.encode(t, max_length=max_length) for t in texts]
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[k, : len(r)] = 1
        return ids, mask

    def to_dict(self) -> dict[str, Any]:
        return {"type": "radloop-word-level", "version": 1, "dataset": self.dataset,
                "max_length": self.max_length, "vocab": self.itos}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``report_tokenizer.json`` into ``directory`` (atomically)."""
        from ..io import atomic_write_text

        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> ReportTokenizer:
        """Load from a folder holding ``report_tokenizer.json`` or from the file itself."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        from ..io import read_json

        data = read_json(path)
        if not isinstance(data, dict) or data.get("type") != "radloop-word-level" or "vocab" not in data:
            raise ValueError(f"{path} is not a RadLoop word-level tokenizer file")
        if data.get("version", 1) != 1:
            raise ValueError(f"{path} is tokenizer format version {data.get('version')}; this RadLoop reads version 1")
        return cls(data["vocab"], dataset=data.get("dataset", "iu_xray"), max_length=data.get("max_length", 100))

    def to_transformers(self):
        """The same vocabulary as a ``transformers.PreTrainedTokenizerFast``.

        It splits on white space and punctuation like :func:`clean_report` output, so feed it
        cleaned text (``clean_report``) to get the same ids as :meth:`encode`.
        """
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        core = Tokenizer(models.WordLevel(vocab=dict(self.stoi), unk_token=UNK))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, self.bos_token_id), (EOS, self.eos_token_id)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
            model_max_length=self.max_length,
        )
