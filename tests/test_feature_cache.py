"""A frozen image tower: its grids cached once, the decoders reading them, and the training switch."""

import pytest
import torch

from image2report.feature_cache import GridFeatureCache
from image2report.models import build_report_model
from radloop.cli import main
from shared.data.dataset import ReportImageDataset
from shared.text.tokenizer import ReportTokenizer

TOK = ReportTokenizer.fit(["no pleural effusion.", "small left pleural effusion.", "moderate cardiomegaly."] * 3)


@pytest.mark.parametrize("name,options", [("baseline_tiny", {}), ("ifnet_tiny", {"use_enhancement": False}),
                                          ("uar_tiny", {"use_lsu": False}),
                                          ("cmcrl_tiny", {"visual": "cxr_resnet_tiny"})])
def test_features_stand_in_for_images(name, options):
    torch.manual_seed(0)
    m = build_report_model(name, len(TOK), max_views=2, **options).eval()
    images = torch.randn(2, 2, 1, 32, 32)
    ids, _ = TOK.batch_encode(["no pleural effusion.", "moderate cardiomegaly."])
    grids = m.tower_grid(images.flatten(0, 1))
    features = grids.reshape(2, 2, *grids.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(m.encode(None, features=features), m.encode(images))
        torch.testing.assert_close(m(None, ids, features=features).loss, m(images, ids).loss)


def test_features_refused_where_they_cannot_apply():
    ifnet = build_report_model("ifnet_tiny", len(TOK))  # its enhancer runs before the tower
    with pytest.raises(ValueError, match="use_enhancement=false"):
        ifnet.encode(None, features=torch.randn(1, 1, 8, 4, 4))
    uar = build_report_model("uar_tiny", len(TOK))  # LSU tokens, no CNN tower
    with pytest.raises(ValueError, match="use_lsu=false"):
        uar.freeze_visual()
    with pytest.raises(ValueError, match="use_lsu=false"):
        uar.init_visual_from("unused")
    cmcrl = build_report_model("cmcrl_tiny", len(TOK))  # RadCARE's ViT encoder
    with pytest.raises(ValueError, match="visual=cxr_resnet_small"):
        cmcrl.encode(None, features=torch.randn(1, 1, 8, 4, 4))
    with pytest.raises(ValueError, match="not RadCARE's encoder"):
        build_report_model("cmcrl_tiny", len(TOK), visual="cxr_resnet_tiny").init_radcare_from("unused")


def test_frozen_tower_stays_frozen_in_training_mode():
    torch.manual_seed(0)
    m = build_report_model("baseline_tiny", len(TOK))
    before = {k: v.clone() for k, v in m.image_encoder.state_dict().items()}
    m.freeze_visual()
    m.train()
    assert not m.image_encoder.training and m.transformer.training
    assert not any(p.requires_grad for p in m.image_encoder.parameters())
    ids, _ = TOK.batch_encode(["no pleural effusion."] * 4)
    m(torch.randn(4, 1, 1, 32, 32), ids).loss.backward()  # BatchNorm statistics must not move either
    for k, v in m.image_encoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_cache_is_computed_once_and_keyed(tmp_path, tiny_synth):
    out, _ = tiny_synth
    ds = ReportImageDataset(out / "annotation.json", "train", image_size=32, max_views=2)
    torch.manual_seed(0)
    m = build_report_model("baseline_tiny", len(TOK), max_views=2)
    with pytest.raises(ValueError, match="frozen tower"):
        GridFeatureCache.build(m, ds, 32, cache_dir=tmp_path)
    m.freeze_visual()
    cache = GridFeatureCache.build(m, ds, 32, cache_dir=tmp_path)
    files = list(tmp_path.glob("grid_*.safetensors"))
    assert len(files) == 1 and len(cache) == len(ds)
    sample = ds[3]
    with torch.no_grad():
        expected = m.tower_grid(sample["images"])
    torch.testing.assert_close(cache[[sample["study_id"]]][0], expected)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache[["nope"]]
    # the same data and tower read the file; other tower weights make another key
    again = GridFeatureCache.build(m, ds, 32, cache_dir=tmp_path)
    torch.testing.assert_close(again.features, cache.features)
    with torch.no_grad():
        next(m.image_encoder.parameters()).add_(1.0)
    GridFeatureCache.build(m, ds, 32, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("grid_*.safetensors"))) == 2


