import json

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


def test_demo_quick_runs_and_says_what_is_missing(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    text = capsys.readouterr().out
    assert "| SynthCXR data |" in text and "not built yet" in text
    assert (tmp_path / "demo" / "tokenizer" / "report_tokenizer.json").is_file()
    assert (tmp_path / "demo" / "synthcxr_sheet.png").is_file()
