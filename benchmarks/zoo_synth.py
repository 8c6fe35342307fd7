"""Score the model zoo's entries on a fresh SynthCXR test set (a seed no zoo training saw). Prints JSON.

    python benchmarks/zoo_synth.py [--entries radclip_small ifnet ...] \
        [--json zoo/synthcxr64/scores.json] [--index configs/zoo/index128.yaml]

The test data is the index's (``configs/zoo/test_data.yaml``: seed 1001, its "test" split, 810 studies;
the same studies at 128 px for ``index128.yaml``), generated when missing, read at its own size.
Labels for scoring are SynthCXR's ground truth of each image (``labels.csv``); no zoo
model saw them in training.

* backbone entries (RadCLIP): image -> report label-matched precision@5 (a retrieved report counts
  when its finding set equals the image's) over the test split, zero-shot finding AUROC from text
  prompts (:mod:`shared.backbone.zero_shot`, macro over the observations with both outcomes), and the
  AUROC of the backbone's own findings head for comparison (supervised by the labeler in training);
* image towers (``radloop train tower``): the AUROC of the tower's findings head against the true
  findings, per finding and macro, with images/s;
* report decoders: the generated test reports, greedy and beam 3, with reports/s on this machine;
  BLEU/METEOR/ROUGE-L/CIDEr and clinical efficacy against the reference reports, CE micro/macro-F1
  of the labeler's reading of the generated text against the image's true findings, and the share
  of distinct reports; the same for the most common training report (the floor) once.

With ``--rare-data`` (the rare test set, ``configs/zoo/rare_test_data.yaml``: 100+ studies with each of the
three rarest findings, which the 810-study test set has 8-15 of) every decoder also writes greedy reports for
its test split, scored per rare finding (precision / recall / F1 of the labeler's reading against the truth),
and every tower's findings head is scored there too (``rare_set``).

With ``--json`` the results file also feeds the zoo's model cards (``radloop zoo card NAME``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report_synth import QUALITY_KEYS, score, truth_labels

from radloop.zoo import INDEX_DIR, load_index
from shared.backbone import RadCLIP
from shared.backbone.train import embed_dataset
from shared.backbone.zero_shot import zero_shot_probabilities
from shared.data.dataset import ReportImageDataset
from shared.io import read_json
from shared.labels import CHEXPERT_LABELS
from shared.metrics.auroc import multilabel_auroc
from shared.metrics.retrieval import retrieval_metrics
from shared.text.labeler import ReportLabeler
from shared.zoo import ENTRY_FILE, resolve_zoo

DECODER_KEYS = ["bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1", "truth_ce_micro_f1",
                "truth_ce_macro_f1", "unique_report_rate", *QUALITY_KEYS]


def _ref(name: str) -> str:
    """A zoo entry's name as ``zoo:NAME``; a saved folder (a path, e.g. another training seed's run) as it is."""
    return name if "/" in name else f"zoo:{name}"


def score_backbone(name: str, test_ds: ReportImageDataset, truth: np.ndarray) -> dict[str, Any]:
    model = RadCLIP.from_pretrained(_ref(name)).eval()
    t0 = time.perf_counter()
    img, txt = embed_dataset(model, test_ds)
    embed_s = time.perf_counter() - t0
    retrieval = retrieval_metrics(img, txt, truth)
    zero_shot = multilabel_auroc(zero_shot_probabilities(model, img).numpy(), truth, CHEXPERT_LABELS)
    out: dict[str, Any] = {
        "i2t_label_precision@5": round(retrieval["i2t_label_precision@5"], 4),
        "label_chance": round(retrieval["label_chance"], 4),
        "t2i_label_precision@5": round(retrieval["t2i_label_precision@5"], 4),
        "zero_shot_macro_auroc": round(zero_shot["mauc"], 4),
        "zero_shot_auroc": {k.removeprefix("auroc/"): round(v, 4) for k, v in zero_shot.items()
                            if k.startswith("auroc/")},
        "images_per_s": round(len(test_ds) / embed_s, 1),
    }
    if model.label_head is not None:
        with torch.no_grad():
            head = torch.sigmoid(model.label_logits(img)).numpy()
        out["findings_head_macro_auroc"] = round(multilabel_auroc(head, truth, CHEXPERT_LABELS)["mauc"], 4)
    return out


def score_tower(name: str, test_ds: ReportImageDataset, truth: np.ndarray) -> dict[str, Any]:
    """A pre-trained tower's findings head on the test images against their true findings."""
    from torch.utils.data import DataLoader

    from shared.backbone.classifier import TowerPretrainer
    from shared.backbone.train_tower import predict_probs
    from shared.data.dataset import collate_samples

    model = TowerPretrainer.from_pretrained(_ref(name))
    t0 = time.perf_counter()
    probs, _ = predict_probs(model, DataLoader(test_ds, batch_size=128, collate_fn=collate_samples))
    seconds = time.perf_counter() - t0
    auroc = multilabel_auroc(probs, truth, CHEXPERT_LABELS)
    return {"findings_head_macro_auroc": round(auroc["mauc"], 4),
            "findings_head_auroc": {k.removeprefix("auroc/"): round(v, 4) for k, v in auroc.items()
                                    if k.startswith("auroc/")},
            "positives": {n: int((truth[:, i] == 1).sum()) for i, n in enumerate(CHEXPERT_LABELS)},
            "images_per_s": round(len(test_ds) / seconds, 1)}


