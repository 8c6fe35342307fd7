"""Batched greedy and beam-search decoding for report decoders.

A decoder is seen through a *decoding session* over the encoder memory (N, L, d):
``session(tokens) -> log-probabilities (N, V)`` of the token after ``tokens`` (N, t), called once
per step with one more token each time, and ``session.reorder(index)`` when beam search keeps
other hypotheses. A report decoder's session (``model.decoding_session(memory)``) caches keys and
values, so each step runs the decoder on the new token only; a plain function
``step(memory, tokens) -> log-probabilities`` is wrapped in an uncached session that re-runs it over
the whole prefix (the reference the cached sessions are tested against). Beam search keeps ``num_beams``
hypotheses per image, scores finished ones by ``sum log p / length ** length_penalty`` (the
transformers convention) and forbids repeating any n-gram of size ``no_repeat_ngram_size``
(transformers' ``NoRepeatNGramLogitsProcessor``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["DecodingConfig", "DecodingSession", "greedy_decode", "beam_search", "decode", "uncached"]

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DecodingSession(Protocol):
    """Next-token log-probabilities over fixed memory rows, one token more per call."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, index: torch.Tensor) -> None: ...


class _Uncached:
    """A session that re-runs ``step`` over the whole prefix at every call (no cache)."""

    def __init__(self, step: StepFn, memory: torch.Tensor) -> None:
        self.step, self.memory = step, memory

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.step(self.memory, tokens)

    def reorder(self, index: torch.Tensor) -> None:
        self.memory = self.memory.index_select(0, index)


def uncached(step: StepFn) -> Callable[[torch.Tensor], DecodingSession]:
    """Sessions over ``step(memory, tokens)``: memory rows -> an uncached session."""
    return lambda memory: _Uncached(step, memory)


def _sessions(step: Any) -> Callable[[torch.Tensor], DecodingSession]:
    """A report decoder (it has ``decoding_session``) decodes with its cache; a function without one."""
    return step.decoding_session if hasattr(step, "decoding_session") else uncached(step)


@dataclass
class DecodingConfig:
    """The ``decoding`` section of a report-model config."""

    num_beams: int = 3
    max_length: int = 100
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    min_length: int = 2


def _constrain(tokens: torch.Tensor, log_probs: torch.Tensor, bos: int, eos: int, t: int,
               cfg: DecodingConfig) -> torch.Tensor:
    """Never emit <pad> (0) or <bos>; no <eos> before ``min_length``; no repeated n-grams."""
    log_probs[:, 0] = -float("inf")
    log_probs[:, bos] = -float("inf")
    if t < cfg.min_length:
        log_probs[:, eos] = -float("inf")
    n = cfg.no_repeat_ngram_size
    if n > 0 and tokens.shape[1] >= n:
        from transformers import NoRepeatNGramLogitsProcessor

        log_probs = NoRepeatNGramLogitsProcessor(n)(tokens, log_probs)
    return log_probs


@torch.no_grad()
def greedy_decode(step: Any, memory: torch.Tensor, bos: int, eos: int, cfg: DecodingConfig) -> torch.Tensor:
    """(B, T) token ids starting with ``bos``; finished rows are padded with ``eos``.

    ``step``: a report decoder (cached decoding) or a function ``step(memory, tokens)``.
    """
    session = _sessions(step)(memory)
    b = memory.shape[0]
    tokens = torch.full((b, 1), bos, dtype=torch.long, device=memory.device)
    done = torch.zeros(b, dtype=torch.bool, device=memory.device)
    for t in range(cfg.max_length - 1):
        log_probs = _constrain(tokens, session(tokens).float(), bos, eos, t, cfg)
        nxt = log_probs.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == eos
        if done.all():
            break
    return tokens


@torch.no_grad()
def beam_search(step: Any, memory: torch.Tensor, bos: int, eos: int, cfg: DecodingConfig) -> torch.Tensor:
    """(B, T) best hypothesis per image (``bos`` first, ``eos``-padded).

    ``step``: a report decoder (cached decoding) or a function ``step(memory, tokens)``.
    """
    b, k = memory.shape[0], cfg.num_beams
    device = memory.device
    session = _sessions(step)(memory.repeat_interleave(k, 0))
    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -float("inf")  # all beams start identical: keep one
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
    for t in range(cfg.max_length - 1):
        log_probs = _constrain(tokens, session(tokens).float(), bos, eos, t, cfg)
        vocab = log_probs.shape[-1]
        cand = (scores.reshape(-1, 1) + log_probs).reshape(b, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1)
        beam_idx, word = top_idx // vocab, top_idx % vocab
        new_tokens, new_scores = [], torch.full((b, k), -float("inf"), device=device)
        parents: list[int] = []  # the row each kept hypothesis continues (the session reorders to them)
        for i in range(b):
            kept = 0
            for s, bi, w in zip(top_scores[i].tolist(), beam_idx[i].tolist(), word[i].tolist(), strict=True):
                seq = torch.cat([tokens[i * k + bi], torch.tensor([w], device=device)])
                if w == eos:
                    if len(finished[i]) < k or s / len(seq) ** cfg.length_penalty > min(f[0] for f in finished[i]):
                        finished[i].append((s / len(seq) ** cfg.length_penalty, seq))
                        finished[i] = sorted(finished[i], key=lambda f: -f[0])[:k]
                    continue
                if kept < k:
                    new_tokens.append(seq)
                    parents.append(i * k + bi)
                    new_scores[i, kept] = s
                    kept += 1
            while kept < k:  # not enough live candidates: pad with dead beams
                new_tokens.append(torch.cat([tokens[i * k], torch.tensor([eos], device=device)]))
                parents.append(i * k)
                kept += 1
        tokens, scores = torch.stack(new_tokens), new_scores
        session.reorder(torch.tensor(parents, device=device))
        best_live = scores.max(1).values / (tokens.shape[1] ** cfg.length_penalty)
        if all(len(finished[i]) >= k and min(f[0] for f in finished[i]) >= best_live[i] for i in range(b)):
            break
    out = []
    for i in range(b):
        if not finished[i]:  # nothing finished within max_length: take the best live beam
            finished[i].append((float(scores[i, 0]), torch.cat([tokens[i * k], torch.tensor([eos], device=device)])))
        out.append(max(finished[i], key=lambda f: f[0])[1])
    width = max(len(s) for s in out)
    return torch.stack([torch.cat([s, torch.full((width - len(s),), eos, device=device, dtype=s.dtype)]) for s in out])


def decode(step: Any, memory: torch.Tensor, bos: int, eos: int, cfg: DecodingConfig) -> torch.Tensor:
    """Greedy when ``num_beams == 1``, else beam search."""
    if cfg.num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {cfg.num_beams}")
    if cfg.num_beams == 1:
        return greedy_decode(step, memory, bos, eos, cfg)
    return beam_search(step, memory, bos, eos, cfg)
