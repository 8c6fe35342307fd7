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

Sentence-level rules (:class:`image2report.sentence_rules.SentenceRules`, given as ``rules``): with
``whole_sentences`` a report ends only after a sentence end and one cut by ``max_length`` ends at its last
whole sentence; each sentence a hypothesis finishes is checked (repeats, contradictions of an earlier
sentence). Beam search drops a hypothesis whose new sentence is refused; greedy decoding backs up to the
word that started the trouble, bans it there and decodes the rest again (at most ``sentence_retries``
times per report; after that the refused sentence is left out and the report ends before it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from .sentence_rules import SentenceRules

__all__ = ["DecodingConfig", "DecodingSession", "greedy_decode", "beam_search", "decode", "uncached", "whole_report"]

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
    """The ``decoding`` section of a report-model config; saved with the model (``generation_config.json``)."""

    num_beams: int = 3
    max_length: int = 100
    length_penalty: float = 1.0
    #: forbid repeating any n-gram of this size (0: off). Off by default: a report whose impression restates
    #: a finding repeats its trigrams, and the block then forces odd words (on the zoo test set the trigram
    #: block gave 5.5% novel, mostly broken, greedy sentences; the sentence rules below replace it)
    no_repeat_ngram_size: int = 0
    min_length: int = 2
    #: ``<eos>`` only after a sentence end; a report cut by ``max_length`` ends at its last whole sentence
    whole_sentences: bool = True
    #: how often one sentence may occur in a report (0: no limit); 2 lets an impression restate a finding
    max_sentence_repeats: int = 2
    #: refuse a sentence that affirms what an earlier sentence negated, or the reverse (labeler-read)
    label_consistent: bool = True
    #: refuse a sentence that says nothing new (off: reports whose impression restates the findings do it)
    refuse_restatements: bool = False
    #: greedy decoding: how often a report backs up past a refused sentence before it ends before it
    sentence_retries: int = 4

    def describe(self) -> str:
        """One line of the settings a person reading a report wants to know (the CLI and the app show it)."""
        rules = [name for name, on in (("whole sentences", self.whole_sentences),
                                       (f"a sentence at most {self.max_sentence_repeats}x", self.max_sentence_repeats),
                                       ("label-consistent", self.label_consistent),
                                       ("no restatements", self.refuse_restatements),
                                       (f"no repeated {self.no_repeat_ngram_size}-grams", self.no_repeat_ngram_size))
                 if on]
        mode = "greedy" if self.num_beams == 1 else f"beam search ({self.num_beams} beams)"
        return f"{mode}, at most {self.max_length} tokens" + (f"; {', '.join(rules)}" if rules else "")


def _constrain(tokens: torch.Tensor, log_probs: torch.Tensor, bos: int, eos: int, t: int,
               cfg: DecodingConfig, period: int | None = None) -> torch.Tensor:
    """Never emit <pad> (0) or <bos>; no <eos> before ``min_length`` (nor, with ``whole_sentences``, after
    anything but a period); no repeated n-grams."""
    log_probs[:, 0] = -float("inf")
    log_probs[:, bos] = -float("inf")
    if t < cfg.min_length:
        log_probs[:, eos] = -float("inf")
    elif cfg.whole_sentences and period is not None:
        log_probs[:, eos] = log_probs[:, eos].masked_fill(tokens[:, -1] != period, -float("inf"))
    n = cfg.no_repeat_ngram_size
    if n > 0 and tokens.shape[1] >= n:
        from transformers import NoRepeatNGramLogitsProcessor

        log_probs = NoRepeatNGramLogitsProcessor(n)(tokens, log_probs)
    return log_probs


def whole_report(seq: list[int], eos: int, period: int | None, whole_sentences: bool = True) -> list[int]:
    """``seq`` (``<bos>`` first) up to its first ``<eos>``; without one (``max_length`` reached), cut after its
    last period when ``whole_sentences`` (a report has at least its first sentence), then ``<eos>``."""
    if eos in seq:
        return seq[: seq.index(eos) + 1]
    if whole_sentences and period is not None and period in seq[1:]:
        seq = seq[: len(seq) - seq[::-1].index(period)]
    return [*seq, eos]


def _pad(rows: list[list[int]], eos: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [eos] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


@torch.no_grad()
def greedy_decode(step: Any, memory: torch.Tensor, bos: int, eos: int, cfg: DecodingConfig,
                  rules: SentenceRules | None = None) -> torch.Tensor:
    """(B, T) token ids starting with ``bos``; finished rows are padded with ``eos``.

    ``step``: a report decoder (cached decoding) or a function ``step(memory, tokens)``. With ``rules``, a
    report whose new sentence is refused is decoded again from the word the refusal names, with that word
    banned at that position (all such reports of a pass together, each forced through its kept prefix).
    """
    b = memory.shape[0]
    prefixes: list[list[int]] = [[bos] for _ in range(b)]
    bans: list[dict[int, set[int]]] = [{} for _ in range(b)]
    out: list[list[int]] = [[] for _ in range(b)]
    rows = list(range(b))
    for attempt in range((cfg.sentence_retries if rules is not None else 0) + 1):
        last = rules is None or attempt == cfg.sentence_retries
        results = _greedy_pass(step, memory.index_select(0, torch.tensor(rows, device=memory.device)),
                               [prefixes[i] for i in rows], [bans[i] for i in rows], bos, eos, cfg, rules, last)
        retry = []
        for i, (seq, refusal) in zip(rows, results, strict=True):
            if refusal is None:
                out[i] = seq
                continue
            # back up to the refused word, ban it there; bans further on belonged to the abandoned text
            prefixes[i] = seq[: refusal.position]
            bans[i] = {p: w for p, w in bans[i].items() if p <= refusal.position}
            bans[i].setdefault(refusal.position, set()).add(seq[refusal.position])
            retry.append(i)
        rows = retry
        if not rows:
            break
    return _pad(out, eos, memory.device)


def _greedy_pass(step: Any, memory: torch.Tensor, prefixes: list[list[int]], bans: list[dict[int, set[int]]],
                 bos: int, eos: int, cfg: DecodingConfig, rules: SentenceRules | None,
                 last: bool) -> list[tuple[list[int], Any]]:
    """One greedy pass over rows forced through ``prefixes``: per row ``(tokens, None)`` when it finished, or
    ``(tokens so far, refusal)`` when its new sentence was refused (on the ``last`` pass the refused sentence
    is dropped instead and the row ends before it)."""
    session = _sessions(step)(memory)
    n, device = memory.shape[0], memory.device
    period = rules.period_id if rules is not None else None
    tokens = torch.full((n, 1), bos, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    results: list[tuple[list[int], Any] | None] = [None] * n
    for t in range(cfg.max_length - 1):
        log_probs = _constrain(tokens, session(tokens).float(), bos, eos, t, cfg, period)
        for r in range(n):
            if t + 1 in bans[r]:
                log_probs[r, sorted(bans[r][t + 1])] = -float("inf")
        nxt = log_probs.argmax(-1)
        is_forced = torch.tensor([t + 1 < len(p) for p in prefixes], device=device)
        if is_forced.any():
            forced = torch.tensor([p[t + 1] if t + 1 < len(p) else 0 for p in prefixes], device=device)
            nxt = torch.where(is_forced, forced, nxt)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        if rules is not None:
            ended = (nxt == period) & ~done & ~is_forced
            for r in ended.nonzero().flatten().tolist():
                seq = tokens[r].tolist()
                refusal = rules.check(seq)
                if refusal is None:
                    continue
                # the last pass leaves the refused sentence out and ends the report before it
                cut = rules.sentences(seq)[-1][0]
                results[r] = (seq[:cut] + [eos], None) if last else (seq, refusal)
                done[r] = True
        done |= nxt == eos
        if done.all():
            break
    rows = tokens.tolist()
    return [results[r] or (whole_report(rows[r], eos, period, cfg.whole_sentences), None) for r in range(n)]


@torch.no_grad()
def beam_search(step: Any, memory: torch.Tensor, bos: int, eos: int, cfg: DecodingConfig,
                rules: SentenceRules | None = None) -> torch.Tensor:
    """(B, T) best hypothesis per image (``bos`` first, ``eos``-padded).

    ``step``: a report decoder (cached decoding) or a function ``step(memory, tokens)``. With ``rules``, a
    candidate that ends a refused sentence is dropped (the next candidates take its place).
    """
    b, k = memory.shape[0], cfg.num_beams
    device = memory.device
    period = rules.period_id if rules is not None else None
    checking = rules is not None and rules.active
    session = _sessions(step)(memory.repeat_interleave(k, 0))
    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -float("inf")  # all beams start identical: keep one
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    for t in range(cfg.max_length - 1):
        log_probs = _constrain(tokens, session(tokens).float(), bos, eos, t, cfg, period)
        vocab = log_probs.shape[-1]
        cand = (scores.reshape(-1, 1) + log_probs).reshape(b, k * vocab)
        # more candidates than beams: ended hypotheses and refused sentences leave room for the next ones
        top_scores, top_idx = cand.topk(min(2 * k + (2 if checking else 0), k * vocab), dim=1)
        beam_idx, word = top_idx // vocab, top_idx % vocab
        rows = tokens.tolist()
        new_tokens, new_scores = [], torch.full((b, k), -float("inf"), device=device)
        parents: list[int] = []  # the row each kept hypothesis continues (the session reorders to them)
        for i in range(b):
            kept = 0
            for s, bi, w in zip(top_scores[i].tolist(), beam_idx[i].tolist(), word[i].tolist(), strict=True):
                seq = [*rows[i * k + bi], w]
                if w == eos:
                    norm = s / len(seq) ** cfg.length_penalty
                    if len(finished[i]) < k or norm > min(f[0] for f in finished[i]):
                        finished[i] = sorted([*finished[i], (norm, seq)], key=lambda f: -f[0])[:k]
                    continue
                if kept == k or (checking and w == period and rules.check(seq) is not None):
                    continue
                new_tokens.append(seq)
                parents.append(i * k + bi)
                new_scores[i, kept] = s
                kept += 1
            while kept < k:  # not enough live candidates: pad with dead beams
                new_tokens.append([*rows[i * k], eos])
                parents.append(i * k)
                kept += 1
        tokens, scores = torch.tensor(new_tokens, dtype=torch.long, device=device), new_scores
        session.reorder(torch.tensor(parents, device=device))
        best_live = (scores.max(1).values / (tokens.shape[1] ** cfg.length_penalty)).tolist()
        if all(_beams_done(finished[i], best_live[i], k, checking) for i in range(b)):
            break
    out = []
    rows = tokens.tolist()
    for i in range(b):
        if not finished[i]:  # nothing finished within max_length: the best live beam, cut to whole sentences
            finished[i].append((float(scores[i, 0]), whole_report(rows[i * k], eos, period, cfg.whole_sentences)))
        out.append(max(finished[i], key=lambda f: f[0])[1])
    return _pad(out, eos, device)


def _beams_done(finished: list[tuple[float, list[int]]], best_live: float, k: int, checking: bool) -> bool:
    """Whether one image's beam search is over: no live beam can beat its ``k`` finished hypotheses, or it has
    no live beam left (every continuation refused) and something finished. With the sentence rules, also when
    its best finished report beats every live beam: refusals thin out the finished ones, and a beam that lost its
    sentence to a refusal would otherwise wander to max_length (18% more steps on zoo:ifnet)."""
    if not finished:
        return False
    return ((len(finished) >= k and min(f[0] for f in finished) >= best_live) or best_live == -float("inf")
            or (checking and max(f[0] for f in finished) >= best_live))


def decode(step: Any, memory: torch.Tensor, bos: int, eos: int, cfg: DecodingConfig,
           rules: SentenceRules | None = None) -> torch.Tensor:
    """Greedy when ``num_beams == 1``, else beam search; ``rules``: the sentence rules (and the period id that
    ``whole_sentences`` needs), None for none."""
    if cfg.num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {cfg.num_beams}")
    if cfg.num_beams == 1:
        return greedy_decode(step, memory, bos, eos, cfg, rules)
    return beam_search(step, memory, bos, eos, cfg, rules)
