"""Images and annotations that are wrong in every way we could think of: each is read as documented or
ends in one DataError naming the file and the study, key or value."""

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from radloop.cli import main
from shared.data.dataset import DataError, ReportImageDataset, load_records, to_grey


def _annotation(tmp_path, image_name, **extra):
    (tmp_path / "annotation.json").write_text(json.dumps(
        {"train": [{"id": "s1", "report": "No effusion.", "image_path": [image_name], **extra}]}))
    return tmp_path / "annotation.json"


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    (tmp_path / "a.png").write_bytes(_png(ramp))
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I")
        grey = np.asarray(to_grey(im))
    assert grey.min() == 0 and grey.max() == 255 and 100 < grey.mean() < 155  # PIL's own "L" clips to white
    twelve = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 12-bit values in a 16-bit file
    assert np.asarray(to_grey(Image.fromarray(twelve))).max() == 255
    ds = ReportImageDataset(_annotation(tmp_path, "a.png"), "train", image_size=16)
    x = ds[0]["images"]
    assert x.shape == (1, 1, 16, 16) and float(x.min()) < -0.8 and float(x.max()) > 0.8


@pytest.mark.parametrize("kind", ["rgba", "rgb_jpeg", "palette"])
def test_colour_alpha_and_palette_images_are_read_as_grey(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "rgba":
        Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").save(tmp_path / "a.png")
        name = "a.png"
    elif kind == "rgb_jpeg":
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "RGB").save(tmp_path / "a.jpg")
        name = "a.jpg"
    else:
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).convert("P").save(tmp_path / "a.png")
        name = "a.png"
    assert ReportImageDataset(_annotation(tmp_path, name), "train", image_size=16)[0]["images"].shape == (1, 1, 16, 16)


@pytest.mark.parametrize("content,why", [
    (b"", "cannot read image"),
    (b"this is text, not an image", "cannot read image"),
    (_png(np.zeros((64, 64), np.uint8))[:60], "cannot read image"),  # truncated
    (b"\x00" * 128 + b"DICM" + b"\x00" * 64, "a DICOM file; convert it to PNG/JPEG first"),
])
def test_unreadable_files_name_the_file(tmp_path, content, why):
    (tmp_path / "a.png").write_bytes(content)
    ds = ReportImageDataset(_annotation(tmp_path, "a.png"), "train", image_size=16)
    with pytest.raises(DataError, match=why) as err:
        ds[0]
    assert "a.png" in str(err.value)
    skipped = ReportImageDataset(_annotation(tmp_path, "a.png"), "train", image_size=16, on_bad_image="skip")
    assert len(skipped) == 0 and skipped.skipped["bad_image"] == 1


