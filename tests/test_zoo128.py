"""The 128 px generation of the zoo (configs/zoo/index128.yaml): each shipped entry loads from the zoo and passes
a regression check on fixed seeds no training used, and the same check fails with another entry's weights."""

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.zoo import ZOO_ENV, resolve_zoo

#: the thin findings the 128 px judge exists for, as the regression tests draw them (true counterfactual pairs)
THIN_FINDINGS = {"Fracture": dict(laterality="right", zone="lower", kind="rib"),
                 "Pneumothorax": dict(severity="small", laterality="left", zone="apex"),
                 "Lung Lesion": dict(severity="small", laterality="right", zone="upper", kind="nodule"),
                 "Pleural Effusion": dict(severity="small", laterality="right")}


@pytest.fixture(autouse=True)
def _the_repository_zoo(monkeypatch):
    monkeypatch.delenv(ZOO_ENV, raising=False)


@pytest.fixture(scope="module")
def judge128():
    from evaluation.classifier import Judge

    return Judge.from_pretrained("zoo:judge128")


def _thin_pairs(finding: str, size: int = 128, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fixed patients (seeds no training used) drawn by SynthCXR with and without one finding: two
    (n, 1, size, size) batches in [0, 1]."""
    from synthcxr import Finding, render, sample_acquisition, sample_patient, stable_seed

    sick, well = [], []
    for i in range(n):
        patient = sample_patient(f"R{i}", stable_seed("judge-regression", i))
        acquisition = sample_acquisition(stable_seed("judge-regression-acq", i))
        sick.append(render(patient, [Finding(finding, seed=i, **THIN_FINDINGS[finding])], acquisition, size))
        well.append(render(patient, [], acquisition, size))
    return torch.from_numpy(np.stack(sick))[:, None], torch.from_numpy(np.stack(well))[:, None]


@torch.no_grad()
def _judge_reads(judge, finding: str, through=None) -> tuple[int, float]:
    """The judge on :func:`_thin_pairs` at its size, each image first passed ``through`` (e.g. an autoencoder):
    (images of the finding it reads at > 0.5, mean probability with minus without)."""
    from shared.labels import CHEXPERT_LABELS

    sick, well = _thin_pairs(finding, judge.classifier.config.image_size)
    if through is not None:
        sick, well = through(sick), through(well)
    k = CHEXPERT_LABELS.index(finding)
    p_sick, p_well = judge(sick)[:, k], judge(well)[:, k]
    return int((p_sick > 0.5).sum()), float(p_sick.mean() - p_well.mean())


def _misplace_weights(model: torch.nn.Module) -> None:
    """Hand each of ``model``'s parameters the weights of the previous one of the same shape (what a loader that
    maps a weight file wrongly would do); a parameter with no same-shaped sibling, and every buffer (BatchNorm's
    statistics), keep their own."""
    from collections import defaultdict

    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = defaultdict(list)
    for name, tensor in params.items():
        groups[tuple(tensor.shape)].append(name)
    moved = {names[i]: params[names[i - 1]] for names in groups.values() if len(names) > 1 for i in range(len(names))}
    model.load_state_dict({**model.state_dict(), **moved})


# -- judge128 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("finding", list(THIN_FINDINGS))
def test_zoo_judge128_reads_the_thin_findings(judge128, finding):
    """judge128 reads each thin finding, fracture and pneumothorax included, in most of 8 fixed-seed images
    (measured: 8, 6, 7 and 8 of 8 for fracture, pneumothorax, lung lesion, effusion; margins 0.67-1.00)."""
    hits, margin = _judge_reads(judge128, finding)
    assert hits >= 5 and margin > 0.3, (hits, margin)


def test_zoo_judge128_check_fails_with_another_weight_file():
    """The same check with judge64's weights (the same tensor shapes) in judge128's model fails on fracture
    (measured: 0 of 8)."""
    from safetensors.torch import load_file

    from evaluation.classifier import Judge

    judge = Judge.from_pretrained("zoo:judge128")
    other = load_file(str(next(Path(resolve_zoo("zoo:judge64")).glob("*.safetensors"))))
    judge.classifier.load_state_dict({k: v.float() for k, v in other.items()})
    hits, margin = _judge_reads(judge, "Fracture")
    assert hits < 5 or margin <= 0.3


# -- the autoencoders ------------------------------------------------------------------------------
def _through(entry: str):
    """Encode -> decode by the zoo autoencoder ``entry``, on [0, 1] images."""
    from diffusers import AutoencoderKL

    from report2image.autoencoder import reconstruct

    vae = AutoencoderKL.from_pretrained(resolve_zoo(f"zoo:{entry}")).float().eval()
    return lambda images: (reconstruct(vae, images * 2 - 1) + 1) / 2


@pytest.mark.parametrize("finding", list(THIN_FINDINGS))
def test_zoo_autoencoder128_f4_keeps_the_thin_findings(judge128, finding):
    """judge128 still reads each thin finding after autoencoder128_f4's encode -> decode (measured, hits of 8 and
    margin, real -> reconstructed: fracture 8 -> 8, 1.00 -> 1.00; pneumothorax 6 -> 4, 0.67 -> 0.49; lung
    lesion 7 -> 5, 0.78 -> 0.61; effusion 8 -> 8, 1.00 -> 1.00)."""
    hits, margin = _judge_reads(judge128, finding, _through("autoencoder128_f4"))
    assert hits >= 4 and margin > 0.3, (hits, margin)


def test_zoo_autoencoder128_f8_keeps_the_effusion_and_loses_the_fracture(judge128):
    """The f = 8 baseline entry as documented: a large finding survives its 16 x 16 latents (effusion 6 of 8,
    margin 0.75), a rib fracture does not (0 of 8, margin 0.00) -- also the check above failing with another
    entry's weights."""
    through = _through("autoencoder128")
    hits, margin = _judge_reads(judge128, "Pleural Effusion", through)
    assert hits >= 5 and margin > 0.3, (hits, margin)
    hits, margin = _judge_reads(judge128, "Fracture", through)
    assert hits < 4 and margin <= 0.3, (hits, margin)


