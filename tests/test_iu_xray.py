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


def test_iu_split_is_by_report_id_alone():
    from shared.data.iu_xray import IUReport, iu_split, split_iu_reports

    reports = [IUReport(uid=f"CXR{i}", findings="Heart size normal.", impression="") for i in range(2000)]
    splits = split_iu_reports(reports)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 2000 and 0.65 < sizes["train"] / 2000 < 0.75 and 0.15 < sizes["test"] / 2000 < 0.25
    again = split_iu_reports(list(reversed(reports[:500])))  # another subset, another order: the same splits
    assert all(iu_split(r.uid) == name for name, part in again.items() for r in part)
    assert {r.uid for r in again["test"]} <= {r.uid for r in splits["test"]}
    empty = IUReport(uid="CXR9999", findings="", impression="")
    assert all(empty not in part for part in split_iu_reports([empty]).values())


def test_tokenizer_fits_on_the_iu_training_split(tmp_path, tiny_synth):
    from radloop.cli import main
    from shared.data.iu_xray import iu_split
    from shared.text.tokenizer import ReportTokenizer

    n = next(i for i in range(100) if iu_split(f"CXR{i}") == "train")
    t = next(i for i in range(100) if iu_split(f"CXR{i}") == "test")
    words = "granuloma granuloma granuloma"
    path = _archive(tmp_path, [(f"{n}.xml", XML.format(n=n, impression=words, major="normal")),
                               (f"{t}.xml", XML.format(n=t, impression="hyperinflated " * 3, major="normal"))])
    ann = tiny_synth[0] / "annotation.json"
    assert main(["data", "tokenizer", "--annotation", str(ann), "--out", str(tmp_path / "tok"), "--iu-reports",
                 "--archive", str(path), "--min-freq", "1"]) == 0
    vocab = set(ReportTokenizer.from_pretrained(tmp_path / "tok").itos)
    assert "granuloma" in vocab and "hyperinflated" not in vocab  # the test split stays out


def test_text_coverage_counts_unknown_words_by_hand(load_benchmark):
    from shared.text.tokenizer import ReportTokenizer

    bench = load_benchmark("text_coverage")
    tok = ReportTokenizer.fit(["no effusion .", "no effusion ."], min_freq=1)
    got = bench.coverage(tok, ["no granuloma.", "no effusion."])
    # running words: no, granuloma, ., no, effusion, . -> 1 of 6 unknown; types: no granuloma . effusion -> 1 of 4
    assert got["unk_share_running_words"] == round(1 / 6, 4) and got["unk_share_word_types"] == 0.25
