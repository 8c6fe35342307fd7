"""radloop workflows: rare-finding report composition, augmentation inputs, the HTML report helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from radloop.augment import compose_reports, pick_rare_findings, sentence_pool
from radloop.cli import main
from radloop.html_report import SECTIONS, highlight_findings, image_grid, metric_table, render_html
from shared.data.dataset import load_records
from shared.text.labeler import ReportLabeler

TRAIN = [
    "The heart is normal in size. Lungs are clear. No pneumothorax.",
    "Small right pneumothorax. The heart is normal in size. No pleural effusion.",
    "Large left pleural effusion. Mild cardiomegaly.",
    "The mediastinum is unremarkable. No acute cardiopulmonary abnormality.",
] * 5 + ["There is a left rib fracture. Lungs are clear."]


def test_pick_rare_findings_uses_the_labeler_prevalence():
    rare = pick_rare_findings(TRAIN, 0.1)
    assert rare == ["Fracture"]  # 1 of 21; the others are at 5/21
    assert set(pick_rare_findings(TRAIN, 0.3)) == {"Fracture", "Pneumothorax", "Pleural Effusion", "Cardiomegaly"}


def test_compose_reports_state_the_finding_and_nothing_else():
    labeler = ReportLabeler()
    pool = sentence_pool(TRAIN, labeler)
    reports = compose_reports(pool, "Pneumothorax", 8, seed=0)
    assert len(reports) == 8
    labels = labeler.label_batch(reports)
    names = list(labeler("x").keys())
    j = names.index("Pneumothorax")
    assert (labels[:, j] == 1).all()
    others = [i for i, n in enumerate(names) if n not in ("Pneumothorax", "Lung Opacity", "No Finding")]
    assert not (labels[:, others] == 1).any()
    assert compose_reports(pool, "Pneumothorax", 8, seed=0) == reports  # seeded
    with pytest.raises(ValueError, match="Edema"):
        compose_reports(pool, "Edema", 2)


def test_augment_names_an_unknown_finding(tiny_synth, tmp_path, capsys):
    data, _ = tiny_synth
    rc = main(["augment", f"annotation={data / 'annotation.json'}", f"output_dir={tmp_path / 'aug'}",
               "findings=[Dragon Pox]", f"diffusion={tmp_path / 'none'}"])
    assert rc == 2
    assert "Dragon Pox" in capsys.readouterr().err


def test_html_helpers():
    labeler = ReportLabeler()
    marked = highlight_findings("Large left pleural effusion. No pneumothorax.", labeler, {"Cardiomegaly"})
    assert '<mark class="f bad" title="Pleural Effusion">' in marked and "pneumothorax" in marked.lower()
    grid = image_grid([[np.zeros((4, 4))] * 3, [np.ones((4, 4))]], scale=2, pad=1)
    assert grid.size == (2 * (3 * 5 + 1), 2 * (2 * 5 + 1))
    table = metric_table({"fid": 1.23456, "n": 3})
    assert "<td>1.235</td>" in table and "<td>3</td>" in table
    with pytest.raises(ValueError, match="curves"):
        render_html("t", {s: ("h", "") for s in SECTIONS if s != "curves"})
    page = render_html("t", {s: (s, "<p>x</p>") for s in SECTIONS})
    assert all(f'<section id="{s}">' in page for s in SECTIONS)
    json.dumps(page)  # plain text, no bytes


class _FakePipe:
    """Stands in for a trained ReportToCXRPipeline: a seeded grey image per report."""

    def set_progress_bar_config(self, **_):
        pass

    def use_sampler(self, name):
        self.sampler = name

    def generate_batched(self, reports, batch_size, seed, steps, guidance, output_type="pil"):
        from PIL import Image

        rng = np.random.default_rng(seed)
        return [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), mode="L") for _ in reports]


def _tiny_augment(data, out):
    from image2report.decoding import DecodingConfig
    from image2report.train import ReportDataConfig, ReportExperiment, ReportModelConfig
    from radloop.augment import AugmentExperiment
    from shared.training import TrainConfig

    report = ReportExperiment(
        ReportDataConfig(annotation=str(data / "annotation.json"), image_size=32, batch_size=4, val_samples=4,
                         max_length=20),
        ReportModelConfig(name="baseline_tiny"), DecodingConfig(num_beams=1, max_length=20),
        TrainConfig(max_steps=2, eval_every=2, checkpoint_every=2, warmup_steps=0, progress=False))
    return AugmentExperiment(annotation=str(data / "annotation.json"), output_dir=str(out),
                             findings=["Pneumothorax", "Fracture"], per_finding=2, amounts=[1], amount_seeds=[1],
                             upweight_real=True, seeds=[0, 1], significance_samples=20, report=report)


def test_augment_arms_amount_curve_significance_and_rerun_reuses_finished_runs(tiny_synth, tmp_path, monkeypatch):
    import radloop.augment as augment
    import radloop.augment_runs as augment_runs
    from shared.data.dataset import load_records

    data, _ = tiny_synth
    cfg = _tiny_augment(data, tmp_path / "aug")
    result = augment.run_augment(cfg, pipe=_FakePipe())
    assert result["arms"] == ["real", "real_upweighted", "real+synthetic", "real+synthetic@1"]
    assert [p["synthetic_per_finding"] for p in result["amount_curve"]] == [0, 1, 2]
    assert set(result["significance"]) == {"real+synthetic vs real", "real_upweighted vs real",
                                           "real+synthetic@1 vs real", "real+synthetic vs real_upweighted"}
    assert all(0 < t["p_value"] <= 1 for t in result["significance"].values())
    assert result["significance"]["real+synthetic@1 vs real"]["seeds"] == 1  # paired on the seed both ran
    assert result["run_seeds"] == {"real": [0, 1], "real+synthetic": [0, 1], "real_upweighted": [0, 1],
                                   "real+synthetic@1": [1]}
    # each run's scores as it finished (the results file's run tables), the plan in the order it ran
    progress = json.loads((tmp_path / "aug" / "augment_progress.json").read_text())
    assert progress["planned"][:4] == ["real seed 0", "real_upweighted seed 0", "real+synthetic seed 0", "real seed 1"]
    assert {k: progress[k] for k in ("runs", "run_seeds", "run_minutes")} == {
        k: result[k] for k in ("runs", "run_seeds", "run_minutes")}
    rare = result["summary"]["rare_f1_mean"]
    assert rare["difference/real+synthetic@1"]["seeds"] == 1
    assert rare["difference/real+synthetic - real_upweighted"]["mean"] == pytest.approx(
        rare["real+synthetic"]["mean"] - rare["real_upweighted"]["mean"])
    real = load_records(data / "annotation.json")
    upweighted = load_records(tmp_path / "aug" / "real_upweighted.jsonl")
    assert len(upweighted) == len(real) + 2 * 2  # two extra repeats per rare finding
    assert len(load_records(tmp_path / "aug" / "real_plus_synthetic_1.jsonl")) == len(real) + 2

    # a rerun trains nothing and generates nothing: every (arm, seed) run and the images are reused
    def no_training(_):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(augment_runs, "train_report_model", no_training)
    pipe = _FakePipe()
    pipe.generate_batched = no_training
    again = augment.run_augment(cfg, pipe=pipe)
    assert again["runs"] == result["runs"] and again["summary"] == result["summary"]


def test_augment_run_archive_lets_a_fresh_clone_in_another_folder_reuse_every_run(tiny_synth, tmp_path,
                                                                                    monkeypatch):
    import dataclasses
    import shutil

    import radloop.augment as augment
    import radloop.augment_runs as augment_runs

    data, _ = tiny_synth
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    shutil.copytree(data, first / "data")
    monkeypatch.chdir(first)
    cfg = dataclasses.replace(_tiny_augment(Path("data"), Path("aug")), seeds=[0], amounts=[], amount_seeds=[],
                              run_archive="archive")
    result = augment.run_augment(cfg, pipe=_FakePipe())
    kept = {p.name: p.read_bytes() for p in Path("archive").iterdir()}
    assert sorted(kept) == ["real_seed0.json.gz", "real_synthetic_seed0.json.gz", "real_upweighted_seed0.json.gz"]

    # a fresh machine: the data and the committed archive in another folder, no output_dir; nothing is trained again
    shutil.copytree(first / "data", fresh / "data")
    shutil.copytree(first / "archive", fresh / "archive")
    monkeypatch.chdir(fresh)

    def no_training(_):
        raise AssertionError("an archived run was trained again")

    monkeypatch.setattr(augment_runs, "train_report_model", no_training)
    again = augment.run_augment(cfg, pipe=_FakePipe())
    assert again["runs"] == result["runs"] and again["significance"] == result["significance"]
    assert {p.name: p.read_bytes() for p in Path("archive").iterdir()} == kept  # rewritten byte for byte
    # another recipe is another run: the archive's scores are not taken for it
    cfg.report.train.learning_rate *= 2
    with pytest.raises(AssertionError, match="trained again"):
        augment.run_augment(cfg, pipe=_FakePipe())


def test_upweighted_rows_repeat_the_real_studies_that_state_the_finding():
    from radloop.augment import upweighted_rows

    real = [{"id": f"s{i}", "report": r, "image_path": [f"{i}.png"], "split": "train"} for i, r in enumerate(TRAIN)]
    rows = upweighted_rows(real, ["Fracture", "Pneumothorax"], 3, ReportLabeler())
    fracture = [r for r in rows if r["id"].endswith("_fracture")]
    assert [r["image_path"] for r in fracture] == [["20.png"]] * 3  # the one fracture study, three times
    assert len({r["id"] for r in rows}) == 6 and all(r["split"] == "train" for r in rows)
    with pytest.raises(ValueError, match="Edema"):
        upweighted_rows(real, ["Edema"], 1, ReportLabeler())


def test_precomputed_augmentation_is_labelled_and_escaped():
    from radloop.html_report import precomputed_augmentation

    cell = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    pre = {"command": "python benchmarks/augment_synth.py <script>", "rare_findings": ["Fracture"], "seeds": [0, 1],
           "test_studies": 9, "arms": ["real", "real+synthetic"], "verdict": "gain",
           "summary": {k: {"real": cell, "real+synthetic": cell, "difference/real+synthetic": cell}
                       for k in ("rare_f1_mean", "ce_micro_f1", "ce_macro_f1")},
           "significance": {"real+synthetic vs real": {"p_value": 0.012}}}
    page = precomputed_augmentation(pre)
    assert "Precomputed" in page and "not measured in this run" in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "0.500 [0.400, 0.600]" in page and "0.012" in page


def test_findings_from_report_reads_back_what_synthcxr_wrote():
    from radloop.roundtrip import findings_from_report
    from synthcxr import Finding, write_report

    truth = [Finding("Pleural Effusion", severity="large", laterality="left"),
             Finding("Pneumothorax", severity="small", laterality="right"), Finding("Cardiomegaly", severity="mild")]
    report = write_report(truth, np.random.default_rng(0), hedge_prob=0.0).text
    got = {f.name: f for f in findings_from_report(report)}
    assert set(got) == {f.name for f in truth}
    for f in truth:
        assert (got[f.name].severity, got[f.name].laterality) == (f.severity, f.laterality), report
    assert findings_from_report("No acute cardiopulmonary abnormality. No pneumothorax.") == []
    assert findings_from_report(report) == findings_from_report(report)  # seeded by the report


def test_true_renderer_redraws_a_clean_normal_study_exactly(tmp_path):
    from PIL import Image

    from radloop.roundtrip import TrueRenderer
    from synthcxr import SynthConfig, generate_dataset, read_attributes

    data = tmp_path / "synth"
    generate_dataset(data, SynthConfig(patients=8, studies_per_patient=2, size=32, seed=5, workers=1,
                                       degraded_fraction=0.0, wrong_report_fraction=0.0))
    normal = [r for r in read_attributes(data) if not r["findings"] and not r["degradation"]
              and not r["wrong_report"]][:3]
    assert normal
    reports = {r["id"]: r["report"] for r in load_records(data / "annotation.json")}
    renderer = TrueRenderer(data, [r["id"] for r in normal], 32)
    images = renderer([reports[r["id"]] for r in normal])
    assert images.shape == (len(normal), 1, 32, 32)
    for rec, image in zip(normal, images, strict=True):
        with Image.open(data / "images" / rec["patient_id"] / f"{rec['id']}_frontal.png") as im:
            stored = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        assert (image[0] - stored).abs().max() <= 1 / 255 + 1e-6  # same patient, acquisition and noise
    with pytest.raises(ValueError, match="no study 'nope'"):
        TrueRenderer(data, ["nope"], 32)


def test_roundtrip_cli_with_the_true_renderer_ceiling(tmp_path, capsys):
    from synthcxr import SynthConfig, generate_dataset
    from tests.test_report2image import tiny_pipeline

    data = tmp_path / "synth"
    generate_dataset(data, SynthConfig(patients=6, studies_per_patient=2, size=64, seed=9, workers=1,
                                       val_fraction=0.0, test_fraction=0.5))
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    rc = main(["roundtrip", "--pipeline", str(tmp_path / "pipe"), "--report-model", "zoo:uar", "--annotation",
               str(data / "annotation.json"), "--n", "4", "--num-inference-steps", "2", "--ceiling", "--out",
               str(tmp_path / "trip.json")])
    assert rc == 0
    result = json.loads((tmp_path / "trip.json").read_text())
    ceiling = result["ceiling"]
    assert ceiling["report_to_image_to_report"]["n"] == 4 and ceiling["image_to_report_to_image"]["n"] == 4
    # the renderer draws the study's own anatomy: its image round trip is far closer than an untrained generator's
    assert ceiling["image_to_report_to_image"]["ssim"] > result["image_to_report_to_image"]["ssim"]
    assert "ceiling: SynthCXR's renderer" in capsys.readouterr().out


def test_the_verdict_needs_the_seed_interval_and_the_study_level_test():
    from radloop.augment import _verdict

    runs = {"real": {0: {"rare_f1_mean": 0.1}}, "real+synthetic": {0: {"rare_f1_mean": 0.2}}}
    gain = {"difference/real+synthetic": {"ci_low": 0.01, "ci_high": 0.03}}
    assert _verdict(gain, runs) == "gain"
    assert _verdict(gain, runs, test={"p_value": 0.01}) == "gain"
    assert _verdict(gain, runs, test={"p_value": 0.41}).startswith("no significant difference (the seed-paired")
    assert _verdict({"difference/real+synthetic": {"ci_low": -0.03, "ci_high": -0.01}}, runs) == "loss"
    assert _verdict({"difference/real+synthetic": {"ci_low": -0.01, "ci_high": 0.01}}, runs) == \
        "no significant difference"
    zero = {"real": {0: {"rare_f1_mean": 0.0}}, "real+synthetic": {0: {"rare_f1_mean": 0.0}}}
    assert _verdict(gain, zero).startswith("no difference: neither arm")


def _images_elsewhere(data, tmp_path):
    """``data``'s annotation in an R2Gen-like folder whose images live in another folder (no images/ beside it)."""
    import shutil

    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(data / "annotation.json", real / "annotation.json")
    shutil.copytree(data / "images", tmp_path / "pixels" / "images")
    return real / "annotation.json", tmp_path / "pixels"


