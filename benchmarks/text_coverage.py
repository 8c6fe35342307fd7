"""How much of the real IU X-ray wording a tokenizer covers: the share of words that become ``<unk>``.

    python benchmarks/text_coverage.py --data runs/bench/synthcxr64 [--json benchmarks/results/text_coverage.json]

Scored on the IU X-ray reports' test split (by report id, :func:`shared.data.iu_xray.split_iu_reports`),
for a tokenizer fitted on SynthCXR's training reports alone and one fitted on those plus the IU
training split (``radloop data tokenizer --iu-reports``), both with R2Gen's cleaning and threshold 3.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.data.dataset import load_records
from shared.data.iu_xray import read_iu_reports, split_iu_reports
from shared.text.tokenizer import ReportTokenizer


def coverage(tok: ReportTokenizer, reports: list[str]) -> dict[str, float]:
    """Share of running words and of distinct words of ``reports`` that ``tok`` maps to ``<unk>``."""
    words = [w for r in reports for w in tok.tokenize(r)]
    types = set(words)
    known = set(tok.itos)
    unk_running = sum(w not in known for w in words) / max(len(words), 1)
    unk_types = sum(w not in known for w in types) / max(len(types), 1)
    return {"unk_share_running_words": round(unk_running, 4), "unk_share_word_types": round(unk_types, 4),
            "running_words": len(words), "word_types": len(types), "vocab": len(tok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a SynthCXR folder (annotation.json)")
    parser.add_argument("--archive", help="NLMCXR_reports.tgz (default: found in the torchxrayvision wheel)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    synth = [r["report"] for r in load_records(Path(args.data) / "annotation.json") if r.get("split") == "train"]
    iu = split_iu_reports(read_iu_reports(args.archive))
    test = [r.text for r in iu["test"]]
    result = {
        "benchmark": "text_coverage_iu_xray",
        "iu_reports": {k: len(v) for k, v in iu.items()},
        "synthcxr_train_reports": len(synth),
        "tokenizer_synthcxr": coverage(ReportTokenizer.fit(synth, min_freq=3), test),
        "tokenizer_synthcxr_plus_iu_train": coverage(ReportTokenizer.fit(synth + [r.text for r in iu["train"]],
                                                                         min_freq=3), test),
        "command": f"python benchmarks/text_coverage.py --data {args.data}",
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
