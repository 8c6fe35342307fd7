"""Report labeler vs. the human-coded MeSH major terms of the 3,955 IU X-ray reports.

    python benchmarks/labeler_iu_mesh.py [--show-errors 20]

For every observation that MeSH can express, a report is MeSH-positive when one of its major
terms starts with a mapped heading (below), and labeler-positive when the labeler says 1
(``uncertain_as_negative``) or 1/-1 (``uncertain_as_positive``) on findings + impression.
"Lung Opacity" is the CheXpert parent: MeSH opacity headings or any child heading. Prints JSON
with per-class precision/recall/F1/support and the macro F1 of both variants.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from shared.data.iu_xray import read_iu_reports
from shared.labels import LUNG_OPACITY_CHILDREN
from shared.text.labeler import ReportLabeler

MESH: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly", "Cardiac Shadow/enlarged"),
    "Pleural Effusion": ("Pleural Effusion",),
    "Pneumothorax": ("Pneumothorax", "Hydropneumothorax", "Hemopneumothorax"),
    "Atelectasis": ("Pulmonary Atelectasis",),
    "Edema": ("Pulmonary Edema",),
    "Consolidation": ("Consolidation",),
    "Pneumonia": ("Pneumonia",),
    "Lung Lesion": ("Nodule", "Mass"),
    "Fracture": ("Fractures, Bone",),
    "Support Devices": ("Catheters, Indwelling", "Tube, Inserted", "Implanted Medical Device", "Medical Device"),
    "Lung Opacity": ("Opacity", "Airspace Disease", "Infiltrate", "Density"),
}


def mesh_positive(terms: list[str], name: str) -> bool:
    heads = MESH[name]
    if name == "Lung Opacity":
        heads = heads + tuple(h for child in LUNG_OPACITY_CHILDREN if child in MESH for h in MESH[child])
    return any(t == h or t.startswith(h + "/") for t in terms for h in heads)


def prf(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    tp = float((pred & gold).sum())
    p = tp / max(pred.sum(), 1)
    r = tp / max(gold.sum(), 1)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "support": int(gold.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-errors", type=int, default=0, help="print N errors per class")
    parser.add_argument("--only", default=None, help="restrict --show-errors to one class")
    parser.add_argument("--uncertain-positive", action="store_true", help="errors of the uncertain-as-positive variant")
    args = parser.parse_args()
    reports = read_iu_reports()
    labeler = ReportLabeler()
    labels = [labeler(r.text) for r in reports]
    result: dict[str, dict] = {"reports": len(reports), "uncertain_as_negative": {}, "uncertain_as_positive": {}}
    for name in MESH:
        gold = np.array([mesh_positive(r.mesh_major, name) for r in reports])
        value = np.array([lab[name] for lab in labels])
        result["uncertain_as_negative"][name] = prf(value == 1.0, gold)
        result["uncertain_as_positive"][name] = prf((value == 1.0) | (value == -1.0), gold)
        if args.show_errors and (args.only is None or args.only == name):
            pred = (value == 1.0) | ((value == -1.0) & args.uncertain_positive)
            for kind, mask in (("FP", pred & ~gold), ("FN", ~pred & gold)):
                for i in np.flatnonzero(mask)[: args.show_errors]:
                    print(f"[{name} {kind}] {reports[i].uid} {reports[i].mesh_major} :: {reports[i].text}")
    for variant in ("uncertain_as_negative", "uncertain_as_positive"):
        result[f"{variant}_macro_f1"] = round(float(np.mean([v["f1"] for v in result[variant].values()])), 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