def test_roundtrip_reads_an_annotation_whose_images_are_elsewhere(tmp_path):
    from synthcxr import SynthConfig, generate_dataset
    from tests.test_report2image import tiny_pipeline

    data = tmp_path / "synth"
    generate_dataset(data, SynthConfig(patients=4, studies_per_patient=2, size=64, seed=9, workers=1,
                                       val_fraction=0.0, test_fraction=0.5))
    annotation, pixels = _images_elsewhere(data, tmp_path)
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    args = ["roundtrip", "--pipeline", str(tmp_path / "pipe"), "--report-model", "zoo:uar", "--annotation",
            str(annotation), "--n", "2", "--num-inference-steps", "2", "--out", str(tmp_path / "trip.json")]
    assert main(args) == 2  # the images are not beside the annotation: one clear error
    assert main([*args, "--image-root", str(pixels)]) == 0
    assert json.loads((tmp_path / "trip.json").read_text())["image_to_report_to_image"]["n"] == 2


def test_evaluate_images_reads_real_images_under_an_image_root(tmp_path, tiny_synth):
    from evaluation.classifier import build_classifier

    out, _ = tiny_synth
    annotation, pixels = _images_elsewhere(out, tmp_path)
    build_classifier("classifier_tiny", image_size=32).save_pretrained(tmp_path / "judge")
    ann = json.loads(annotation.read_text())
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"id": e["id"], "image_path": [str(out / e["image_path"][0])],
                                       "report": e["report"]}) + "\n" for e in ann["test"]))
    args = ["evaluate", "images", "--generated", str(gen), "--real", str(annotation), "--real-split", "train",
            "--real-labels", "labeler",
            "--classifier", str(tmp_path / "judge"), "--image-size", "32", "--allow-outside-root",
            "--out", str(tmp_path / "m.json")]
    assert main(args) == 2
    assert main([*args, "--image-root", str(pixels)]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n_real"] == len(ann["train"])


def test_generate_into_resumes_a_request_refuses_another_or_replaces_it(tmp_path):
    """One implementation behind `generate image` and the augmentation: same request -> nothing redrawn;
    another request -> refused by name, or drawn afresh with replace=True."""
    from radloop.generated_images import REQUEST_FILE, generate_into

    out, reports, names = tmp_path / "gen", ["a.", "b.", "c."], ["x0", "x1", "x2"]
    request, skipped = generate_into(out, reports, names, pipe=_FakePipe(), seed=0, batch_size=2)
    assert skipped == 0 and request["sampler"] == "dpmsolver++" and request["num_inference_steps"] == 20
    first = (out / "x2.png").read_bytes()
    (out / "x2.png").unlink()
    _, skipped = generate_into(out, reports, names, pipe=_FakePipe(), seed=0, batch_size=2)
    assert skipped == 1 and (out / "x2.png").read_bytes() == first  # the same pixels as the first run
    with pytest.raises(FileExistsError, match=f"another request .{REQUEST_FILE} differs"):
        generate_into(out, reports, names, pipe=_FakePipe(), seed=1, batch_size=2)
    _, skipped = generate_into(out, reports, names, pipe=_FakePipe(), seed=1, batch_size=2, replace=True)
    assert skipped == 0 and (out / "x2.png").read_bytes() != first
    assert json.loads((out / REQUEST_FILE).read_text())["seed"] == 1
    with pytest.raises(ValueError, match="either pipeline"):
        generate_into(out, reports, names)
