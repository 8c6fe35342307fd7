"""Every IU X-ray / MIMIC-CXR recipe resolves, and the whole chain runs at tiny size in index order: each
pre-training step is a recipe whose output (runs/<data set>/<name>/best) the next recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radloop.cli import main
from radloop.registries import load_registries
from shared.config import load_config
from shared.training import TRAINERS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA_SETS = ("iu_xray", "mimic_cxr")


def _index(data_set: str) -> dict[str, dict]:
    return yaml.safe_load((CONFIGS / data_set / "index.yaml").read_text())["recipes"]


@pytest.mark.parametrize("data_set", DATA_SETS)
def test_every_recipe_is_indexed_and_resolves(data_set):
    load_registries()
    index = _index(data_set)
    on_disk = {p.stem for p in (CONFIGS / data_set).glob("*.yaml") if not p.stem.startswith("_") and p.stem != "index"}
    assert on_disk == set(index), "every recipe of the folder is in its index.yaml and the other way round"
    assert {"backbone", "judge", "autoencoder", "diffusion", "baseline", "uar", "cmcrl", "ifnet"} <= set(index)
    for name, entry in index.items():
        cfg = load_config(TRAINERS.get(entry["trainer"]).meta["experiment"](), CONFIGS / data_set / f"{name}.yaml")
        assert cfg.train.output_dir == f"runs/{data_set}/{name}"
        assert cfg.train.mixed_precision == "auto"
        for need in entry.get("needs", []):  # a recipe loads what the recipe it needs writes
            assert f"runs/{data_set}/{need}/best" in (CONFIGS / data_set / f"{name}.yaml").read_text()
    diffusion = load_config(TRAINERS.get("diffusion").meta["experiment"](), CONFIGS / data_set / "diffusion.yaml")
    assert diffusion.model.name == "ldm_base"  # 256 px latent diffusion, as RoentGen / Diff-CXR


#: the tokenizer sizes a tiny UAR / CMCRL loads (the recipes build lsu_base / radcare_base)
TINY_PRETRAINED = {"uar": ["model.options.lsu=lsu_tiny"], "cmcrl": ["model.options.radcare=radcare_tiny"]}


def _tiny(trainer: str, name: str, annotation: Path, views: int) -> list[str]:
    common = [f"data.annotation={annotation}", "data.batch_size=8", "train.max_steps=1", "train.eval_every=1",
              "train.checkpoint_every=1", "train.warmup_steps=0"]
    return common + {
        "backbone": ["model.name=radclip_tiny", "data.min_freq=1"],
        "classifier": ["model.name=classifier_tiny", "data.image_size=32", "data.resize=36"],
        "tower": ["model.name=tower_pretrainer_tiny", "data.image_size=32", "data.resize=36"],
        "lsu": ["model.name=lsu_tiny", "data.image_size=32", "data.min_freq=1"],
        "radcare": ["model.name=radcare_tiny", "data.image_size=32", "data.min_freq=1"],
        "autoencoder": ["model.name=ldm_tiny", "data.val_samples=4"],
        "diffusion": ["model.name=ldm_tiny", "data.val_samples=4", "loss.filter_warmup=1"],
        "report": [f"model.name={name}_tiny", "data.image_size=32", "data.resize=36", "data.min_freq=1",
                   "data.max_length=40", "data.val_samples=4", f"data.max_views={views}"]
                  + TINY_PRETRAINED.get(name, []),
    }[trainer]


@pytest.mark.parametrize("data_set", DATA_SETS)
def test_the_recipe_chain_runs_at_tiny_size(data_set, tiny_synth, tmp_path, monkeypatch):
    out, _ = tiny_synth
    monkeypatch.chdir(tmp_path)  # the recipes' runs/<data set>/... paths land here, and load from here
    views = 2 if data_set == "iu_xray" else 1
    for name, entry in _index(data_set).items():
        args = ["train", entry["trainer"], "--config", str(CONFIGS / data_set / f"{name}.yaml"),
                *_tiny(entry["trainer"], name, out / "annotation.json", views)]
        assert main(args) == 0, name
        assert (tmp_path / "runs" / data_set / name / "best").is_dir(), name
