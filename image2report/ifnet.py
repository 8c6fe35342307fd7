"""IFNet (Image-enhanced cross-modal Fusion Network) as a report decoder.

* **Image enhancement** (:class:`ImageEnhancer`): a learnt enhancement of fine structure ahead
  of the encoder — the high-pass residual ``x - blur(x)`` is boosted by a learnt per-image gain and
  refined by a small convolution branch (initialised to zero, so training starts from plain
  unsharp masking). The reference code enhances images offline; here it trains with the model.
* **Cross-modal fusion with label features**: the 14 CheXpert-style labels of our labeler on the
  training reports supervise an auxiliary head on the pooled image features (BCE). Each label
  becomes a token mixing a "present" and an "absent" embedding by its value: the labeler's labels
  in training (teacher forcing), the head's thresholded predictions at inference. Image tokens
  and label tokens read each other (one cross-attention each way) and both form the memory.
* **Linear-time decoder** (:class:`LinearAttention`): kernelised attention (``phi = elu + 1``,
  Katharopoulos et al. 2020) in self- and cross-attention, causal chunk by chunk (masked within a
  chunk, a running key-value state across chunks); cost linear in the report length. Decoding
  recomputes the prefix at each step like the other decoders (the recurrent form that makes each
  step O(1) is not used).

Switches: ``use_enhancement``, ``use_label_fusion``, ``linear_attention`` (off: softmax attention).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from shared.labels import CHEXPERT_LABELS
from shared.modeling import RadLoopModel

from .kv_cache import attend, project
from .models import (
    REPORT_DECODERS,
    GridVisualMixin,
    ReportModelOutput,
    _sinusoid,
    build_image_tower,
    teacher_forced_ce,
)

__all__ = ["IFNetReportModel", "ImageEnhancer", "LinearAttention"]


class ImageEnhancer(nn.Module):
    """x (N, 1, H, W) -> x + gain * (x - blur(x)) + refine(x - blur(x)); same shape."""

    def __init__(self, channels: int = 16, sigma: float = 1.0) -> None:
        super().__init__()
        radius = max(1, int(round(2 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None] * g[None, :])[None, None], persistent=False)
        self.gain = nn.Parameter(torch.tensor(0.5))
        self.refine = nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(channels, 1, 3, padding=1))
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel.shape[-1] // 2
        blurred = nn.functional.conv2d(nn.functional.pad(x, (pad,) * 4, mode="replicate"), self.kernel)
        detail = x - blurred
        return x + self.gain * detail + self.refine(torch.cat([x, detail], 1))


class LinearAttention(nn.Module):
    """Multi-head kernelised attention: ``phi(Q) (phi(K)^T V) / (phi(Q) sum phi(K))``.

    ``forward(x (B, T, d), context (B, S, d) | None, causal, key_padding_mask (B, S) True = pad)``.
    Causal self-attention (position t sees keys <= t only) runs over chunks of ``chunk_size``
    positions: the (chunk, chunk) kernel matrix masked to its lower triangle within a chunk, plus a
    running (d, d) sum of ``phi(K)^T V`` from the chunks before. That is exactly the prefix-sum form,
    linear in T, but as matrix products: the prefix sums of (T, d, d) outer products it replaces
    made an IFNet training step 1.7-2x slower on a CPU.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, chunk_size: int = 64) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.heads, self.chunk_size = heads, chunk_size
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(Q), phi(K) (B, H, T, d), V (B, H, T, e) -> numerator (B, H, T, e), denominator (B, H, T)."""
        b, h, t, d = k.shape
        kv = k.new_zeros(b, h, d, v.shape[-1])  # sum of phi(k)^T v over the chunks done
        k_sum = k.new_zeros(b, h, d, 1)
        nums, dens = [], []
        for start in range(0, t, self.chunk_size):
            qc, kc, vc = (z[:, :, start:start + self.chunk_size] for z in (q, k, v))
            w = (qc @ kc.transpose(-1, -2)).tril()
            nums.append(w @ vc + qc @ kv)
            dens.append(w.sum(-1) + (qc @ k_sum).squeeze(-1))
            kv = kv + kc.transpose(-1, -2) @ vc
            k_sum = k_sum + kc.sum(2)[..., None]
        return torch.cat(nums, 2), torch.cat(dens, 2)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.elu(self._split(self.q(x))) + 1

    def _keys_values(self, context: torch.Tensor, key_padding_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        k = nn.functional.elu(self._split(self.k(context))) + 1
        if key_padding_mask is not None:
            k = k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        return k, self._split(self.v(context))

    def _output(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out((num / den.clamp_min(1e-6)[..., None]).transpose(1, 2).flatten(2)))

    def context_state(self, context: torch.Tensor, key_padding_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum phi(K)^T V (B, H, d, e), sum phi(K) (B, H, d)) of ``context`` (B, S, dim): all that
        a query needs to read it, so a decoder computes it once per study (or grows it per token)."""
        k, v = self._keys_values(context, key_padding_mask)
        return torch.einsum("bhsd,bhse->bhde", k, v), k.sum(2)

    def read(self, x: torch.Tensor, kv: torch.Tensor, k_sum: torch.Tensor) -> torch.Tensor:
        """Queries of ``x`` (B, T, dim) read a :meth:`context_state`: the non-causal attention output."""
        q = self._queries(x)
        return self._output(torch.einsum("bhtd,bhde->bhte", q, kv), torch.einsum("bhtd,bhd->bht", q, k_sum))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        if not causal:
            return self.read(x, *self.context_state(context, key_padding_mask))
        k, v = self._keys_values(context, key_padding_mask)
        return self._output(*self._causal(self._queries(x), k, v))


