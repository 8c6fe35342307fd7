import csv
import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from shared.data.dataset import DataError, ReportImageDataset, collate_samples, load_records
from shared.labels import CHEXPERT_LABELS


def test_r2gen_annotation_multi_view(tiny_synth):
    out, summary = tiny_synth
    ds = ReportImageDataset(out / "annotation.json", "train", image_size=28, resize=32, train=True, max_views=2)
    assert len(ds) == summary["splits"]["train"]
    s = ds[0]
    assert s["images"].shape == (2, 1, 28, 28) and s["images"].dtype == torch.float32
    assert -1.0 <= s["images"].min() and s["images"].max() <= 1.0
    assert s["labels"].shape == (14,) and s["report"] and s["patient_id"].startswith("P")
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_samples)))
    assert batch["images"].shape == (4, 2, 1, 28, 28) and len(batch["report"]) == 4


def test_single_view_and_eval_transform_is_deterministic(tiny_synth):
    out, _ = tiny_synth
    ds = ReportImageDataset(out / "annotation.json", "test", image_size=32, max_views=1)
    assert ds[0]["images"].shape == (1, 1, 32, 32)
    assert torch.equal(ds[1]["images"], ds[1]["images"])


def test_fewer_views_than_asked_repeats_the_last(tmp_path, tiny_synth):
    out, _ = tiny_synth
    rec = load_records(out / "annotation.json")[0]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image_path": [str(out / rec["image_path"][0])],
                                    "report": "x.", "split": "train"}) + "\n")
    s = ReportImageDataset(manifest, "train", image_size=32, max_views=2, allow_outside_root=True)[0]
    assert torch.equal(s["images"][0], s["images"][1]) and "labels" not in s


def _csv_manifest(tmp_path, rows, labels=True):
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as fh:
        cols = ["id", "image_path", "report", "split", "patient_id"] + (list(CHEXPERT_LABELS) if labels else [])
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def test_csv_manifest_with_labels(tmp_path, tiny_synth):
    out, _ = tiny_synth
    rec = load_records(out / "annotation.json")[0]
    paths = ";".join(str(out / p) for p in rec["image_path"])
    row = {"id": "s1", "image_path": paths, "report": "No effusion.", "split": "val", "patient_id": "p1"}
    row.update({name: "" for name in CHEXPERT_LABELS})
    row["Cardiomegaly"] = "1"
    path = _csv_manifest(tmp_path, [row])
    ds = ReportImageDataset(path, "val", image_size=32, max_views=2, labels=path, allow_outside_root=True)
    s = ds[0]
    assert s["images"].shape == (2, 1, 32, 32)
    assert s["labels"][CHEXPERT_LABELS.index("Cardiomegaly")] == 1.0
    assert torch.isnan(s["labels"][0])


def _one_study(tmp_path, image_name, report="Normal.", make_image=None):
    img = tmp_path / image_name
    if make_image is not None:
        make_image(img)
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps({"train": [
        {"id": "bad", "report": report, "image_path": [image_name]},
    ]}))
    return ann


def test_missing_image_raises_naming_the_file(tmp_path):
    ann = _one_study(tmp_path, "gone.png")
    with pytest.raises(DataError, match=r"image not found: .*gone.png \(study 'bad'"):
        ReportImageDataset(ann, "train")


def test_corrupt_image_raises_naming_the_file(tmp_path):
    ann = _one_study(tmp_path, "broken.png", make_image=lambda p: p.write_bytes(b"\x89PNG not really"))
    ds = ReportImageDataset(ann, "train")
    with pytest.raises(DataError, match=r"cannot read image .*broken.png"):
        ds[0]


def test_bad_images_skipped_and_counted(tmp_path, tiny_synth, caplog):
    out, _ = tiny_synth
    good = load_records(out / "annotation.json")[0]
    (tmp_path / "broken.png").write_bytes(b"garbage")
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps({"train": [
        {"id": "ok", "report": "Normal.", "image_path": [str(out / good["image_path"][0])]},
        {"id": "gone", "report": "Normal.", "image_path": ["gone.png"]},
        {"id": "broken", "report": "Normal.", "image_path": ["broken.png"]},
    ]}))
    with caplog.at_level(logging.WARNING):
        ds = ReportImageDataset(ann, "train", image_size=32, on_bad_image="skip", allow_outside_root=True)
    assert len(ds) == 1 and ds.skipped["bad_image"] == 2
    assert "skipped 2 studies with missing or corrupt images" in caplog.text


def test_empty_report_raise_or_skip(tmp_path, tiny_synth, caplog):
    out, _ = tiny_synth
    good = load_records(out / "annotation.json")[0]
    ann = _one_study(tmp_path, str(out / good["image_path"][0]), report="   ")
    with pytest.raises(DataError, match="study 'bad' has an empty report"):
        ReportImageDataset(ann, "train", allow_outside_root=True)
    with caplog.at_level(logging.WARNING):
        ds = ReportImageDataset(ann, "train", on_empty_report="skip", allow_outside_root=True)
    assert len(ds) == 0 and ds.skipped["empty_report"] == 1 and "empty reports" in caplog.text


