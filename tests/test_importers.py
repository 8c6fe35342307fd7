"""`radloop data iu-xray` / `mimic-cxr`: miniature copies of both official release layouts."""

import csv
import gzip
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from radloop.cli import main
from shared.data.dataset import DataError, ReportImageDataset
from shared.data.importers import import_iu_xray, import_mimic_cxr, report_sections
from shared.data.iu_xray import find_iu_reports_archive, iu_split, read_iu_reports
from synthcxr.iu_standin import render_iu_standin


@pytest.fixture(scope="module")
def iu_release(tmp_path_factory):
    """The first 40 real Open-i reports as their own archive + stand-in PNGs in NLMCXR_png's layout."""
    root = tmp_path_factory.mktemp("iu_release")
    archive = root / "NLMCXR_reports.tgz"
    with tarfile.open(find_iu_reports_archive(), "r:gz") as src, tarfile.open(archive, "w:gz") as dst:
        wanted = {f"ecgen-radiology/{n}.xml" for n in range(1, 41)}
        for member in src.getmembers():
            if member.name in wanted:
                dst.addfile(member, src.extractfile(member))
    summary = render_iu_standin(root / "png", size=32, reports=archive, progress=False)
    assert summary["reports"] == 40 and summary["written"] == summary["images"]
    return archive, root / "png"


def test_iu_import_keeps_r2gen_studies_with_the_suite_split(tmp_path, iu_release, capsys):
    archive, png = iu_release
    out = tmp_path / "iu"
    assert main(["data", "iu-xray", "--reports", str(archive), "--images", str(png), "--out", str(out),
                 "--size", "16", "--quiet"]) == 0
    assert "imported" in capsys.readouterr().out
    reports = read_iu_reports(archive)
    expected = {r.uid: r for r in reports if r.findings and len(r.image_ids) >= 2}
    ann = json.loads((out / "annotation.json").read_text())
    got = {rec["id"]: (split, rec) for split, recs in ann.items() for rec in recs}
    assert set(got) == set(expected) and 0 < len(got) < 40
    for uid, (split, rec) in got.items():
        assert split == rec["split"] == iu_split(uid)
        assert rec["report"] == expected[uid].findings  # findings only, R2Gen's text
        assert rec["image_path"] == [f"{i}.png" for i in expected[uid].image_ids[:2]]
    summary = json.loads((out / "import_summary.json").read_text())
    assert sum(summary["left_out"].values()) == 40 - len(got)
    first = next(iter(got.values()))[1]
    with Image.open(out / "images" / first["image_path"][0]) as im:
        assert im.mode == "L" and min(im.size) == 16
    split = next(s for s, recs in ann.items() if recs)
    ds = ReportImageDataset(out / "annotation.json", split, image_size=16, max_views=2)
    assert ds[0]["images"].shape == (2, 1, 16, 16)
    # resumable: one image lost -> the rerun writes that one only
    (out / "images" / first["image_path"][1]).unlink()
    again = import_iu_xray(archive, png, out, size=16, progress=False)
    assert again["written"] == 1 and again["skipped_existing"] == again["images"] - 1
    # impression appended on request
    both = import_iu_xray(archive, png, tmp_path / "both", size=16, sections="findings+impression", progress=False)
    assert both["sections"] == "findings+impression"


