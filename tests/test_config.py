import json
from dataclasses import dataclass, field

import pytest

from shared.config import ConfigError, load_config, save_run_config
from shared.io import atomic_write_text


@dataclass
class Model:
    width: int = 8
    name: str = "tiny"


@dataclass
class Defaults:
    model: Model = field(default_factory=Model)
    lr: float = 1e-3


def test_layers_merge_in_order(tmp_path):
    yaml = tmp_path / "exp.yaml"
    yaml.write_text("model:\n  width: 16\nlr: 0.5\n")
    cfg = load_config(Defaults(), yaml, ["model.width=32"])
    assert cfg.model.width == 32 and cfg.lr == 0.5 and cfg.model.name == "tiny"


def test_dict_defaults_and_interpolation(tmp_path):
    cfg = load_config({"a": 1, "b": "${a}"}, None, ["a=5"])
    assert cfg.b == 5


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    yaml = tmp_path / "exp.yaml"
    yaml.write_text("model:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.depth' in .*exp.yaml"):
        load_config(Defaults(), yaml)


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'modle.width'.*override"):
        load_config(Defaults(), None, ["modle.width=3"])


def test_bad_value_type_is_named():
    with pytest.raises(ConfigError, match="model.width"):
        load_config(Defaults(), None, ["model.width=wide"])


def test_a_huge_integer_for_a_float_key_is_named_not_an_overflow():
    # found by benchmarks/reliability_inputs.py: OmegaConf let Python's OverflowError through
    with pytest.raises(ConfigError, match="bad value for key 'lr'"):
        load_config(Defaults(), None, ["lr=" + "1" * 400])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Defaults(), None, ["lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Defaults(), tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config(Defaults(), bad)


def test_run_folder_gets_config_and_sha(tmp_path):
    cfg = load_config(Defaults(), None, ["lr=0.1"])
    save_run_config(cfg, tmp_path / "run", argv=["radloop", "x"])
    assert "lr: 0.1" in (tmp_path / "run" / "config.yaml").read_text()
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["argv"] == ["radloop", "x"]
    assert info["git_sha"] == "unknown" or len(info["git_sha"].split("-")[0]) == 40


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_writes_get_the_ordinary_file_mode(tmp_path):
    import os

    from PIL import Image

    from shared.io import atomic_save_image

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_save_image(Image.new("L", (4, 4)), tmp_path / "b.png")
    finally:
        os.umask(old)
    # like open(..., "w") under umask 022, not mkstemp's owner-only 0600
    assert {(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {0o644}


@dataclass
class Train:
    mixed_precision: str = "bf16"
    ema: bool = True


def test_yaml_11_boolean_words_stay_strings_for_string_keys(tmp_path):
    for word in ("no", "off", "yes", "on"):
        assert load_config(Train(), None, [f"mixed_precision={word}"]).mixed_precision == word
    (tmp_path / "t.yaml").write_text("mixed_precision: no\nema: off\n")
    cfg = load_config(Train(), tmp_path / "t.yaml")
    assert cfg.mixed_precision == "no" and cfg.ema is False  # a boolean key still takes the word
    assert load_config(Train(), None, ["ema=no"]).ema is False
    assert load_config(Train(), None, ["ema=true"]).ema is True
    with pytest.raises(ConfigError, match="ema"):
        load_config(Train(), None, ["ema=maybe"])


def test_mixed_precision_no_is_the_string_no_in_train_config():
    from shared.training import TrainConfig

    cfg = load_config({"train": TrainConfig()}, None, ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"


def test_a_file_states_only_what_differs_from_its_defaults(tmp_path):
    (tmp_path / "_base.yaml").write_text("model:\n  width: 16\n  name: base\nlr: 0.5\n")
    (tmp_path / "mid.yaml").write_text("defaults: [_base.yaml]\nmodel:\n  name: mid\n")
    (tmp_path / "top.yaml").write_text("defaults: mid.yaml\nlr: 0.25\n")
    cfg = load_config(Defaults(), tmp_path / "top.yaml", ["model.width=4"])
    assert (cfg.model.width, cfg.model.name, cfg.lr) == (4, "mid", 0.25)
    (tmp_path / "loop_a.yaml").write_text("defaults: [loop_b.yaml]\n")
    (tmp_path / "loop_b.yaml").write_text("defaults: [loop_a.yaml]\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(Defaults(), tmp_path / "loop_a.yaml")
    (tmp_path / "orphan.yaml").write_text("defaults: [gone.yaml]\n")
    with pytest.raises(ConfigError, match="config file not found: .*gone.yaml"):
        load_config(Defaults(), tmp_path / "orphan.yaml")
    (tmp_path / "typo.yaml").write_text("defaults: [_base.yaml]\nmodle:\n  width: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'modle' in .*typo.yaml"):
        load_config(Defaults(), tmp_path / "typo.yaml")
