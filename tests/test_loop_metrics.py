import numpy as np
import pytest
import torch

from evaluation.loop import counterfactual_metrics, image_round_trip, psnr, report_round_trip
from synthcxr import Acquisition, Finding, render, sample_patient

REPORTS = ["Small right pleural effusion. The heart is normal in size.", "Moderate cardiomegaly.",
           "No acute cardiopulmonary abnormality."]


def _encode(reports):
    """A toy 'report -> image' generator that keeps the report index in the pixels."""
    return torch.stack([torch.full((1, 8, 8), i / 10) for i in range(len(reports))])


def test_perfect_report_round_trip():
    out = report_round_trip(REPORTS, _encode, lambda imgs: [REPORTS[round(float(x.mean()) * 10)] for x in imgs])
    assert out["label_set_agreement"] == 1.0 and out["ce_micro_f1"] == 1.0
    assert out["per_finding"]["Pleural Effusion"] == {"n": 1, "survival": 1.0}
    assert out["bleu_4"] == pytest.approx(1.0, abs=1e-6) and out["worst"] == []


def test_lossy_report_round_trip_lists_worst_cases():
    out = report_round_trip(REPORTS, _encode, lambda imgs: ["No acute abnormality."] * len(imgs))
    assert out["per_finding"]["Cardiomegaly"]["survival"] == 0.0
    assert out["label_set_agreement"] == pytest.approx(1 / 3)
    assert {w["index"] for w in out["worst"]} == {0, 1}
    with pytest.raises(ValueError, match="returned 1 reports for 3 images"):
        report_round_trip(REPORTS, _encode, lambda imgs: ["x"])


def test_image_round_trip():
    images = torch.rand(3, 1, 32, 32)
    out = image_round_trip(images, lambda x: ["r"] * len(x), lambda r: images.clone(), lambda x: x.flatten(1))
    assert out["ssim"] == pytest.approx(1.0, abs=1e-5) and out["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    noisy = image_round_trip(images, lambda x: ["r"] * len(x), lambda r: torch.rand(3, 1, 32, 32),
                             lambda x: x.flatten(1))
    assert noisy["ssim"] < 0.5 and len(noisy["worst"]) == 3


def test_psnr_hand_computed():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.full((1, 1, 4, 4), 0.1)
    assert float(psnr(a, b)) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    assert float(psnr(a, a)) == 100.0


def _synth_edit():
    p = sample_patient("cf", 3)
    acq = Acquisition(noise_seed=1)
    src = torch.from_numpy(render(p, (), acq, 64))[None, None]
    cf = torch.from_numpy(render(p, (Finding("Pleural Effusion", "large", "right"),), acq, 64))[None, None]
    return src, cf


def test_counterfactual_metrics_on_the_true_counterfactual():
    src, cf = _synth_edit()
    names = ["Pleural Effusion", "Cardiomegaly"]
    finds_effusion = lambda x: torch.tensor([[0.9, 0.1]]).repeat(len(x), 1)  # noqa: E731
    out = counterfactual_metrics(src, cf, cf, finds_effusion, [["Pleural Effusion"]], [[]], names)
    assert out["flip_rate"] == 1.0 and out["ssim_to_true_cf"] == pytest.approx(1.0, abs=1e-5)
    assert out["psnr_to_true_cf"] == 100.0
    # Outside the (dilated) true edit the true counterfactual equals the source exactly.
    assert out["psnr_outside_edit"] == 100.0 and 0 < out["edit_area"] < 0.5


def test_counterfactual_metrics_of_a_failed_edit():
    src, cf = _synth_edit()
    names = ["Pleural Effusion", "Cardiomegaly"]
    misses = lambda x: torch.tensor([[0.2, 0.7]]).repeat(len(x), 1)  # noqa: E731
    out = counterfactual_metrics(src, src, cf, misses, [["Pleural Effusion"]], [["Cardiomegaly"]], names)
    assert out["flip_rate"] == 0.0 and out["ssim_to_true_cf"] < 1.0
    with pytest.raises(ValueError, match="same shape"):
        counterfactual_metrics(src, src[..., :32], cf, misses, [[]], [[]], names)
    assert np.isfinite(out["psnr_outside_edit"])
