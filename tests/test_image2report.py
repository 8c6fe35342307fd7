import json

import pytest
import torch

from image2report.decoding import DecodingConfig, beam_search, decode, greedy_decode
from image2report.generator import ReportGenerator
from image2report.models import BaselineReportModel, build_report_model
from radloop.cli import main
from shared.text.tokenizer import ReportTokenizer

TOK = ReportTokenizer.fit(["no pleural effusion.", "small left pleural effusion.", "moderate cardiomegaly."] * 3)


def _model(views=1):
    torch.manual_seed(0)
    m = build_report_model("baseline_tiny", len(TOK), max_views=views).eval()
    m.tokenizer = TOK
    return m


def test_forward_loss_and_multi_view():
    m = _model(views=2)
    ids, _ = TOK.batch_encode(["no pleural effusion.", "moderate cardiomegaly."])
    out = m(torch.randn(2, 2, 1, 32, 32), ids)
    assert out.logits.shape == (2, ids.shape[1] - 1, len(TOK)) and torch.isfinite(out.loss)
    assert m.encode(torch.randn(2, 2, 1, 32, 32)).shape[1] == 2 * m.encode(torch.randn(2, 1, 1, 32, 32)).shape[1]
    with pytest.raises(ValueError, match="at most 2"):
        m.encode(torch.randn(1, 3, 1, 32, 32))


def test_save_load_same_output(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path)
    again = BaselineReportModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 1, 32, 32)
    ids, _ = TOK.batch_encode(["small left pleural effusion.", "no pleural effusion."])
    torch.testing.assert_close(m(x, ids).logits, again(x, ids).logits)
    gen_a, gen_b = ReportGenerator(m, TOK), ReportGenerator.from_pretrained(tmp_path)
    assert gen_a.generate(x, num_beams=2) == gen_b.generate(x, num_beams=2)


class _Toy:
    """A fixed next-token table: after token t prefer (t + 1) % V, with EOS (2) likely after 6."""

    def __init__(self, vocab=8):
        self.vocab = vocab

    def __call__(self, memory, tokens):
        last = tokens[:, -1]
        logits = torch.full((len(tokens), self.vocab), -5.0)
        logits[torch.arange(len(tokens)), (last + 1) % self.vocab] = 0.0
        logits[last >= 6, 2] = 1.0
        logits[:, 4] = -0.5  # a tempting alternative everywhere
        return torch.log_softmax(logits, -1)


def test_greedy_and_beam_on_a_known_table():
    mem = torch.zeros(2, 1, 4)
    cfg = DecodingConfig(num_beams=1, max_length=10, no_repeat_ngram_size=0, min_length=0)
    # bos 1 -> 2 would be eos, but token ids are shifted: from 1 the best is 2 = eos. Use bos 3.
    out = greedy_decode(_Toy(), mem, 3, 2, cfg)
    assert out[0].tolist()[:5] == [3, 4, 5, 6, 2]
    beam = beam_search(_Toy(), mem, 3, 2, DecodingConfig(num_beams=3, max_length=10, no_repeat_ngram_size=0,
                                                         min_length=0))
    assert beam[0].tolist()[:5] == [3, 4, 5, 6, 2] and beam.shape[0] == 2
    assert torch.equal(decode(_Toy(), mem, 3, 2, cfg), out)


def test_no_repeat_ngram_and_forbidden_tokens():
    class Loop:
        def __call__(self, memory, tokens):  # always prefers token 5, then 6
            logits = torch.full((len(tokens), 8), -9.0)
            logits[:, 5], logits[:, 6], logits[:, 0], logits[:, 3] = 0.0, -1.0, 5.0, 5.0
            return torch.log_softmax(logits, -1)

    out = greedy_decode(Loop(), torch.zeros(1, 1, 4), 3, 2, DecodingConfig(1, 8, 1.0, 2, 0))
    seq = out[0].tolist()
    assert 0 not in seq and seq.count(3) == 1  # neither <pad> nor a second <bos>
    bigrams = list(zip(seq[1:], seq[2:], strict=False))
    assert len(bigrams) == len(set(bigrams))  # no bigram twice
    with pytest.raises(ValueError, match="num_beams"):
        decode(Loop(), torch.zeros(1, 1, 4), 3, 2, DecodingConfig(num_beams=0))


