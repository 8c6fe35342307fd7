"""CMCRL's VLCI fine-tuning (Chen et al., IEEE TIP 2025) as a report decoder.

The image encoder is the vision side of a RadCARE-pretrained multiway transformer
(:class:`image2report.radcare.RadCARE`, ``radloop train radcare``; loaded by
:meth:`CMCRLReportModel.init_radcare_from`). On top of it, VLCI's two deconfounding modules:

* **VDM** (visual deconfounding): without box annotations, *local* features are the ``num_local``
  patch tokens a learnt pooled query attends to most (re-weighted by that attention so the scorer
  learns), refined by a transformer layer; *global* features are the token grid pooled 2x2.
  Local-global fusion (self-attention on the local tokens, cross-attention local -> global,
  projection and feed-forward) gives the visual mediator ``M_v``.
* **LDM** (linguistic deconfounding): the dictionary is the decoder's own word embeddings of the
  training vocabulary (built from the training corpus by the tokenizer; no external terminology),
  detached as in the paper. The linguistic mediator ``M_l``: local visual features read the
  dictionary, then the visual features again.
* **Front-door intervention** (:class:`FrontDoorIntervention`): ``P(Y | do(X)) = sum_m P(m | X)
  sum_x P(x) P(Y | x, m)`` approximated by two attentions (normalised weighted geometric mean):
  the mediator samples ``x`` from a population (the image's own tokens for VDM, the dictionary for
  LDM), and each feature reads those samples through the mediator; added residually. VDM
  intervenes on the encoder memory, LDM on the decoder's word embeddings.

Unlike the reference code, LDM samples ``x`` from the dictionary and not from the report's own
tokens, so teacher forcing cannot see future words; and ``M_l`` depends on the image only, so it
is computed once per image and packed behind the encoder memory for decoding.

Switches: ``use_vdm``, ``use_ldm`` (both off: RadCARE encoder + Transformer decoder). With
``visual`` set to a timm CNN tower (``cxr_resnet_small``), its grid (projected to the model width)
replaces the RadCARE encoder: the shared backbone's image tower, e.g. the zoo's frozen
``radclip_small`` (``init_visual_from``, ``freeze_visual``), under the same VDM / LDM.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from shared.modeling import RadLoopModel

from .kv_cache import transformer_decoder_init, transformer_decoder_next
from .models import (
    REPORT_DECODERS,
    GridVisualMixin,
    ReportModelOutput,
    _sinusoid,
    build_image_tower,
    pool_grid,
    teacher_forced_ce,
    tower_grid_side,
)
from .radcare import RADCARES, MultiwayBlock, RadCARE

__all__ = ["CMCRLReportModel", "FrontDoorIntervention", "RadCAREImageEncoder"]

#: RadCARE parameters the report model takes over (the vision path; text heads stay behind)
_RADCARE_VISION = ("patch_embed.", "image_pos", "blocks.", "norm.")


class RadCAREImageEncoder(nn.Module):
    """The vision path of RadCARE, with the same parameter names so pretrained weights load as they are.

    Images are pooled by ``degrade_scale`` first: RadCARE's patch embedding was pre-trained on that
    resolution (its ``embed`` does the same for clean images).
    """

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float = 2.0,
                 degrade_scale: int = 2, in_channels: int = 1, **_unused) -> None:
        super().__init__()
        if image_size % patch_size or patch_size % degrade_scale:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}, "
                             f"and patch_size of degrade_scale {degrade_scale}")
        self.scale = degrade_scale
        self.grid = image_size // patch_size
        lr_patch = patch_size // degrade_scale
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=lr_patch, stride=lr_patch)
        self.image_pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.image_pos, std=0.02)
        self.blocks = nn.ModuleList([MultiwayBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 1, S, S) -> patch tokens (N, grid * grid, dim)."""
        x = nn.functional.avg_pool2d(images, self.scale)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.image_pos
        for block in self.blocks:
            tokens = block(tokens, n_image=tokens.shape[1])
        return self.norm(tokens)


