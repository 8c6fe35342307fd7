import io
import tarfile

import numpy as np
import pytest
import torch

from shared.backbone import build_backbone
from shared.backbone.clip import RadCLIP
from shared.backbone.text_align import (
    TextAlignDataConfig,
    TextAlignExperiment,
    TextAlignModelConfig,
    extend_vocabulary,
    finding_keys,
    text_side_metrics,
    train_text_align,
)
from shared.data.dataset import load_records
from shared.text.labeler import ReportLabeler
from shared.text.tokenizer import ReportTokenizer
from shared.training import TrainConfig

IU_STYLE = [
    "The heart is normal in size. The lungs are clear without infiltrate. No pneumothorax.",
    "Stable cardiomegaly. Calcified granuloma in the right upper lobe. No effusion.",
    "Hyperinflated lungs. No focal airspace opacities. XXXX deformity of the spine.",
    "Small left pleural effusion, unchanged. Heart size normal.",
    "Left basilar atelectasis. No pneumothorax or pleural effusion.",
    "Interval removal of the endotracheal tube. Lungs clear.",
    "Mild pulmonary edema. Cardiomegaly. Stable appearance.",
    "No acute cardiopulmonary abnormality. Stable granuloma.",
]

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">{text}</AbstractText>
<AbstractText Label="IMPRESSION"></AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>normal</major></MeSH><parentImage id="CXR{n}_IM-1"/></eCitation>"""


def iu_archive(path, n=64):
    """A small NLMCXR-style archive: n reports in IU wording (ids split train/val/test by hash)."""
    with tarfile.open(path, "w:gz") as tar:
        for k in range(n):
            data = XML.format(n=k + 1, text=IU_STYLE[k % len(IU_STYLE)]).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{k + 1}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def teacher(tiny_synth, tmp_path):
    data, _ = tiny_synth
    reports = [r["report"] for r in load_records(data / "annotation.json") if r["split"] == "train"]
    torch.manual_seed(0)
    model = build_backbone("radclip_tiny", ReportTokenizer.fit(reports, min_freq=1), num_labels=14)
    model.save_pretrained(tmp_path / "teacher")
    return RadCLIP.from_pretrained(tmp_path / "teacher").eval(), tmp_path / "teacher"


def test_extended_vocabulary_reads_every_text_as_the_teacher_until_trained(teacher):
    model, _ = teacher
    student = extend_vocabulary(model, IU_STYLE * 3, min_freq=3).eval()
    old, new = model.tokenizer, student.tokenizer
    assert new.itos[: len(old)] == old.itos  # old ids keep their meaning
    assert {"granuloma", "xxxx", "unchanged"} <= set(new.itos) and "granuloma" not in old.stoi
    text = ["Calcified granuloma. Stable cardiomegaly.", "no pneumothorax ."]
    a_ids, _ = old.batch_encode(text)
    b_ids, _ = new.batch_encode(text)
    assert not torch.equal(a_ids, b_ids)  # the new words have ids of their own ...
    with torch.no_grad():
        a, b = model(None, a_ids), student(None, b_ids)
    torch.testing.assert_close(a.text_embeds, b.text_embeds)  # ... whose rows start as <unk>'s
    torch.testing.assert_close(a.text_tokens, b.text_tokens)
    assert a.image_embeds is None and a.text_label_logits is not None


def test_forward_needs_a_modality(teacher):
    with pytest.raises(ValueError, match="needs images, input_ids or both"):
        teacher[0](None, None)


def test_text_side_metrics_by_hand(teacher):
    model, _ = teacher
    labels = ReportLabeler().label_batch(IU_STYLE)
    keys = finding_keys(labels)
    assert keys[3] == tuple(sorted(keys[3])) and len(keys) == len(IU_STYLE)
    # scored against themselves: every report's own finding set is among its nearest (itself, cosine 1)
    out = text_side_metrics(model, IU_STYLE, labels, IU_STYLE, labels, top_k=1)
    assert out["nn_top1"] == 1.0 and out["nn_answerable"] == len(IU_STYLE)
    normal = sum(k == (0,) for k in keys)
    assert 0 < normal < len(keys) and out["nn_answerable_abnormal"] == len(keys) - normal
    assert out["nn_top1_abnormal"] == 1.0 and 0 <= out["nn_chance_abnormal"] <= 1
    words = [w for r in IU_STYLE for w in model.tokenizer.tokenize(r)]
    assert out["unk_share"] == round(sum(w not in model.tokenizer.stoi for w in words) / len(words), 4)
    assert 0 <= out["zero_shot_mauc"] <= 1 and "head_mauc" in out


def test_two_step_text_align_run_saves_a_loadable_student(tiny_synth, teacher, tmp_path):
    data, _ = tiny_synth
    _, folder = teacher
    cfg = TextAlignExperiment(
        data=TextAlignDataConfig(annotation=str(data / "annotation.json"), min_freq=2, batch_size=8,
                                 iu_archive=str(iu_archive(tmp_path / "iu.tgz"))),
        model=TextAlignModelConfig(base=str(folder)),
        train=TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, eval_every=2, checkpoint_every=2,
                          log_every=1, progress=False, learning_rate=1e-3))
    result = train_text_align(cfg)
    assert result.steps == 2
    student = RadCLIP.from_pretrained(tmp_path / "run" / "final").eval()
    assert "granuloma" in student.tokenizer.stoi and student.label_head is not None
    base = RadCLIP.from_pretrained(folder)
    # only the text tower learned
    for name, value in base.state_dict().items():
        if not name.startswith("clip.text."):
            assert torch.equal(value, student.state_dict()[name]), name
    ids, _ = student.tokenizer.batch_encode(["stable granuloma ."])
    again = RadCLIP.from_pretrained(tmp_path / "run" / "final").eval()
    with torch.no_grad():
        torch.testing.assert_close(student(None, ids).text_embeds, again(None, ids).text_embeds)
    history = (tmp_path / "run" / "history.json").read_text()
    assert "val/nn_top5" in history and "train/align_loss" in history


def test_text_align_refuses_a_base_without_findings_head(tiny_synth, tmp_path):
    data, _ = tiny_synth
    reports = [r["report"] for r in load_records(data / "annotation.json")]
    build_backbone("radclip_tiny", ReportTokenizer.fit(reports, min_freq=1)).save_pretrained(tmp_path / "plain")
    cfg = TextAlignExperiment(data=TextAlignDataConfig(annotation=str(data / "annotation.json"),
                                                       iu_archive=str(iu_archive(tmp_path / "iu.tgz"))),
                              model=TextAlignModelConfig(base=str(tmp_path / "plain")),
                              train=TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, progress=False))
    with pytest.raises(ValueError, match="has no findings head"):
        train_text_align(cfg)
    assert not np.any([p.name == "run" for p in tmp_path.iterdir()])  # nothing written


def test_swap_text_encoder_writes_a_pipeline_that_reads_the_new_words(tmp_path):
    from report2image import ReportToCXRPipeline
    from report2image.train import TextEncoderSwapExperiment, swap_text_encoder
    from tests.test_report2image import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    student = extend_vocabulary(pipe.text_encoder, IU_STYLE * 3, min_freq=3)
    student.save_pretrained(tmp_path / "student")
    cfg = TextEncoderSwapExperiment(pipeline=str(tmp_path / "pipe"), text_encoder=str(tmp_path / "student"),
                                    train=TrainConfig(output_dir=str(tmp_path / "run")))
    assert swap_text_encoder(cfg).steps == 0
    swapped = ReportToCXRPipeline.from_pretrained(tmp_path / "run" / "best")
    assert "granuloma" in swapped.text_encoder.tokenizer.stoi
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()
    # the UNet is the pipeline's; an untrained student (new rows = <unk>) draws what the old encoder drew
    assert torch.equal(swapped.unet.state_dict()["conv_in.weight"], pipe.unet.state_dict()["conv_in.weight"])
    gen = [p.generate_batched(["Stable cardiomegaly."], 1, 0, 2, 1.0) for p in (pipe, swapped)]
    torch.testing.assert_close(gen[0], gen[1])


def test_swap_text_encoder_refuses_another_backbone(tmp_path):
    from report2image.train import check_text_encoder_swap
    from tests.test_report2image import tiny_pipeline

    pipe = tiny_pipeline()
    torch.manual_seed(1)
    other = build_backbone("radclip_tiny", pipe.text_encoder.tokenizer)
    with pytest.raises(ValueError, match="image side differs"):
        check_text_encoder_swap(pipe.text_encoder, other)
    wider = build_backbone("radclip_small", pipe.text_encoder.tokenizer)
    with pytest.raises(ValueError, match="text_width"):
        check_text_encoder_swap(pipe.text_encoder, wider)


def test_iu_text_benchmark_scores_backbones_and_writes_the_card_rows(tiny_synth, teacher, tmp_path, monkeypatch,
                                                                     load_benchmark):
    import json
    import sys

    from evaluation.classifier import Judge, build_classifier
    from radloop.zoo import render_card
    from tests.test_report2image import tiny_pipeline

    data, _ = tiny_synth
    model, folder = teacher
    extend_vocabulary(model, IU_STYLE * 3, min_freq=3).save_pretrained(tmp_path / "student")
    bench = load_benchmark("iu_text")
    monkeypatch.setattr(sys, "argv", ["iu_text.py", "--backbones", str(folder), str(tmp_path / "student"),
                                      "--synth", str(data), "--archive", str(iu_archive(tmp_path / "iu.tgz", 200)),
                                      "--json", str(tmp_path / "out.json")])
    bench.main()
    out = json.loads((tmp_path / "out.json").read_text())
    rows = out["backbones"]
    assert out["iu_test_reports"] > 0 and list(rows) == [str(folder), str(tmp_path / "student")]
    base, student = rows[str(folder)], rows[str(tmp_path / "student")]
    assert student["vocab"] > base["vocab"] and "generation" not in base  # no --pipeline: text side only
    base, student = base["text"], student["text"]
    assert student["unk_share"] < base["unk_share"]

    # generation: one image per report, scored against the reports' labels; rare findings kept out of the 20+ macro
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    judge = Judge(build_classifier("classifier_tiny", image_size=pipe.image_size).eval())
    labels = ReportLabeler().label_batch(IU_STYLE * 3)
    gen = bench.generation_mauc(pipe, judge, IU_STYLE * 3, labels, seed=0)
    assert gen["n"] == 24 and gen["positives"]["Cardiomegaly"] == int((labels[:, 2] == 1).sum()) == 6
    assert gen["classes_20plus"] == [] and gen["mauc_20plus"] is None  # no finding has 20 positive reports

    # the zoo card's rows for a text_align entry of the index, beside the first backbone
    sets = ("iu_test", "synthcxr_test")
    result = {"command": "python benchmarks/iu_text.py", "pipeline": "zoo:ldm64", "backbones": {
        "zoo:radclip_small": {"text": base, "generation": {k: {"mauc_20plus": 0.5} for k in sets}},
        "zoo:radclip_small_iu": {"text": student, "generation": {k: {"mauc_20plus": 0.6} for k in sets}}}}
    card_rows = bench.zoo_real_text(result)
    assert set(card_rows) == {"radclip_small_iu"} and card_rows["radclip_small_iu"]["base"] == "radclip_small"
    got = card_rows["radclip_small_iu"]["rows"]
    assert got["IU running words read as `<unk>`"] == [student["unk_share"], base["unk_share"]]
    assert [v for k, v in got.items() if k.startswith("judge mAUC on zoo:ldm64 images from IU")] == [[0.6, 0.5]]
    (tmp_path / "zoo.json").write_text(json.dumps({"real_text": card_rows}))
    meta = {"name": "radclip_small_iu", "dataset": "d", "command": "c", "recipe": "r", "trainer": "text_align"}
    card = render_card(meta, tmp_path / "zoo.json")
    assert "| metric | radclip_small_iu | radclip_small |" in card and "Not benchmarked yet" not in card