def score_decoder(name: str, test: list[dict], refs: dict[str, str], truth: np.ndarray,
                  labeler: ReportLabeler, out_dir: Path, training_reports: list[str] | None = None) -> dict[str, Any]:
    from image2report.generator import ReportGenerator

    gen = ReportGenerator.from_pretrained(_ref(name))
    images = torch.stack([s["images"] for s in test])
    ids = [s["study_id"] for s in test]
    out: dict[str, Any] = {}
    for mode, beams in (("greedy", 1), ("beam3", 3)):
        t0 = time.perf_counter()
        texts = gen.generate(images, num_beams=beams)
        out[f"{mode}_reports_per_s"] = round(len(texts) / (time.perf_counter() - t0), 2)
        preds = dict(zip(ids, texts, strict=True))
        (out_dir / f"{name.strip('/').replace('/', '_')}_test_{mode}.json").write_text(json.dumps(preds, indent=1))
        scores = score(preds, refs, truth, labeler, training_reports)
        for k in DECODER_KEYS:
            if k in scores:
                out[f"{k}_{mode}"] = round(float(scores[k]), 4)
    return out


#: the rarest findings of the zoo's training reports, scored on the rare test set
RARE_FINDINGS = ("Fracture", "Pneumothorax", "Lung Lesion")