class FrontDoorIntervention(nn.Module):
    """Front-door adjustment by two attentions (see the module docstring).

    ``forward(x (B, T, d), mediator (B, M, d), population (B, P, d))`` -> (B, T, d), residual.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        # sum_x P(x) ...: the mediator draws its samples from the population
        self.sample = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        # sum_m P(m | X) ...: every feature reads the samples through the mediator
        self.read = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def samples(self, mediator: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
        return self.sample(mediator, population, population, need_weights=False)[0]

    def intervene(self, x: torch.Tensor, mediator: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """The second half, when ``samples`` were computed before (decoding reuses them at every step)."""
        return self.norm(x + self.read(x, mediator, samples, need_weights=False)[0])

    def forward(self, x: torch.Tensor, mediator: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
        return self.intervene(x, mediator, self.samples(mediator, population))


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention + feed-forward: ``x`` (B, T, d) reads ``context`` (B, S, d)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        x = x + self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class CMCRLReportModel(GridVisualMixin, RadLoopModel):
    """RadCARE image encoder -> VDM -> Transformer decoder with LDM on its word embeddings.

    Args:
        vocab_size: report tokenizer size (pad 0, bos 1, eos 2).
        radcare: a ``RADCARES`` registry name: the encoder's architecture (weights come from
            :meth:`init_radcare_from`); ``image_size`` overrides its input side.
        num_local: local tokens VDM keeps (the paper's k).
        grid_size: each view's patch grid pooled to at most this many tokens per side (None: as is).
        visual: a timm CNN tower used instead of the RadCARE encoder (None: RadCARE); the width stays
            RadCARE's ``dim``.
    """

    @register_to_config
    def __init__(self, vocab_size: int, radcare: str = "radcare_small", image_size: int = 64, max_views: int = 1,
                 num_layers: int = 3, num_heads: int = 4, ff_dim: int = 512, dropout: float = 0.1,
                 max_length: int = 100, num_local: int = 6, use_vdm: bool = True, use_ldm: bool = True,
                 grid_size: int | None = None, visual: str | None = None) -> None:
        super().__init__()
        arch = {**RADCARES.config(radcare), "image_size": image_size}
        d = arch["dim"]
        if visual is None:
            self.encoder = RadCAREImageEncoder(**arch)
        else:
            self.image_encoder = build_image_tower(visual)
            self.visual_proj = nn.Linear(self.image_encoder.num_features, d)
            self._tower_side = tower_grid_side(self.image_encoder, image_size)
        grid = self.token_grid
        if use_vdm or use_ldm:
            if num_local > grid * grid * max_views:
                raise ValueError(f"num_local={num_local} is more than the {grid * grid * max_views} patch tokens")
            self.local_query = nn.Linear(d, d)
            self.local_key = nn.Linear(d, d)
            self.local_refine = nn.TransformerEncoderLayer(d, num_heads, ff_dim, dropout, batch_first=True)
        if use_vdm:
            self.global_proj = nn.Linear(d, d)
            self.local_self = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
            self.local_global = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
            self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.LayerNorm(d))
            self.fuse_ff = nn.Sequential(nn.Linear(d, ff_dim), nn.GELU(), nn.Linear(ff_dim, d))
            self.visual_do = FrontDoorIntervention(d, num_heads, dropout)
        if use_ldm:
            self.dictionary_norm = nn.LayerNorm(d)
            self.read_dictionary = _CrossBlock(d, num_heads, ff_dim, dropout)
            self.read_visual = _CrossBlock(d, num_heads, ff_dim, dropout)
            self.mediator_norm = nn.LayerNorm(d)
            self.linguistic_do = FrontDoorIntervention(d, num_heads, dropout)
        self.view_embed = nn.Embedding(max_views, d)
        self.token_embed = nn.Embedding(vocab_size, d, padding_idx=0)
        self.register_buffer("pos", _sinusoid(max(max_length, 1024), d), persistent=False)
        layer = nn.TransformerDecoderLayer(d, num_heads, ff_dim, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.head = nn.Linear(d, vocab_size)

    # -- VDM pieces ------------------------------------------------------------------------
    def local_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``num_local`` tokens (B, N, d) -> (B, k, d) a pooled query attends to most, refined."""
        q = self.local_query(tokens.mean(1, keepdim=True))
        attn = torch.softmax((q @ self.local_key(tokens).transpose(1, 2)).squeeze(1) / tokens.shape[-1] ** 0.5, -1)
        weight, index = attn.topk(self.config.num_local, dim=-1)
        picked = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
        # scaled so that uniform attention leaves them as they are; the scorer learns through it
        picked = picked * (weight * attn.shape[-1])[..., None]
        return self.local_refine(picked)

    def global_features(self, tokens: torch.Tensor, views: int) -> torch.Tensor:
        """(B, V * g * g, d) -> (B, V * ceil(g/2)^2, d): each view's grid pooled 2x2."""
        b, _, d = tokens.shape
        g = self.token_grid
        grid = tokens.reshape(b * views, g, g, d).permute(0, 3, 1, 2)
        pooled = nn.functional.avg_pool2d(grid, 2, ceil_mode=True).flatten(2).transpose(1, 2)
        return self.global_proj(pooled.reshape(b, -1, d))

    def visual_mediator(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """Local-global fusion: (B, k, d) and (B, G, d) -> M_v (B, k, d)."""
        with_local = local + self.local_self(local, local, local, need_weights=False)[0]
        with_global = local + self.local_global(local, global_, global_, need_weights=False)[0]
        m = self.fuse(torch.cat([with_local, with_global], -1))
        return m + self.fuse_ff(m)

    # -- LDM pieces ------------------------------------------------------------------------
    @property
    def token_grid(self) -> int:
        """Patch tokens per side of a view in the memory (the encoder's grid, pooled to ``grid_size``)."""
        g = self.encoder.grid if self.config.visual is None else self._tower_side
        return g if self.config.grid_size is None else min(g, self.config.grid_size)

    def dictionary(self, batch: int) -> torch.Tensor:
        """The word-embedding dictionary (B, V - 4, d) without the special tokens, detached (as in VLCI)."""
        words = self.dictionary_norm(self.token_embed.weight[4:].detach())
        return words[None].expand(batch, -1, -1)

    # -- model -----------------------------------------------------------------------------
    def encode(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, V, 1, H, W) in [-1, 1] -> memory (B, V * L [+ 2k], d); ``features`` (B, V, C, h, w):
        a CNN tower's precomputed grids in place of ``images`` (``visual`` set).

        With LDM, ``M_l`` and the front door's samples from the dictionary ride behind the visual
        memory (2 * ``num_local`` tokens), so beam search expands them with it.
        """
        self.check_views(images if features is None else features)
        b, v = (images if features is None else features).shape[:2]
        # 1. every view's patch tokens: RadCARE's vision path, or the CNN tower's grid with grid positions
        if self.config.visual is not None:
            grid = self.tower_grid(images.flatten(0, 1)) if features is None else features.flatten(0, 1)
            tokens = self.visual_proj(grid.flatten(2).transpose(1, 2))
            tokens = tokens + self.positions(tokens.shape[1])
        elif features is not None:
            raise ValueError("precomputed tower features need a CNN tower (model.options.visual=cxr_resnet_small)")
        else:
            tokens = self.encoder(images.flatten(0, 1))
            if self.token_grid < self.encoder.grid:  # at most grid_size x grid_size tokens per view
                g = self.encoder.grid
                grid = pool_grid(tokens.transpose(1, 2).reshape(len(tokens), -1, g, g), self.config.grid_size)
                tokens = grid.flatten(2).transpose(1, 2)
        n = tokens.shape[1]
        views = self.view_embed(torch.arange(v, device=tokens.device).repeat(b))[:, None]
        tokens = (tokens + views).reshape(b, v * n, -1)
        if not (self.config.use_vdm or self.config.use_ldm):
            return tokens
        # 2. local features (no boxes: the most attended tokens)
        local = self.local_features(tokens)
        memory = tokens
        # 3. VDM: local-global mediator and the front-door intervention on the visual memory
        if self.config.use_vdm:
            mediator = self.visual_mediator(local, self.global_features(tokens, v))
            memory = self.visual_do(tokens, mediator, tokens)
        if not self.config.use_ldm:
            return memory
        # 4. LDM: the linguistic mediator from local features and the dictionary, and its samples
        dictionary = self.dictionary(b)
        m = self.mediator_norm(self.read_visual(self.read_dictionary(local, dictionary), local))
        samples = self.linguistic_do.samples(m, dictionary)
        return torch.cat([memory, m, samples], 1)

    def decode_step(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) at every position of ``tokens`` (N, T); LDM on the word embeddings."""
        t = tokens.shape[1]
        x = self.token_embed(tokens)
        if self.config.use_ldm:
            k = self.config.num_local
            memory, mediator, samples = memory[:, : -2 * k], memory[:, -2 * k: -k], memory[:, -k:]
            # the front door on each word: it reads the dictionary samples through the mediator
            x = self.linguistic_do.intervene(x, mediator, samples)
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), 1)
        h = self.decoder(x + self.pos[:t], memory, tgt_mask=causal, tgt_key_padding_mask=tokens == 0)
        return self.head(h)

    def init_cache(self, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        cache: dict[str, torch.Tensor] = {}
        if self.config.use_ldm:
            k = self.config.num_local
            memory, cache["mediator"], cache["samples"] = memory[:, : -2 * k], memory[:, -2 * k: -k], memory[:, -k:]
        return {**cache, **transformer_decoder_init(self.decoder, memory)}

    def decode_next(self, tokens: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, V) of the token after ``tokens`` (N, t); only the last token is new to ``cache``."""
        t = tokens.shape[1]
        x = self.token_embed(tokens[:, -1:])
        if self.config.use_ldm:  # the front door reads each word on its own: the new one alone
            x = self.linguistic_do.intervene(x, cache["mediator"], cache["samples"])
        return self.head(transformer_decoder_next(self.decoder, x + self.pos[t - 1:t], cache))[:, -1]

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor,
                features: torch.Tensor | None = None) -> ReportModelOutput:
        """Teacher-forced logits for ``input_ids`` (B, T) and the cross-entropy (VLCI fine-tunes with CE);
        ``features``: a CNN tower's precomputed grids in place of ``images``."""
        logits = self.decode_step(self.encode(images, features), input_ids[:, :-1])
        return ReportModelOutput(logits=logits, loss=teacher_forced_ce(logits, input_ids))

    def init_radcare_from(self, radcare_dir: str) -> int:
        """Take over the vision path of a RadCARE-pretrained folder; returns the tensors copied."""
        if self.config.visual is not None:
            raise ValueError(f"this CMCRL model reads the CNN tower '{self.config.visual}', not RadCARE's encoder; "
                             "initialise it with model.init_visual_from")
        trained = RadCARE.from_pretrained(radcare_dir)
        own = self.encoder.state_dict()
        vision = {k: v for k, v in trained.state_dict().items() if k.startswith(_RADCARE_VISION)}
        wrong = sorted(k for k, v in vision.items() if k not in own or own[k].shape != v.shape)
        if wrong:
            raise ValueError(f"the RadCARE model in {radcare_dir} does not fit radcare='{self.config.radcare}' "
                             f"at image_size {self.config.image_size} (first mismatch: {wrong[0]})")
        self.encoder.load_state_dict(vision)
        return len(vision)


REPORT_DECODERS.register("cmcrl", CMCRLReportModel, help="paper setting (GPU)", radcare="radcare_small",
                         num_layers=3, num_heads=4, ff_dim=512)
REPORT_DECODERS.register("cmcrl_small", CMCRLReportModel, help="CPU recipe size", radcare="radcare_small", num_layers=2,
                         num_heads=4, ff_dim=256)
REPORT_DECODERS.register("cmcrl_tiny", CMCRLReportModel, help="for tests", radcare="radcare_tiny", image_size=32,
                         num_layers=1, num_heads=2, ff_dim=64, num_local=3)
