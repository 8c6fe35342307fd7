"""The quality gate and counterfactual augmentation: units, and both as arms of radloop augment on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from radloop.augment_sources import (
    add_finding,
    findings_reader,
    gate_on_real,
    gate_synthetic,
    write_counterfactual_manifest,
)
from shared.data.dataset import load_records
from shared.labels import CHEXPERT_LABELS
from shared.text.labeler import ReportLabeler

LABELER = ReportLabeler()


def test_add_finding_drops_what_the_new_sentence_contradicts():
    report = "The lungs are clear. No pneumothorax. Heart size is normal. No acute cardiopulmonary abnormality."
    assert add_finding(report, "Small left pneumothorax.", LABELER) == \
        "The lungs are clear. Heart size is normal. Small left pneumothorax."
    # an atelectasis is a lung opacity: "the lungs are clear" goes
    assert add_finding("The lungs are clear. Heart size is normal.", "Mild left retrocardiac atelectasis.",
                       LABELER) == "Heart size is normal. Mild left retrocardiac atelectasis."


def _synthetic(tmp_path, findings=("Pneumothorax", "Fracture"), k=3):
    from PIL import Image

    (tmp_path / "images").mkdir()
    rows = []
    for finding in findings:
        for i in range(k):
            sid = f"syn_{finding.lower()}_{i}"
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8), mode="L").save(tmp_path / "images" / f"{sid}.png")
            rows.append({"id": sid, "report": f"{finding}.", "image_path": [f"images/{sid}.png"], "split": "train",
                         "synthetic": True, "target_finding": finding})
    (tmp_path / "synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "synthetic.jsonl"


def test_gate_keeps_what_the_reader_sees_and_reports_rates(tmp_path):
    manifest = _synthetic(tmp_path)
    ptx, frac = CHEXPERT_LABELS.index("Pneumothorax"), CHEXPERT_LABELS.index("Fracture")

    def reader(images):  # sees a pneumothorax in the brighter images, never a fracture
        probs = np.zeros((len(images), 14))
        probs[:, ptx] = images.mean((1, 2, 3)).numpy() * 4
        probs[:, frac] = 0.1
        return probs

    out = gate_synthetic(manifest, reader, threshold=0.2, image_size=16)
    gated, rates = out.manifest, out.findings
    assert gated == tmp_path / "synthetic_gated.jsonl"
    assert [r["id"] for r in load_records(gated)] == ["syn_pneumothorax_1", "syn_pneumothorax_2"]
    assert rates["Pneumothorax"]["accepted"] == 2 and rates["Pneumothorax"]["rate"] == round(2 / 3, 4)
    assert rates["Fracture"] == {"generated": 3, "accepted": 0, "rate": 0.0, "mean_probability": 0.1}
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["threshold"] == 0.2 and gate["findings"] == rates
    # each study's decision, in manifest order, with the reader's probability of its own finding
    assert [(s["id"], s["accepted"]) for s in gate["studies"]][:3] == [
        ("syn_pneumothorax_0", False), ("syn_pneumothorax_1", True), ("syn_pneumothorax_2", True)]
    assert {s["probability"] for s in gate["studies"] if s["finding"] == "Fracture"} == {0.1}
    assert out.studies == gate["studies"]


def test_gate_on_real_reports_the_share_of_real_cases_the_reader_keeps(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    # (report, brightness): the reader sees a pneumothorax in bright images, whatever the report says
    studies = [("Small left pneumothorax.", 200), ("Large right pneumothorax.", 20), ("No pneumothorax.", 20),
               ("No pneumothorax.", 200), ("The lungs are clear.", 20), ("The lungs are clear.", 20)]
    rows = []
    for i, (report, grey) in enumerate(studies):
        Image.fromarray(np.full((16, 16), grey, np.uint8), mode="L").save(tmp_path / "images" / f"s{i}.png")
        rows.append({"id": f"s{i}", "report": report, "image_path": [f"images/s{i}.png"], "split": "test"})
    rows.append({**rows[0], "id": "t0", "split": "train"})  # another split: not read
    (tmp_path / "real.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ptx = CHEXPERT_LABELS.index("Pneumothorax")

    def reader(images):
        probs = np.zeros((len(images), 14))
        probs[:, ptx] = images.mean((1, 2, 3)).numpy()
        return probs

    out = gate_on_real(reader, tmp_path / "real.jsonl", ["Pneumothorax", "Fracture"], threshold=0.5, image_size=16,
                       labeler=LABELER)
    # 2 stated positives, one kept; 4 others, the bright one kept by mistake; no fracture is stated anywhere
    assert out["Pneumothorax"] == {"positives": 2, "kept_positives": 0.5, "negatives": 4, "kept_negatives": 0.25}
    assert out["Fracture"] == {"positives": 0, "kept_positives": None, "negatives": 6, "kept_negatives": 0.0}
    capped = gate_on_real(reader, tmp_path / "real.jsonl", ["Pneumothorax"], 0.5, 16, per_kind=3, labeler=LABELER)
    assert capped["Pneumothorax"]["positives"] == 2 and capped["Pneumothorax"]["negatives"] == 3
    with pytest.raises(ValueError, match="has no 'val' studies"):
        gate_on_real(reader, tmp_path / "real.jsonl", ["Pneumothorax"], split="val", labeler=LABELER)


def test_findings_reader_reads_a_backbone_head_and_refuses_one_without(tmp_path):
    from shared.backbone import build_backbone
    from shared.text.tokenizer import ReportTokenizer

    tok = ReportTokenizer.fit(["No acute findings.", "Small left pneumothorax."], min_freq=1)
    build_backbone("radclip_tiny", tok, num_labels=14).save_pretrained(tmp_path / "head")
    probs = findings_reader(tmp_path / "head")(torch.rand(3, 1, 32, 32))
    assert probs.shape == (3, 14) and ((probs > 0) & (probs < 1)).all()
    build_backbone("radclip_tiny", tok).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no findings head"):
        findings_reader(tmp_path / "plain")


def test_findings_reader_reads_a_tower_head_at_its_own_side_and_refuses_the_judge(tmp_path):
    from evaluation.classifier import build_classifier
    from shared.backbone.classifier import build_tower_pretrainer

    torch.manual_seed(0)
    tower = build_tower_pretrainer("tower_pretrainer_tiny", image_size=32).eval()
    tower.save_pretrained(tmp_path / "tower")
    reader = findings_reader(tmp_path / "tower")
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = torch.sigmoid(tower(images * 2 - 1).logits).numpy()
    np.testing.assert_allclose(reader(images), expected, rtol=1e-5, atol=1e-6)
    # images of another size are resized to the tower's 32 px first (flat images: the resize is exact)
    flat = torch.rand(3, 1, 1, 1)
    with torch.no_grad():
        expected = torch.sigmoid(tower(flat.expand(3, 1, 32, 32) * 2 - 1).logits).numpy()
    np.testing.assert_allclose(reader(flat.expand(3, 1, 64, 64)), expected, rtol=1e-5, atol=1e-6)
    build_classifier("classifier_tiny").save_pretrained(tmp_path / "judge")
    with pytest.raises(ValueError, match="judge classifier, which never gates"):
        findings_reader(tmp_path / "judge")


def test_counterfactual_edits_keep_the_patient_and_label_with_the_edited_report(tiny_synth, tmp_path):
    from tests.test_report2image import tiny_pipeline

    data, _ = tiny_synth
    train = [{**r, "image_path": [str(data / r["image_path"][0])]} for r in load_records(data / "annotation.json")
             if r["split"] == "train"]
    pipe = tiny_pipeline(use_identity=False)
    pipe.sampling.edit_num_inference_steps = 2  # the edit settings come from the pipeline
    manifest = write_counterfactual_manifest(pipe, train, data, {"Pneumothorax": ["Small left pneumothorax."]}, 2,
                                             tmp_path / "cf", LABELER)
    rows = load_records(manifest)
    assert len(rows) == 2 and all(r["counterfactual"] and r["target_finding"] == "Pneumothorax" for r in rows)
    by_id = {r["id"]: r for r in train}
    for row in rows:
        assert row["report"].endswith("Small left pneumothorax.")
        assert LABELER(row["report"])["Pneumothorax"] == 1 and LABELER(by_id[row["source_id"]]["report"]).get(
            "Pneumothorax") != 1
        assert row["patient_id"] == by_id[row["source_id"]]["patient_id"]
        assert (tmp_path / "cf" / row["image_path"][0]).is_file()
    stamp = (tmp_path / "cf" / "request.json").read_text()
    def no_edit(*args, **kwargs):
        raise AssertionError("the same request was edited again")

    pipe.counterfactual = no_edit  # the same request: the edits on disk are reused
    write_counterfactual_manifest(pipe, train, data, {"Pneumothorax": ["Small left pneumothorax."]}, 2,
                                  tmp_path / "cf", LABELER)
    assert (tmp_path / "cf" / "request.json").read_text() == stamp


def test_augment_runs_the_gated_and_counterfactual_arms(tiny_synth, tmp_path):
    import radloop.augment as augment
    from shared.backbone import build_backbone
    from shared.text.tokenizer import ReportTokenizer
    from tests.test_report2image import tiny_pipeline
    from tests.test_workflows import _tiny_augment

    data, _ = tiny_synth
    tok = ReportTokenizer.fit([r["report"] for r in load_records(data / "annotation.json")], min_freq=1)
    torch.manual_seed(0)
    build_backbone("radclip_tiny", tok, num_labels=14).save_pretrained(tmp_path / "reader")
    cfg = _tiny_augment(data, tmp_path / "aug")
    cfg.seeds, cfg.significance_samples = [0], 10
    cfg.amounts, cfg.amount_seeds, cfg.amount_arm = [1], [0], "real+counterfactual"  # the curve of the edits' arm
    cfg.gate_backbone, cfg.gate_threshold, cfg.counterfactual = str(tmp_path / "reader"), 0.0, True
    cfg.gate_reference = str(data / "annotation.json")  # the real test studies, read at the same threshold
    cfg.upweight_with = ["real+gated"]  # the gated studies on top of the up-weighted real ones
    pipe = tiny_pipeline(use_identity=False)
    pipe.sampling.num_inference_steps = pipe.sampling.edit_num_inference_steps = 2
    result = augment.run_augment(cfg, pipe=pipe)
    assert result["arms"] == ["real", "real_upweighted", "real+synthetic", "real+gated", "real+counterfactual",
                              "real+gated+upweighted", "real+counterfactual@1"]
    assert [(p["arm"], p["synthetic_per_finding"]) for p in result["amount_curve"]] == [
        ("real", 0), ("real+counterfactual@1", 1), ("real+counterfactual", cfg.per_finding)]
    assert set(result["gate"]["findings"]) == {"Pneumothorax", "Fracture"}
    assert all(r["accepted"] == r["generated"] for r in result["gate"]["findings"].values())  # threshold 0
    assert set(result["gate"]["real"]) == {"Pneumothorax", "Fracture"}
    # the edits read by the same reader; their arm keeps them all
    assert {f: r["generated"] for f, r in result["gate"]["counterfactual"].items()} == {
        "Pneumothorax": cfg.per_finding, "Fracture": cfg.per_finding}
    edits = tmp_path / "aug" / "counterfactual"
    assert json.loads((edits / "gate.json").read_text())["findings"] == result["gate"]["counterfactual"]
    assert (edits / "counterfactual_gated.jsonl").is_file()  # named after the edits, not the synthetic studies
    assert all(r["kept_negatives"] == 1.0 for r in result["gate"]["real"].values())
    assert {"real+gated vs real_upweighted", "real+counterfactual vs real", "real+gated+upweighted vs real",
            "real+gated+upweighted vs real_upweighted"} <= set(result["significance"])
    assert set(result["verdicts"]) == {"real+gated", "real+counterfactual", "real+gated+upweighted"}
    assert set(result["verdicts_vs_upweighted"]) == set(result["verdicts"])
    # the combined arm: every real study, the up-weighted repeats and the gated studies, once each
    by_arm = {name: load_records(tmp_path / "aug" / f"{name}.jsonl")
              for name in ("real_upweighted", "real_plus_gated", "real_plus_gated_upweighted")}
    real = load_records(data / "annotation.json")
    # the amount curve's point: the first edit of each finding, on top of every real study
    one_each = load_records(tmp_path / "aug" / "real_plus_counterfactual_1.jsonl")[len(real):]
    assert sorted(r["target_finding"] for r in one_each) == ["Fracture", "Pneumothorax"]
    assert all(r["counterfactual"] for r in one_each)
    assert sorted(r["id"] for r in by_arm["real_plus_gated_upweighted"]) == sorted(
        {r["id"] for arm in ("real_upweighted", "real_plus_gated") for r in by_arm[arm]})
    assert len(by_arm["real_plus_gated_upweighted"]) == (len(by_arm["real_upweighted"]) + len(by_arm["real_plus_gated"])
                                                         - len(real))


def test_augment_refuses_to_upweight_or_subsample_an_arm_it_does_not_make_before_generating(tiny_synth, tmp_path):
    import radloop.augment as augment
    from tests.test_workflows import _tiny_augment

    data, _ = tiny_synth
    cfg = _tiny_augment(data, tmp_path / "aug")
    cfg.upweight_with = ["real+gated"]  # no gate_backbone: that arm is not made
    with pytest.raises(ValueError, match=r"upweight_with: \['real\+gated'\] must name generated-study arms"):
        augment.run_augment(cfg, pipe=object())
    cfg.upweight_with, cfg.amount_arm = [], "real+counterfactual"  # nor is this one: counterfactual is off
    with pytest.raises(ValueError, match=r"amount_arm: 'real\+counterfactual' is not a generated-study arm"):
        augment.run_augment(cfg, pipe=object())
    assert not (tmp_path / "aug").exists()


def test_augment_refuses_a_gate_reference_without_a_gate_or_a_file_before_generating_anything(tiny_synth, tmp_path):
    import radloop.augment as augment
    from tests.test_workflows import _tiny_augment

    data, _ = tiny_synth
    cfg = _tiny_augment(data, tmp_path / "aug")
    cfg.gate_reference = str(data / "annotation.json")
    with pytest.raises(ValueError, match="set gate_backbone too"):
        augment.run_augment(cfg, pipe=object())
    cfg.gate_backbone, cfg.gate_reference = "zoo:tower128", str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="gate_reference: no annotation at .*missing.json"):
        augment.run_augment(cfg, pipe=object())
    assert not (tmp_path / "aug").exists()
