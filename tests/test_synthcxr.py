import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from shared.labels import CHEXPERT_LABELS, image_labels
from synthcxr import (
    DEFAULT_PREVALENCE,
    FINDING_SPECS,
    Acquisition,
    Finding,
    SynthConfig,
    contact_sheet,
    degrade,
    generate_dataset,
    patient_for,
    render,
    sample_acquisition,
    sample_findings,
    sample_patient,
    write_report,
)

SIZE = 64


@pytest.fixture(scope="module")
def patient():
    return sample_patient("P", 123)


@pytest.fixture(scope="module")
def acq():
    return sample_acquisition(9)


def one_of_each():
    """One finding of every kind at its strongest setting."""
    out = []
    for name, spec in FINDING_SPECS.items():
        out.append(Finding(name, spec.severities[-1] if spec.severities else None,
                           spec.lateralities[0] if spec.lateralities else None,
                           spec.zones[0] if spec.zones else None,
                           spec.kinds[-1] if spec.kinds else None, seed=3))
    return out


def test_render_is_deterministic_and_bounded(patient, acq):
    a = render(patient, (), acq, SIZE)
    b = render(patient, (), acq, SIZE)
    assert a.shape == (SIZE, SIZE) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    # Lungs are dark, mediastinum/abdomen bright: a radiograph, not a flat image.
    assert a.std() > 0.1


@pytest.mark.parametrize("finding", one_of_each(), ids=lambda f: f.name)
def test_each_finding_changes_the_film_locally(patient, acq, finding):
    base = render(patient, (), acq, SIZE)
    edited = render(patient, (finding,), acq, SIZE)
    diff = np.abs(edited - base)
    changed = diff > 1e-6
    assert changed.any(), f"{finding.name} left the image unchanged"
    # Pixel-identical outside the finding: the change never covers the whole film.
    assert changed.mean() < 0.6
    if finding.laterality in ("right", "left"):
        left_half, right_half = diff[:, : SIZE // 2].sum(), diff[:, SIZE // 2 :].sum()
        # The patient's right is on the image left (PA convention).
        near, far = (left_half, right_half) if finding.laterality == "right" else (right_half, left_half)
        assert near > 3 * far, f"{finding} does not sit on the {finding.laterality} side"


def test_true_counterfactual_keeps_everything_else(patient, acq):
    effusion = Finding("Pleural Effusion", "moderate", "right", seed=1)
    nodule = Finding("Lung Lesion", "small", "left", "upper", "nodule", seed=2)
    a = render(patient, (effusion,), acq, SIZE)
    b = render(patient, (effusion, nodule), acq, SIZE)
    only_nodule = np.abs(render(patient, (nodule,), acq, SIZE) - render(patient, (), acq, SIZE)) > 0
    changed = np.abs(b - a) > 0
    assert changed.any()
    # Adding the nodule changes exactly the pixels the nodule covers, and a small area.
    assert np.array_equal(changed, only_nodule)
    assert changed.mean() < 0.05


def test_severity_is_monotone(patient):
    acq = Acquisition(noise=0.0)
    base = render(patient, (), acq, SIZE)
    sizes = [np.abs(render(patient, (Finding("Pleural Effusion", s, "left"),), acq, SIZE) - base).sum()
             for s in ("small", "moderate", "large")]
    assert sizes[0] < sizes[1] < sizes[2]
    hearts = [(render(patient, (Finding("Cardiomegaly", s),), acq, SIZE) > 0.55).sum()
              for s in ("mild", "moderate", "severe")]
    assert hearts[0] < hearts[1] < hearts[2]


def test_identity_and_pose_are_separate_causes(acq):
    p1, p2 = sample_patient("a", 1), sample_patient("b", 2)
    assert not np.array_equal(render(p1, (), acq, SIZE), render(p2, (), acq, SIZE))
    still = render(p1, (), Acquisition(noise=0.0), SIZE)
    moved = render(p1, (), replace(Acquisition(noise=0.0), rotation=3.0), SIZE)
    assert 0 < np.abs(still - moved).mean() < 0.05
    lateral = render(p1, (), acq, SIZE, view="lateral")
    assert lateral.shape == (SIZE, SIZE) and not np.array_equal(lateral, render(p1, (), acq, SIZE))


def test_bad_render_and_finding_input():
    p = sample_patient("a", 1)
    with pytest.raises(ValueError, match="view"):
        render(p, (), None, SIZE, view="oblique")
    with pytest.raises(ValueError, match="unknown finding 'Tumour'"):
        Finding("Tumour")
    with pytest.raises(ValueError, match="laterality='middle'"):
        Finding("Pleural Effusion", "small", "middle")
    with pytest.raises(ValueError, match="takes no severity"):
        Finding("Fracture", severity="mild")
    assert Finding("Pleural Effusion").severity == "small"  # missing attributes get defaults


def test_default_prevalence_is_long_tailed():
    values = sorted(DEFAULT_PREVALENCE.values())
    assert values[0] <= 0.01 and values[-1] >= 10 * values[0]
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(4000)]
    freq = np.mean([any(f.name == "Fracture" for f in d) for d in draws])
    assert 0.002 < freq < 0.02


