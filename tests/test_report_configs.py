"""Every committed report-model config loads into its schema and builds its model (CPU and paper settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from image2report.models import build_report_model
from image2report.pretrain import LSUExperiment, RadCAREExperiment
from image2report.train import ReportExperiment
from shared.backbone.classifier import TOWER_PRETRAINERS
from shared.backbone.train_tower import TowerExperiment
from shared.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPORT_CONFIGS = sorted(p for d in ("synth", "iu_xray", "mimic_cxr") for m in ("baseline", "uar", "cmcrl", "ifnet")
                        for p in [CONFIGS / d / f"{m}.yaml"])
REPORT_CONFIGS += [CONFIGS / "synth" / f"{m}.yaml" for m in ("ifnet_pt", "ifnet_pt_small", "baseline_pt")]


@pytest.mark.parametrize("path", REPORT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_report_config_builds_its_model(path):
    cfg = OmegaConf.to_object(load_config(ReportExperiment(), path))
    d = cfg.data
    model = build_report_model(cfg.model.name, 50, **{"image_size": d.image_size, "max_views": d.max_views,
                                                      "max_length": d.max_length, **cfg.model.options})
    assert model.config.image_size == d.image_size and model.config.max_views == d.max_views
    assert cfg.model.name.split("_")[0] == path.stem.split("_")[0]


@pytest.mark.parametrize("name,schema", [("lsu", LSUExperiment), ("radcare", RadCAREExperiment),
                                         ("ifnet_tower", TowerExperiment),
                                         ("ifnet_tower_small", TowerExperiment)])
def test_pretraining_configs_load(name, schema):
    assert load_config(schema(), CONFIGS / "synth" / f"{name}.yaml").train.max_steps > 0


@pytest.mark.parametrize("model,tower_name", [("ifnet_pt", "ifnet_tower"), ("baseline_pt", "ifnet_tower"),
                                         ("ifnet_pt_small", "ifnet_tower_small"),
                                         ("../iu_xray/baseline", "../iu_xray/tower"),
                                         ("../iu_xray/ifnet", "../iu_xray/tower"),
                                         ("../mimic_cxr/baseline", "../mimic_cxr/tower"),
                                         ("../mimic_cxr/ifnet", "../mimic_cxr/tower")])
def test_tower_config_matches_the_pretrained_decoders(model, tower_name):
    tower = load_config(TowerExperiment(), CONFIGS / "synth" / f"{tower_name}.yaml")
    report = OmegaConf.to_object(load_config(ReportExperiment(), CONFIGS / "synth" / f"{model}.yaml"))
    # labels from the reports (as IFNet's own label head), or MIMIC-CXR's CheXpert file
    assert tower.data.label_source == ("file" if "mimic" in tower_name else "labeler")
    assert (tower.data.image_size, tower.data.resize) == (report.data.image_size, report.data.resize)
    decoder = build_report_model(report.model.name, 50, **report.model.options)
    arch = tower.model.arch or TOWER_PRETRAINERS.config(tower.model.name)["arch"]
    assert decoder.config.visual == arch
    assert report.model.init_visual_from == f"{tower.train.output_dir}/best"


def test_model_options_take_any_key_and_the_model_names_a_wrong_one():
    cfg = load_config(ReportExperiment(), None, ["model.name=cmcrl_tiny", "model.options.use_vdm=false"])
    assert cfg.model.options == {"use_vdm": False}
    with pytest.raises(ConfigError, match="model.nme"):
        load_config(ReportExperiment(), None, ["model.nme=x"])
    with pytest.raises(ValueError, match="has no option 'use_vdmm'"):
        build_report_model("cmcrl_tiny", 50, use_vdmm=False)


def test_report_benchmark_runs_a_pretrained_recipe_end_to_end(tmp_path, tiny_synth, monkeypatch, capsys,
                                                              load_benchmark):
    """benchmarks/report_synth.py with 2 steps: the tower stage, the decoder on it, both decodings, the JSON."""
    import functools
    import json
    import sys

    bench = load_benchmark("report_synth")
    # METEOR starts a Java process per call (~8 s each); it has its own tests in test_report_metrics.py.
    monkeypatch.setattr(bench, "evaluate_reports", functools.partial(bench.evaluate_reports, meteor=False))
    data, _ = tiny_synth
    out = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["report_synth", "--data", str(data), "--models", "baseline_pt", "--seeds", "0",
                                      "--steps", "2", "--limit-test", "3", "--out-dir", str(out),
                                      "--json", str(tmp_path / "r.json")])
    bench.main()
    result = json.loads((tmp_path / "r.json").read_text())
    run = result["runs"][0]
    assert run["model"] == "baseline_small" and run["steps"] == 2 and run["pretrain_seconds"] > 0
    assert (out / "ifnet_tower_s0" / "best" / "config.json").is_file()
    assert 0.0 <= result["models"]["baseline_pt"]["beam3"]["truth_ce_micro_f1"]["mean"] <= 1.0
    assert json.loads(capsys.readouterr().out)["benchmark"] == "report_generation_synthcxr"


def test_one_max_length_decoding_follows_data_even_nested():
    from radloop.augment import AugmentExperiment

    assert load_config(ReportExperiment(), None, ["data.max_length=42"]).decoding.max_length == 42
    assert load_config(AugmentExperiment(), None, ["report.data.max_length=33"]).report.decoding.max_length == 33
    assert load_config(ReportExperiment(), None, ["decoding.max_length=7"]).decoding.max_length == 7