def score_decoder_rare(name: str, test: list[dict], truth: np.ndarray, labeler: ReportLabeler) -> dict[str, Any]:
    """Greedy reports of the rare test set, per rare finding: the labeler's reading against the truth."""
    from image2report.generator import ReportGenerator
    from shared.metrics.clinical import binarize, per_label_scores

    gen = ReportGenerator.from_pretrained(_ref(name))
    texts = []
    for start in range(0, len(test), 512):  # the whole set's images at once would hold GBs
        texts += gen.generate(torch.stack([s["images"] for s in test[start:start + 512]]), num_beams=1)
    idx = [CHEXPERT_LABELS.index(n) for n in RARE_FINDINGS]
    per = per_label_scores(binarize(labeler.label_batch(texts))[:, idx], (truth[:, idx] == 1), RARE_FINDINGS)
    return {n: {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for n, row in per.items()}


def seed_summary(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation of each decoder metric over the entries of one model class (their
    ``model_class``: the zoo entry and runs of other training seeds), for every class scored more than once."""
    groups: dict[str, list[str]] = {}
    for name, entry in entries.items():
        if "model_class" in entry:
            groups.setdefault(entry["model_class"], []).append(name)
    out: dict[str, dict[str, Any]] = {}
    for cls, names in groups.items():
        if len(names) < 2:
            continue
        keys = [k for k, v in entries[names[0]].items() if k.endswith(("_greedy", "_beam3"))
                and isinstance(v, (int, float))]
        out[cls] = {"entries": names, **{k: {"mean": round(float(np.mean([entries[n][k] for n in names])), 4),
                                             "sd": round(float(np.std([entries[n][k] for n in names], ddof=1)), 4)}
                                         for k in keys}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", nargs="+", help="zoo entries (default: every trained entry of the index), or saved "
                                                "model folders (a path: e.g. runs of other training seeds)")
    p.add_argument("--json", help="also write the result here (the model cards read it)")
    p.add_argument("--out-dir", default="runs/zoo/bench", help="generated test reports land here")
    p.add_argument("--limit-test", dest="limit_test", type=int, help="score the first N test studies (smoke runs)")
    p.add_argument("--rare-data", dest="rare_data",
                   help="the rare test set at the index's size (e.g. runs/zoo/data/synthcxr128_rare_test)")
    p.add_argument("--index", default=str(INDEX_DIR / "index.yaml"),
                   help="the zoo generation: its entries, training and test data (default: the 64 px index.yaml)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from radloop.zoo import ensure_data

    index = load_index(args.index)
    data, train_data = ensure_data(index, test=True), ensure_data(index)
    # the entries this script scores: backbones, towers and decoders (judges, autoencoders and generators have
    # their own benchmarks)
    names = args.entries or [n for n, r in index.entries.items() if r.trainer in ("backbone", "tower", "report")
                             and (index.folder(n) / ENTRY_FILE).is_file()]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    synth = read_json(data / "synthcxr.json")["config"]
    test_ds = ReportImageDataset(data / "annotation.json", "test", image_size=int(synth["size"]))
    if args.limit_test:
        test_ds.records = test_ds.records[: args.limit_test]
    test = [test_ds[i] for i in range(len(test_ds))]
    ids = [s["study_id"] for s in test]
    refs = {s["study_id"]: s["report"] for s in test}
    truth = truth_labels(data, ids)
    labeler = ReportLabeler()
    training_reports = [e["report"] for e in read_json(train_data / "annotation.json")["train"]]
    rare_ds = ReportImageDataset(Path(args.rare_data) / "annotation.json", "test", image_size=int(synth["size"])) \
        if args.rare_data else None
    rare_truth = truth_labels(Path(args.rare_data), [r["id"] for r in rare_ds.records]) if rare_ds else None
    rare_test: list[dict] = []  # read once, when the first decoder needs it
    command = "python benchmarks/zoo_synth.py --entries " + " ".join(names)
    if Path(args.index).resolve() != (INDEX_DIR / "index.yaml").resolve():
        command += f" --index {args.index}"
    if args.rare_data:
        command += f" --rare-data {args.rare_data}"
    entries: dict[str, Any] = {}
    for name in names:
        kind = read_json(Path(resolve_zoo(_ref(name))) / "config.json").get("_class_name")
        t0 = time.perf_counter()
        if kind == "RadCLIP":
            entries[name] = score_backbone(name, test_ds, truth)
        elif kind == "TowerPretrainer":
            entries[name] = score_tower(name, test_ds, truth)
            if rare_ds is not None:
                entries[name]["rare_set"] = score_tower(name, rare_ds, rare_truth)
        else:
            entries[name] = {"model_class": kind,
                             **score_decoder(name, test, refs, truth, labeler, out_dir, training_reports)}
            if rare_ds is not None:
                rare_test = rare_test or [rare_ds[i] for i in range(len(rare_ds))]
                entries[name]["rare_set_greedy"] = score_decoder_rare(name, rare_test, rare_truth, labeler)
        entries[name]["command"] = command
        logging.warning("%s scored in %.0f s", name, time.perf_counter() - t0)
    most_common = Counter(training_reports).most_common(1)[0][0]
    floor = score({i: most_common for i in ids}, refs, truth, labeler, training_reports)
    result = {
        "benchmark": f"zoo_{index.dataset}",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "test_data": f"{data} (seed {synth['seed']}, {len(ids)} test studies at {synth['size']} px, never trained on)",
        "command": command,
        "targets": {"i2t_label_precision@5": 0.85, "zero_shot_macro_auroc": 0.90,
                    "truth_ce_micro_f1_beam3": "0.85 best decoder, 0.75 every decoder",
                    "truth_ce_macro_f1_beam3": 0.60, "unique_report_rate": 0.30},
        "floor_most_common_training_report": {"report": most_common,
                                              **{k: round(float(floor[k]), 4) for k in DECODER_KEYS if k in floor}},
        "entries": entries,
    }
    if args.json and Path(args.json).is_file():
        # scoring some entries keeps the others' earlier results (and what other benchmarks wrote there, e.g.
        # real_text), and the seed summary covers them all
        earlier = read_json(args.json)
        result = {**earlier, **result, "entries": {**earlier.get("entries", {}), **entries}}
    seeds = seed_summary(result["entries"])
    if seeds:
        result["seeds_by_model_class"] = seeds
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