def test_reports_state_what_the_image_shows():
    rng = np.random.default_rng(1)
    for _ in range(300):
        findings = sample_findings(rng, {n: 0.25 for n in FINDING_SPECS})
        report = write_report(findings, rng, hedge_prob=0.3)
        text = report.text.lower()
        for f in findings:
            assert report.labels[f.name] in (1.0, -1.0)
            lingula = f.name != "Fracture" and f.laterality == "left" and f.zone == "middle"
            side = None if f.name == "Edema" else ("lingula" if lingula else f.laterality)  # edema: bilateral by nature
            for word in (f.severity, side, f.kind if f.name == "Lung Lesion" else None):
                if word:
                    assert word in text, (word, report.text)
        present = {f.name for f in findings}
        for name in FINDING_SPECS:
            if name not in present:
                assert report.labels[name] in (0.0,) or np.isnan(report.labels[name])
        assert (report.labels["No Finding"] == 1.0) == (not (present - {"Support Devices"}))


def test_reports_use_negations_and_hedges():
    rng = np.random.default_rng(2)
    texts = [write_report(sample_findings(rng, {n: 0.2 for n in FINDING_SPECS}), rng, 0.5) for _ in range(300)]
    joined = " ".join(r.text for r in texts)
    assert "No pneumothorax" in joined
    assert "may represent" in joined or "possible" in joined.lower()
    assert any(-1.0 in r.labels.values() for r in texts)
    # Several paraphrases per statement.
    heart = {s for r in texts for s, e in r.sentences if e == {"Cardiomegaly": 0.0}}
    assert len(heart) >= 3