def test_train_report_on_a_frozen_cached_tower(tmp_path, tiny_synth):
    out, _ = tiny_synth
    from shared.backbone import build_backbone

    build_backbone("radclip_tiny", TOK).save_pretrained(tmp_path / "clip")
    run = tmp_path / "rep"
    assert main(["train", "report", f"data.annotation={out / 'annotation.json'}", "model.name=ifnet_tiny",
                 "model.options.use_enhancement=false", f"model.init_visual_from={tmp_path / 'clip'}",
                 "model.freeze_visual=true", f"data.feature_cache={tmp_path / 'cache'}", "data.image_size=32",
                 "data.batch_size=8", "data.min_freq=1", "data.max_length=40", "train.max_steps=2",
                 f"train.output_dir={run}", "train.eval_every=2", "train.progress=false", "data.val_samples=4"]) == 0
    assert (run / "best" / "config.json").is_file() and list((tmp_path / "cache").glob("grid_*.safetensors"))
    # the saved decoder holds the tower it was trained on, unchanged
    from image2report.ifnet import IFNetReportModel
    from shared.backbone import RadCLIP

    saved = IFNetReportModel.from_pretrained(run / "best").image_encoder.state_dict()
    tower = RadCLIP.from_pretrained(tmp_path / "clip").clip.visual.trunk.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(v, tower[k])


def test_zero_shot_probabilities_by_hand():
    from shared.backbone import build_backbone
    from shared.backbone.zero_shot import ZERO_SHOT_PROMPTS, zero_shot_probabilities
    from shared.labels import CHEXPERT_LABELS

    words = " ".join(s for pair in ZERO_SHOT_PROMPTS.values() for side in pair for s in side)
    torch.manual_seed(0)
    model = build_backbone("radclip_tiny", ReportTokenizer.fit([words], min_freq=1)).eval()
    image = torch.nn.functional.normalize(torch.randn(3, model.embed_dim), dim=-1)
    probs = zero_shot_probabilities(model, image)
    assert probs.shape == (3, len(CHEXPERT_LABELS)) and ((probs > 0) & (probs < 1)).all()
    # Pneumothorax by hand: mean of the unit-norm prompt embeddings, re-normed, softmax of scaled cosines
    def side(sentences):
        ids, _ = model.tokenizer.batch_encode(list(sentences))
        with torch.no_grad():
            e = torch.nn.functional.normalize(model.encode_text(ids)[0], dim=-1).mean(0)
        return torch.nn.functional.normalize(e, dim=-1)

    present, absent = (side(s) for s in ZERO_SHOT_PROMPTS["Pneumothorax"])
    scale = model.clip.logit_scale.exp().detach()
    expected = torch.softmax(scale * torch.stack([image @ present, image @ absent], -1), -1)[:, 0]
    torch.testing.assert_close(probs[:, CHEXPERT_LABELS.index("Pneumothorax")], expected)


@pytest.mark.parametrize("name,options", [("uar_tiny", {"use_lsu": False}),
                                          ("cmcrl_tiny", {"visual": "cxr_resnet_tiny"})])
def test_cnn_tower_variants_save_and_load_with_the_same_output(tmp_path, name, options):
    """from_pretrained builds on the meta device: the grid size must not need a forward pass."""
    from image2report.generator import ReportGenerator

    torch.manual_seed(0)
    m = build_report_model(name, len(TOK), **options).eval()
    m.tokenizer = TOK
    m.save_pretrained(tmp_path)
    again = ReportGenerator.from_pretrained(tmp_path).model
    images = torch.randn(2, 1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.encode(images), m.encode(images))
