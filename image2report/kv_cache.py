"""Incremental decoding: a key/value cache, so each decoding step runs the decoder on one new token.

A cache is a flat ``dict[str, Tensor]`` whose tensors all have the decoded rows first, so beam
search reorders it with one ``index_select`` per tensor. Per decoder layer ``i`` it holds:

* ``{i}.sk``, ``{i}.sv``: the self-attention keys and values of the tokens so far (N, H, t, dh),
  one position appended per step;
* ``{i}.mk``, ``{i}.mv``: the cross-attention keys and values of the memory (N, H, S, dh),
  projected once per study.

:func:`transformer_decoder_init` / :func:`transformer_decoder_next` run a PyTorch
``nn.TransformerDecoder`` (post-norm layers, as ``nn.Transformer`` builds them) this way with the
layers' own weights; the decoders whose layers are their own (IFNet) write the same two steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CachedSession", "split_heads", "merge_heads", "project", "attend", "transformer_decoder_init",
           "transformer_decoder_next"]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, T, d) -> (N, H, T, d / H)."""
    n, t, d = x.shape
    return x.reshape(n, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, H, T, dh) -> (N, T, H * dh)."""
    return x.transpose(1, 2).flatten(2)


def project(attn: nn.MultiheadAttention, x: torch.Tensor, part: int) -> torch.Tensor:
    """The query (0), key (1) or value (2) projection of ``attn`` applied to ``x``, split into heads."""
    d = attn.embed_dim
    weight = attn.in_proj_weight[part * d:(part + 1) * d]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[part * d:(part + 1) * d]
    return split_heads(F.linear(x, weight, bias), attn.num_heads)


def attend(attn: nn.MultiheadAttention, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attn`` with query ``x`` (N, T, d) over cached ``keys``/``values`` (N, H, S, dh); ``mask``: an
    additive (T, S) float mask. Evaluation only (no attention dropout)."""
    q = project(attn, x, 0)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return attn.out_proj(merge_heads(out))


def transformer_decoder_init(decoder: nn.TransformerDecoder, memory: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cache of an empty prefix: each layer's cross-attention keys/values of ``memory`` (N, S, d)."""
    cache: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        empty = memory.new_zeros(memory.shape[0], attn.num_heads, 0, attn.embed_dim // attn.num_heads)
        cache[f"{i}.sk"], cache[f"{i}.sv"] = empty, empty
        cache[f"{i}.mk"] = project(layer.multihead_attn, memory, 1)
        cache[f"{i}.mv"] = project(layer.multihead_attn, memory, 2)
    return cache


def transformer_decoder_next(decoder: nn.TransformerDecoder, x: torch.Tensor, cache: dict[str, torch.Tensor],
                             memory_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder's output (N, 1, d) for one new position ``x`` (N, 1, d); ``cache`` grows by it.

    ``memory_mask``: the additive (1, S) row of the cross-attention mask for this position. The new
    position attends to every cached one (causal by construction); decoded tokens are never padding.
    """
    for i, layer in enumerate(decoder.layers):
        if layer.norm_first:
            raise NotImplementedError("cached decoding covers post-norm nn.TransformerDecoderLayer layers")
        # 1. self-attention over the prefix, with this position's key and value appended
        cache[f"{i}.sk"] = torch.cat([cache[f"{i}.sk"], project(layer.self_attn, x, 1)], 2)
        cache[f"{i}.sv"] = torch.cat([cache[f"{i}.sv"], project(layer.self_attn, x, 2)], 2)
        x = layer.norm1(x + attend(layer.self_attn, x, cache[f"{i}.sk"], cache[f"{i}.sv"]))
        # 2. cross-attention to the memory's cached keys and values
        x = layer.norm2(x + attend(layer.multihead_attn, x, cache[f"{i}.mk"], cache[f"{i}.mv"], memory_mask))
        # 3. feed-forward
        x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
    return x if decoder.norm is None else decoder.norm(x)


class CachedSession:
    """A decoding session (:class:`image2report.decoding.DecodingSession`) over a decoder's cache.

    The decoder provides ``init_cache(memory) -> cache`` and ``decode_next(tokens, cache) -> logits
    (N, V)`` of the token after ``tokens`` (N, t), whose last token is the only one not yet cached.
    """

    def __init__(self, model: nn.Module, memory: torch.Tensor) -> None:
        self.model = model
        self.cache = model.init_cache(memory)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model.decode_next(tokens, self.cache).float(), dim=-1)

    def reorder(self, index: torch.Tensor) -> None:
        for key, value in self.cache.items():
            self.cache[key] = value.index_select(0, index)