def test_huge_dimensions_are_refused_not_decoded(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then over twice the limit
    with pytest.raises(DataError, match="DecompressionBombError"):
        ReportImageDataset(_annotation(tmp_path, "a.png"), "train", image_size=16)[0]


@pytest.mark.parametrize("annotation,match", [
    ({"train": [{"report": "x", "image_path": ["a.png"]}]}, "study 0 has no 'id' field"),
    ({"train": [{"id": {"a": 1}, "report": "x", "image_path": ["a.png"]}]}, "has id {'a': 1}"),
    ({"train": [{"id": "", "report": "x", "image_path": ["a.png"]}]}, "has id ''"),
    ({"train": [{"id": "s", "report": ["x"], "image_path": ["a.png"]}]}, "report of type list"),
    ({"train": [{"id": "s", "report": "x", "image_path": [1]}]}, r"image_path \[1\]"),
    ({"train": [{"id": "s", "report": "x", "image_path": []}]}, "has no image paths"),
    ({"train": [{"id": "s", "report": "x", "image_path": ["a.png"]},
                {"id": "s", "report": "y", "image_path": ["a.png"]}]}, "'s' appears twice in 'train'"),
    ({"train": [{"id": "s", "report": "x", "image_path": ["a.png"]}],
      "test": [{"id": "s", "report": "y", "image_path": ["a.png"]}]}, "'s' appears in 'train' and 'test'"),
    ({"train": "not a list of studies"}, "entry 0 of 'train' is not an object"),
    ([1, 2], "no 'train'/'val'/'test' keys"),
])
def test_malformed_annotations_are_named(tmp_path, annotation, match):
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    with pytest.raises(DataError, match=match):
        load_records(tmp_path / "annotation.json")


def test_a_patient_in_two_splits_is_warned_about(tmp_path, caplog):
    (tmp_path / "annotation.json").write_text(json.dumps({
        "train": [{"id": "s1", "patient_id": "p1", "report": "x", "image_path": ["a.png"]}],
        "test": [{"id": "s2", "patient_id": "p1", "report": "y", "image_path": ["b.png"]},
                 {"id": "s3", "patient_id": "p2", "report": "y", "image_path": ["b.png"]}]}))
    with caplog.at_level(logging.WARNING):
        assert len(load_records(tmp_path / "annotation.json")) == 3
    assert "1 patient(s) have studies in more than one split (e.g. 'p1' in ['test', 'train'])" in caplog.text


def test_cli_reports_a_bad_annotation_in_one_line(tmp_path, capsys):
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [{"id": "s", "report": 3, "image_path": "a.png"}]}))
    rc = main(["train", "report", f"data.annotation={tmp_path / 'annotation.json'}",
               f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("radloop: error:") and err.count("\n") == 1
    assert "study 's' has a report of type int" in err


@pytest.mark.parametrize("kind,why", [("dotdot", "'..' step"), ("absolute", "absolute path"),
                                      ("symlink", "symlink out of it")])
def test_image_paths_cannot_leave_the_image_root_unless_allowed(tmp_path, kind, why):
    data, secret = tmp_path / "data", tmp_path / "elsewhere" / "secret.png"
    data.mkdir()
    secret.parent.mkdir()
    secret.write_bytes(_png(np.full((8, 8), 200, np.uint8)))
    if kind == "symlink":
        (data / "link.png").symlink_to(secret)
    name = {"dotdot": "../elsewhere/secret.png", "absolute": str(secret), "symlink": "link.png"}[kind]
    annotation = _annotation(data, name)
    with pytest.raises(DataError, match=f"study 's1' has image path .* leaves the image root .*{why}"):
        ReportImageDataset(annotation, "train", image_size=8)
    ds = ReportImageDataset(annotation, "train", image_size=8, allow_outside_root=True)
    assert ds[0]["images"].shape == (1, 1, 8, 8)


def test_cli_refuses_an_escaping_path_in_one_line_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    annotation = _annotation(data, "../../etc/passwd")
    out = tmp_path / "prepared"
    rc = main(["data", "prepare", "--annotation", str(annotation), "--out", str(out), "--size", "8", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("radloop: error:") and err.count("\n") == 1
    assert "'../../etc/passwd'" in err and "--allow-outside-root" in err
    assert not (out / "annotation.json").exists()


def test_the_input_benchmark_finds_no_crash_and_counts_one(load_benchmark, tmp_path, monkeypatch, capsys):
    bench = load_benchmark("reliability_inputs")
    monkeypatch.setattr("sys.argv", ["reliability_inputs.py", "--n", "10", "--json", str(tmp_path / "r.json")])
    bench.main()
    result = json.loads((tmp_path / "r.json").read_text())["inputs"]
    assert result["tried"] > 150 and result["crashed"] == 0, result
    assert len(result["classes"]) == 6 and all(c["tried"] > 0 for c in result["classes"].values())

    def crashes():
        raise KeyError("boom")

    counted = bench.run_class(iter([("ok", lambda: None), ("documented", lambda: load_records(tmp_path / "none")),
                                    ("crash", crashes)]))
    assert (counted["tried"], counted["crashed"]) == (3, 1) and "KeyError" in counted["crash_examples"][0]


def test_model_folders_load_safetensors_only_and_pipelines_only_their_own_classes(tmp_path):
    import shutil

    import torch

    from image2report.generator import ReportGenerator
    from report2image import ReportToCXRPipeline
    from shared.zoo import resolve_zoo

    # a report model whose weights are a pickle (.bin) is refused, never unpickled
    model = tmp_path / "model"
    shutil.copytree(resolve_zoo("zoo:baseline"), model)
    for weights in model.glob("*.safetensors"):
        torch.save({"w": torch.ones(1)}, weights.with_suffix(".bin"))
        weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors weights \(only diffusion_pytorch_model\.bin"):
        ReportGenerator.from_pretrained(model)

    # a pipeline whose model_index.json names another module is refused before anything is imported
    pipe = tmp_path / "pipe"
    shutil.copytree(resolve_zoo("zoo:ldm64"), pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    (pipe / "model_index.json").write_text(json.dumps({**index, "scheduler": ["os", "system"]}))
    with pytest.raises(ValueError, match=r"component 'scheduler' names \['os', 'system'\]"):
        ReportToCXRPipeline.from_pretrained(pipe)
    (pipe / "model_index.json").write_text(json.dumps({**index, "safety_checker": ["evil", "Thing"]}))
    with pytest.raises(ValueError, match="unknown component 'safety_checker'"):
        ReportToCXRPipeline.from_pretrained(pipe)
    (pipe / "model_index.json").write_text(json.dumps(index))
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").rename(pipe / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="unet: no .safetensors weights"):
        ReportToCXRPipeline.from_pretrained(pipe)
