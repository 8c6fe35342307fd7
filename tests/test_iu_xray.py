import io
import json
import tarfile

import pytest

from shared.data.iu_xray import find_iu_reports_archive, read_iu_reports, write_iu_reports

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Cough.</AbstractText>
<AbstractText Label="FINDINGS">Heart size is   normal. No effusion.</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>{major}</major><automatic>effusion</automatic></MeSH>
<parentImage id="CXR{n}_IM-1"/><parentImage id="CXR{n}_IM-2"/></eCitation>"""


def _archive(tmp_path, items):
    path = tmp_path / "reports.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in items:
            data = text.encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_parse_a_handmade_archive(tmp_path):
    path = _archive(tmp_path, [
        ("10.xml", XML.format(n=10, impression="Normal chest.", major="normal")),
        ("2.xml", XML.format(n=2, impression="", major="Pleural Effusion/left/small")),
    ])
    reports = read_iu_reports(path)
    assert [r.uid for r in reports] == ["CXR2", "CXR10"]  # numeric order
    r = reports[0]
    assert r.findings == "Heart size is normal. No effusion." and r.impression == ""
    assert r.mesh_major == ["Pleural Effusion/left/small"] and r.mesh_automatic == ["effusion"]
    assert r.image_ids == ["CXR2_IM-1", "CXR2_IM-2"] and r.indication == "Cough."
    assert reports[1].is_normal and reports[1].text == "Heart size is normal. No effusion. Normal chest."
    n = write_iu_reports(tmp_path / "out.jsonl", path)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert n == len(lines) == 2 and json.loads(lines[1])["uid"] == "CXR10"


def test_bad_archives(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive not found"):
        read_iu_reports(tmp_path / "nope.tgz")
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="cannot read IU X-ray reports archive"):
        read_iu_reports(tmp_path / "junk.tgz")
    bad = _archive(tmp_path, [("1.xml", "<eCitation><unclosed></eCitation>")])
    with pytest.raises(ValueError, match="1.xml: not valid XML"):
        read_iu_reports(bad)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps torchxrayvision"):
        find_iu_reports_archive()


@pytest.mark.realdata
def test_the_real_iu_xray_reports():
    try:
        find_iu_reports_archive()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    reports = read_iu_reports()
    assert len(reports) == 3955
    assert len({r.uid for r in reports}) == 3955
    assert sum(r.is_normal for r in reports) > 1000
    assert sum(bool(r.findings) for r in reports) > 3000
    assert all(r.mesh_major for r in reports)
