"""CMCRL (VLCI on a RadCARE encoder) and IFNet report decoders: switches, causality, save/load, training."""

from __future__ import annotations

import pytest
import torch

from image2report.cmcrl import CMCRLReportModel, FrontDoorIntervention
from image2report.generator import ReportGenerator
from image2report.ifnet import IFNetReportModel, ImageEnhancer, LinearAttention
from image2report.models import REPORT_DECODERS, build_report_model
from image2report.radcare import build_radcare
from radloop.cli import main
from shared.text.tokenizer import ReportTokenizer

TOK = ReportTokenizer.fit(["no pleural effusion.", "small left pleural effusion.", "moderate cardiomegaly."] * 3)
REPORTS = ["small left pleural effusion.", "moderate cardiomegaly."]
LABELS = torch.zeros(2, 14)
LABELS[0, 10] = LABELS[1, 2] = 1.0


def _model(name: str, **overrides):
    torch.manual_seed(0)
    m = build_report_model(name, len(TOK), **overrides)
    m.tokenizer = TOK
    return m


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 1, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registered_with_tiny_variants():
    assert {"cmcrl", "cmcrl_tiny", "ifnet", "ifnet_tiny"} <= set(REPORT_DECODERS)


@pytest.mark.parametrize("switches", [{}, {"use_vdm": False}, {"use_ldm": False}, {"use_vdm": False, "use_ldm": False}])
def test_cmcrl_switches_train(switches):
    m = _model("cmcrl_tiny", **switches).train()
    ids, _ = TOK.batch_encode(REPORTS)
    out = m(_images(), ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert m.encoder.patch_embed.weight.grad.abs().sum() > 0
    if switches.get("use_vdm", True):
        assert m.visual_do.read.in_proj_weight.grad.abs().sum() > 0
        assert m.local_query.weight.grad.abs().sum() > 0  # the local scorer learns through the re-weighting
    if switches.get("use_ldm", True):
        assert m.linguistic_do.read.in_proj_weight.grad.abs().sum() > 0
        assert m.token_embed.weight.grad is not None


@pytest.mark.parametrize("name,switches", [("cmcrl_tiny", {}), ("ifnet_tiny", {}),
                                           ("ifnet_tiny", {"linear_attention": False})])
def test_no_word_sees_a_later_word(name, switches):
    """Teacher forcing must not leak: changing the last word leaves the earlier positions' logits alone."""
    m = _model(name, **switches).eval()
    memory = m.encode(_images())
    ids, _ = TOK.batch_encode(REPORTS)
    changed = ids.clone()
    changed[:, 3] = 5
    with torch.no_grad():
        a, b = m.decode_step(memory, ids[:, :4]), m.decode_step(memory, changed[:, :4])
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_front_door_is_residual_and_uses_the_population():
    torch.manual_seed(0)
    fd = FrontDoorIntervention(8, 2, dropout=0.0).eval()
    x, m = torch.randn(1, 5, 8), torch.randn(1, 3, 8)
    a, b = fd(x, m, torch.randn(1, 7, 8)), fd(x, m, torch.randn(1, 7, 8))
    assert a.shape == x.shape and not torch.allclose(a, b)


def test_cmcrl_memory_carries_the_linguistic_mediator():
    m = _model("cmcrl_tiny").eval()
    grid = m.encoder.grid ** 2
    assert m.encode(_images()).shape == (2, grid + 2 * m.config.num_local, m.token_embed.embedding_dim)
    assert _model("cmcrl_tiny", use_ldm=False).eval().encode(_images()).shape[1] == grid


def test_cmcrl_takes_over_a_radcare_encoder(tmp_path):
    torch.manual_seed(1)
    pretrained = build_radcare("radcare_tiny", vocab_size=50)
    pretrained.save_pretrained(tmp_path / "radcare")
    m = _model("cmcrl_tiny")
    assert m.init_radcare_from(str(tmp_path / "radcare")) > 0
    torch.testing.assert_close(m.encoder.blocks[0].attn.in_proj_weight, pretrained.blocks[0].attn.in_proj_weight)
    torch.testing.assert_close(m.encoder.image_pos, pretrained.image_pos)
    # a RadCARE of another size names the mismatch
    build_radcare("radcare_small", vocab_size=50).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="does not fit radcare='radcare_tiny'"):
        m.init_radcare_from(str(tmp_path / "small"))


