import json
import math
from typing import Any

import pytest

from radloop.cli import build_parser, main


def _verbs(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _verbs(sub, (*prefix, name))


def test_every_verb_has_help(capsys):
    verbs = list(_verbs(build_parser()))
    assert ("synth",) in verbs and ("data", "iu-reports") in verbs and ("demo",) in verbs
    for verb in [(), *verbs]:
        with pytest.raises(SystemExit) as exit_info:
            main([*verb, "--help"])
        assert exit_info.value.code == 0
        assert "usage: radloop" in capsys.readouterr().out


def test_synth_writes_dataset_config_and_sha(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["synth", "--out", str(out), "--patients", "4", "--studies-per-patient", "1",
                 "--size", "32", "--quiet", "synth.degraded_fraction=0.5"]) == 0
    assert "wrote 4 studies" in capsys.readouterr().out
    assert (out / "annotation.json").is_file() and (out / "labels.csv").is_file()
    assert "degraded_fraction: 0.5" in (out / "config.yaml").read_text()
    assert "git_sha" in json.loads((out / "run_info.json").read_text())


def test_synth_preview_only(tmp_path):
    assert main(["synth", "--preview", str(tmp_path / "sheet.png"), "--size", "32"]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,message", [
    (["synth", "--out", "X", "synth.colour=1"], "unknown config key 'synth.colour'"),
    (["synth", "--out", "X", "--config", "missing.yaml"], "config file not found"),
    (["synth"], "give --out DIR"),
    (["data", "tokenizer", "--annotation", "none.json", "--out", "t"], "annotation file not found"),
    (["data", "iu-reports", "--out", "r.json", "--archive", "none.tgz"], "archive not found"),
])
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("radloop: error:") and message in err and len(err.splitlines()) == 1


def test_synth_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep").write_text("x")
    assert main(["synth", "--out", str(tmp_path), "--patients", "2", "--size", "32", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep").read_text() == "x"


def test_tokenizer_verb(tiny_synth, tmp_path, capsys):
    out, _ = tiny_synth
    assert main(["data", "tokenizer", "--annotation", str(out / "annotation.json"), "--out", str(tmp_path)]) == 0
    vocab = json.loads((tmp_path / "report_tokenizer.json").read_text())["vocab"]
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and "effusion" in vocab


def test_demo_quick_writes_every_section_with_finite_numbers(tmp_path, capsys):
    import re

    from radloop.html_report import SECTIONS

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in ("SynthCXR data", "backbone", "report model", "diffusion", "counterfactuals", "synthetic rare cases",
                  "round trip", "HTML report", "total"):
        assert f"| {stage} |" in text
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert page.count("data:image/png;base64,") >= 4  # images, counterfactuals, round trip, curves
    results = json.loads((out / "results.json").read_text())
    assert non_finite(results) == []
    # every number printed in the page's tables is finite too
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert not any(c.strip().lower() in ("nan", "inf", "-inf") for c in cells)
    assert (out / "training_curves.png").is_file()
    # the synthetic rare cases, each with the gate's decision (no decoder is retrained for them)
    rare = results["synthetic_rare"]
    assert rare["rare_findings"] and set(rare["findings"]) == set(rare["rare_findings"])
    assert all(r["generated"] == 3 and 0 <= r["accepted"] <= 3 for r in rare["findings"].values())
    assert len(list((out / "synthetic" / "images").rglob("*.png"))) == 3 * len(rare["rare_findings"])
    assert ("kept" in page or "rejected" in page) and not (out / "augment").exists()


def test_models_lists_every_family_and_filters(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in ("backbone:", "tower:", "lsu:", "radcare:", "tower_pretrainer:", "classifier:", "report_decoder:",
                   "ldm:", "trainer:"):
        assert family in out
    assert main(["models", "--family", "report_decoder", "--filter", "*_tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("report_decoder:") and {ln.split()[0] for ln in lines[1:]} == {
        "baseline_tiny", "uar_tiny", "cmcrl_tiny", "ifnet_tiny"}
    assert main(["models", "--family", "nope"]) == 2
    assert "unknown model family 'nope'; known: backbone" in capsys.readouterr().err


def non_finite(obj: Any, path: str = "") -> list[str]:
    """The paths of every NaN/inf number in a nested structure (the demo test wants none)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{path}/{i}")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    return []


def test_train_refuses_a_folder_another_run_holds_and_keeps_its_config(tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys

    from shared.training.lock import LOCK_NAME

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("the running run's config\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        assert main(["train", "backbone", f"train.output_dir={out}", "model.name=radclip_tiny"]) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f"in use by another run (pid {sleeper.pid}" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == "the running run's config\n"
    assert os.path.exists(out / LOCK_NAME)  # the other run's lock is left alone


@pytest.mark.parametrize("argv", [
    ["synth", "--patients", "2", "--size", "32", "--out", "{out}"],
    ["demo", "--quick", "--out", "{out}"],
    ["augment", "output_dir={out}"],
    ["generate", "image", "--pipeline", "zoo:ldm64", "--report", "Small left effusion.", "--out", "{out}"],
])
def test_a_second_run_into_a_folder_in_use_refuses_in_one_line(tmp_path, capsys, argv):
    import os
    import socket

    out = tmp_path / "out"
    out.mkdir()
    # another live process on this host holds the folder (pid 1 always exists)
    (out / ".radloop.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))
    assert os.getpid() != 1
    assert main([a.replace("{out}", str(out)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radloop: error:") and err.count("\n") == 1 and "is in use by another run (pid 1" in err
    assert sorted(p.name for p in out.iterdir()) == [".radloop.lock"]  # nothing written


def test_diffusers_names_with_the_old_flags_accepted_for_one_release(capsys):
    """--pipeline / --num-inference-steps / --guidance-scale (diffusers' names); --checkpoint, --diffusion,
    --steps and --guidance still parse into them, with a deprecation line, and are hidden from --help."""
    from radloop.cli import build_parser

    parser = build_parser(with_trainers=False)
    new = parser.parse_args(["generate", "image", "--pipeline", "P", "--num-inference-steps", "3",
                             "--guidance-scale", "2.5", "--report", "x", "--out", "o"])
    old = parser.parse_args(["generate", "image", "--checkpoint", "P", "--steps", "3", "--guidance", "2.5",
                             "--report", "x", "--out", "o"])
    for args in (new, old):
        assert (args.pipeline, args.num_inference_steps, args.guidance_scale) == ("P", 3, 2.5)
    err = capsys.readouterr().err
    assert "--checkpoint is deprecated and goes in the next release; use --pipeline" in err
    assert "--steps is deprecated" in err and "use --guidance-scale" in err
    trip = parser.parse_args(["roundtrip", "--diffusion", "P", "--report-model", "R", "--annotation", "A"])
    assert trip.pipeline == "P" and "use --pipeline" in capsys.readouterr().err
    report = parser.parse_args(["generate", "report", "--checkpoint", "R", "--annotation", "A", "--out", "o"])
    assert report.report_model == "R"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "image", "--help"])
    assert "--checkpoint" not in capsys.readouterr().out
    assert main(["generate", "image", "--report", "x", "--out", "o"]) == 2
    assert "radloop: error: --pipeline is required" in capsys.readouterr().err