# -- ldm128 ----------------------------------------------------------------------------------------
#: reports in the training reports' style (a normal heart and mediastinum, the finding stated twice as the
#: SynthCXR impression repeats it), one per finding the regression check draws
_HEART = "Heart size is normal. Normal mediastinal contours. "
LDM128_REPORTS = {
    "Pneumothorax": _HEART + "No focal consolidation. There is a large right pneumothorax. No pleural effusion. "
                             "There is a large right pneumothorax.",
    "Cardiomegaly": "Severe cardiomegaly. The lungs are clear. No pleural effusion. No pneumothorax. "
                    "Severe cardiomegaly.",
    "Fracture": _HEART + "The lungs are clear. There is no pleural effusion. No pneumothorax. "
                         "Right lower rib fracture. Right lower rib fracture.",
}
LDM128_NORMAL = _HEART + "The lungs are clear. No pleural effusion. No pneumothorax. " \
                         "No acute cardiopulmonary abnormality."


def _load_ldm128():
    """zoo:ldm128 as its card says it samples: the saved sampler, no progress bar."""
    from report2image import ReportToCXRPipeline

    pipe = ReportToCXRPipeline.from_pretrained("zoo:ldm128")
    pipe.set_progress_bar_config(disable=True)
    pipe.use_sampler(pipe.sampling.sampler)
    return pipe


@pytest.fixture(scope="module")
def ldm128():
    return _load_ldm128()


@torch.no_grad()
def _ldm_draws(pipe, judge, finding: str, n: int = 4) -> tuple[int, float]:
    """``n`` images of the finding's fixed report and of a normal report, fixed seed, the entry's saved guidance
    and sampler: (images the judge reads the finding in at > 0.5, mean probability minus the normal report's)."""
    from shared.labels import CHEXPERT_LABELS

    k = CHEXPERT_LABELS.index(finding)

    def read(report: str) -> torch.Tensor:
        images = pipe([report] * n, generator=torch.Generator().manual_seed(0), output_type="pt").images
        return judge(images)[:, k]

    p_sick, p_normal = read(LDM128_REPORTS[finding]), read(LDM128_NORMAL)
    return int((p_sick > 0.5).sum()), float(p_sick.mean() - p_normal.mean())


@pytest.mark.parametrize("finding", ["Pneumothorax", "Cardiomegaly"])
def test_zoo_ldm128_draws_the_finding_the_report_states(ldm128, judge128, finding):
    """judge128 finds the stated finding in most of 4 fixed-seed images, far more than in a normal report's
    (measured: pneumothorax 3 of 4, margin 0.76; cardiomegaly 4 of 4, margin 1.00; the same check on a rib
    fracture: 1 of 4, margin 0.20)."""
    hits, margin = _ldm_draws(ldm128, judge128, finding)
    assert hits >= 3 and margin > 0.4, (hits, margin)


@pytest.mark.xfail(strict=True, reason="ldm128 does not draw a rib fracture yet (rare set AUROC 0.49, "
                                       "docs/results.md): this fails loudly the day it does")
def test_zoo_ldm128_draws_a_rib_fracture(ldm128, judge128):
    hits, margin = _ldm_draws(ldm128, judge128, "Fracture")
    assert hits >= 3 and margin > 0.4, (hits, margin)


def test_zoo_ldm128_check_fails_with_its_weights_misplaced(judge128):
    """The pneumothorax check with the UNet's same-shaped tensors handed round one place (what a loader that
    maps a weight file wrongly would do) fails (measured: 0 of 4, margin 0.00)."""
    pipe = _load_ldm128()  # a copy of its own: the module's pipeline stays intact for the other checks
    _misplace_weights(pipe.unet)
    hits, margin = _ldm_draws(pipe, judge128, "Pneumothorax")
    assert hits < 3 or margin <= 0.4, (hits, margin)


