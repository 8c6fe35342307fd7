"""Would a radiologist sign the zoo decoders' reports? Report quality under decoding settings (issue 38).

    python benchmarks/report_quality.py [--entries baseline uar ifnet cmcrl] [--arms before rules ...] \
        [--limit N] [--json benchmarks/results/report_quality_synthcxr64_cpu2.json]

For every zoo decoder, every decoding arm and greedy / beam 3, on the zoo's fresh test set
(``configs/zoo/test_data.yaml``, seed 1001, 810 studies, never trained on): the report-quality metrics of
:mod:`shared.metrics.report_quality` (self-contradiction, restatement, unfinished, repeated and novel sentences:
novel against the zoo's training reports), CE micro/macro-F1 of the labeler's reading against the image's true
findings (as ``benchmarks/zoo_synth.py`` scores them), BLEU-4 and reports per second (decoding the whole test
set in batches of 32, one process, this machine). The reference reports get the same quality metrics once.

Arms (each a set of :class:`image2report.decoding.DecodingConfig` fields over the defaults, so each change is
measured alone): ``before`` = the decoding before the sentence rules (R2Gen's trigram block, nothing else);
``no_ngram`` = without the trigram block; ``whole`` = + reports end on whole sentences; ``repeats`` = + a
sentence at most twice; ``rules`` = + label-consistent (the defaults); ``rules_ngram3`` = the defaults beside
the trigram block.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from report_synth import truth_labels

from image2report.decoding import DecodingConfig
from image2report.generator import ReportGenerator
from radloop.zoo import ensure_data, load_index
from shared.data.dataset import ReportImageDataset
from shared.metrics import clinical_efficacy, nlg_scores
from shared.metrics.report_quality import report_quality_scores, sentence_set
from shared.text.labeler import ReportLabeler

_BEFORE = {"no_repeat_ngram_size": 3, "whole_sentences": False, "max_sentence_repeats": 0, "label_consistent": False}
ARMS: dict[str, dict[str, Any]] = {
    "before": _BEFORE,
    "no_ngram": {**_BEFORE, "no_repeat_ngram_size": 0},
    "whole": {**_BEFORE, "no_repeat_ngram_size": 0, "whole_sentences": True},
    "repeats": {"label_consistent": False},
    "rules": {},
    "rules_ngram3": {"no_repeat_ngram_size": 3},
}
MODES = {"greedy": 1, "beam3": 3}


def score_texts(texts: list[str], refs: list[str], truth: Any, labeler: ReportLabeler,
                known: set[str]) -> dict[str, float]:
    """Quality, CE against the truth and BLEU-4 of one set of generated reports."""
    quality = report_quality_scores(texts, labeler, known_sentences=known)
    ce = clinical_efficacy(labeler.label_batch(texts), truth)
    bleu = nlg_scores(texts, refs, clean="iu_xray", meteor=False, only=("bleu",))["bleu_4"]
    return {**{k: round(v, 4) for k, v in quality.items()},
            "truth_ce_micro_f1": round(ce["ce_micro_f1"], 4), "truth_ce_macro_f1": round(ce["ce_macro_f1"], 4),
            "bleu_4": round(float(bleu), 4), "mean_words": round(sum(len(t.split()) for t in texts) / len(texts), 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", nargs="+", default=["baseline", "uar", "ifnet", "cmcrl"],
                   help="zoo entries, or saved report-model folders (a path)")
    p.add_argument("--test-data", dest="test_data", type=Path, help="a SynthCXR folder (default: the zoo's test set)")
    p.add_argument("--train-data", dest="train_data", type=Path,
                   help="the SynthCXR folder whose training reports the novel-sentence rate reads (default: the zoo's)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--limit", type=int, help="the first N test studies (smoke runs)")
    p.add_argument("--json", type=Path, help="also write the result here (rewritten after every decoder)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/zoo/report_quality"), help="generated reports")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data = args.test_data or ensure_data(load_index(), test=True)
    train = args.train_data or ensure_data(load_index())
    test_ds = ReportImageDataset(data / "annotation.json", "test", image_size=64)
    if args.limit:
        test_ds.records = test_ds.records[: args.limit]
    ids, refs = [r["id"] for r in test_ds.records], [r["report"] for r in test_ds.records]
    truth = truth_labels(data, ids)
    labeler = ReportLabeler()
    train_reports = [e["report"] for e in json.loads((train / "annotation.json").read_text())["train"]]
    known = sentence_set(train_reports)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "report_quality_synthcxr64", "machine": f"{platform.machine()} CPU, "
                                                             f"{torch.get_num_threads()} threads",
        "test_data": f"{data} (seed 1001, {len(ids)} test studies, never trained on)",
        "command": "python benchmarks/report_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "arms": {a: ARMS[a] for a in args.arms}, "defaults": DecodingConfig().__dict__,
        "references": score_texts(refs, refs, truth, labeler, known), "entries": {},
    }
    for name in args.entries:
        gen = ReportGenerator.from_pretrained(name if "/" in name else f"zoo:{name}")
        # the images as the model's saved preprocessing makes them
        test_ds.transform = gen.preprocess.transform(train=False)
        test_ds.max_views = gen.model.config.max_views
        images = torch.stack([test_ds[i]["images"] for i in range(len(test_ds))])
        name = Path(name).name if "/" in name else name
        gen.generate(images[:32], num_beams=3)  # warm-up (allocator, the rules' sentence cache is filled below)
        rows: dict[str, Any] = {}
        for arm in args.arms:
            cfg = DecodingConfig(**{**DecodingConfig(max_length=gen.decoding.max_length).__dict__, **ARMS[arm]})
            for mode in args.modes:
                t0 = time.perf_counter()
                texts = gen.generate(images, num_beams=MODES[mode], decoding=cfg)
                seconds = time.perf_counter() - t0
                rows[f"{arm}/{mode}"] = {**score_texts(texts, refs, truth, labeler, known),
                                         "reports_per_s": round(len(texts) / seconds, 2)}
                preds = dict(zip(ids, texts, strict=True))
                (args.out_dir / f"{name}_{arm}_{mode}.json").write_text(json.dumps(preds, indent=1))
                logging.warning("%s %s %s: %s", name, arm, mode, rows[f"{arm}/{mode}"])
        result["entries"][name] = rows
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
