import json
import math

import numpy as np
import pytest

from evaluation.diversity import diversity_scores
from evaluation.reports import evaluate_reports, load_report_map
from radloop.cli import main
from shared.labels import CHEXPERT_LABELS
from shared.metrics.clinical import binarize, clinical_efficacy
from shared.metrics.nlg import java_status, nlg_scores
from shared.metrics.stats import aggregate_seeds, approximate_randomization, mean_ci, paired_bootstrap

REFS = ["The heart is normal in size. No pleural effusion.", "Small right pleural effusion. No pneumothorax.",
        "Moderate cardiomegaly. The lungs are clear.", "No acute cardiopulmonary abnormality."]
PREDS = ["The heart is normal. No effusion.", "Small left pleural effusion.",
         "Mild cardiomegaly. Lungs are clear.", "No acute cardiopulmonary disease."]


def test_equal_to_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    from shared.text.tokenizer import clean_report

    gts = {i: [clean_report(r)] for i, r in enumerate(REFS)}
    res = {i: [clean_report(p)] for i, p in enumerate(PREDS)}
    ours = nlg_scores(PREDS, REFS)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert ours[f"bleu_{n + 1}"] == pytest.approx(bleu[n], abs=1e-12)
    assert ours["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    if java_status()[0]:
        m = Meteor()
        assert ours["meteor"] == pytest.approx(m.compute_score(gts, res)[0], abs=1e-9)
        m.meteor_p.kill()


def test_hand_computed_bleu1_and_perfect_match():
    # "the heart is normal ." vs "the heart is big .": 4 of 5 unigrams match, same length.
    s = nlg_scores(["The heart is normal."], ["The heart is big."], meteor=False)
    assert s["bleu_1"] == pytest.approx(0.8, abs=1e-6)
    same = nlg_scores(REFS, REFS, meteor=False)
    assert same["bleu_4"] == pytest.approx(1.0, abs=1e-6) and same["rouge_l"] == pytest.approx(1.0)
    assert math.isnan(same["meteor"]) and "skipped" in same["meteor_error"]


def test_missing_java_is_said_clearly(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    ok, why = java_status()
    assert not ok and "java is not on PATH" in why
    s = nlg_scores(PREDS, REFS)
    assert math.isnan(s["meteor"]) and "java is not on PATH" in s["meteor_error"]
    with pytest.raises(RuntimeError, match="METEOR cannot run"):
        nlg_scores(PREDS, REFS, meteor=True)


def test_empty_prediction_and_bad_lengths():
    s = nlg_scores(["", "x."], ["the heart.", "x."], meteor=False)
    assert 0.0 <= s["bleu_1"] < 1.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        nlg_scores(["a", "b"], ["a"], meteor=False)


def _matrix(rows):
    m = np.full((len(rows), 14), np.nan)
    for i, row in enumerate(rows):
        for name, v in row.items():
            m[i, CHEXPERT_LABELS.index(name)] = v
    return m


def test_clinical_efficacy_hand_computed():
    ref = _matrix([{"Cardiomegaly": 1, "Edema": 1}, {"Pleural Effusion": 1}, {}])
    pred = _matrix([{"Cardiomegaly": 1}, {"Pleural Effusion": 1, "Edema": 1}, {"Fracture": -1}])
    ce = clinical_efficacy(pred, ref)
    # micro: tp=2 (cardio, effusion), fp=1 (edema in 2), fn=1 (edema in 1)
    assert ce["ce_micro_precision"] == pytest.approx(2 / 3) and ce["ce_micro_recall"] == pytest.approx(2 / 3)
    # macro over defined labels: cardiomegaly f1=1, effusion f1=1, edema f1=0 -> 2/3 (3 labels)
    assert ce["ce_macro_labels"] == 3 and ce["ce_macro_f1"] == pytest.approx(2 / 3)
    # example-based: report 1 P=1 R=1/2 F=2/3; report 2 P=1/2 R=1 F=2/3; report 3 both empty -> 1
    assert ce["ce_example_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert ce["ce_example_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert ce["ce_example_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # uncertain as positive: the fracture in report 3 becomes a false positive
    ce_pos = clinical_efficacy(pred, ref, uncertain="positive")
    assert ce_pos["ce_micro_precision"] == pytest.approx(2 / 4) and ce_pos["ce_uncertain_as_positive"] == 1.0
    assert ce_pos["ce_example_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # the CheXbert-5 subset sees cardiomegaly, edema, effusion: same counts here
    assert ce["ce5_micro_f1"] == pytest.approx(2 / 3)


def test_clinical_efficacy_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        clinical_efficacy(np.zeros((2, 13)), np.zeros((2, 13)))
    with pytest.raises(ValueError, match="uncertain"):
        binarize(np.zeros((1, 14)), "maybe")


def test_diversity_hand_computed():
    d = diversity_scores(["a b . a b .", "a c ."], max_n=2, clean=None)
    # unigrams: a b . a b . a c . -> 9 tokens, 4 distinct (a, b, ., c)
    assert d["distinct_1"] == pytest.approx(4 / 9)
    # sentences: report 1 has "a b" twice -> 1 repeat of 3 sentences
    assert d["repeated_sentence_rate"] == pytest.approx(1 / 3)
    assert d["unique_report_rate"] == 1.0


def _acc(preds, refs):
    return float(np.mean([p == r for p, r in zip(preds, refs, strict=True)]))


def test_significance_tests():
    rng = np.random.default_rng(0)
    refs = list(rng.integers(0, 2, 300))
    good = [r if rng.random() < 0.9 else 1 - r for r in refs]
    bad = [r if rng.random() < 0.6 else 1 - r for r in refs]
    boot = paired_bootstrap(_acc, good, bad, refs, n=300)
    assert boot["ci_low"] > 0.15 and boot["p_value"] < 0.01
    ar = approximate_randomization(_acc, good, bad, refs, n=300)
    assert ar["p_value"] < 0.01
    same = approximate_randomization(_acc, good, good, refs, n=100)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="equally many"):
        paired_bootstrap(_acc, good, bad[:-1], refs)


def test_multi_seed_aggregation():
    agg = aggregate_seeds([{"bleu_4": 0.1, "cider": 1.0}, {"bleu_4": 0.3, "cider": float("nan")}])
    assert agg["bleu_4"] == {"mean": pytest.approx(0.2), "std": pytest.approx(math.sqrt(0.02)), "n": 2}
    assert agg["cider"]["n"] == 1
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and low < 2.0 < high


def test_evaluate_reports_end_to_end():
    refs = {f"s{i}": r for i, r in enumerate(REFS)}
    m = evaluate_reports(refs, refs, meteor=False)
    assert m["n"] == 4 and m["ce_micro_f1"] == 1.0 and m["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="no reference, e.g. 'zzz'"):
        evaluate_reports({"zzz": "x"}, refs, meteor=False)


def test_cli_evaluate_reports(tmp_path, tiny_synth, capsys):
    out, _ = tiny_synth
    refs = load_report_map(out / "annotation.json")
    ids = sorted(refs)[:6]
    (tmp_path / "p.json").write_text(json.dumps({k: refs[ids[0]] for k in ids}))
    code = main(["evaluate", "reports", "--pred", str(tmp_path / "p.json"), "--ref", str(out / "annotation.json"),
                 "--out", str(tmp_path / "m.json"), "--no-meteor"])
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1", "ce_example_f1", "ce5_micro_f1"):
        assert key in metrics and math.isfinite(metrics[key])
    assert "| ce_micro_f1 |" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [
    ("{bad", "is not valid JSON"),
    ('["a"]', "must map study ids to report strings"),
])
def test_cli_evaluate_reports_bad_files(tmp_path, capsys, content, message):
    (tmp_path / "p.json").write_text(content)
    (tmp_path / "r.json").write_text('{"a": "x"}')
    assert main(["evaluate", "reports", "--pred", str(tmp_path / "p.json"), "--ref", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err


def test_nlg_scores_subset_matches_the_full_run():
    preds, refs = ["the heart is normal .", "no effusion"], ["the heart is normal in size .", "small effusion"]
    full = nlg_scores(preds, refs, meteor=False)
    bleu = nlg_scores(preds, refs, meteor=False, only=("bleu",))
    assert set(bleu) == {f"bleu_{n}" for n in range(1, 5)}
    assert all(bleu[k] == full[k] for k in bleu)
    with pytest.raises(ValueError, match="unknown NLG metric\\(s\\) \\['spice'\\]"):
        nlg_scores(preds, refs, only=("spice",))
