"""Backbone training speed and memory: samples/s and peak resident memory for RadCLIP steps.

    python benchmarks/backbone_speed.py [--model radclip_small] [--batch 64] [--steps 10] [--channels-last] \
        [--compile]

Prints one JSON object. Peak memory is the process's max RSS (CPU) or max CUDA memory allocated. With
``--compile`` the steps run through ``torch.compile(model)`` (inductor) and ``warmup_s`` says what the two
untimed warm-up steps (the compilation) cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from shared.backbone import build_backbone
from shared.backbone.train import contrastive_loss
from shared.text.tokenizer import ReportTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="radclip_small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--report-tokens", type=int, default=50)
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights, as train.channels_last=true")
    parser.add_argument("--compile", action="store_true", help="run the steps through torch.compile(model)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = ReportTokenizer(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(200)])
    model = build_backbone(args.model, tok).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = torch.compile(model) if args.compile else model
    x = torch.randn(args.batch, 1, model.image_size, model.image_size, device=device)
    ids = torch.randint(4, len(tok), (args.batch, args.report_tokens), device=device)
    ids[:, 0], ids[:, -1] = 1, 2
    start = time.perf_counter()
    for step in range(args.steps + 2):
        if step == 2:  # two warm-up steps
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            warmup = time.perf_counter() - start
            start = time.perf_counter()
        out = run(x, ids)
        loss = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({
        "benchmark": "backbone_train_step", "model": args.model, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "channels_last": args.channels_last, "compiled": args.compile,
        "batch": args.batch, "image_size": model.image_size,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "seconds_per_step": round(seconds / args.steps, 4),
        "samples_per_s": round(args.batch * args.steps / seconds, 1),
        "warmup_s": round(warmup, 1),
        "peak_memory_mb": round(peak, 1),
    }))


if __name__ == "__main__":
    main()