def test_cmcrl_rejects_impossible_settings():
    with pytest.raises(ValueError, match="num_local=999"):
        _model("cmcrl_tiny", num_local=999)
    with pytest.raises(KeyError, match="radcare_huge"):
        _model("cmcrl_tiny", radcare="radcare_huge")


def test_linear_attention_matches_the_quadratic_form():
    """phi(Q)(phi(K)^T V) normalised equals the explicit (T, S) weight matrix, causal and not."""
    torch.manual_seed(0)
    att = LinearAttention(8, 2).eval()
    x, ctx = torch.randn(1, 5, 8), torch.randn(1, 4, 8)

    def explicit(q_in, kv_in, causal):
        phi = lambda t: torch.nn.functional.elu(t) + 1  # noqa: E731
        q = phi(att._split(att.q(q_in)))
        k = phi(att._split(att.k(kv_in)))
        v = att._split(att.v(kv_in))
        w = q @ k.transpose(-1, -2)
        if causal:
            w = w.tril()
        w = w / w.sum(-1, keepdim=True)
        return att.out((w @ v).transpose(1, 2).flatten(2))

    torch.testing.assert_close(att(x, causal=True), explicit(x, x, True))
    for chunk in (1, 2, 3):  # several chunks: the running state carries the earlier positions
        att.chunk_size = chunk
        torch.testing.assert_close(att(x, causal=True), explicit(x, x, True))
    torch.testing.assert_close(att(x, ctx), explicit(x, ctx, False))
    pad = torch.tensor([[False, False, True, True]])
    torch.testing.assert_close(att(x, ctx, key_padding_mask=pad), explicit(x, ctx[:, :2], False))


def test_enhancer_starts_as_unsharp_masking():
    enh = ImageEnhancer()
    flat = torch.full((1, 1, 16, 16), 0.3)
    torch.testing.assert_close(enh(flat), flat)  # no detail, nothing to enhance
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 8:] = 1.0
    out = enh(edge)
    assert out[..., 7].max() < 0 and out[..., 8].min() > 1  # the step is sharpened on both sides


def test_ifnet_label_head_and_losses():
    m = _model("ifnet_tiny").train()
    ids, _ = TOK.batch_encode(REPORTS)
    out = m(_images(), ids, labels=LABELS)
    assert set(out.aux) == {"ce", "label_bce"}
    torch.testing.assert_close(out.loss.detach(), out.aux["ce"] + out.aux["label_bce"])
    out.loss.backward()
    assert m.label_head[1].weight.grad.abs().sum() > 0 and m.enhancer.gain.grad is not None
    assert m.label_logits(_images()).shape == (2, 14)
    assert set(m(_images(), ids).aux) == {"ce"}  # no labels given: CE only


def test_ifnet_memory_follows_the_labels():
    m = _model("ifnet_tiny").eval()
    x = _images()
    tokens = m._image_tokens(x)
    with torch.no_grad():
        a, b = m._fuse(tokens, LABELS), m._fuse(tokens, 1 - LABELS)
    assert not torch.allclose(a, b)
    assert m.encode(x).shape[1] == tokens.shape[1] + 14
    with pytest.raises(ValueError, match="use_label_fusion=false"):
        _model("ifnet_tiny", use_label_fusion=False).label_logits(x)


@pytest.mark.parametrize("name", ["cmcrl_tiny", "ifnet_tiny"])
def test_save_load_same_output_and_generation(tmp_path, name):
    m = _model(name).eval()
    m.save_pretrained(tmp_path)
    again = type(m).from_pretrained(tmp_path).eval()
    x = _images()
    ids, _ = TOK.batch_encode(REPORTS)
    torch.testing.assert_close(m(x, ids).logits, again(x, ids).logits)
    gen = ReportGenerator.from_pretrained(tmp_path)
    assert isinstance(gen.model, (CMCRLReportModel, IFNetReportModel))
    assert ReportGenerator(m, TOK).generate(x, num_beams=2) == gen.generate(x, num_beams=2)