def test_iu_import_names_missing_and_unreadable_images(tmp_path, iu_release):
    archive, png = iu_release
    images = tmp_path / "png"
    images.mkdir()
    for path in png.glob("*.png"):
        (images / path.name).write_bytes(path.read_bytes())
    victim = sorted(images.glob("CXR1_*.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"cannot import image .*{victim.name}: missing"):
        import_iu_xray(archive, images, tmp_path / "out", size=16, progress=False)
    assert not (tmp_path / "out" / "annotation.json").exists()  # not marked finished
    summary = import_iu_xray(archive, images, tmp_path / "out", size=16, on_bad_image="skip", progress=False)
    assert summary["dropped"] == ["CXR1"] and summary["bad_images"] == 1
    victim.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{victim.name}: UnidentifiedImageError"):
        import_iu_xray(archive, images, tmp_path / "out2", size=16, progress=False)
    with pytest.raises(DataError, match="is not a folder .extract NLMCXR_png.tgz"):
        import_iu_xray(archive, victim, tmp_path / "out3", progress=False)
    with pytest.raises(FileNotFoundError, match="archive not found"):
        import_iu_xray(tmp_path / "none.tgz", images, tmp_path / "out3", progress=False)


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 FINDINGS:

 {findings}

 IMPRESSION:

 {impression}
"""


def _csv_gz(path, header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()))


@pytest.fixture()
def mimic_release(tmp_path):
    """Five studies: PA+lateral, AP+PA, lateral only, no findings section, AP only."""
    from shared.labels import CHEXPERT_LABELS

    root = tmp_path / "mimic-cxr-jpg"
    studies = [  # (subject, study, split, [(dicom, view)], findings or None)
        ("10000001", "50000001", "train", [("d1a", "PA"), ("d1b", "LATERAL")], "Small left pleural effusion."),
        ("10000002", "50000002", "validate", [("d2b", "AP"), ("d2a", "PA")], "The lungs are clear."),
        ("10000003", "50000003", "test", [("d3a", "LATERAL")], "No pneumothorax."),
        ("11000004", "50000004", "train", [("d4a", "PA")], None),
        ("11000005", "50000005", "test", [("d5a", "AP")], "Mild cardiomegaly.\n No edema."),
    ]
    split_rows, meta_rows, reports = [], [], {}
    rng = np.random.default_rng(0)
    for subject, study, split, views, findings in studies:
        for dicom, view in views:
            split_rows.append([dicom, study, subject, split])
            meta_rows.append([dicom, subject, study, view])
            path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(path, format="JPEG")
        text = MIMIC_REPORT.format(findings=findings, impression="No acute process.")
        if findings is None:
            text = " FINAL REPORT\n IMPRESSION:  No acute process.\n"
        reports[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = text
    _csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
            meta_rows)
    label_rows = [[s[0], s[1], *(["1.0", "-1.0", ""] + ["0.0"] * 11)] for s in studies]
    _csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], label_rows)
    with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
        for name, text in reports.items():
            zf.writestr(name, text)
    return root


def test_mimic_import_official_split_frontal_view_and_labels(tmp_path, mimic_release, capsys):
    out = tmp_path / "mimic"
    assert main(["data", "mimic-cxr", "--root", str(mimic_release), "--out", str(out), "--size", "0",
                 "--quiet"]) == 0
    assert "left out: 1 no frontal view, 1 no findings" in capsys.readouterr().out
    ann = json.loads((out / "annotation.json").read_text())
    by_id = {rec["id"]: (split, rec) for split, recs in ann.items() for rec in recs}
    assert set(by_id) == {"50000001", "50000002", "50000005"}
    assert by_id["50000002"][0] == "val"  # 'validate' -> val
    assert by_id["50000002"][1]["image_path"] == ["p10/p10000002/s50000002/d2a.png"]  # PA before AP
    assert by_id["50000001"][1]["report"] == "Small left pleural effusion."
    assert by_id["50000005"][1]["report"] == "Mild cardiomegaly. No edema."
    assert by_id["50000001"][1]["patient_id"] == "10000001" and by_id["50000005"][1]["views"] == ["AP"]
    with Image.open(out / "images" / by_id["50000001"][1]["image_path"][0]) as im:
        assert im.size == (30, 40) and im.mode == "L"  # --size 0 keeps the size
    ds = ReportImageDataset(out / "annotation.json", "train", image_size=16)
    labels = ds[0]["labels"].numpy()
    assert labels[0] == 1.0 and labels[1] == -1.0 and np.isnan(labels[2])  # the release's values carried
    two = import_mimic_cxr(mimic_release, tmp_path / "two", size=16, max_views=2, progress=False)
    first = json.loads((tmp_path / "two" / "annotation.json").read_text())["train"][0]
    assert first["views"] == ["PA", "LATERAL"] and two["studies"] == {"train": 1, "val": 1, "test": 1}


def test_mimic_import_names_what_is_missing(tmp_path, mimic_release):
    bad = next((mimic_release / "files").rglob("d1a.jpg"))
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="cannot import image .*d1a.jpg"):
        import_mimic_cxr(mimic_release, tmp_path / "o", progress=False)
    (mimic_release / "mimic-cxr-reports.zip").unlink()
    with pytest.raises(DataError, match="MIMIC-CXR reports not found: .*mimic-cxr-reports.zip"):
        import_mimic_cxr(mimic_release, tmp_path / "o", progress=False)
    (mimic_release / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DataError, match="file not found: .*mimic-cxr-2.0.0-split.csv.gz"):
        import_mimic_cxr(mimic_release, tmp_path / "o", progress=False)


def test_report_sections_of_an_official_report():
    parts = report_sections(MIMIC_REPORT.format(findings="Heart size normal.\n Lungs clear.", impression="Normal."))
    assert parts["FINDINGS"] == "Heart size normal. Lungs clear." and parts["IMPRESSION"] == "Normal."
    assert parts["COMPARISON"] == "None." and parts[""] == "FINAL REPORT"
    assert report_sections("no headers at all") == {"": "no headers at all"}
