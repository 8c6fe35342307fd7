"""benchmarks/judge_scale.py end to end at a tiny size: data per size, a judge trained per size, per-finding AUROC."""

from __future__ import annotations

import json

import pytest

from synthcxr import SynthConfig, generate_dataset


def test_judge_scale_trains_and_scores_a_judge_per_size(tmp_path, load_benchmark, monkeypatch):
    bench = load_benchmark("judge_scale")
    seeds = {"data.yaml": 0, "test_data.yaml": 1001, "rare_test_data.yaml": 1003}
    rendered = []

    def tiny_render(recipe, size, out, prevalence=None):  # the zoo's recipes at a tiny size
        rendered.append((recipe, size, out.name, prevalence))
        if not (out / "annotation.json").is_file():
            generate_dataset(out, SynthConfig(patients=24, studies_per_patient=2, size=size, seed=seeds[recipe],
                                              prevalence={**SynthConfig().prevalence, **(prevalence or {})},
                                              val_fraction=0.25, test_fraction=0.4, workers=1))
        return out / "annotation.json"

    monkeypatch.setattr(bench, "render", tiny_render)
    out = tmp_path / "scale.json"
    bench.main(["--sizes", "16", "24", "--runs", str(tmp_path), "--out", str(out), "--train-prevalence",
                "Fracture=0.5", "--judge-suffix", "_max", "model.name=classifier_tiny", "model.global_pool=max",
                "train.max_steps=2", "train.eval_every=1", "train.checkpoint_every=2", "data.batch_size=8"])
    result = json.loads(out.read_text())
    assert sorted(result["sizes"]) == ["16", "24"]
    row = result["sizes"]["24"]
    assert row["trained_here"] and row["steps"] == 2 and (tmp_path / "judge24_enriched_max" / "best").is_dir()
    config = json.loads((tmp_path / "judge24_enriched_max" / "best" / "config.json").read_text())
    assert config["global_pool"] == "max"  # the recipe override reached the model
    # the learning curve carries every finding's validation AUROC, not only the mean
    assert any(k.startswith("val/auroc/") for k in row["val_curve"][0])
    assert set(row["rare_test"]["auroc"]) == set(row["rare_test"]["positives"])
    # only the training data is enriched; the test sets keep the natural prevalence
    assert ("data.yaml", 24, "synthcxr24_enriched", {"Fracture": 0.5}) in rendered
    assert ("rare_test_data.yaml", 24, "synthcxr24_rare_test", None) in rendered
    assert result["train_prevalence"] == {"Fracture": 0.5}


def test_zoo_rows_take_the_reused_zoo_judges_only(load_benchmark):
    bench = load_benchmark("judge_scale")
    scores = {"mauc": 0.9, "auroc": {"Fracture": 0.95}, "positives": {"Fracture": 100}}
    result = {"command": "python benchmarks/judge_scale.py --reuse 128=zoo:judge128", "sizes": {
        "128": {"judge": "zoo:judge128", "test": {**scores, "mauc": 0.8}, "rare_test": scores},
        "64": {"judge": "runs/zoo/judge64/best", "test": scores, "rare_test": scores}}}
    assert bench.zoo_rows(result) == {"judge128": {
        "mauc_real_test": 0.8, "mauc_rare_test": 0.9, "auroc_rare_test": {"Fracture": 0.95},
        "positives_rare_test": {"Fracture": 100}, "command": result["command"]}}


def test_smallest_passing_size(load_benchmark):
    bench = load_benchmark("judge_scale")
    rows = {"64": {"t": {"auroc": {"a": 0.95, "b": 0.5, "c": None}}},
            "96": {"t": {"auroc": {"a": 0.91, "b": 0.90, "c": None}}},
            "128": {"t": {"auroc": {"a": 0.99, "b": 0.97}}}}
    assert bench.smallest_passing(rows, "t", 0.90) == 96
    assert bench.smallest_passing(rows, "t", 0.96) == 128
    assert bench.smallest_passing(rows, "t", 0.999) is None


def test_autoencoder_judge_scores_real_and_reconstructed_images(tmp_path, tiny_synth, load_benchmark):
    """benchmarks/autoencoder_judge.py on a tiny autoencoder and judge: per-finding AUROC real vs reconstructed."""
    import numpy as np

    from evaluation.classifier import build_classifier
    from report2image.models import build_autoencoder, load_ldm_config

    bench = load_benchmark("autoencoder_judge")
    labels = np.zeros((6, 14))
    labels[4, 12] = labels[1, 9] = 1  # Fracture (column 12) in row 4, Pneumothorax (9) in row 1
    assert bench.selection(labels, 2, ["Fracture", "Pneumothorax"]) == [0, 1, 4]
    out, _ = tiny_synth
    cfg = load_ldm_config("ldm_tiny")
    build_autoencoder({**cfg, "image_size": 32}).save_pretrained(tmp_path / "vae")
    build_classifier("classifier_tiny", image_size=32).save_pretrained(tmp_path / "judge")
    bench.main(["--vae", str(tmp_path / "vae"), "--judge", str(tmp_path / "judge"), "--data", str(out), "--n", "4",
                "--out", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["size"] == 32 and result["studies"] >= 4
    assert set(result["auroc_real"]) == set(result["auroc_reconstructed"]) and "Fracture" in result["positives"]
    assert result["mauc_gap"] == pytest.approx(result["judge_mauc_real"] - result["judge_mauc_reconstructed"], abs=2e-4)
    # the card's row: the entry named by --vae zoo:NAME, the scores and the command that gave them
    row = bench.zoo_row({**result, "vae": "zoo:ae"})
    assert set(row) == {"ae"} and row["ae"]["gap"] == result["gap"] and "autoencoder_judge.py" in row["ae"]["command"]
    with pytest.raises(SystemExit):  # the scores need an entry to belong to
        bench.main(["--vae", str(tmp_path / "vae"), "--judge", "j", "--data", str(out), "--zoo-results", "s.json"])