def test_dataset_files_and_ground_truth(tiny_synth, tiny_synth_cfg):
    out, summary = tiny_synth
    ann = json.loads((out / "annotation.json").read_text())
    attrs = [json.loads(line) for line in (out / "attributes.jsonl").read_text().splitlines()]
    with (out / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    n = tiny_synth_cfg.patients * tiny_synth_cfg.studies_per_patient
    assert sum(len(v) for v in ann.values()) == len(attrs) == len(rows) == n == summary["studies"]
    # Patient-disjoint splits.
    patients = {split: {e["patient_id"] for e in ann[split]} for split in ann}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"]) and all(patients.values())
    by_id = {a["id"]: a for a in attrs}
    for row in rows:
        a = by_id[row["id"]]
        expected = image_labels(f["name"] for f in a["findings"])
        assert {k: int(row[k]) for k in CHEXPERT_LABELS} == expected == a["image_labels"]
    for entry in ann["train"]:
        assert len(entry["image_path"]) == 2
        for rel in entry["image_path"]:
            with Image.open(out / rel) as im:
                assert im.size == (32, 32) and im.mode == "L"
    flagged = [a for a in attrs if a["wrong_report"]]
    assert flagged and all(a["report_source_id"] != a["id"] for a in flagged)
    assert summary["wrong_reports"] == len(flagged)
    for a in attrs:
        if not a["wrong_report"]:
            for f in a["findings"]:
                assert a["report_labels"][f["name"]] in (1.0, -1.0)
    degraded = [a for a in attrs if a["degradation"]]
    assert degraded and summary["degraded"] == len(degraded)


def test_dataset_images_are_the_true_render(tiny_synth, tiny_synth_cfg):
    out, _ = tiny_synth
    attrs = [json.loads(line) for line in (out / "attributes.jsonl").read_text().splitlines()]
    clean = next(a for a in attrs if a["degradation"] is None and a["findings"])
    index = int(clean["patient_id"][1:])
    patient = patient_for(tiny_synth_cfg, index)
    assert patient.to_dict() == clean["patient"]
    img = render(patient, [Finding.from_dict(f) for f in clean["findings"]],
                 Acquisition.from_dict(clean["acquisition"]), tiny_synth_cfg.size)
    saved = np.asarray(Image.open(out / f"images/{clean['patient_id']}/{clean['id']}_frontal.png"))
    assert np.array_equal(saved, np.round(img * 255).astype(np.uint8))


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    cfg = SynthConfig(patients=10, studies_per_patient=2, size=32, seed=3, workers=1)
    generate_dataset(tmp_path / "a", cfg)
    generate_dataset(tmp_path / "b", replace(cfg, workers=2))
    for name in ("annotation.json", "labels.csv", "attributes.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "images").rglob("*.png"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    generate_dataset(tmp_path / "c", replace(cfg, seed=4))
    assert (tmp_path / "a" / "annotation.json").read_bytes() != (tmp_path / "c" / "annotation.json").read_bytes()


def test_existing_output_is_not_touched(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(tmp_path, SynthConfig(patients=2, studies_per_patient=1, size=32))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("change,match", [
    ({"views": 3}, "views"),
    ({"prevalence": {"Tumour": 0.1}}, "Tumour"),
    ({"degraded_fraction": 1.5}, "degraded_fraction"),
    ({"patients": 0}, "patients"),
])
def test_bad_synth_config(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "x", replace(SynthConfig(), **change))


@pytest.mark.parametrize("kind", ["noise", "blur", "low_contrast", "low_resolution"])
def test_degradations_change_the_image(kind):
    img = render(sample_patient("a", 1), (), None, SIZE)
    out = degrade(img, kind, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.abs(out - img).mean() > 1e-3
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(img, "smudge", np.random.default_rng(0))


def test_contact_sheet(tmp_path):
    path = contact_sheet(tmp_path / "sheet.png", size=32, per_row=2)
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 400


def test_counterfactual_edits_change_only_the_edited_finding(tiny_synth):
    from synthcxr import counterfactual_edits

    out, _ = tiny_synth
    edits = counterfactual_edits(out, "train", n=6, seed=0)
    assert len(edits) == 6
    for e in edits:
        assert e.source.shape == e.true_cf.shape == (32, 32)
        assert len(e.added) + len(e.removed) == 1
        assert e.new_report != e.source_report
        # The truth differs from the source image (the edit is visible) but not everywhere (same patient).
        changed = np.abs(e.true_cf - e.source) > 2 / 255
        assert 0 < changed.mean() < 0.6
    again = counterfactual_edits(out, "train", n=6, seed=0)
    assert [e.new_report for e in again] == [e.new_report for e in edits]


def test_an_interrupted_generation_resumes_to_the_same_files(tmp_path):
    """A `radloop synth` killed before its annotation.json is run again over the same folder and ends with
    the files an uninterrupted run writes; a folder with other settings is refused by name."""
    cfg = SynthConfig(patients=6, studies_per_patient=2, size=32, seed=5, workers=1)
    generate_dataset(tmp_path / "ref", cfg)
    run = tmp_path / "run"
    generate_dataset(run, cfg)
    # what a kill leaves: no annotation.json (written last), a half-written image's temp file, a bad image
    (run / "annotation.json").unlink()
    victim = next((run / "images").rglob("*.png"))
    victim.write_bytes(b"\x89PNG trunc")
    (victim.parent / f".{victim.name}.x1y2z3").write_bytes(b"half")
    generate_dataset(run, cfg)
    ref_files = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*") if p.is_file())
    run_files = sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file())
    assert run_files == ref_files
    assert all((tmp_path / "ref" / p).read_bytes() == (run / p).read_bytes() for p in ref_files)
    # killed after its last file: the same command finds the generation complete and does nothing
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.png")}
    assert generate_dataset(run, cfg)["studies"] == 12
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.png")} == before
    (run / "annotation.json").unlink()
    with pytest.raises(FileExistsError, match="interrupted generation with other settings"):
        generate_dataset(run, SynthConfig(patients=6, studies_per_patient=2, size=32, seed=6, workers=1))
