"""`radloop data prepare`: resized once, resumable, bad images named or left out."""

import json

import numpy as np
import pytest
from PIL import Image

from radloop.cli import main
from shared.data.dataset import DataError, ReportImageDataset
from shared.data.prepare import prepare_dataset


def test_prepare_resizes_once_and_a_rerun_skips_finished_files(tmp_path, tiny_synth, capsys):
    src, _ = tiny_synth
    out = tmp_path / "prep"
    assert main(["data", "prepare", "--annotation", str(src / "annotation.json"), "--size", "16", "--out", str(out),
                 "--workers", "2", "--quiet"]) == 0
    assert "already there" in capsys.readouterr().out
    ann = json.loads((out / "annotation.json").read_text())
    original = json.loads((src / "annotation.json").read_text())
    assert {k: len(v) for k, v in ann.items()} == {k: len(v) for k, v in original.items()}
    first = ann["train"][0]
    with Image.open(out / "images" / first["image_path"][0]) as im:
        assert im.mode == "L" and min(im.size) == 16
    ds = ReportImageDataset(out / "annotation.json", "train", image_size=16, max_views=2)
    assert ds[0]["images"].shape == (2, 1, 16, 16) and "labels" in ds[0]  # labels.csv came along
    # an interrupted run: one file missing, a temporary left behind -> the rerun writes only that one
    victim = out / "images" / first["image_path"][0]
    victim.unlink()
    (victim.parent / f".{victim.name}.123.tmp").write_bytes(b"half")
    summary = prepare_dataset(src / "annotation.json", out, 16, progress=False)
    assert summary["written"] == 1 and summary["skipped_existing"] == summary["images"] - 1 and victim.is_file()


def test_prepare_names_or_leaves_out_bad_images(tmp_path):
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "annotation.json").write_text(json.dumps({
        "train": [{"id": "a", "report": "x", "image_path": ["good.png"]}],
        "test": [{"id": "b", "report": "y", "image_path": ["bad.png"]}]}))
    out = tmp_path / "prep"
    with pytest.raises(DataError, match="cannot prepare image .*bad.png"):
        prepare_dataset(tmp_path / "annotation.json", out, 16, progress=False)
    assert not (out / "annotation.json").exists()  # nothing claims to be complete
    summary = prepare_dataset(tmp_path / "annotation.json", out, 16, on_bad_image="skip", progress=False)
    assert summary["dropped_studies"] == 1 and summary["studies"] == 1
    assert json.loads((out / "prepare_report.json").read_text())["dropped"] == ["b"]
    with Image.open(out / "images" / "good.png") as im:
        assert im.size == (16, 21)  # shorter side 16, aspect kept
    with pytest.raises(ValueError, match="is the source folder"):
        prepare_dataset(tmp_path / "annotation.json", tmp_path, 16)
