import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.text.tokenizer import ReportTokenizer, clean_report


@pytest.mark.parametrize("raw,expected", [
    ("The heart is normal. No effusion.", "the heart is normal . no effusion ."),
    ("1. Cardiomegaly.. 2. No pneumothorax.", "cardiomegaly . no pneumothorax ."),
    ("Lungs (clear); no XXXX-year-old/[acute] findings!", "lungs clear no xxxxyearoldacute findings ."),
    ('"Quoted" heart\'s size', "quoted hearts size ."),
    ("", ""),
    ("...", ""),
])
def test_r2gen_iu_cleaning(raw, expected):
    assert clean_report(raw) == expected


def test_r2gen_mimic_cleaning_folds_newlines_and_underscores():
    raw = "FINDINGS:\n  The __ heart is   normal.\nNo  effusion"
    assert clean_report(raw, "mimic_cxr") == "findings the heart is normal . no effusion ."
    with pytest.raises(ValueError, match="dataset"):
        clean_report("x", "chexpert")


def test_fit_threshold_order_and_specials():
    reports = ["No effusion."] * 3 + ["Small effusion."]
    tok = ReportTokenizer.fit(reports, min_freq=3)
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    # "." and "effusion" (4 times) before "no" (3); "small" (1) is below the threshold.
    assert tok.itos[4:] == [".", "effusion", "no"]
    assert tok.encode("Small effusion.") == [1, 3, 5, 4, 2]
    assert tok.decode([1, 6, 5, 4, 2, 6]) == "no effusion ."
    with pytest.raises(ValueError, match="zero reports"):
        ReportTokenizer.fit([])


def test_truncation_and_batch_encode():
    tok = ReportTokenizer.fit(["a b c d e f."] * 3, min_freq=1, max_length=5)
    # Equal counts sort alphabetically: "." (4), "a" (5), "b" (6), ...
    assert tok.encode("a b c d e f.") == [1, 5, 6, 7, 2]
    ids, mask = tok.batch_encode(["a.", "a b c."])
    assert ids.shape == mask.shape == (2, 5)
    assert ids[0].tolist() == [1, 5, 4, 2, 0] and mask[0].tolist() == [1, 1, 1, 1, 0]


def test_save_load_roundtrip_and_bad_files(tmp_path):
    tok = ReportTokenizer.fit(["The heart is normal."] * 3, dataset="mimic_cxr", max_length=40)
    tok.save_pretrained(tmp_path)
    again = ReportTokenizer.from_pretrained(tmp_path)
    assert again.itos == tok.itos and again.dataset == "mimic_cxr" and again.max_length == 40
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        ReportTokenizer.from_pretrained(tmp_path / "nothing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        ReportTokenizer.from_pretrained(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"vocab": ["a"]}))
    with pytest.raises(ValueError, match="not a RadLoop word-level tokenizer"):
        ReportTokenizer.from_pretrained(tmp_path / "other.json")


def test_transformers_tokenizer_gives_the_same_ids():
    reports = ["The heart is normal. No pleural effusion.", "Small left effusion."] * 3
    tok = ReportTokenizer.fit(reports, min_freq=1)
    hf = tok.to_transformers()
    for text in ["The heart is big. No effusion.", "Left pleural effusion."]:
        assert hf(clean_report(text))["input_ids"] == tok.encode(text)
    assert hf.decode(tok.encode("no effusion."), skip_special_tokens=True) == "no effusion ."
    assert hf.pad_token_id == tok.pad_token_id and len(hf) == len(tok)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("abc .,;:()-1234\n"), max_size=60))
def test_cleaning_is_idempotent_and_decodes_back(text):
    cleaned = clean_report(text)
    assert clean_report(cleaned) == cleaned
    tok = ReportTokenizer.fit([text or "x"], min_freq=1, max_length=1000)
    assert tok.decode(tok.encode(text)) == cleaned


def test_a_tokenizer_file_of_another_format_version_is_refused(tmp_path):
    import json

    tok = ReportTokenizer.fit(["no acute findings ."], min_freq=1)
    path = tok.save_pretrained(tmp_path)
    data = json.loads(path.read_text())
    data["version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tokenizer format version 2; this RadLoop reads version 1"):
        ReportTokenizer.from_pretrained(tmp_path)