def test_train_generate_and_evaluate_end_to_end(tmp_path, tiny_synth, capsys):
    out, _ = tiny_synth
    run = tmp_path / "rep"
    assert main(["train", "report", f"data.annotation={out / 'annotation.json'}", "model.name=baseline_tiny",
                 "data.image_size=32", "data.batch_size=8", "data.min_freq=1", "data.max_length=40",
                 "train.max_steps=2", f"train.output_dir={run}", "train.eval_every=2", "train.progress=false",
                 "data.val_samples=4"]) == 0
    preds = tmp_path / "preds.json"
    assert main(["generate", "report", "--report-model", str(run / "best"), "--annotation",
                 str(out / "annotation.json"), "--split", "test", "--num-beams", "2", "--out", str(preds)]) == 0
    generated = json.loads(preds.read_text())
    assert len(generated) > 0 and all(isinstance(v, str) for v in generated.values())
    assert main(["evaluate", "reports", "--pred", str(preds), "--ref", str(out / "annotation.json"),
                 "--no-meteor"]) == 0
    assert "| ce_micro_f1 |" in capsys.readouterr().out


def test_generator_refuses_other_checkpoints(tmp_path):
    from evaluation.classifier import build_classifier

    build_classifier("classifier_tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not of a report model"):
        ReportGenerator.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        ReportGenerator.from_pretrained(tmp_path / "none")


def test_init_visual_from_backbone_and_tower_pretrainer(tmp_path):
    from evaluation.classifier import build_classifier
    from shared.backbone import build_backbone
    from shared.backbone.classifier import build_tower_pretrainer

    x = torch.randn(2, 1, 32, 32)
    # A RadCLIP folder: the report tower computes what the backbone's image tower computes.
    backbone = build_backbone("radclip_tiny", TOK).eval()
    backbone.save_pretrained(tmp_path / "clip")
    m = _model()
    assert m.init_visual_from(str(tmp_path / "clip")) == len(m.image_encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m.image_encoder.forward_features(x.expand(-1, 3, -1, -1)),
                                   backbone.clip.visual.trunk.forward_features(x.expand(-1, 3, -1, -1)))
    # A tower pre-trainer with a one-channel stem: the same features from the grey image repeated.
    torch.manual_seed(1)
    clf = build_tower_pretrainer("tower_pretrainer_tiny").eval()
    clf.save_pretrained(tmp_path / "clf")
    m = _model()
    assert m.init_visual_from(str(tmp_path / "clf")) == len(m.image_encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m.image_encoder.forward_features(x.expand(-1, 3, -1, -1)),
                                   clf.backbone.forward_features(x), rtol=1e-4, atol=1e-5)
    # Bad folders are named.
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        m.init_visual_from(str(tmp_path / "none"))
    m.save_pretrained(tmp_path / "report")
    with pytest.raises(ValueError, match="of BaselineReportModel, not of a RadCLIP or TowerPretrainer"):
        m.init_visual_from(str(tmp_path / "report"))
    # The judge never initialises a generator, even with a tower that would fit.
    build_classifier("classifier_tiny", arch="cxr_resnet_tiny").save_pretrained(tmp_path / "judge")
    with pytest.raises(ValueError, match="holds the judge classifier, which never initialises a generator"):
        m.init_visual_from(str(tmp_path / "judge"))
    build_tower_pretrainer("tower_pretrainer_tiny", arch="test_resnet").save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not fit visual='cxr_resnet_tiny'"):
        m.init_visual_from(str(tmp_path / "other"))
