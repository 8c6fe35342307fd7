"""Region masks (where a finding is) and the region-weighted diffusion loss: SynthCXR's masks against its
renderer, the masks file's errors, the mask's geometry, the loss by hand, a 2-step run and its cache."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from radloop.cli import main
from shared.data.region_masks import load_region_mask, read_region_masks
from shared.data.transforms import PreprocessConfig
from synthcxr import Acquisition, Finding, Patient, read_attributes, render
from synthcxr.finding_masks import MASKS_FILE, finding_mask


@pytest.fixture
def masked_synth(tmp_path, tiny_synth):
    """A copy of the tiny SynthCXR folder with its fracture and pneumothorax masks (the session's copy stays
    as it is)."""
    data = tmp_path / "synth"
    shutil.copytree(tiny_synth[0], data)
    assert main(["data", "finding-masks", str(data), "--findings", "Fracture", "Pneumothorax"]) == 0
    return data


def test_finding_masks_mark_what_the_finding_changes_in_clean_training_studies(masked_synth):
    info = json.loads((masked_synth / MASKS_FILE).read_text())
    assert info["findings"] == ["Fracture", "Pneumothorax"] and info["splits"] == ["train"]
    records = {r["id"]: r for r in read_attributes(masked_synth)}
    expected = {i for i, r in records.items() if r["split"] == "train" and not r.get("wrong_report")
                and {f["name"] for f in r["findings"]} & {"Fracture", "Pneumothorax"}}
    assert set(info["masks"]) == expected and len(expected) >= 5
    for study in sorted(expected)[:4]:
        rec = records[study]
        with Image.open(masked_synth / info["masks"][study]) as im:
            mask = np.asarray(im) > 0
        findings = [Finding.from_dict(f) for f in rec["findings"]]
        p, a = Patient.from_dict(rec["patient"]), Acquisition.from_dict(rec["acquisition"])
        full = render(p, findings, a, 32, "frontal", noise=False)
        kept = [f for f in findings if f.name not in ("Fracture", "Pneumothorax")]
        changed = np.abs(full - render(p, kept, a, 32, "frontal", noise=False)) > 0.01
        # every changed pixel is inside (the dilation adds a rim), and the mask is not the whole image
        assert mask[changed].all() and changed.any() and mask.mean() < 0.6
    rec = next(r for r in records.values() if r["findings"] and
               not {f["name"] for f in r["findings"]} & {"Fracture", "Pneumothorax"})
    assert finding_mask(Patient.from_dict(rec["patient"]), [Finding.from_dict(f) for f in rec["findings"]],
                        Acquisition.from_dict(rec["acquisition"]), 32, ["Fracture"]) is None


def test_finding_masks_refuse_an_unknown_finding(tmp_path, tiny_synth, capsys):
    assert main(["data", "finding-masks", str(tiny_synth[0]), "--findings", "Fractur"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown finding(s) ['Fractur']" in err
    assert not (tiny_synth[0] / MASKS_FILE).exists()


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "expected a JSON object with a 'masks' object"),
    ('{"masks": {"s1": 3}}', "the mask of study 's1' must be a path string, got 3"),
    ('{"masks": {"s1": "m/s1.png"}}', "the mask of study 's1',"),
    ('{"masks": ', "is not valid JSON"),
])
def test_a_bad_masks_file_is_named_with_the_study(tmp_path, content, message):
    path = tmp_path / "masks.json"
    path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        read_region_masks(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="region masks file not found"):
        read_region_masks(tmp_path / "nowhere.json")


def test_a_mask_gets_the_images_resize_and_centre_crop(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[0:3, 0:3] = 255  # the top-left corner: 64 -> 40 puts it in rows 0-2, which the centre crop cuts away
    mask[40:44, 30:34] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = load_region_mask(tmp_path / "m.png", PreprocessConfig(32, resize=40))
    assert out.shape == (1, 32, 32) and set(out.unique().tolist()) == {0.0, 1.0}
    # 64 -> 40: rows 40-43 land near 25-27, minus the crop's 4 -> 21-23; the corner block is gone
    rows, cols = torch.nonzero(out[0], as_tuple=True)
    assert 20 <= rows.min() and rows.max() <= 24 and 13 <= cols.min() and cols.max() <= 18
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="wide.png: a region mask must be square, got"):
        load_region_mask(tmp_path / "wide.png", PreprocessConfig(32))


def test_region_weighted_loss_by_hand():
    from report2image.conditioning import ConditionOutput
    from report2image.losses import DiffusionLoss

    torch.manual_seed(0)
    pred, target = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    region = torch.zeros(2, 1, 2, 2)
    region[0, 0, 0, 1] = 1.0  # one cell of the first sample, both channels
    cond = ConditionOutput(hidden_states=torch.zeros(2, 1, 2), mask=torch.ones(2, 1), pathology=torch.zeros(2, 2))
    common = dict(index=torch.arange(2), timesteps=torch.zeros(2, dtype=torch.long),
                  dropped=torch.zeros(2, dtype=torch.bool), cond=cond, refined=None, patient_ids=["a", "b"],
                  labels=torch.zeros(2, 14))
    se = (pred - target) ** 2
    first = (se[0].sum() + 3.0 * se[0, :, 0, 1].sum()) / 8  # weight 1 + 3 inside the region
    expected = (first + se[1].mean()) / 2
    torch.testing.assert_close(DiffusionLoss(region_weight=3.0)(pred, target, region=region, **common)["loss"],
                               expected)
    # "area": the region's mean error added region_weight times (cell (0, 1) of the first sample, 2 channels)
    area = (se[0].mean() + 3.0 * se[0, :, 0, 1].mean() + se[1].mean()) / 2
    torch.testing.assert_close(DiffusionLoss(region_weight=3.0, region_mode="area")(pred, target, region=region,
                                                                                     **common)["loss"], area)
    with pytest.raises(ValueError, match="loss.region_mode must be one of"):
        DiffusionLoss(region_mode="pixel")
    # no weight or no masks: the plain loss
    torch.testing.assert_close(DiffusionLoss()(pred, target, region=region, **common)["loss"], se.mean())
    torch.testing.assert_close(DiffusionLoss(region_weight=3.0)(pred, target, **common)["loss"], se.mean())


def _train(tmp_path, data, *extra):
    return main(["train", "diffusion", f"data.annotation={data / 'annotation.json'}", "model.name=ldm_tiny",
                 "data.batch_size=8", "autoencoder.steps=1", "autoencoder.batch_size=8", "train.max_steps=2",
                 "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false",
                 f"train.output_dir={tmp_path / 'run'}", *extra])


def test_train_diffusion_two_steps_with_region_weights_and_the_cached_regions(tmp_path, masked_synth, caplog):
    from report2image.train import CachedPairs, DiffusionPairs
    from tests.test_report2image import tiny_pipeline

    masks = str(masked_synth / MASKS_FILE)
    with caplog.at_level("INFO", logger="report2image.data"):
        assert _train(tmp_path, masked_synth, f"data.region_masks={masks}", "loss.region_weight=10") == 0
    assert "region masks for" in caplog.text
    assert json.loads((tmp_path / "run" / "train_result.json").read_text())["steps"] == 2
    # the cached rows: each study's mask at the latents' size, the same in memory and in shards
    pairs = DiffusionPairs(str(masked_synth / "annotation.json"), "train", 32, region_masks=masks)
    pipe = tiny_pipeline()
    pipe.vae.eval()
    memory = CachedPairs(pairs, pipe.vae, pipe.text_encoder, image_embeds=False, batch_size=8)
    sharded = CachedPairs(pairs, pipe.vae, pipe.text_encoder, image_embeds=False, batch_size=8,
                          cache_dir=str(tmp_path / "c"), shard_size=16)
    named = [i for i, p in enumerate(pairs.region_paths) if p is not None]
    latent = memory[0]["latent_mean"].shape[-2:]
    for i in (named[0], named[-1], next(i for i, p in enumerate(pairs.region_paths) if p is None)):
        region = memory[i]["region"]
        assert region.shape == (1, *latent) and torch.equal(region, sharded[i]["region"])
        assert bool(region.any()) == (i in named)
        # a latent cell is inside when any of its pixels is
        torch.testing.assert_close(region, torch.nn.functional.adaptive_max_pool2d(pairs.region(i), latent))


@pytest.mark.parametrize("extra,message", [
    (["loss.region_weight=5"], "loss.region_weight is 5.0 but data.region_masks is not set"),
    (["data.region_masks=MASKS"], "but loss.region_weight is 0: the masks would not be used"),
    (["data.region_masks=MASKS", "loss.region_weight=-1"], "loss.region_weight must be >= 0, got -1"),
    (["data.region_masks=MASKS", "loss.region_weight=1", "loss.region_mode=pixel"],
     "loss.region_mode must be one of ('cell', 'area'), got 'pixel'"),
])
def test_region_settings_that_do_not_go_together_are_one_line(tmp_path, masked_synth, capsys, extra, message):
    extra = [e.replace("MASKS", str(masked_synth / MASKS_FILE)) for e in extra]
    assert _train(tmp_path, masked_synth, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "final").exists()


def test_masks_for_other_data_are_refused(tmp_path, masked_synth, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"masks": {"nobody": f"synth/{MASKS_FILE}"}}))  # a file, of no study here
    assert _train(tmp_path, masked_synth, f"data.region_masks={other}", "loss.region_weight=5") == 2
    assert "none of its 1 masks names a train study of the annotation" in capsys.readouterr().err


def test_the_finding_sheet_has_a_row_per_source_and_a_column_per_study(tmp_path, tiny_synth, load_benchmark,
                                                                      capsys):
    from tests.test_report2image import tiny_pipeline

    data = tiny_synth[0]
    alone = [r["findings"][0]["name"] for r in read_attributes(data) if r["split"] == "test"
             and len(r["findings"]) == 1]
    finding = max(set(alone), key=alone.count)
    n = min(alone.count(finding), 2)
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    bench = load_benchmark("finding_sheet")
    pipe = str(tmp_path / "pipe")
    bench.main(["--finding", finding, "--data", str(data), "--pipelines", pipe, pipe, "--n", "2", "--steps", "2",
                "--out", str(tmp_path / "s.png")])
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][:2] == ["real", "reconstruction"] and len(out["studies"]) == n
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (32 * n, 32 * 4)  # real, reconstruction and two generators
    with pytest.raises(SystemExit, match="no test study shows 'Pleural Other' alone"):
        bench.main(["--finding", "Pleural Other", "--data", str(data), "--pipelines", "x", "--out", "y.png"])


def test_a_zoo_entry_gets_its_finding_masks_written_once(tmp_path, masked_synth):
    from radloop.zoo import ensure_finding_masks, load_index

    path = masked_synth / MASKS_FILE
    before = path.stat().st_mtime_ns
    assert ensure_finding_masks(masked_synth, ["Fracture", "Pneumothorax"]) == path
    assert path.stat().st_mtime_ns == before  # the same findings: kept
    ensure_finding_masks(masked_synth, ["Fracture"])  # other findings: written again
    assert json.loads(path.read_text())["findings"] == ["Fracture"]
    (tmp_path / "index.yaml").write_text(
        "dataset: d\ndata: r.yaml\ndata_dir: x\ntest_data: r.yaml\ntest_data_dir: y\nentries:\n"
        "  ldm: {trainer: diffusion, recipe: r.yaml, finding_masks: [Fracture, Lung Lesion]}\n")
    assert load_index(tmp_path / "index.yaml").get("ldm").finding_masks == ["Fracture", "Lung Lesion"]
