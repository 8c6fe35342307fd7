"""Finding-balanced sampling: weights by hand, the sampler's (seed, epoch) draw, a resumed run, a diffusion run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shared.data.balance import BalancedSampler, finding_balance_weights, sampled_shares

NAN = float("nan")
# 6 studies, 2 findings: A in studies 0-3 (4 times), B in studies 3-4 (twice, rarer), study 5 has neither
LABELS = np.array([[1, 0], [1, 0], [1, NAN], [1, 1], [0, 1], [0, -1]], float)


def test_weights_follow_each_studys_rarest_finding():
    # groups: A (n=4) for studies 0-2, B (n=2) for studies 3 and 4 (3 has both: its rarest is B), none (n=1): 5
    w = finding_balance_weights(LABELS, 1.0)
    raw = np.array([1 / 4, 1 / 4, 1 / 4, 1 / 2, 1 / 2, 1 / 1])
    np.testing.assert_allclose(w, raw / raw.sum())
    np.testing.assert_allclose(finding_balance_weights(LABELS, 0.0), np.full(6, 1 / 6))  # the natural mix
    half = np.sqrt(raw)
    np.testing.assert_allclose(finding_balance_weights(LABELS, 0.5), half / half.sum())
    # the expected share of drawn studies showing each finding: the weights of the studies that show it
    shares = sampled_shares(LABELS, w, ["A", "B"])
    assert shares == {"A": round(float(w[:4].sum()), 4), "B": round(float(w[3:5].sum()), 4)}
    assert shares["B"] > 2 / 6  # B is drawn more often than it occurs
    with pytest.raises(ValueError, match="finding_balance must be >= 0, got -1"):
        finding_balance_weights(LABELS, -1)
    with pytest.raises(ValueError, match=r"labels must be \(studies, findings\)"):
        finding_balance_weights(np.ones(3), 1.0)


def test_sampler_draw_is_fixed_by_seed_and_epoch_and_follows_the_weights():
    w = np.array([0.7, 0.1, 0.1, 0.1])
    a, b = BalancedSampler(w, seed=3), BalancedSampler(w, seed=3)
    assert list(a) == list(b) and len(list(a)) == 4
    draws = [list(BalancedSampler(w, seed=s)) for s in range(500)]
    share = np.bincount(np.concatenate(draws), minlength=4) / (500 * 4)
    np.testing.assert_allclose(share, w, atol=0.03)
    flat = np.full(50, 1 / 50)
    a, b = BalancedSampler(flat, seed=3), BalancedSampler(flat, seed=3)
    b.set_epoch(1)
    assert list(a) != list(b)  # a new epoch draws anew
    b.set_epoch(0)
    assert list(a) == list(b)  # and a resumed epoch draws the same


def test_a_balanced_loader_resumes_bit_identical(tmp_path):
    """The trainer sets the sampler's epoch: a run killed and resumed draws the same studies."""
    from shared.training import TrainConfig, Trainer, training_loader
    from tests.test_training import TinyRegressor, _dropout_loss, _Jittered, _params, _run_killed_at_step_seven

    weights = np.linspace(1.0, 4.0, 40)
    weights /= weights.sum()

    def trainer(folder):
        torch.manual_seed(0)
        cfg = TrainConfig(output_dir=str(folder), max_steps=9, learning_rate=0.05, checkpoint_every=3,
                          eval_every=100, log_every=1, progress=False)
        return Trainer(TinyRegressor(), training_loader(_Jittered(), 8, seed=0, weights=weights), _dropout_loss, cfg)

    trainer(tmp_path / "full").train()
    _run_killed_at_step_seven(tmp_path / "part", 9, make=trainer, loss=_dropout_loss)
    trainer(tmp_path / "part").train()
    full, part = _params(tmp_path / "full" / "final"), _params(tmp_path / "part" / "final")
    for k in full:
        assert torch.equal(full[k], part[k]), k


def test_train_diffusion_with_finding_balance(tmp_path, tiny_synth, caplog):
    from radloop.cli import main

    data, _ = tiny_synth
    run = tmp_path / "diff"
    with caplog.at_level("INFO", logger="report2image.train"):
        assert main(["train", "diffusion", f"data.annotation={data / 'annotation.json'}", "model.name=ldm_tiny",
                     "data.batch_size=8", "data.finding_balance=1.0", "autoencoder.steps=1",
                     "autoencoder.batch_size=8", "train.max_steps=2", "train.eval_every=2",
                     "train.checkpoint_every=2", "train.progress=false", "loss.filter_warmup=1",
                     f"train.output_dir={run}"]) == 0
    assert "finding-balanced sampling (power 1.0)" in caplog.text
    assert json.loads((run / "train_result.json").read_text())["steps"] == 2
