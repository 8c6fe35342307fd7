"""Where IFNet's clinical accuracy is lost: its label head, or its decoder. Prints one JSON object.

    python benchmarks/ifnet_label_limits.py --data runs/bench/synthcxr64 \
        --runs runs/bench/reports/ifnet_s0/best runs/bench/reports/ifnet_pt_s0/best [--n 300]

For every saved IFNet model, on the first N test studies, against the generator's labels
(``labels.csv``), micro-F1 of: the label head alone (probability > the model's threshold); the
labeler on reports decoded (greedy) from the head's decisions, i.e. what ``generate`` does; and the
labeler on reports decoded from the *true* labels, the decoder's own ceiling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from report_synth import truth_labels  # a sibling script: python puts benchmarks/ on the path

from image2report.decoding import DecodingConfig, decode
from image2report.generator import ReportGenerator
from shared.data.dataset import ReportImageDataset
from shared.metrics.clinical import clinical_efficacy
from shared.text.labeler import ReportLabeler


def micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    return round(float(clinical_efficacy(pred, truth)["ce_micro_f1"]), 4)


@torch.no_grad()
def limits(run: Path, images: torch.Tensor, truth: np.ndarray, labeler: ReportLabeler, batch: int = 50) -> dict:
    gen = ReportGenerator.from_pretrained(run)
    model, tok = gen.model, gen.tokenizer
    if not getattr(model, "uses_labels", False):
        raise ValueError(f"{run} holds a {type(model).__name__}, not a model with a label head")
    cfg = DecodingConfig(max_length=tok.max_length, num_beams=1)
    probs = torch.cat([torch.sigmoid(model.label_logits(images[k:k + batch])) for k in range(0, len(images), batch)])
    out = {"head_alone": micro_f1((probs > model.config.label_threshold).float().numpy(), truth)}
    true_present = torch.as_tensor((truth == 1).astype("float32"))
    for name, present in (("decoder_on_head_labels", None), ("decoder_on_true_labels", true_present)):
        texts: list[str] = []
        for k in range(0, len(images), batch):
            memory = model.encode(images[k:k + batch], None if present is None else present[k:k + batch])
            ids = decode(model.next_token_log_probs, memory, tok.bos_token_id, tok.eos_token_id, cfg)
            texts += [tok.decode(row.tolist()) for row in ids]
        out[name] = micro_f1(labeler.label_batch(texts), truth)
        out[f"{name}_unique_reports"] = len(set(texts))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--runs", nargs="+", required=True, help="saved IFNet folders (e.g. <run>/best)")
    p.add_argument("--n", type=int, default=300)
    args = p.parse_args()
    data = Path(args.data)
    ds = ReportImageDataset(data / "annotation.json", "test", image_size=64)
    samples = [ds[i] for i in range(min(args.n, len(ds)))]
    images = torch.stack([s["images"] for s in samples])
    truth = truth_labels(data, [s["study_id"] for s in samples])
    labeler = ReportLabeler()
    result = {"benchmark": "ifnet_label_limits", "data": str(data), "n_test": len(samples),
              "metric": "CE micro-F1 against the generator's labels (labels.csv); greedy decoding",
              "runs": {str(r): limits(Path(r), images, truth, labeler) for r in args.runs}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
