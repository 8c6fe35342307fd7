import json

import pytest
import torch

from image2report.cra import CrossModalAligner, TripletContrastiveLoss
from image2report.lsu import LatentSpaceUnifier, build_lsu
from image2report.radcare import RadCARE, RadCAREWeights, build_radcare
from radloop.cli import main

IDS = torch.tensor([[1, 5, 6, 7, 8, 2, 0, 0], [1, 9, 10, 11, 2, 0, 0, 0], [1, 12, 13, 14, 15, 16, 17, 2]])


def test_cra_basis_is_orthonormal_and_equations_hold():
    torch.manual_seed(0)
    cra = CrossModalAligner(16, num_basis=64, num_heads=2)
    torch.testing.assert_close(cra.basis.T @ cra.basis, torch.eye(16), atol=1e-5, rtol=0)
    e = torch.randn(2, 5, 16)
    out = cra(e)
    # eq. 9 by hand from the module's own pieces
    basis = (cra.gain * cra.basis + cra.bias).unsqueeze(0).expand(2, -1, -1)
    f_tilde = cra.attn(e, basis, basis, need_weights=False)[0]
    expected = cra.input_gate(e, f_tilde) * torch.tanh(e + f_tilde) + cra.forget_gate(e, f_tilde) * e + f_tilde
    torch.testing.assert_close(out.features, expected)
    torch.testing.assert_close(out.pooled, expected.mean(1))
    plain = CrossModalAligner(16, num_basis=64, num_heads=2, use_basis=False, use_gates=False)
    torch.testing.assert_close(plain(e).features, 2 * e)


def test_cra_padding_and_save_load(tmp_path):
    cra = CrossModalAligner(8, num_basis=32, num_heads=2, seed=3).eval()
    e = torch.randn(1, 4, 8)
    pad = torch.tensor([[False, False, True, True]])
    full = cra(e).features[:, :2].mean(1)  # padding is left out of the pooled feature
    torch.testing.assert_close(cra(e, pad).pooled, full)
    cra.save_pretrained(tmp_path)
    again = CrossModalAligner.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(e).features, cra(e).features)
    torch.testing.assert_close(again.basis, cra.basis)


def test_triplet_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # sims: [[1, .6], [0, .8]]; image 0: pos 1, hardest wrong .6 -> relu(.2-1+.6)=0
    # image 1: pos .8, hardest 0 -> 0; report 0: pos 1, hardest image 0 -> 0; report 1: pos .8, hardest .6 -> 0
    assert float(TripletContrastiveLoss(0.2)(img, txt)["triplet_loss"]) == pytest.approx(0.0)
    # margin 0.5: image 0 -> relu(.5-1+.6)=.1; report 1 -> relu(.5-.8+.6)=.3; total .4 / 2
    assert float(TripletContrastiveLoss(0.5)(img, txt)["triplet_loss"]) == pytest.approx(0.2)
    # identical reports are no negatives
    same = torch.tensor([[False, True], [True, False]])
    assert float(TripletContrastiveLoss(0.5)(img, txt, same)["triplet_loss"]) == 0.0


def test_lsu_tokens_embeddings_and_save_load(tmp_path):
    torch.manual_seed(0)
    lsu = build_lsu("lsu_tiny", vocab_size=20, dim=16).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    out = lsu(x, IDS[:2].clamp(max=19))
    assert out.image_codes.shape == (2, lsu.tokens_per_image) == (2, 64)
    assert out.image_embeds.shape == (2, 64, 16) and out.text_embeds.shape == (2, 8, 16)
    assert out.image_codes.max() < 64
    lsu.save_pretrained(tmp_path)
    again = LatentSpaceUnifier.from_pretrained(tmp_path).eval()
    assert torch.equal(again.tokenize(x), lsu.tokenize(x))
    loss = lsu.reconstruction_loss(x)
    assert set(loss) == {"loss", "recon_loss", "commit_loss"} and torch.isfinite(loss["loss"])


@pytest.mark.parametrize("objective", ["restoration", "mlm", "postfix", "alignment"])
def test_each_radcare_objective_trains_alone(objective):
    torch.manual_seed(0)
    model = build_radcare("radcare_tiny", vocab_size=30)
    weights = RadCAREWeights(**{k: float(k == objective) for k in ("restoration", "mlm", "postfix", "alignment")})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(3, 1, 32, 32)
    losses = []
    for _ in range(2):
        # the same masks and noise both times, so the two losses are comparable
        out = model(x, IDS, weights, generator=torch.Generator().manual_seed(1))
        assert set(out) == {"loss", objective}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[1] < losses[0]  # one step on the same batch lowers its loss
    with pytest.raises(ValueError, match="switched off"):
        model(x, IDS, RadCAREWeights(0, 0, 0, 0))


def test_radcare_mask_ratio_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = build_radcare("radcare_tiny", vocab_size=30, mask_ratio=0.85).eval()
    assert model.config.mask_ratio == 0.85 and model.degrade(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 16, 16)
    model.save_pretrained(tmp_path)
    again = RadCARE.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 32, 32)
    a, b = model.embed(x, IDS[:2]), again.embed(x, IDS[:2])
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("verb,extra", [
    ("lsu", ["model.name=lsu_tiny", "model.dim=16"]),
    ("radcare", ["model.name=radcare_tiny", "loss.alignment=0.5"]),
    # a data size other than the registered one (radcare_tiny is 32 px): the model is built at the data's size,
    # as configs/iu_xray/radcare.yaml trains radcare_base (224) at 112 px
    ("radcare", ["model.name=radcare_tiny", "data.image_size=48"]),
    ("lsu", ["model.name=lsu_tiny", "model.dim=16", "data.image_size=48"]),
])
def test_pretraining_verbs_two_steps(tmp_path, tiny_synth, verb, extra):
    out, _ = tiny_synth
    run = tmp_path / verb
    assert main(["train", verb, f"data.annotation={out / 'annotation.json'}", "data.batch_size=8",
                 "data.min_freq=1", "train.max_steps=2", f"train.output_dir={run}", "train.eval_every=2",
                 "train.progress=false", *extra]) == 0
    assert (run / "best" / "config.json").is_file() and (run / "best" / "report_tokenizer.json").is_file()
    size = next((int(a.split("=")[1]) for a in extra if a.startswith("data.image_size=")), None)
    if size is not None:
        assert json.loads((run / "best" / "config.json").read_text())["image_size"] == size


def test_tower_labels_unmentioned_findings_read_as_absent_when_asked(tiny_synth):
    """The labeler leaves unmentioned findings blank (NaN); ``data.unmentioned=negative`` makes them 0 in the loss and
    in validation, and leaves every mentioned label (1 / 0 / -1) as it was."""
    from shared.backbone.train_tower import ClassifierDataConfig, classifier_dataset

    out, _ = tiny_synth
    data = ClassifierDataConfig(annotation=str(out / "annotation.json"), image_size=32, label_source="labeler")
    ignored = torch.stack([s["labels"] for s in classifier_dataset(data, "train", False)])
    data.unmentioned = "negative"
    negative = torch.stack([s["labels"] for s in classifier_dataset(data, "train", False)])
    blank = torch.isnan(ignored)
    assert blank.any() and not torch.isnan(negative).any()
    assert (negative[blank] == 0).all() and torch.equal(negative[~blank], ignored[~blank])
    data.unmentioned = "absent"
    with pytest.raises(ValueError, match="data.unmentioned must be 'ignore' or 'negative', got 'absent'"):
        classifier_dataset(data, "train", False)
