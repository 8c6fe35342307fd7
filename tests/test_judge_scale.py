"""benchmarks/judge_scale.py end to end at a tiny size: data per size, a judge trained per size, per-finding AUROC."""

from __future__ import annotations

import json

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
                "Fracture=0.5", "model.name=classifier_tiny", "train.max_steps=2", "train.eval_every=1",
                "train.checkpoint_every=2", "data.batch_size=8"])
    result = json.loads(out.read_text())
    assert sorted(result["sizes"]) == ["16", "24"]
    row = result["sizes"]["24"]
    assert row["trained_here"] and row["steps"] == 2 and (tmp_path / "judge24_enriched" / "best").is_dir()
    assert set(row["rare_test"]["auroc"]) == set(row["rare_test"]["positives"])
    # only the training data is enriched; the test sets keep the natural prevalence
    assert ("data.yaml", 24, "synthcxr24_enriched", {"Fracture": 0.5}) in rendered
    assert ("rare_test_data.yaml", 24, "synthcxr24_rare_test", None) in rendered
    assert result["train_prevalence"] == {"Fracture": 0.5}


def test_smallest_passing_size(load_benchmark):
    bench = load_benchmark("judge_scale")
    rows = {"64": {"t": {"auroc": {"a": 0.95, "b": 0.5, "c": None}}},
            "96": {"t": {"auroc": {"a": 0.91, "b": 0.90, "c": None}}},
            "128": {"t": {"auroc": {"a": 0.99, "b": 0.97}}}}
    assert bench.smallest_passing(rows, "t", 0.90) == 96
    assert bench.smallest_passing(rows, "t", 0.96) == 128
    assert bench.smallest_passing(rows, "t", 0.999) is None
