"""Report-quality metrics, the sentence rules of decoding, and the settings saved with a report model."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from image2report.decoding import DecodingConfig, beam_search, decode, greedy_decode, whole_report
from image2report.sentence_rules import REPEAT, SentenceRules
from shared.metrics.report_quality import CONTRADICTION, RESTATEMENT, report_quality, report_quality_scores
from shared.text.labeler import ReportLabeler

LABELER = ReportLabeler()
CLEAN = "the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax ."
CONTRADICTION_REPORT = "the heart is normal in size . no pleural effusion . moderate cardiomegaly ."
HIERARCHY = "the lungs are clear . mild left retrocardiac atelectasis ."
RESTATING = "no pneumothorax . the heart is normal in size . there is no pneumothorax ."
CUT_OFF = "the heart is normal in size . there is a small"
HEDGED = "no pneumonia . possible pneumonia ."


def test_quality_of_hand_written_reports():
    clean = report_quality(CLEAN, LABELER)
    assert (clean.contradicting, clean.restatements, clean.repeated, clean.unfinished) == ([], 0, 0, False)
    assert clean.sentences == 3
    assert report_quality(CONTRADICTION_REPORT, LABELER).contradicting == ["Cardiomegaly"]
    # the hierarchy: an atelectasis is a lung opacity, which "the lungs are clear" negated
    assert report_quality(HIERARCHY, LABELER).contradicting == ["Lung Opacity"]
    restating = report_quality(RESTATING, LABELER)
    assert restating.restatements == 1 and not restating.contradicts_itself and restating.repeated == 0
    twice = report_quality("the heart is normal in size . the heart is normal in size .", LABELER)
    assert (twice.repeated, twice.restatements) == (1, 1)
    assert report_quality(CUT_OFF, LABELER).unfinished and report_quality("", LABELER).unfinished
    # an uncertain mention contradicts nothing (a known blind spot, documented)
    assert not report_quality(HEDGED, LABELER).contradicts_itself


def test_quality_rates_over_a_set():
    reports = [CLEAN, CONTRADICTION_REPORT, HIERARCHY, RESTATING, CUT_OFF]
    training = ["The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
                "No pneumothorax. There is no pneumothorax."]
    scores = report_quality_scores(reports, LABELER, training)
    assert scores["self_contradiction_rate"] == pytest.approx(2 / 5)
    assert scores["restatement_rate"] == pytest.approx(1 / 5)
    assert scores["unfinished_rate"] == pytest.approx(1 / 5)
    assert scores["repeated_sentence_report_rate"] == 0
    # 13 sentences; novel: "no pleural effusion", "moderate cardiomegaly", "mild left retrocardiac atelectasis",
    # "there is a small"
    assert scores["novel_sentence_rate"] == pytest.approx(4 / 13)
    assert "novel_sentence_rate" not in report_quality_scores(reports, LABELER)
    with pytest.raises(ValueError, match="no reports"):
        report_quality_scores([], LABELER)


def test_evaluate_reports_cli_adds_the_quality_rows(tmp_path, capsys):
    from radloop.cli import main

    preds, refs = tmp_path / "p.json", tmp_path / "r.json"
    preds.write_text(json.dumps({"a": CONTRADICTION_REPORT, "b": CLEAN}))
    refs.write_text(json.dumps({"a": CLEAN, "b": CLEAN}))
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps({"train": [{"id": "t", "report": CLEAN}], "val": [], "test": []}))
    out = tmp_path / "m.json"
    assert main(["evaluate", "reports", "--pred", str(preds), "--ref", str(refs), "--no-meteor",
                 "--train-reports", str(ann), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["self_contradiction_rate"] == 0.5 and metrics["unfinished_rate"] == 0
    assert metrics["novel_sentence_rate"] == pytest.approx(2 / 6)
    assert "| self_contradiction_rate |" in capsys.readouterr().out


# --- a scripted "language model" over a small vocabulary, for the decoding rules ---------------------------
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", ".", "the", "heart", "is", "normal", "moderate", "cardiomegaly",
         "small", "left", "pleural", "effusion", "no", "pneumothorax"]
ID = {w: i for i, w in enumerate(WORDS)}
# the next word's probabilities after a prefix (words since <bos>); the planted trap: after the first sentence the
# likeliest continuation is "moderate cardiomegaly", which contradicts "the heart is normal"
SCRIPT = {
    "": {"the": 1.0}, "the": {"heart": 1.0}, "the heart": {"is": 1.0}, "the heart is": {"normal": 1.0},
    "the heart is normal": {".": 1.0},
    "the heart is normal .": {"moderate": 0.7, "small": 0.3},
    "the heart is normal . moderate": {"cardiomegaly": 0.8, "left": 0.2},
    "the heart is normal . moderate cardiomegaly": {".": 1.0},
    "the heart is normal . moderate cardiomegaly .": {"<eos>": 1.0},
}


def _script_next(words: str) -> dict[str, float]:
    if words in SCRIPT:
        return SCRIPT[words]
    last = words.split()[-1]
    # any sentence about the effusion runs "left pleural effusion ." and the report then ends
    return {"small": {"left": 1.0}, "left": {"pleural": 1.0}, "pleural": {"effusion": 1.0},
            "effusion": {".": 1.0}, ".": {"<eos>": 1.0}}.get(last, {"<eos>": 1.0})


def scripted_step(memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    out = torch.full((tokens.shape[0], len(WORDS)), -30.0)
    for r, row in enumerate(tokens.tolist()):
        for word, p in _script_next(" ".join(WORDS[i] for i in row[1:])).items():
            out[r, ID[word]] = math.log(p)
    return torch.log_softmax(out, -1)


def _text(ids: torch.Tensor) -> list[str]:
    return [" ".join(WORDS[i] for i in row[1:] if i != ID["<eos>"]) for row in ids.tolist()]


@pytest.mark.parametrize("beams", [1, 3])
def test_label_consistent_decoding_avoids_a_planted_contradiction(beams):
    memory = torch.zeros(2, 1, 4)
    rules = SentenceRules(WORDS, ID["."])
    plain = decode(scripted_step, memory, ID["<bos>"], ID["<eos>"],
                   DecodingConfig(num_beams=beams, max_length=20, label_consistent=False))
    assert _text(plain)[0] == "the heart is normal . moderate cardiomegaly ."
    consistent = decode(scripted_step, memory, ID["<bos>"], ID["<eos>"],
                        DecodingConfig(num_beams=beams, max_length=20), rules)
    texts = _text(consistent)
    assert texts[0] == texts[1]
    assert "cardiomegaly" not in texts[0] and texts[0].endswith("pleural effusion .")
    assert not report_quality(texts[0], LABELER).contradicts_itself
    if beams == 1:  # greedy backs up to the word that named the finding and takes the next one there
        assert texts[0] == "the heart is normal . moderate left pleural effusion ."


def test_sentence_rules_name_the_reason_and_the_word_to_ban():
    rules = SentenceRules(WORDS, ID["."], max_sentence_repeats=1, refuse_restatements=True)
    ids = [ID[w] for w in "<bos> the heart is normal . moderate cardiomegaly .".split()]
    refusal = rules.check(ids)
    assert refusal.reason == CONTRADICTION and WORDS[ids[refusal.position]] == "cardiomegaly"
    again = [ID[w] for w in "<bos> no pneumothorax . no pneumothorax .".split()]
    assert rules.check(again).reason == REPEAT and rules.check(again).position == 4
    rules.max_sentence_repeats = 2  # a second occurrence allowed; now it is a restatement
    assert rules.check(again).reason == RESTATEMENT
    rules.refuse_restatements = False
    assert rules.check(again) is None
    assert rules.check([ID["<bos>"], ID["no"], ID["pneumothorax"], ID["."]]) is None


def test_whole_sentences_end_reports_on_a_period():
    def babble(memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # <eos> likeliest after any word; after "pneumothorax" a period a little likelier than another "no"
        out = torch.full((tokens.shape[0], len(WORDS)), -30.0)
        last = tokens[:, -1]
        out[:, ID["<eos>"]] = -0.1
        out[:, ID["no"]] = torch.where(last == ID["no"], -30.0, -1.0)
        out[:, ID["pneumothorax"]] = torch.where(last == ID["no"], -0.5, -30.0)
        out[:, ID["."]] = torch.where(last == ID["pneumothorax"], -0.8, -30.0)
        return torch.log_softmax(out, -1)

    memory = torch.zeros(1, 1, 4)
    rules = SentenceRules(WORDS, ID["."], label_consistent=False, max_sentence_repeats=0)
    cut = greedy_decode(babble, memory, ID["<bos>"], ID["<eos>"],
                        DecodingConfig(num_beams=1, max_length=10, whole_sentences=False), rules)
    assert _text(cut)[0] == "no pneumothorax"  # <eos> after a word: an unfinished sentence
    for beams in (1, 3):
        whole = decode(babble, memory, ID["<bos>"], ID["<eos>"], DecodingConfig(num_beams=beams, max_length=10),
                       rules)
        assert _text(whole)[0] == "no pneumothorax ."
    # a report cut by max_length keeps its whole sentences only
    seq = [ID[w] for w in "<bos> no pneumothorax . no".split()]
    assert whole_report(seq, ID["<eos>"], ID["."]) == seq[:4] + [ID["<eos>"]]
    assert whole_report(seq, ID["<eos>"], ID["."], whole_sentences=False) == seq + [ID["<eos>"]]


def test_beam_search_without_rules_is_unchanged_by_them():
    memory = torch.zeros(2, 1, 4)
    cfg = DecodingConfig(num_beams=3, max_length=20, whole_sentences=False, max_sentence_repeats=0,
                         label_consistent=False)
    inactive = SentenceRules(WORDS, ID["."], max_sentence_repeats=0, label_consistent=False)
    torch.testing.assert_close(beam_search(scripted_step, memory, ID["<bos>"], ID["<eos>"], cfg),
                               beam_search(scripted_step, memory, ID["<bos>"], ID["<eos>"], cfg, inactive))


# --- settings saved with the model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_report_run(tmp_path_factory, tiny_synth):
    from radloop.cli import main

    out, _ = tiny_synth
    run = tmp_path_factory.mktemp("rq") / "run"
    assert main(["train", "report", f"data.annotation={out / 'annotation.json'}", "model.name=baseline_tiny",
                 "data.image_size=28", "data.resize=32", "data.batch_size=8", "data.min_freq=1",
                 "data.max_length=40", "decoding.num_beams=2", "train.max_steps=2", f"train.output_dir={run}",
                 "train.eval_every=2", "train.progress=false", "data.val_samples=4"]) == 0
    return out, run / "best"


def test_decoding_and_preprocessing_travel_with_the_model(tiny_report_run):
    from image2report.generator import GENERATION_FILE, ReportGenerator
    from shared.data.transforms import PREPROCESS_FILE

    _, best = tiny_report_run
    assert json.loads((best / GENERATION_FILE).read_text())["num_beams"] == 2
    assert json.loads((best / PREPROCESS_FILE).read_text())["resize"] == 32
    gen = ReportGenerator.from_pretrained(best)
    assert gen.decoding.num_beams == 2 and gen.decoding.max_length == 40
    assert (gen.preprocess.image_size, gen.preprocess.resize) == (28, 32)


def test_validation_and_generate_report_see_the_same_pixels(tiny_report_run):
    from image2report.generator import ReportGenerator
    from image2report.train import ReportDataConfig, _dataset
    from shared.data.dataset import ReportImageDataset

    out, best = tiny_report_run
    val = _dataset(ReportDataConfig(annotation=str(out / "annotation.json"), image_size=28, resize=32), "val", False)
    gen = ReportGenerator.from_pretrained(best)
    # the dataset generate_reports builds from the saved preprocessing
    served = ReportImageDataset(out / "annotation.json", "val", image_size=gen.preprocess.image_size,
                                transform=gen.preprocess.transform(train=False))
    torch.testing.assert_close(val[0]["images"], served[0]["images"])
    assert val[0]["images"].shape[-1] == 28


def test_saved_decoding_settings_change_what_generate_report_writes(tiny_report_run, tmp_path, capsys):
    from image2report.generator import GENERATION_FILE
    from radloop.cli import main

    out, best = tiny_report_run
    model = tmp_path / "model"
    model.mkdir()
    for item in best.iterdir():
        (model / item.name).write_bytes(item.read_bytes())

    def generate(name: str) -> dict[str, str]:
        path = tmp_path / name
        assert main(["generate", "report", "--report-model", str(model), "--annotation", str(out / "annotation.json"),
                     "--split", "test", "--out", str(path)]) == 0
        return json.loads(path.read_text())

    first = generate("a.json")
    assert "beam search (2 beams)" in capsys.readouterr().out
    settings = json.loads((model / GENERATION_FILE).read_text())
    (model / GENERATION_FILE).write_text(json.dumps({**settings, "max_length": 4, "whole_sentences": False}))
    short = generate("b.json")
    assert "at most 4 tokens" in capsys.readouterr().out
    assert all(len(v.split()) <= 3 for v in short.values()) and short != first


def test_a_folder_saved_before_settings_loads_with_defaults_and_says_so(tiny_report_run, tmp_path, caplog):
    from image2report.generator import GENERATION_FILE, ReportGenerator
    from shared.data.transforms import PREPROCESS_FILE

    _, best = tiny_report_run
    old = tmp_path / "old"
    old.mkdir()
    for item in best.iterdir():
        if item.name not in (GENERATION_FILE, PREPROCESS_FILE):
            (old / item.name).write_bytes(item.read_bytes())
    with caplog.at_level(logging.INFO, logger="shared.saved_settings"):
        gen = ReportGenerator.from_pretrained(old)
    assert gen.decoding == DecodingConfig(max_length=40)
    assert (gen.preprocess.image_size, gen.preprocess.resize) == (28, None)
    assert "no generation_config.json" in caplog.text and "no preprocessor_config.json" in caplog.text


def test_unknown_saved_decoding_key_is_one_clear_error(tiny_report_run, tmp_path):
    from image2report.generator import GENERATION_FILE, ReportGenerator

    _, best = tiny_report_run
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in best.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    (bad / GENERATION_FILE).write_text(json.dumps({"num_beams": 2, "beam_width": 3}))
    with pytest.raises(ValueError, match=r"generation_config\.json: unknown DecodingConfig key 'beam_width'"):
        ReportGenerator.from_pretrained(bad)


def test_report_quality_benchmark_runs_end_to_end(tiny_report_run, tmp_path, load_benchmark):
    bench = load_benchmark("report_quality")
    out, best = tiny_report_run
    result_file = tmp_path / "rq.json"
    bench.main(["--entries", str(best), "--test-data", str(out), "--train-data", str(out), "--arms", "before",
                "rules", "--json", str(result_file), "--out-dir", str(tmp_path / "reports")])
    result = json.loads(result_file.read_text())
    rows = result["entries"]["best"]
    assert sorted(rows) == ["before/beam3", "before/greedy", "rules/beam3", "rules/greedy"]
    for row in rows.values():
        assert 0 <= row["self_contradiction_rate"] <= 1 and 0 <= row["truth_ce_micro_f1"] <= 1
        assert row["reports_per_s"] > 0
    assert rows["rules/greedy"]["unfinished_rate"] == 0  # whole sentences (or nothing) under the defaults
    assert result["references"]["self_contradiction_rate"] == 0
    assert (tmp_path / "reports" / "best_rules_beam3.json").is_file()


def test_preprocess_apply_on_tensors_is_the_saved_resize_crop_and_normalisation():
    from shared.data.transforms import PreprocessConfig

    x = torch.rand(2, 1, 36, 36)
    cropped = PreprocessConfig(image_size=32, resize=36, mean=0.5, std=0.25).apply(x)
    torch.testing.assert_close(cropped, (x[..., 2:34, 2:34] - 0.5) / 0.25)
    plain = PreprocessConfig(image_size=36).apply(x)
    torch.testing.assert_close(plain, x * 2 - 1)  # the models' [-1, 1], as to_model_range gives it
    assert PreprocessConfig(image_size=16).apply(x).shape == (2, 1, 16, 16)
