"""Report-decoding speed and memory of the four decoders as whole models, cached vs uncached.

    python benchmarks/decoding_speed.py [--models baseline uar cmcrl ifnet] [--sizes 224 512]
        [--variants after before] [--json benchmarks/results/decoding_speed_cpu2.json]

R2Gen's IU X-ray setting: batch 16, two views, d_model 512, 3 decoder layers, 8 heads, 60 generated
tokens (``<eos>`` blocked until then, so every report has the same length), greedy and beam 3;
random weights (speed does not depend on them). Each measurement runs in its own process, so the
peak resident memory (``ru_maxrss``) is that of one model:

* ``reports_per_s`` greedy / beam 3: encode + decode, whole model;
* ``ms_per_token`` greedy / beam 3: decoding alone (after the encoder) divided by the tokens the batch
  generates (16 reports x 60 tokens), the measure of R2Gen's 10.1 / 25.9 ms;
* ``train_step_s`` and ``peak_rss_mb`` of a training step (forward, backward, AdamW) on 60-token reports.

``--visual resnet101`` puts R2Gen's own image tower (timm's ResNet-101, random weights) in place of the
suite's ``cxr_resnet_small`` (1.25 M parameters), so the comparison with R2Gen's code is at an equal tower.

Variants: ``after`` = the key/value cache and a 7 x 7 grid per view (the IU X-ray configs);
``before`` = uncached decoding (the whole prefix re-run each step) and the tower's full grid.
Prints one JSON object (and writes it with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

#: R2Gen's code on this CPU, same setting (measured for the issue that asked for this benchmark)
R2GEN = {"reports_per_s_greedy": 1.31, "reports_per_s_beam3": 0.56, "train_step_s": 9.15,
         "decoder_ms_per_token_greedy": 10.1, "decoder_ms_per_token_beam3": 25.9}

#: the decoders at R2Gen's size (d_model 512, 3 layers, 8 heads, ff 512) on the IU X-ray configs' towers
MODELS = {
    "baseline": {"d_model": 512, "num_layers": 3, "num_heads": 8, "ff_dim": 512},
    "uar": {"d_model": 512, "num_layers": 3, "num_heads": 8, "ff_dim": 512, "num_basis": 512},
    "cmcrl": {"radcare": "radcare_base", "num_layers": 3, "num_heads": 8, "ff_dim": 512},
    "ifnet": {"d_model": 512, "num_layers": 3, "num_heads": 8, "ff_dim": 512},
}
BATCH, VIEWS, TOKENS, VOCAB = 16, 2, 60, 760  # R2Gen's IU X-ray vocabulary has ~760 words


def _build(name: str, size: int, variant: str, visual: str | None = None) -> torch.nn.Module:
    import image2report  # noqa: F401  (registers every decoder)
    from image2report.models import build_report_model

    grid = {"grid_size": 7} if variant == "after" else {}
    tower = {"visual": visual} if visual else {}
    return build_report_model(name, VOCAB, image_size=size, max_views=VIEWS, max_length=TOKENS + 2,
                              **MODELS[name], **grid, **tower)


def measure(name: str, size: int, variant: str, what: str, visual: str | None = None) -> dict:
    """One measurement in this process: ``decode`` (greedy and beam) or ``train`` (one step)."""
    from image2report.decoding import DecodingConfig, decode

    torch.manual_seed(0)
    model = _build(name, size, variant, visual)
    out: dict = {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    images = torch.rand(BATCH, VIEWS, 1, size, size) * 2 - 1
    if what == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(4, VOCAB, (BATCH, TOKENS + 2))
        ids[:, 0], ids[:, -1] = 1, 2
        times = []
        for _ in range(2):  # the first step warms up the allocator
            start = time.perf_counter()
            loss = model(images, ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        out["train_step_s"] = round(times[-1], 2)
    else:
        model.eval()
        step = model if variant == "after" else model.next_token_log_probs
        for beams, key in ((1, "greedy"), (3, "beam3")):
            cfg = DecodingConfig(num_beams=beams, max_length=TOKENS + 1, min_length=TOKENS, no_repeat_ngram_size=0)
            with torch.no_grad():
                start = time.perf_counter()
                memory = model.encode(images)
                encoded = time.perf_counter()
                ids = decode(step, memory, 1, 2, cfg)
                done = time.perf_counter()
            assert ids.shape[1] >= TOKENS + 1, ids.shape  # bos + 60 tokens (beam search adds a closing eos)
            out["memory_tokens"] = int(memory.shape[1])
            out[f"reports_per_s_{key}"] = round(BATCH / (done - start), 3)
            out[f"ms_per_token_{key}"] = round(1000 * (done - encoded) / (BATCH * TOKENS), 3)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _run_child(name: str, size: int, variant: str, what: str, timeout: int, visual: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, str(size), variant, what]
    cmd += ["--visual", visual] if visual else []
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--variants", nargs="+", default=["after", "before"], choices=("after", "before"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--visual", help="the image tower (default: each model's; resnet101 = R2Gen's)")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, size, variant, what = args.child
        print(json.dumps(measure(name, int(size), variant, what, args.visual)))
        return
    rows = []
    for name in args.models:
        for size in args.sizes:
            for variant in args.variants:
                row = {"model": name, "size": size, "variant": variant, "visual": args.visual or "the model's"}
                for what in ("decode", "train"):
                    got = _run_child(name, size, variant, what, args.timeout, args.visual)
                    if "peak_rss_mb" in got:
                        got[f"{what}_peak_rss_mb"] = got.pop("peak_rss_mb")
                    row.update({f"{what}_{k}" if k == "error" else k: v for k, v in got.items()})
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {"benchmark": "decoding_speed", "machine": f"{torch.get_num_threads()} CPU threads, "
              f"{platform.processor() or platform.machine()}", "torch": torch.__version__,
              "setting": {"batch": BATCH, "views": VIEWS, "tokens": TOKENS, "vocab": VOCAB, "models": MODELS},
              "r2gen_reference": R2GEN, "rows": rows,
              "command": "python benchmarks/decoding_speed.py " + " ".join(sys.argv[1:])}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
