import json

import numpy as np
import pytest
import torch

from radloop.cli import main
from shared.backbone import RadCLIP, build_backbone, load_model_config
from shared.backbone.train import contrastive_loss
from shared.metrics import retrieval_metrics
from shared.text.tokenizer import ReportTokenizer

TOK = ReportTokenizer.fit(["no pleural effusion.", "small left pleural effusion.", "moderate cardiomegaly."],
                          min_freq=1)


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return build_backbone("radclip_tiny", TOK).eval()


def test_outputs_and_shapes(tiny):
    ids, _ = TOK.batch_encode(["no pleural effusion.", "moderate cardiomegaly."])
    out = tiny(torch.randn(2, 1, 32, 32), ids)
    assert out.image_embeds.shape == out.text_embeds.shape == (2, 32)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(2))
    assert out.image_tokens.shape == (2, 16, 32)  # 4 x 4 grid of the stride-8 CNN, 32 channels
    assert out.text_tokens.shape == (2, 64, 32)  # padded to the context length
    loss = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_save_load_same_output_with_tokenizer(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "report_tokenizer.json").is_file()
    again = RadCLIP.from_pretrained(tmp_path).eval()
    assert again.tokenizer.itos == TOK.itos
    ids, _ = TOK.batch_encode(["small left pleural effusion."])
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a, b = tiny(x, ids), again(x, ids)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)
    torch.testing.assert_close(a.text_tokens, b.text_tokens)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from evaluation.classifier import build_classifier

    build_classifier("classifier_tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a checkpoint of CXRClassifier, not of RadCLIP"):
        RadCLIP.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        RadCLIP.from_pretrained(tmp_path / "empty")


def test_local_open_clip_weights(tiny, tmp_path):
    import open_clip

    cfg = load_model_config("radclip_tiny")
    donor = open_clip.CustomTextCLIP(**{**cfg, "text_cfg": {**cfg["text_cfg"], "vocab_size": 999}})
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items()}}, tmp_path / "ckpt.pt")
    counts = tiny.load_open_clip_weights(tmp_path)  # a folder holding the checkpoint
    assert counts["loaded"] > 0 and counts["skipped"] >= 1  # the token embedding of another vocabulary
    torch.testing.assert_close(tiny.clip.visual.trunk.conv1.weight, donor.visual.trunk.conv1.weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no open_clip checkpoint"):
        tiny.load_open_clip_weights(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        tiny.load_open_clip_weights(tmp_path / "nothing.pt")


def test_vit_tower_variant():
    torch.manual_seed(0)
    vit = build_backbone("radclip_vit_tiny", TOK).eval()
    ids, _ = TOK.batch_encode(["moderate cardiomegaly."])
    out = vit(torch.randn(1, 1, 32, 32), ids)
    assert out.image_tokens.shape == (1, 16, 32) and vit.image_width == 32


def test_model_config_registry(tmp_path):
    assert load_model_config("radclip_small")["vision_cfg"]["image_size"] == 64
    with pytest.raises(KeyError, match="unknown backbone 'radclip_huge'"):
        load_model_config("radclip_huge")
    (tmp_path / "bad.json").write_text('{"embed_dim": 4}')
    with pytest.raises(ValueError, match="lacks 'vision_cfg'"):
        load_model_config(tmp_path / "bad.json")


def test_retrieval_metrics_hand_computed():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0.2, 1.0], [0, 1.0, 0.2]])  # studies 1 and 2 swapped
    labels = np.zeros((3, 14))
    labels[1, 2] = labels[2, 2] = 1  # studies 1 and 2 share their findings
    m = retrieval_metrics(img, txt, labels, ks=(1, 2))
    assert m["i2t_recall@1"] == pytest.approx(1 / 3) and m["i2t_recall@2"] == 1.0
    assert m["i2t_label_precision@1"] == 1.0  # the swapped reports carry the same findings
    assert m["label_chance"] == pytest.approx(5 / 9)