@pytest.mark.parametrize("content,suffix,match", [
    ("{oops", ".json", "not valid JSON"),
    ('{"images": []}', ".json", "no 'train'/'val'/'test' keys"),
    ('{"train": [{"id": 1, "report": "x"}]}', ".json", "has no 'image_path' field"),
    ('{"id": 1}\nnot json\n', ".jsonl", "line 2 is not valid JSON"),
    ("x", ".parquet", "unknown annotation format"),
])
def test_bad_annotation_files(tmp_path, content, suffix, match):
    path = tmp_path / f"ann{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_records(path)


def test_missing_annotation_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        load_records(tmp_path / "none.json")
    ann = _one_study(tmp_path, "x.png")
    with pytest.raises(ValueError, match="on_bad_image"):
        ReportImageDataset(ann, on_bad_image="ignore")
    with pytest.raises(ValueError, match="split"):
        ReportImageDataset(ann, split="dev")


def test_labels_file_must_cover_every_study(tmp_path, tiny_synth):
    out, _ = tiny_synth
    labels = tmp_path / "labels.csv"
    labels.write_text("id," + ",".join(CHEXPERT_LABELS) + "\n")
    with pytest.raises(DataError, match="labels file has no row for study"):
        ReportImageDataset(out / "annotation.json", "train", labels=labels)
    (tmp_path / "short.csv").write_text("id,Cardiomegaly\n")
    with pytest.raises(DataError, match="missing column"):
        ReportImageDataset(out / "annotation.json", "train", labels=tmp_path / "short.csv")


def _r2gen_layout(tmp_path, images_dir="images"):
    """R2Gen's layout: data/iu_xray/annotation.json with image_path relative to data/iu_xray/images/."""
    from PIL import Image

    root = tmp_path / "iu_xray"
    (root / images_dir / "CXR1_1_IM-0001").mkdir(parents=True)
    Image.new("L", (16, 16), 128).save(root / images_dir / "CXR1_1_IM-0001" / "0.png")
    ann = root / "annotation.json"
    ann.write_text(json.dumps({"train": [{"id": "CXR1_1_IM-0001", "report": "Normal.",
                                          "image_path": ["CXR1_1_IM-0001/0.png"]}]}))
    return ann


def test_r2gen_images_folder_beside_the_annotation_is_found(tmp_path, caplog):
    ann = _r2gen_layout(tmp_path)
    with caplog.at_level(logging.INFO, logger="shared.data.dataset"):
        ds = ReportImageDataset(ann, "train", image_size=16)
    assert ds.root == ann.parent / "images" and ds[0]["images"].shape == (1, 1, 16, 16)
    assert "R2Gen's images/ folder" in caplog.text


def test_image_root_points_anywhere_and_a_bad_one_is_named(tmp_path):
    ann = _r2gen_layout(tmp_path, images_dir="elsewhere")
    with pytest.raises(DataError, match=r"image not found: .*iu_xray/CXR1_1_IM-0001/0.png"):
        ReportImageDataset(ann, "train")
    ds = ReportImageDataset(ann, "train", image_root=ann.parent / "elsewhere", image_size=16)
    assert len(ds) == 1
    with pytest.raises(DataError, match=r"data.image_root .*nowhere is not a folder"):
        ReportImageDataset(ann, "train", image_root=tmp_path / "nowhere")


def test_every_experiment_config_takes_data_image_root(tmp_path):
    from evaluation.train_classifier import ClassifierExperiment
    from image2report.pretrain import LSUExperiment, RadCAREExperiment
    from image2report.train import ReportExperiment
    from report2image.train import DiffusionExperiment
    from shared.backbone.train import BackboneExperiment
    from shared.backbone.train_tower import TowerExperiment
    from shared.config import load_config

    for schema in (ReportExperiment, DiffusionExperiment, BackboneExperiment, LSUExperiment, RadCAREExperiment,
                   TowerExperiment, ClassifierExperiment):
        assert load_config(schema(), None, [f"data.image_root={tmp_path}"]).data.image_root == str(tmp_path)


def test_train_report_reads_the_r2gen_layout_with_image_root(tmp_path):
    from radloop.cli import main

    ann = _r2gen_layout(tmp_path, images_dir="elsewhere")
    data = json.loads(ann.read_text())
    data["val"] = [{**data["train"][0], "id": "v"}]
    ann.write_text(json.dumps(data))
    args = ["train", "report", "--config", "configs/iu_xray/baseline.yaml", f"data.annotation={ann}",
            f"data.image_root={ann.parent / 'elsewhere'}", "model.name=baseline_tiny", "data.image_size=32",
            "data.max_views=1", "data.min_freq=1", "train.max_steps=1", "train.mixed_precision=no",
            "train.progress=false", f"train.output_dir={tmp_path / 'run'}",
            # the recipe's pre-trained tower (runs/iu_xray/tower/best) is another test's business
            "model.init_visual_from=null", "model.freeze_visual=false"]
    assert main(args) == 0
    out = tmp_path / "reports.json"
    assert main(["generate", "report", "--report-model", str(tmp_path / "run" / "best"), "--annotation", str(ann),
                 "--image-root", str(ann.parent / "elsewhere"), "--split", "val", "--num-beams", "1",
                 "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"v"}
