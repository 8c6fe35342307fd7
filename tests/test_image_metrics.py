import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from evaluation.classifier import CXRClassifier, build_classifier
from evaluation.images import (
    FeatureExtractor,
    conditional_fid,
    extract_features,
    fid_kid_from_features,
    fid_report,
    ms_ssim_diversity,
    split_half_floor,
)
from radloop.cli import main
from shared.metrics import multilabel_auroc


def _feats(n, d=6, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_fid_matches_the_closed_form():
    a, b = _feats(200), _feats(150, shift=0.5, seed=1) * 1.3
    mu1, mu2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert fid_kid_from_features(a, b)["fid"] == pytest.approx(expected, rel=1e-4)


def test_kid_matches_the_unbiased_mmd():
    a, b = _feats(40), _feats(40, shift=0.3, seed=2)
    d = a.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1) ** 3

    m = len(a)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    expected = float((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                     - 2 * kxy.mean())
    out = fid_kid_from_features(a, b, kid_subset_size=m, kid_subsets=1)
    assert out["kid_mean"] == pytest.approx(expected, rel=1e-6)


def test_identical_sets_and_the_floor():
    a = _feats(100)
    out = fid_report(a, a)
    assert abs(out["fid"]) < 1e-6 and out["fid_floor"] > 0
    assert split_half_floor(a) == out["fid_floor"]
    assert fid_report(a, _feats(100, shift=2.0, seed=3))["fid_over_floor"] > 5
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_kid_from_features(a, _feats(10, d=3))


def test_conditional_fid_needs_enough_images():
    a, b = _feats(60), _feats(60, seed=5)
    labels = np.zeros((60, 2))
    labels[:30, 0] = 1
    labels[:3, 1] = 1
    out = conditional_fid(a, labels, b, labels, ["A", "B"], min_count=10)
    assert set(out) == {"A"}


def test_feature_extractor_adapts_channels_size_and_pooling():
    conv = torch.nn.Conv2d(3, 5, 3)  # wants RGB, returns a feature map
    ext = FeatureExtractor(conv, in_chans=3, image_size=16)
    out = ext(torch.rand(4, 1, 32, 32))
    assert out.shape == (4, 5) and ext.num_features == 5
    assert extract_features(ext, torch.rand(7, 1, 32, 32), batch_size=3).shape == (7, 5)


def test_ms_ssim_diversity():
    img = torch.rand(1, 1, 64, 64)
    assert ms_ssim_diversity(img.repeat(4, 1, 1, 1), pairs=10) == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim_diversity(torch.rand(8, 1, 64, 64), pairs=20) < 0.2
    with pytest.raises(ValueError, match="at least 2"):
        ms_ssim_diversity(img)


def test_multilabel_auroc_hand_computed():
    scores = np.array([[0.1, 0.5], [0.4, 0.5], [0.35, 0.5], [0.8, 0.5]])
    labels = np.array([[0, 1], [0, 1], [1, 1], [1, -1]])
    out = multilabel_auroc(scores, labels, ["A", "B"])
    # A: positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered -> 0.75
    assert out["auroc/A"] == pytest.approx(0.75)
    assert math.isnan(out["auroc/B"]) and out["mauc"] == pytest.approx(0.75) and out["mauc_classes"] == 1


def test_classifier_save_load_same_output(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("classifier_tiny", image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    model.save_pretrained(tmp_path)
    again = CXRClassifier.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, again(x).logits)
    assert model(x).logits.shape == (2, 14) and model.num_features == 96


def test_classifier_max_pooling_is_saved_and_keeps_a_small_finding(tmp_path):
    """``global_pool`` travels with the model; ``max`` keeps one cell's signal that ``avg`` spreads over the grid."""
    torch.manual_seed(0)
    model = build_classifier("classifier_tiny", image_size=32, global_pool="max").eval()
    model.save_pretrained(tmp_path)
    again = CXRClassifier.from_pretrained(tmp_path).eval()
    assert again.config.global_pool == "max"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, again(x).logits)
        grid = torch.zeros(1, 4, 8, 8)
        grid[0, :, 3, 5] = 1.0  # a finding in one cell of an 8 x 8 grid
        assert model.backbone.global_pool(grid).flatten().tolist() == [1.0] * 4
        avg = build_classifier("classifier_tiny", image_size=32).backbone.global_pool(grid)
        assert avg.flatten().tolist() == [1 / 64] * 4
    with pytest.raises(ValueError, match="global_pool must be 'avg', 'max' or 'avgmax', got 'lse'"):
        build_classifier("classifier_tiny", global_pool="lse")


def test_classifier_local_weights(tmp_path):
    from safetensors.torch import save_file

    donor = build_classifier("classifier_tiny")
    save_file({f"backbone.{k}": v.contiguous() for k, v in donor.backbone.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    model = build_classifier("classifier_tiny")
    model.load_backbone_weights(tmp_path / "w.safetensors")
    for k, v in donor.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)
    torch.save({"state_dict": {"unrelated": torch.zeros(3)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no tensor of .*bad.pt fits"):
        model.load_backbone_weights(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        model.load_backbone_weights(tmp_path / "none.pt")
    with pytest.raises(KeyError, match="unknown classifier 'vgg'"):
        build_classifier("vgg")


def test_train_classifier_and_evaluate_images(tmp_path, tiny_synth, capsys):
    out, _ = tiny_synth
    run = tmp_path / "clf"
    assert main(["train", "classifier", f"data.annotation={out / 'annotation.json'}", "model.name=classifier_tiny",
                 "data.image_size=32", "data.batch_size=8", "train.max_steps=2", f"train.output_dir={run}",
                 "train.eval_every=1", "train.progress=false"]) == 0
    assert (run / "best" / "config.json").is_file() and (run / "config.yaml").is_file()
    ann = json.loads((out / "annotation.json").read_text())
    rows = [{"id": e["id"], "image_path": [str(out / e["image_path"][0])], "report": e["report"]}
            for e in ann["test"] + ann["val"]]
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", "images", "--generated", str(gen), "--real", str(out / "annotation.json"),
                 "--real-split", "train", "--classifier", str(run / "best"), "--image-size", "32",
                 "--min-count", "3", "--allow-outside-root", "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    for key in ("fid", "kid_mean", "fid_floor", "ms_ssim_diversity", "mauc"):
        assert math.isfinite(m[key]), key
    assert "| fid |" in capsys.readouterr().out


def test_feature_extractors_by_name(tmp_path):
    from evaluation.image_eval import build_feature_extractor
    from shared.backbone import build_backbone
    from shared.text.tokenizer import ReportTokenizer

    tok = ReportTokenizer.fit(["no effusion."], min_freq=1)
    build_backbone("radclip_tiny", tok).save_pretrained(tmp_path / "bb")
    ext = build_feature_extractor(f"backbone:{tmp_path / 'bb'}")
    assert ext(torch.rand(3, 1, 48, 48)).shape == (3, 32)
    timm_ext = build_feature_extractor("timm:test_resnet")
    assert timm_ext(torch.rand(2, 1, 32, 32)).shape == (2, 96)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("inception")
    with pytest.raises(ValueError, match="need --classifier"):
        build_feature_extractor("classifier")


def test_evaluate_images_bad_input(tmp_path, capsys):
    (tmp_path / "gen.jsonl").write_text(json.dumps({"id": "a", "image_path": ["nope.png"], "report": "x"}) + "\n")
    assert main(["evaluate", "images", "--generated", str(tmp_path / "gen.jsonl")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["evaluate", "images", "--generated", str(tmp_path / "gen.jsonl"), "--classifier",
                 str(tmp_path)]) == 2


def test_judge_and_tower_pretrainer_folders_are_told_apart(tmp_path):
    from shared.backbone.classifier import TowerPretrainer, build_tower_pretrainer

    build_classifier("classifier_tiny").save_pretrained(tmp_path / "judge")
    build_tower_pretrainer("tower_pretrainer_tiny").save_pretrained(tmp_path / "tower")
    with pytest.raises(ValueError, match="holds a checkpoint of CXRClassifier, not of TowerPretrainer"):
        TowerPretrainer.from_pretrained(tmp_path / "judge")
    with pytest.raises(ValueError, match="holds a checkpoint of TowerPretrainer, not of CXRClassifier"):
        CXRClassifier.from_pretrained(tmp_path / "tower")


def test_the_judge_reads_its_saved_preprocessing(tmp_path, tiny_synth):
    """radloop train classifier saves the pixels it trained on; Judge makes them (resize, centre crop, normalise)."""
    import torch.nn.functional as F

    from evaluation.classifier import Judge, load_classifier
    from shared.data.transforms import PREPROCESS_FILE

    out, _ = tiny_synth
    run = tmp_path / "clf"
    assert main(["train", "classifier", f"data.annotation={out / 'annotation.json'}", "model.name=classifier_tiny",
                 "data.image_size=28", "data.resize=32", "data.batch_size=8", "train.max_steps=1",
                 f"train.output_dir={run}", "train.progress=false"]) == 0
    saved = json.loads((run / "best" / PREPROCESS_FILE).read_text())
    assert (saved["image_size"], saved["resize"]) == (28, 32)
    judge = Judge(load_classifier(run / "best"))
    x = torch.rand(2, 1, 40, 40)
    expected = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)[..., 2:30, 2:30]
    torch.testing.assert_close(judge.prepare(x), (expected - 0.5) / 0.5)
    assert judge(x).shape == (2, 14)
    (run / "best" / PREPROCESS_FILE).unlink()  # a judge saved before the file: resized straight to its side
    assert Judge(load_classifier(run / "best")).prepare(x).shape[-1] == 28
