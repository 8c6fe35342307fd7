"""UAR report decoder: LSU tokens, CRA, TIR mask and two-stage training, ablation switches."""

from __future__ import annotations

import pytest
import torch

from image2report.generator import ReportGenerator
from image2report.models import REPORT_DECODERS, build_report_model
from image2report.uar import UARReportModel
from radloop.cli import main
from shared.text.tokenizer import ReportTokenizer

TOK = ReportTokenizer.fit(["no pleural effusion.", "small left pleural effusion.", "moderate cardiomegaly."] * 3)
REPORTS = ["small left pleural effusion.", "moderate cardiomegaly."]


def _uar(**overrides) -> UARReportModel:
    torch.manual_seed(0)
    m = build_report_model("uar_tiny", len(TOK), **overrides)
    m.tokenizer = TOK
    return m


def test_registered_and_two_stage_switches_the_mask_on():
    assert {"uar", "uar_tiny"} <= set(REPORT_DECODERS)
    m = _uar().train()
    ids, _ = TOK.batch_encode(REPORTS)
    x = torch.randn(2, 1, 1, 32, 32)
    first = m(x, ids)
    assert not m.mask_active and "mask" not in first.aux and {"ce", "triplet"} <= set(first.aux)
    first.loss.backward()
    assert m.tir_mask.grad is None  # stage one: no mask in the attention
    m(x, ids)
    assert m.mask_active  # stage_one_steps=2 for uar_tiny
    third = m(x, ids)
    assert "mask" in third.aux and torch.isfinite(third.loss)
    third.loss.backward()
    assert m.tir_mask.grad is not None and m.tir_mask.grad.abs().sum() > 0


def test_mask_changes_the_cross_attention():
    m = _uar(two_stage=False).eval()
    ids, _ = TOK.batch_encode(REPORTS)
    x = torch.randn(2, 1, 1, 32, 32)
    with torch.no_grad():
        m.tir_mask[:, 0] = 10.0  # every word looks at visual token 0
        a = m(x, ids).logits
        m.tir_mask.zero_()
        b = m(x, ids).logits
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("switches", [{"use_lsu": False, "visual": "cxr_resnet_tiny"}, {"use_basis": False},
                                      {"use_gates": False}, {"use_tir": False}])
def test_ablation_rows_build_and_run(switches):
    m = _uar(**switches).train()
    ids, _ = TOK.batch_encode(REPORTS)
    out = m(torch.randn(2, 1, 1, 32, 32), ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_save_load_same_output_and_generation(tmp_path):
    m = _uar().eval()
    m.steps_seen.fill_(5)  # stage two
    m.save_pretrained(tmp_path)
    again = UARReportModel.from_pretrained(tmp_path).eval()
    assert again.mask_active
    x = torch.randn(2, 1, 1, 32, 32)
    ids, _ = TOK.batch_encode(REPORTS)
    torch.testing.assert_close(m(x, ids).logits, again(x, ids).logits)
    again = ReportGenerator.from_pretrained(tmp_path)
    assert ReportGenerator(m, TOK).generate(x, num_beams=2) == again.generate(x, num_beams=2)


def test_train_uar_two_steps_with_a_trained_lsu(tmp_path, tiny_synth):
    data, _ = tiny_synth
    ann = str(data / "annotation.json")
    assert main(["train", "lsu", f"data.annotation={ann}", "model.name=lsu_tiny", "data.image_size=32",
                 "train.max_steps=2", "train.progress=false", f"train.output_dir={tmp_path / 'lsu'}"]) == 0
    assert main(["train", "report", f"data.annotation={ann}", "model.name=uar_tiny", "data.image_size=32",
                 f"model.init_lsu_from={tmp_path / 'lsu' / 'final'}", "data.batch_size=4", "data.val_samples=4",
                 "train.max_steps=3", "train.eval_every=3", "train.progress=false",
                 f"train.output_dir={tmp_path / 'uar'}"]) == 0
    history = (tmp_path / "uar" / "history.json").read_text()
    assert "train/triplet" in history
    assert ReportGenerator.from_pretrained(tmp_path / "uar" / "best").model.config.use_lsu


def test_an_lsu_tokenizer_of_another_size_is_named_not_a_runtime_error(tmp_path):
    from image2report.lsu import build_lsu
    from image2report.models import build_report_model

    build_lsu("lsu_tiny", 50).save_pretrained(tmp_path / "lsu")
    named = r"another size .* model.options.lsu='lsu_small' .* set model.options.lsu=lsu_tiny"
    with pytest.raises(ValueError, match=named):
        build_report_model("uar", 50, image_size=64).init_lsu_from(str(tmp_path / "lsu"))
    build_report_model("uar", 50, lsu="lsu_tiny", image_size=32).init_lsu_from(str(tmp_path / "lsu"))


def test_the_real_data_uar_recipes_build_the_tokenizer_size_their_comment_trains():
    from image2report.train import ReportExperiment
    from shared.config import load_config

    for data in ("iu_xray", "mimic_cxr"):
        cfg = load_config(ReportExperiment(), f"configs/{data}/uar.yaml", [])
        assert cfg.model.options.lsu == "lsu_base"
