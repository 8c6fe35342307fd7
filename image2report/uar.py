"""UAR (Unify, Align and Refine; Li et al., ICCV 2023) as a report decoder.

* **LSU**: the image becomes discrete visual tokens of a trained VQ tokenizer
  (:class:`image2report.lsu.LatentSpaceUnifier`, ``radloop train lsu``), looked up by ``W_I``;
  words are looked up by ``W_R`` (eq. 1). Without LSU (ablation) CNN grid features stand in.
* **CRA** (:class:`image2report.cra.CrossModalAligner`, shared by both modalities): orthonormal
  basis + dual gate (eqs. 6-9) and the triplet contrastive loss on pooled features (eq. 10).
* **TIR**: the decoder's text-to-image attention logits get ``k * sigmoid(M)`` added (eq. 11), a
  learnable mask over (text position, visual token), with ``L_mask = mean(1 - sigmoid(M))`` (eq. 12;
  the paper sums, we average so that its weight does not depend on the sizes). PyTorch adds the
  mask after the 1/sqrt(d) scaling, so our ``k`` is the paper's k / sqrt(d).
* **Two-stage training** (eq. 13): lambda = {1, 1, 0} without the mask for ``stage_one_steps``
  training steps, then {1, 1, 1} with it. The step count is a buffer, so resume keeps the stage.

Config switches reproduce the rows of the paper's ablation table: ``use_lsu``, ``use_basis``,
``use_gates`` (both: "integration"), ``use_tir``, ``two_stage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from shared.modeling import RadLoopModel

from .cra import CrossModalAligner, TripletContrastiveLoss
from .kv_cache import transformer_decoder_init, transformer_decoder_next
from .lsu import LSUS, LatentSpaceUnifier
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

__all__ = ["UARReportModel"]


class UARReportModel(GridVisualMixin, RadLoopModel):
    """LSU tokens -> CRA -> Transformer encoder; decoder with TIR; CE + triplet + mask losses.

    Args:
        vocab_size: report tokenizer size (pad 0, bos 1, eos 2).
        lsu: an ``LSUS`` registry name (the VQ tokenizer's size; its weights come from
            :meth:`init_lsu_from`); image_size must match it.
        visual: timm CNN used instead of LSU when ``use_lsu`` is off.
        mask_k: k of eq. 11; stage_one_steps: steps before TIR's mask joins (two-stage training).
        grid_size: the visual tokens of a view (LSU codes or CNN grid) pooled to at most this many
            per side (None: as they come).
    """

    @register_to_config
    def __init__(self, vocab_size: int, lsu: str = "lsu_small", visual: str = "cxr_resnet_small", image_size: int = 64,
                 max_views: int = 1, d_model: int = 256, num_layers: int = 3, num_heads: int = 8, ff_dim: int = 512,
                 dropout: float = 0.1, max_length: int = 100, num_basis: int = 2048, triplet_margin: float = 0.2,
                 mask_k: float = 1.0, use_lsu: bool = True, use_basis: bool = True, use_gates: bool = True,
                 use_tir: bool = True, two_stage: bool = True, stage_one_steps: int = 500,
                 grid_size: int | None = None) -> None:
        super().__init__()
        if use_lsu:
            lsu_cfg = {k: v for k, v in LSUS.config(lsu).items() if k != "image_size"}
            self.unifier = LatentSpaceUnifier(vocab_size=vocab_size, dim=d_model, image_size=image_size, **lsu_cfg)
            self.unifier.vq.requires_grad_(False)  # a trained tokenizer, frozen (its look-ups W_I, W_R train)
            side = int(round(self.unifier.tokens_per_image ** 0.5))
        else:
            self.image_encoder = build_image_tower(visual)
            self.visual_proj = nn.Linear(self.image_encoder.num_features, d_model)
            self.word_embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
            side = tower_grid_side(self.image_encoder, image_size)
        side = side if grid_size is None else min(side, grid_size)
        num_visual = side * side
        self.aligner = CrossModalAligner(d_model, num_basis, num_heads, dropout, use_basis=use_basis,
                                         use_gates=use_gates)
        self.triplet = TripletContrastiveLoss(triplet_margin)
        self.view_embed = nn.Embedding(max_views, d_model)
        self.register_buffer("pos", _sinusoid(max(max_length, 1024), d_model), persistent=False)
        self.transformer = nn.Transformer(d_model, num_heads, num_layers, num_layers, ff_dim, dropout, batch_first=True)
        self.head = nn.Linear(d_model, vocab_size)
        self.num_visual = num_visual * max_views
        if use_tir:
            self.tir_mask = nn.Parameter(torch.zeros(max_length + 1, self.num_visual))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    # -- pieces --------------------------------------------------------------------------
    def _visual_embeds(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, V, 1, H, W) in [-1, 1] (or, CNN path, the tower's grids ``features`` (B, V, C, h, w))
        -> visual token embeddings (B, V * L, d)."""
        self.check_views(images if features is None else features)
        b, v = (images if features is None else features).shape[:2]
        if features is not None:
            if self.config.use_lsu:
                raise ValueError("precomputed tower features need UAR's CNN path (model.options.use_lsu=false)")
            grid = features.flatten(0, 1)
            emb = self.visual_proj(grid.flatten(2).transpose(1, 2))
        elif self.config.use_lsu:
            x = images.flatten(0, 1)
            emb = self.unifier.image_embed(self.unifier.tokenize(x))  # (B*V, L, d), a square grid of codes
            side = int(round(emb.shape[1] ** 0.5))
            grid = pool_grid(emb.transpose(1, 2).reshape(len(emb), -1, side, side), self.config.grid_size)
            emb = grid.flatten(2).transpose(1, 2)
        else:
            emb = self.visual_proj(self.tower_grid(images.flatten(0, 1)).flatten(2).transpose(1, 2))
        n = emb.shape[1]
        emb = emb + self.view_embed(torch.arange(v, device=emb.device).repeat(b))[:, None]
        return emb.reshape(b, v * n, -1)

    def _word_embeds(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self.unifier.text_embed if self.config.use_lsu else self.word_embed)(tokens)

    @property
    def mask_active(self) -> bool:
        """TIR's mask is used in stage two (or always without two-stage training)."""
        if not self.config.use_tir:
            return False
        return not self.config.two_stage or int(self.steps_seen) >= self.config.stage_one_steps

    def encode(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, V, 1, H, W) (or the tower's grids ``features``) -> encoder memory (B, V * L, d)."""
        return self._encode(images, features)[0]

    def _encode(self, images: torch.Tensor | None, features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # 1. LSU: discrete visual tokens and their embeddings (or CNN grid features)
        visual = self._visual_embeds(images, features)
        # 2. CRA on the visual embeddings (basis attention + dual gate)
        aligned = self.aligner(visual)
        n = aligned.features.shape[1]
        # 3. the Transformer encoder
        return self.transformer.encoder(aligned.features + self.positions(n)), aligned.pooled

    def decode_step(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) at every position of ``tokens`` (N, T); TIR's mask on the cross-attention."""
        t = tokens.shape[1]
        x = self._word_embeds(tokens) + self.pos[:t]
        # float masks throughout (TIR's mask is additive, and PyTorch wants one mask type)
        causal = torch.triu(torch.full((t, t), float("-inf"), device=tokens.device), 1)
        padding = torch.zeros(tokens.shape, device=tokens.device).masked_fill(tokens == 0, float("-inf"))
        memory_mask = None
        if self.mask_active:
            # eq. 11: k * sigmoid(M) added to the text-to-image attention logits
            memory_mask = self.config.mask_k * torch.sigmoid(self.tir_mask[:t, : memory.shape[1]])
        h = self.transformer.decoder(x, memory, tgt_mask=causal, memory_mask=memory_mask,
                                     tgt_key_padding_mask=padding)
        return self.head(h)

    def init_cache(self, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        return transformer_decoder_init(self.transformer.decoder, memory)

    def decode_next(self, tokens: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, V) of the token after ``tokens`` (N, t); only the last token is new to ``cache``."""
        t = tokens.shape[1]
        x = self._word_embeds(tokens[:, -1:]) + self.pos[t - 1:t]
        memory_mask = None
        if self.mask_active:  # this position's row of TIR's mask
            memory_mask = self.config.mask_k * torch.sigmoid(self.tir_mask[t - 1:t, : cache["0.mk"].shape[2]])
        return self.head(transformer_decoder_next(self.transformer.decoder, x, cache, memory_mask))[:, -1]

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor,
                features: torch.Tensor | None = None) -> ReportModelOutput:
        """Teacher-forced logits for ``input_ids`` (B, T) and the eq. 13 loss; ``features``: the CNN
        tower's precomputed grids in place of ``images`` (CNN path only)."""
        if self.training:
            self.steps_seen += 1
        # 1-3. visual tokens -> CRA -> encoder; pooled visual feature for the global alignment
        memory, visual_pooled = self._encode(images, features)
        # 4. the report through the same CRA: pooled textual feature
        text = self.aligner(self._word_embeds(input_ids), padding_mask=input_ids == 0)
        # 5. decoder (TIR in stage two) and the three losses
        logits = self.decode_step(memory, input_ids[:, :-1])
        ce = teacher_forced_ce(logits, input_ids)
        same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)  # identical reports are no negatives
        triplet = self.triplet(visual_pooled, text.pooled, same)["triplet_loss"]
        loss = ce + triplet
        mask_loss = None
        if self.mask_active:
            t = input_ids.shape[1] - 1
            mask_loss = (1 - torch.sigmoid(self.tir_mask[:t, : memory.shape[1]])).mean()
            loss = loss + mask_loss
        aux = {"ce": ce.detach(), "triplet": triplet.detach()}
        if mask_loss is not None:
            aux["mask"] = mask_loss.detach()
        return ReportModelOutput(logits=logits, loss=loss, aux=aux)

    def init_visual_from(self, source_dir: str) -> int:
        """CNN path only: copy a trained RadCLIP / tower pre-trainer image tower (see
        :meth:`GridVisualMixin.init_visual_from`)."""
        if self.config.use_lsu:
            raise ValueError("this UAR model reads LSU tokens (use_lsu=true): there is no CNN tower to initialise; "
                             "set model.options.use_lsu=false")
        return super().init_visual_from(source_dir)

    def init_lsu_from(self, lsu_dir: str) -> None:
        """Load a trained tokenizer (``radloop train lsu``): its VQ weights (the look-ups stay ours)."""
        trained = LatentSpaceUnifier.from_pretrained(lsu_dir)
        if not self.config.use_lsu:
            raise ValueError("this UAR model has use_lsu=false: there is no tokenizer to load")
        # a tokenizer of another size would fail deep in load_state_dict: name the size instead
        ours, theirs = _lsu_size(self.unifier.config), _lsu_size(trained.config)
        if ours != theirs:
            named = next((name for name in LSUS.list() if _lsu_size(LSUS.config(name)) == theirs), None)
            raise ValueError(f"{lsu_dir} holds an LSU tokenizer of another size ({theirs}) than this UAR model's "
                             f"model.options.lsu={self.config.lsu!r} ({ours}); "
                             + (f"set model.options.lsu={named}" if named else "train one of this size"))
        self.unifier.vq.load_state_dict(trained.vq.state_dict())


def _lsu_size(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes an LSU tokenizer's weight shapes (not its image size: the convolutions take any)."""
    return {"block_out_channels": list(cfg["block_out_channels"]), "num_codes": cfg["num_codes"],
            "latent_channels": cfg["latent_channels"]}


REPORT_DECODERS.register("uar", UARReportModel, help="paper setting (GPU)", lsu="lsu_small", d_model=256, num_layers=3)
# the CPU recipe's size (configs/synth/uar.yaml): the stages switch halfway through its 500 steps
REPORT_DECODERS.register("uar_small", UARReportModel, help="CPU recipe size", lsu="lsu_small", d_model=128,
                         num_layers=2, num_heads=4, ff_dim=256, num_basis=256, stage_one_steps=250)
REPORT_DECODERS.register("uar_tiny", UARReportModel, help="for tests", lsu="lsu_tiny", image_size=32, d_model=32,
                         num_layers=1, num_heads=2, ff_dim=64, num_basis=64, stage_one_steps=2)
