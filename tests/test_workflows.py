"""radloop workflows: rare-finding report composition, augmentation inputs, the HTML report helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radloop.augment import compose_reports, pick_rare_findings, sentence_pool
from radloop.cli import main
from radloop.html_report import SECTIONS, highlight_findings, image_grid, metric_table, render_html
from shared.text.labeler import ReportLabeler

TRAIN = [
    "The heart is normal in size. Lungs are clear. No pneumothorax.",
    "Small right pneumothorax. The heart is normal in size. No pleural effusion.",
    "Large left pleural effusion. Mild cardiomegaly.",
    "The mediastinum is unremarkable. No acute cardiopulmonary abnormality.",
] * 5 + ["There is a left rib fracture. Lungs are clear."]


def test_pick_rare_findings_uses_the_labeler_prevalence():
    rare = pick_rare_findings(TRAIN, 0.1)
    assert rare == ["Fracture"]  # 1 of 21; the others are at 5/21
    assert set(pick_rare_findings(TRAIN, 0.3)) == {"Fracture", "Pneumothorax", "Pleural Effusion", "Cardiomegaly"}


def test_compose_reports_state_the_finding_and_nothing_else():
    labeler = ReportLabeler()
    pool = sentence_pool(TRAIN, labeler)
    reports = compose_reports(pool, "Pneumothorax", 8, seed=0)
    assert len(reports) == 8
    labels = labeler.label_batch(reports)
    names = list(labeler("x").keys())
    j = names.index("Pneumothorax")
    assert (labels[:, j] == 1).all()
    others = [i for i, n in enumerate(names) if n not in ("Pneumothorax", "Lung Opacity", "No Finding")]
    assert not (labels[:, others] == 1).any()
    assert compose_reports(pool, "Pneumothorax", 8, seed=0) == reports  # seeded
    with pytest.raises(ValueError, match="Edema"):
        compose_reports(pool, "Edema", 2)


def test_augment_names_an_unknown_finding(tiny_synth, tmp_path, capsys):
    data, _ = tiny_synth
    rc = main(["augment", f"annotation={data / 'annotation.json'}", f"output_dir={tmp_path / 'aug'}",
               "findings=[Dragon Pox]", f"diffusion={tmp_path / 'none'}"])
    assert rc == 2
    assert "Dragon Pox" in capsys.readouterr().err


def test_html_helpers():
    labeler = ReportLabeler()
    marked = highlight_findings("Large left pleural effusion. No pneumothorax.", labeler, {"Cardiomegaly"})
    assert '<mark class="f bad" title="Pleural Effusion">' in marked and "pneumothorax" in marked.lower()
    grid = image_grid([[np.zeros((4, 4))] * 3, [np.ones((4, 4))]], scale=2, pad=1)
    assert grid.size == (2 * (3 * 5 + 1), 2 * (2 * 5 + 1))
    table = metric_table({"fid": 1.23456, "n": 3})
    assert "<td>1.235</td>" in table and "<td>3</td>" in table
    with pytest.raises(ValueError, match="curves"):
        render_html("t", {s: ("h", "") for s in SECTIONS if s != "curves"})
    page = render_html("t", {s: (s, "<p>x</p>") for s in SECTIONS})
    assert all(f'<section id="{s}">' in page for s in SECTIONS)
    json.dumps(page)  # plain text, no bytes