class _DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the memory, feed-forward."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        if linear:
            self.self_attn, self.cross_attn = LinearAttention(dim, heads, dropout), LinearAttention(dim, heads, dropout)
        else:
            self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h = self.norms[0](x)
        if self.linear:
            x = x + self.self_attn(h, causal=True)
            x = x + self.cross_attn(self.norms[1](x), memory)
        else:
            t = x.shape[1]
            causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
            x = x + self.self_attn(h, h, h, attn_mask=causal, need_weights=False)[0]
            h = self.norms[1](x)
            x = x + self.cross_attn(h, memory, memory, need_weights=False)[0]
        return x + self.ff(self.norms[2](x))

    def init_cache(self, memory: torch.Tensor, i: int) -> dict[str, torch.Tensor]:
        """Layer ``i``'s cache of an empty prefix: the memory read once (linear: its running sums;
        softmax: its keys and values), and an empty self-attention state."""
        n = memory.shape[0]
        if self.linear:
            mkv, mks = self.cross_attn.context_state(memory)
            return {f"{i}.mkv": mkv, f"{i}.mks": mks, f"{i}.skv": torch.zeros_like(mkv),
                    f"{i}.sks": torch.zeros_like(mks)}
        heads, d = self.self_attn.num_heads, self.self_attn.embed_dim
        empty = memory.new_zeros(n, heads, 0, d // heads)
        return {f"{i}.sk": empty, f"{i}.sv": empty, f"{i}.mk": project(self.cross_attn, memory, 1),
                f"{i}.mv": project(self.cross_attn, memory, 2)}

    def next(self, x: torch.Tensor, cache: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """The layer's output (N, 1, d) for one new position ``x``; ``cache`` takes it in."""
        h = self.norms[0](x)
        if self.linear:
            # causal linear attention: the running sums grow by this position, then it reads them
            kv, ks = self.self_attn.context_state(h)
            cache[f"{i}.skv"], cache[f"{i}.sks"] = cache[f"{i}.skv"] + kv, cache[f"{i}.sks"] + ks
            x = x + self.self_attn.read(h, cache[f"{i}.skv"], cache[f"{i}.sks"])
            x = x + self.cross_attn.read(self.norms[1](x), cache[f"{i}.mkv"], cache[f"{i}.mks"])
        else:
            cache[f"{i}.sk"] = torch.cat([cache[f"{i}.sk"], project(self.self_attn, h, 1)], 2)
            cache[f"{i}.sv"] = torch.cat([cache[f"{i}.sv"], project(self.self_attn, h, 2)], 2)
            x = x + attend(self.self_attn, h, cache[f"{i}.sk"], cache[f"{i}.sv"])
            x = x + attend(self.cross_attn, self.norms[1](x), cache[f"{i}.mk"], cache[f"{i}.mv"])
        return x + self.ff(self.norms[2](x))


class IFNetReportModel(GridVisualMixin, RadLoopModel):
    """Enhanced image -> CNN grid -> fusion with label tokens -> linear-attention decoder.

    Args:
        vocab_size: report tokenizer size (pad 0, bos 1, eos 2).
        visual: timm image tower (``cxr_resnet_*``); ``init_visual_from`` loads a RadCLIP or classifier tower.
        num_labels: label tokens (the labeler's 14 labels); label_weight: weight of the head's BCE;
        label_threshold: probability above which the head's label counts as present at inference.
        grid_size: the tower's grid pooled to at most this many cells per side (None: as it comes).
    """

    #: the training loop passes the labeler's labels of the reports (``forward(..., labels=)``)
    uses_labels = True

    @register_to_config
    def __init__(self, vocab_size: int, visual: str = "cxr_resnet_small", image_size: int = 64, max_views: int = 1,
                 d_model: int = 256, num_layers: int = 3, num_heads: int = 8, ff_dim: int = 512, dropout: float = 0.1,
                 max_length: int = 100, num_labels: int = len(CHEXPERT_LABELS), label_weight: float = 1.0,
                 label_threshold: float = 0.5, use_enhancement: bool = True, use_label_fusion: bool = True,
                 linear_attention: bool = True, grid_size: int | None = None) -> None:
        super().__init__()
        if use_enhancement:
            self.enhancer = ImageEnhancer()
        self.image_encoder = build_image_tower(visual)
        self.visual_proj = nn.Linear(self.image_encoder.num_features, d_model)
        self.view_embed = nn.Embedding(max_views, d_model)
        self.register_buffer("pos", _sinusoid(max(max_length, 1024), d_model), persistent=False)
        if use_label_fusion:
            self.label_head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, num_labels))
            self.label_present = nn.Parameter(torch.randn(num_labels, d_model) * 0.02)
            self.label_absent = nn.Parameter(torch.randn(num_labels, d_model) * 0.02)
            self.image_reads_labels = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
            self.labels_read_image = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
            self.fusion_norm = nn.LayerNorm(d_model)
        self.token_embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.layers = nn.ModuleList(_DecoderLayer(d_model, num_heads, ff_dim, dropout, linear_attention)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def _image_tokens(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        return self.grid_tokens(images, self.enhancer if self.config.use_enhancement else None, features)

    def label_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The auxiliary head: images (B, V, 1, H, W) -> label logits (B, num_labels)."""
        if not self.config.use_label_fusion:
            raise ValueError("this IFNet model has use_label_fusion=false: there is no label head")
        return self.label_head(self._image_tokens(images).mean(1))

    def _fuse(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, N, d) and label values (B, C) in [0, 1] -> memory (B, N + C, d)."""
        p = present[..., None]
        labels = p * self.label_present + (1 - p) * self.label_absent
        fused_image = tokens + self.image_reads_labels(tokens, labels, labels, need_weights=False)[0]
        fused_labels = labels + self.labels_read_image(labels, tokens, tokens, need_weights=False)[0]
        return self.fusion_norm(torch.cat([fused_image, fused_labels], 1))

    def _encode(self, images: torch.Tensor | None, labels: torch.Tensor | None, features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # 1. enhancement, then the grid features of every view (or the tower's precomputed grids)
        tokens = self._image_tokens(images, features)
        if not self.config.use_label_fusion:
            return tokens, None
        # 2. the auxiliary label head on the pooled image
        logits = self.label_head(tokens.mean(1))
        # 3. label tokens from the given labels (training) or the head's decisions (inference), fused
        present = labels if labels is not None else (torch.sigmoid(logits) > self.config.label_threshold).float()
        return self._fuse(tokens, present.to(tokens.dtype)), logits

    def encode(self, images: torch.Tensor | None, labels: torch.Tensor | None = None,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, V, 1, H, W) in [-1, 1] -> memory (B, V * L [+ num_labels], d).

        The label tokens come from ``labels`` (B, num_labels) in [0, 1] when given (e.g. to read the
        decoder's ceiling with known labels), else from the head's thresholded predictions. ``features``
        (B, V, C, h, w): the tower's precomputed grids in place of ``images``.
        """
        return self._encode(images, labels, features)[0]

    def decode_step(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) at every position of ``tokens`` (N, T)."""
        x = self.token_embed(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, memory)
        return self.head(self.final_norm(x))

    def init_cache(self, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v for i, layer in enumerate(self.layers) for k, v in layer.init_cache(memory, i).items()}

    def decode_next(self, tokens: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, V) of the token after ``tokens`` (N, t); only the last token is new to ``cache``."""
        t = tokens.shape[1]
        x = self.token_embed(tokens[:, -1:]) + self.pos[t - 1:t]
        for i, layer in enumerate(self.layers):
            x = layer.next(x, cache, i)
        return self.head(self.final_norm(x))[:, -1]

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> ReportModelOutput:
        """Teacher-forced logits for ``input_ids`` (B, T); loss = CE + label_weight * BCE(head, labels).

        ``labels`` (B, num_labels) in {0, 1}: the labeler's positives of the reports. Without them
        (or without label fusion) the loss is the CE alone and the head's decisions build the memory.
        """
        memory, label_logits = self._encode(images, labels, features)
        logits = self.decode_step(memory, input_ids[:, :-1])
        ce = teacher_forced_ce(logits, input_ids)
        if label_logits is None or labels is None:
            return ReportModelOutput(logits=logits, loss=ce, aux={"ce": ce.detach()})
        bce = nn.functional.binary_cross_entropy_with_logits(label_logits, labels.to(label_logits.dtype))
        return ReportModelOutput(logits=logits, loss=ce + self.config.label_weight * bce,
                                 aux={"ce": ce.detach(), "label_bce": bce.detach()})


REPORT_DECODERS.register("ifnet", IFNetReportModel, help="paper setting (GPU)", visual="cxr_resnet_small",
                         d_model=256, num_layers=3)
REPORT_DECODERS.register("ifnet_small", IFNetReportModel, help="CPU recipe size", visual="cxr_resnet_tiny", d_model=128,
                         num_layers=2, num_heads=4, ff_dim=256)
REPORT_DECODERS.register("ifnet_tiny", IFNetReportModel, help="for tests", visual="cxr_resnet_tiny", image_size=32,
                         d_model=32, num_layers=1, num_heads=2, ff_dim=64)