def test_train_backbone_two_steps(tmp_path, tiny_synth):
    out, _ = tiny_synth
    run = tmp_path / "bb"
    assert main(["train", "backbone", f"data.annotation={out / 'annotation.json'}", "model.name=radclip_tiny",
                 "data.batch_size=8", "data.min_freq=1", "train.max_steps=2", f"train.output_dir={run}",
                 "train.eval_every=1", "train.progress=false"]) == 0
    model = RadCLIP.from_pretrained(run / "best")
    assert model.tokenizer is not None and json.loads((run / "history.json").read_text())


def test_label_aware_targets_and_loss():
    from shared.backbone.losses import LabelAwareClipLoss, same_findings_targets

    labels = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]])
    t = same_findings_targets(labels, 0.5)
    torch.testing.assert_close(t[0], torch.tensor([0.75, 0.25, 0, 0]))
    torch.testing.assert_close(t[3], torch.tensor([0.0, 0, 0, 1]))
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    torch.testing.assert_close(same_findings_targets(labels, 0.0), torch.eye(4))
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    plain = contrastive_loss(feats, feats, torch.tensor(10.0))
    zero = LabelAwareClipLoss(0.0)(feats, feats, torch.tensor(10.0), labels)["contrastive_loss"]
    torch.testing.assert_close(plain, zero)
    # Two studies with the same findings: matching them to each other is no longer penalised as much.
    swapped = feats[[1, 0, 2, 3]]
    aware = contrastive_loss(feats, swapped, torch.tensor(10.0), labels, 0.5)
    assert aware < contrastive_loss(feats, swapped, torch.tensor(10.0))
    with pytest.raises(ValueError, match="label_weight"):
        same_findings_targets(labels, 1.5)


def test_findings_head_shared_saved_and_trained(tmp_path):
    from shared.backbone.train import findings_loss

    torch.manual_seed(0)
    model = build_backbone("radclip_tiny", TOK, num_labels=14).eval()
    ids, _ = TOK.batch_encode(["no pleural effusion.", "moderate cardiomegaly."])
    x = torch.randn(2, 1, 32, 32)
    out = model(x, ids)
    assert out.image_label_logits.shape == out.text_label_logits.shape == (2, 14)
    # One head for both modalities: the same embedding gives the same findings logits.
    torch.testing.assert_close(model.label_logits(out.text_embeds), out.text_label_logits)
    torch.testing.assert_close(
        out.image_label_logits, model.label_head(out.image_embeds * 32**0.5))
    model.save_pretrained(tmp_path)
    again = RadCLIP.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x, ids).image_label_logits, out.image_label_logits.detach())
    # Hand-computed BCE: logits 0 give log 2 whatever the target; uncertain (-1) counts as absent.
    labels = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    zero = torch.zeros(2, 2)
    torch.testing.assert_close(findings_loss(zero, zero, labels), torch.tensor(np.log(2.0), dtype=torch.float32))
    big = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert findings_loss(big, big, labels) < 1e-6
    assert findings_loss(big, zero, labels) == pytest.approx(np.log(2.0) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="no findings head"):
        build_backbone("radclip_tiny", TOK).label_logits(out.image_embeds)
    assert build_backbone("radclip_tiny", TOK)(x, ids).image_label_logits is None


def test_train_backbone_with_findings_head(tmp_path, tiny_synth, capsys):
    out, _ = tiny_synth
    run = tmp_path / "bb"
    common = [f"data.annotation={out / 'annotation.json'}", "model.name=radclip_tiny", "data.batch_size=8",
              "data.min_freq=1", "train.max_steps=2", f"train.output_dir={run}", "train.progress=false"]
    assert main(["train", "backbone", *common, "model.findings_weight=1.0", "model.label_weight=1.0"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert any("train/findings_loss" in h for h in history)
    model = RadCLIP.from_pretrained(run / "final")
    assert model.label_head is not None and model.config.num_labels == 14
    assert main(["train", "backbone", *common, "model.findings_weight=-1", f"train.output_dir={tmp_path / 'bad'}"]) == 2
    assert "model.findings_weight must be >= 0, got -1" in capsys.readouterr().err
