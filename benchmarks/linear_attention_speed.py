"""Forward time of IFNet's causal linear attention vs softmax attention as the sequence grows. Prints JSON.

    python benchmarks/linear_attention_speed.py [--lengths 64 256 1024 4096] [--batch 8] [--dim 128] [--heads 4]

Both are timed on the same (batch, T, dim) input in inference mode (median of 5 runs after one
warm-up); softmax attention is ``nn.MultiheadAttention`` with a causal mask.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from image2report.ifnet import LinearAttention


def median_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 1024, 4096])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    args = p.parse_args()
    torch.manual_seed(0)
    linear = LinearAttention(args.dim, args.heads).eval()
    softmax = nn.MultiheadAttention(args.dim, args.heads, batch_first=True).eval()
    rows = []
    with torch.inference_mode():
        for t in args.lengths:
            x = torch.randn(args.batch, t, args.dim)
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
            lin = median_seconds(lambda x=x: linear(x, causal=True))
            soft = median_seconds(lambda x=x, mask=mask: softmax(x, x, x, attn_mask=mask, need_weights=False))
            rows.append({"length": t, "linear_ms": round(lin * 1e3, 2), "softmax_ms": round(soft * 1e3, 2)})
    print(json.dumps({"benchmark": "causal_attention_forward", "machine": f"{platform.machine()} CPU, "
                      f"{torch.get_num_threads()} threads", "batch": args.batch, "dim": args.dim,
                      "heads": args.heads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
