"""Cached decoding (key/value cache, IFNet's running sums) writes exactly what uncached decoding writes."""

from __future__ import annotations

import pytest
import torch

import image2report  # noqa: F401  (registers every decoder)
from image2report.decoding import DecodingConfig, decode
from image2report.models import build_report_model

CASES = [
    ("baseline_tiny", {}),
    ("uar_tiny", {"two_stage": False}),  # TIR's mask on the cross-attention from the first step
    ("uar_tiny", {"use_tir": False}),
    ("cmcrl_tiny", {}),
    ("cmcrl_tiny", {"use_ldm": False}),
    ("ifnet_tiny", {}),  # linear attention: running sums
    ("ifnet_tiny", {"linear_attention": False}),
]


@pytest.mark.parametrize("name,options", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("beams", [1, 3])
def test_cached_decoding_is_token_identical(name, options, beams):
    torch.manual_seed(0)
    model = build_report_model(name, vocab_size=30, max_length=24, **options).eval()
    images = torch.rand(3, 1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        memory = model.encode(images)
        cfg = DecodingConfig(num_beams=beams, max_length=24, no_repeat_ngram_size=3, min_length=2)
        cached = decode(model, memory, 1, 2, cfg)
        reference = decode(model.next_token_log_probs, memory, 1, 2, cfg)
    assert cached.shape[1] > 5
    assert torch.equal(cached, reference)


@pytest.mark.parametrize("name,options", CASES[:1] + CASES[3:4] + CASES[5:], ids=lambda c: str(c))
def test_cached_logits_match_the_full_forward_at_every_position(name, options):
    torch.manual_seed(1)
    model = build_report_model(name, vocab_size=30, max_length=24, **options).eval()
    with torch.no_grad():
        memory = model.encode(torch.rand(2, 1, 1, 32, 32) * 2 - 1)
        tokens = torch.randint(3, 30, (2, 9))
        tokens[:, 0] = 1
        full = model.decode_step(memory, tokens)
        session = model.decoding_session(memory)
        for t in range(1, tokens.shape[1] + 1):
            step = session(tokens[:, :t])
            torch.testing.assert_close(step, torch.log_softmax(full[:, t - 1].float(), -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,options", [("baseline_tiny", {}), ("ifnet_tiny", {"use_label_fusion": False}),
                                          ("uar_tiny", {}), ("uar_tiny", {"use_lsu": False}),
                                          ("cmcrl_tiny", {"use_vdm": False, "use_ldm": False})])
def test_grid_size_bounds_the_visual_tokens_at_any_input_size(name, options):
    torch.manual_seed(0)
    sizes = {}
    for side in (32, 64):
        model = build_report_model(name, vocab_size=30, image_size=side, max_views=2, grid_size=2, **options).eval()
        with torch.no_grad():
            memory = model.encode(torch.rand(1, 2, 1, side, side) * 2 - 1)
            sizes[side] = memory.shape[1]
            cfg = DecodingConfig(num_beams=2, max_length=8, no_repeat_ngram_size=0, min_length=0)
            assert torch.equal(decode(model, memory, 1, 2, cfg), decode(model.next_token_log_probs, memory, 1, 2, cfg))
    assert sizes[32] == sizes[64] == 2 * 2 * 2  # two views of a 2 x 2 grid, whatever the side
    unpooled = build_report_model(name, vocab_size=30, image_size=64, max_views=2, **options).eval()
    with torch.no_grad():
        assert unpooled.encode(torch.rand(1, 2, 1, 64, 64) * 2 - 1).shape[1] > sizes[64]


def test_cmcrl_with_vdm_and_ldm_on_a_pooled_grid():
    torch.manual_seed(0)
    model = build_report_model("cmcrl_tiny", vocab_size=30, image_size=64, grid_size=4, num_local=3).eval()
    assert model.token_grid == 4 and model.encoder.grid == 8
    with torch.no_grad():
        memory = model.encode(torch.rand(2, 1, 1, 64, 64) * 2 - 1)
        cfg = DecodingConfig(num_beams=2, max_length=8, no_repeat_ngram_size=0, min_length=0)
        assert torch.equal(decode(model, memory, 1, 2, cfg), decode(model.next_token_log_probs, memory, 1, 2, cfg))
    out = model(torch.rand(2, 1, 1, 64, 64) * 2 - 1, torch.randint(3, 30, (2, 6)))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("variant", ["after", "before"])
def test_decoding_speed_benchmark_measures_both_variants(load_benchmark, monkeypatch, variant):
    bench = load_benchmark("decoding_speed")
    monkeypatch.setattr(bench, "BATCH", 2)
    monkeypatch.setattr(bench, "TOKENS", 6)
    monkeypatch.setattr(bench, "MODELS", {"baseline": {"visual": "cxr_resnet_tiny", "d_model": 32, "num_layers": 1,
                                                       "num_heads": 2, "ff_dim": 64}})
    decoded = bench.measure("baseline", 32, variant, "decode")
    assert {"reports_per_s_greedy", "reports_per_s_beam3", "ms_per_token_greedy", "ms_per_token_beam3",
            "memory_tokens", "peak_rss_mb"} <= set(decoded)
    assert decoded["memory_tokens"] == 2 * 16  # two views of the tiny tower's 4 x 4 grid (under 7 x 7)
    trained = bench.measure("baseline", 32, variant, "train")
    assert trained["train_step_s"] > 0 and "memory_tokens" not in trained


def test_a_memory_longer_than_the_position_table_still_encodes():
    model = build_report_model("baseline_tiny", vocab_size=30, image_size=32, max_views=1).eval()
    long = model.positions(len(model.pos) + 5)
    assert long.shape == (len(model.pos) + 5, model.pos.shape[1])
    torch.testing.assert_close(long[: len(model.pos)], model.pos)
