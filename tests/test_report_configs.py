"""Every committed report-model config loads into its schema and builds its model (CPU and paper settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from evaluation.train_classifier import ClassifierExperiment
from image2report.models import build_report_model
from image2report.train import ReportExperiment
from shared.backbone.pretrain import LSUExperiment, RadCAREExperiment
from shared.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPORT_CONFIGS = sorted(p for d in ("synth", "iu_xray", "mimic_cxr") for m in ("baseline", "uar", "cmcrl", "ifnet")
                        for p in [CONFIGS / d / f"{m}.yaml"]) + [CONFIGS / "synth" / "ifnet_pt.yaml"]


@pytest.mark.parametrize("path", REPORT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_report_config_builds_its_model(path):
    cfg = OmegaConf.to_object(load_config(ReportExperiment(), path))
    d = cfg.data
    model = build_report_model(cfg.model.name, 50, **{"image_size": d.image_size, "max_views": d.max_views,
                                                      "max_length": d.max_length, **cfg.model.options})
    assert model.config.image_size == d.image_size and model.config.max_views == d.max_views
    assert cfg.model.name.split("_")[0] == path.stem.split("_")[0]


@pytest.mark.parametrize("name,schema", [("lsu", LSUExperiment), ("radcare", RadCAREExperiment),
                                         ("ifnet_tower", ClassifierExperiment)])
def test_pretraining_configs_load(name, schema):
    assert load_config(schema(), CONFIGS / "synth" / f"{name}.yaml").train.max_steps > 0


def test_ifnet_tower_config_matches_the_ifnet_tower():
    tower = load_config(ClassifierExperiment(), CONFIGS / "synth" / "ifnet_tower.yaml")
    report = load_config(ReportExperiment(), CONFIGS / "synth" / "ifnet_pt.yaml")
    assert tower.data.label_source == "labeler"  # labels from the reports, as IFNet's own label head
    assert build_report_model(report.model.name, 50).config.visual == tower.model.arch
    assert report.model.init_visual_from == f"{tower.train.output_dir}/best"


def test_model_options_take_any_key_and_the_model_names_a_wrong_one():
    cfg = load_config(ReportExperiment(), None, ["model.name=cmcrl_tiny", "model.options.use_vdm=false"])
    assert cfg.model.options == {"use_vdm": False}
    with pytest.raises(ConfigError, match="model.nme"):
        load_config(ReportExperiment(), None, ["model.nme=x"])
    with pytest.raises(ValueError, match="has no option 'use_vdmm'"):
        build_report_model("cmcrl_tiny", 50, use_vdmm=False)