def test_multi_view_input():
    ids, _ = TOK.batch_encode(REPORTS)
    for name in ("cmcrl_tiny", "ifnet_tiny"):
        m = _model(name, max_views=2).eval()
        assert torch.isfinite(m(torch.randn(2, 2, 1, 32, 32), ids).loss)
        with pytest.raises(ValueError, match="at most 2"):
            m.encode(torch.randn(2, 3, 1, 32, 32))


def test_train_cmcrl_on_radcare_and_ifnet_two_steps(tmp_path, tiny_synth, capsys):
    data, _ = tiny_synth
    ann = str(data / "annotation.json")
    common = ["data.image_size=32", "data.batch_size=4", "data.val_samples=4", "train.max_steps=2",
              "train.eval_every=2", "train.progress=false"]
    assert main(["train", "radcare", f"data.annotation={ann}", "model.name=radcare_tiny", "data.batch_size=8",
                 "train.max_steps=2", "train.progress=false", f"train.output_dir={tmp_path / 'radcare'}"]) == 0
    radcare = tmp_path / "radcare" / "final"
    assert main(["train", "report", f"data.annotation={ann}", "model.name=cmcrl_tiny",
                 f"model.init_radcare_from={radcare}", *common, f"train.output_dir={tmp_path / 'cmcrl'}"]) == 0
    assert ReportGenerator.from_pretrained(tmp_path / "cmcrl" / "best").model.config.use_ldm
    # IFNet on an image tower pre-trained as a findings classifier (the labeler's labels of the reports)
    clf = ["train", "tower", f"data.annotation={ann}", "model.name=tower_pretrainer_tiny", "data.image_size=32",
           "data.batch_size=8", "train.max_steps=2", "train.progress=false"]
    assert main([*clf, f"train.output_dir={tmp_path / 'clf'}"]) == 0
    assert main(["train", "report", f"data.annotation={ann}", "model.name=ifnet_tiny", *common,
                 f"model.init_visual_from={tmp_path / 'clf' / 'final'}", f"train.output_dir={tmp_path / 'ifnet'}"]) == 0
    assert "train/label_bce" in (tmp_path / "ifnet" / "history.json").read_text()
    assert main([*clf, "model.arch=resnet_nope", f"train.output_dir={tmp_path / 'clf2'}"]) == 2
    assert "unknown timm architecture 'resnet_nope'" in capsys.readouterr().err
    # an option that does not fit the model is named
    assert main(["train", "report", f"data.annotation={ann}", "model.name=ifnet_tiny",
                 f"model.init_radcare_from={radcare}", *common, f"train.output_dir={tmp_path / 'bad'}"]) != 0


def test_ifnet_label_limits_benchmark(tmp_path, load_benchmark):
    import numpy as np

    bench = load_benchmark("ifnet_label_limits")
    _model("ifnet_tiny").save_pretrained(tmp_path / "ifnet")
    truth = np.zeros((2, 14))
    truth[0, 10] = truth[1, 0] = 1.0
    from shared.text.labeler import ReportLabeler

    out = bench.limits(tmp_path / "ifnet", _images(), truth, ReportLabeler())
    assert set(out) == {"head_alone", "decoder_on_head_labels", "decoder_on_head_labels_unique_reports",
                        "decoder_on_true_labels", "decoder_on_true_labels_unique_reports"}
    assert all(0.0 <= out[k] <= 1.0 for k in ("head_alone", "decoder_on_head_labels", "decoder_on_true_labels"))
    _model("baseline_tiny").save_pretrained(tmp_path / "baseline")
    with pytest.raises(ValueError, match="not a model with a label head"):
        bench.limits(tmp_path / "baseline", _images(), truth, ReportLabeler())