# -- tower128 and uar128 (the 128 px decoders) -----------------------------------------------------------
@torch.no_grad()
def _tower_reads(tower, finding: str) -> tuple[int, float]:
    """tower128's findings head on :func:`_thin_pairs`: (images of the finding it reads at > 0.5, mean
    probability with minus without)."""
    from shared.labels import CHEXPERT_LABELS

    sick, well = _thin_pairs(finding)
    k = CHEXPERT_LABELS.index(finding)
    p_sick, p_well = (torch.sigmoid(tower(x * 2 - 1).logits)[:, k] for x in (sick, well))
    return int((p_sick > 0.5).sum()), float(p_sick.mean() - p_well.mean())


@pytest.fixture(scope="module")
def tower128():
    from shared.backbone.classifier import TowerPretrainer

    return TowerPretrainer.from_pretrained("zoo:tower128").eval()


@pytest.mark.parametrize("finding", ["Pneumothorax", "Lung Lesion", "Pleural Effusion"])
def test_zoo_tower128_reads_the_findings_of_its_training_reports(tower128, finding):
    """tower128's findings head (the quality gate's reader at 128 px) reads each finding in most of 8 fixed-seed
    images (measured: pneumothorax 5 of 8, margin 0.53; lung lesion 5, 0.65; effusion 8, 0.91)."""
    hits, margin = _tower_reads(tower128, finding)
    assert hits >= 4 and margin > 0.3, (hits, margin)


@pytest.mark.xfail(strict=True, reason="tower128 learnt from ~80 fractures at natural prevalence and does not read "
                                       "one (0 of 8, margin 0.00; docs/results.md): this fails loudly the day it does")
def test_zoo_tower128_reads_a_rib_fracture(tower128):
    hits, margin = _tower_reads(tower128, "Fracture")
    assert hits >= 4 and margin > 0.3, (hits, margin)


def test_zoo_tower128_check_fails_with_its_weights_misplaced():
    """The effusion check with tower128's same-shaped parameters handed round one place fails (measured: 0 of 8,
    margin 0.00)."""
    from shared.backbone.classifier import TowerPretrainer

    tower = TowerPretrainer.from_pretrained("zoo:tower128").eval()
    _misplace_weights(tower)
    hits, margin = _tower_reads(tower, "Pleural Effusion")
    assert hits < 4 or margin <= 0.3, (hits, margin)


@torch.no_grad()
def _decoder_writes(generator, finding: str) -> tuple[int, int]:
    """uar128's beam-3 reports of :func:`_thin_pairs`, read by the labeler: (reports of the images with the
    finding that state it, reports of the same patients without it that state it)."""
    from shared.text.labeler import ReportLabeler

    labeler = ReportLabeler()
    sick, well = _thin_pairs(finding)
    stated = [sum(labeler(r).get(finding) == 1 for r in generator.generate((x * 2 - 1)[:, None], num_beams=3))
              for x in (sick, well)]
    return stated[0], stated[1]


@pytest.fixture(scope="module")
def uar128():
    from image2report.generator import ReportGenerator

    return ReportGenerator.from_pretrained("zoo:uar128")


@pytest.mark.parametrize("finding", ["Pneumothorax", "Lung Lesion", "Pleural Effusion"])
def test_zoo_uar128_writes_the_finding_in_the_image(uar128, finding):
    """uar128's report states the finding for most of 8 fixed-seed images with it and for at most one of the same
    patients without it (measured: pneumothorax 4 / 0, lung lesion 5 / 0, effusion 8 / 0)."""
    with_finding, without = _decoder_writes(uar128, finding)
    assert with_finding >= 4 and without <= 1, (with_finding, without)


@pytest.mark.xfail(strict=True, reason="uar128's tower (tower128) does not read a rib fracture, so no report "
                                       "states one (0 of 8; rare set F1 0.0, docs/results.md): this fails loudly "
                                       "the day it does")
def test_zoo_uar128_writes_a_rib_fracture(uar128):
    with_finding, without = _decoder_writes(uar128, "Fracture")
    assert with_finding >= 4 and without <= 1, (with_finding, without)


def test_zoo_uar128_check_fails_with_its_weights_misplaced():
    """The effusion check with uar128's same-shaped parameters handed round one place fails (measured: 0 of 8)."""
    from image2report.generator import ReportGenerator

    generator = ReportGenerator.from_pretrained("zoo:uar128")
    _misplace_weights(generator.model)
    with_finding, without = _decoder_writes(generator, "Pleural Effusion")
    assert with_finding < 4 or without > 1, (with_finding, without)
