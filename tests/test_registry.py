"""The one registry every model family uses: register, build, list, the unknown-name error, JSON discovery."""

from __future__ import annotations

import json

import pytest

import evaluation.classifier  # noqa: F401  (registers the judge classifiers)
import image2report  # noqa: F401  (registers every report decoder)
import report2image.models  # noqa: F401  (registers the latent-diffusion configs)
from image2report import lsu, radcare  # noqa: F401
from shared.backbone import classifier, towers  # noqa: F401
from shared.registry import Registry, UnknownNameError, get_registry, list_models


@pytest.fixture(autouse=True)
def _forget_test_families():
    """The families these tests create leave the process-wide table afterwards."""
    import shared.registry as registry

    before = set(registry._FAMILIES)
    yield
    for family in set(registry._FAMILIES) - before:
        del registry._FAMILIES[family]


def _model(depth: int, width: int = 4) -> tuple[int, int]:
    return depth, width


def test_register_build_list_and_unknown_name():
    reg = Registry("test_family_a", "for this test")
    reg.register("m_small", _model, depth=2)
    reg.register("m_tiny", _model, depth=1, width=2)

    @reg.register()
    def m_base(depth: int = 12) -> int:
        """A decorated builder takes its function's name and docstring."""
        return depth

    assert reg.list() == ["m_base", "m_small", "m_tiny"] and reg.list("*_tiny") == ["m_tiny"]
    assert reg.build("m_small") == (2, 4) and reg.build("m_small", width=8) == (2, 8)
    assert reg.build("m_base") == 12 and reg.get("m_base").help.startswith("A decorated builder")
    with pytest.raises(UnknownNameError, match="unknown test_family_a 'm_huge'; known: m_base, m_small, m_tiny") as err:
        reg.build("m_huge")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert str(err.value).startswith("unknown")  # not quoted like a plain KeyError
    with pytest.raises(ValueError, match="test_family_a 'm_small' \\(_model\\) has no option 'heads'"):
        reg.build("m_small", heads=3)
    with pytest.raises(ValueError, match="exists already"):
        Registry("test_family_a", "twice")


def test_defaults_are_copied_not_shared():
    reg = Registry("test_family_b", "for this test")
    reg.register("x", lambda cfg: cfg, cfg={"a": [1]})
    reg.build("x")["a"].append(2)
    assert reg.config("x") == {"cfg": {"a": [1]}}


def test_json_configs_are_discovered_and_added(tmp_path):
    reg = Registry("test_family_c", "for this test", required=("size",))
    (tmp_path / "net_a.json").write_text(json.dumps({"size": 3}))
    reg.add_model_config(tmp_path, lambda size: size * 2)
    assert reg.list() == ["net_a"] and reg.build("net_a") == 6
    (tmp_path / "net_b.json").write_text(json.dumps({"size": 5}))
    reg.rescan()
    assert reg.build("net_b") == 10
    assert reg.read_config(tmp_path / "net_b.json") == {"size": 5}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json lacks 'size'"):
        reg.read_config(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no test_family_c model config folder or file at .*nowhere"):
        reg.add_model_config(tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        reg.read_config(tmp_path / "broken.json")


def test_every_family_is_registered_with_tiny_variants():
    models = list_models()
    expected = {
        "backbone": {"radclip_tiny", "radclip_small", "radclip_base", "radclip_vit_tiny"},
        "tower": {"cxr_resnet_tiny", "cxr_resnet_small", "cxr_resnet_small_fine", "cxr_resnet_base"},
        "lsu": {"lsu_tiny", "lsu_small"},
        "radcare": {"radcare_tiny", "radcare_small"},
        "classifier": {"classifier_tiny", "densenet121"},
        "tower_pretrainer": {"tower_pretrainer_tiny", "tower_pretrainer_small"},
        "report_decoder": {f"{d}{s}" for d in ("baseline", "uar", "cmcrl", "ifnet") for s in ("", "_small", "_tiny")},
        "ldm": {"ldm_tiny", "ldm_small", "ldm_small128", "ldm_small128_f4", "ldm_wide128_f4", "ldm_base"},
    }
    for family, names in expected.items():
        assert names <= set(models[family]), family
    with pytest.raises(UnknownNameError, match="unknown model family 'nope'; known: .*backbone"):
        get_registry("nope")


def test_registered_tiny_models_build():
    from shared.text.tokenizer import ReportTokenizer

    tok = ReportTokenizer.fit(["no acute findings ."], min_freq=1)
    assert get_registry("backbone").build("radclip_tiny", tokenizer=tok).tokenizer is tok
    assert get_registry("lsu").build("lsu_tiny", vocab_size=10).config.num_codes == 64
    assert get_registry("radcare").build("radcare_tiny", vocab_size=10).config.dim == 32
    assert get_registry("tower").build("cxr_resnet_tiny").num_features == 32
    for name in get_registry("report_decoder").list("*_tiny"):
        assert get_registry("report_decoder").build(name, vocab_size=10).config.vocab_size == 10
