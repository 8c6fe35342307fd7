"""Run by tests/test_distributed.py under `accelerate launch` with 2 CPU processes (gloo): both ranks build
one sharded cache (each computing its share of the shards), then read every row."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from shared.data.shard_cache import ShardedCache


def main() -> None:
    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    computed = []

    def compute(rows):
        computed.append([rows.start, rows.stop])
        return {"x": torch.arange(rows.start, rows.stop, dtype=torch.float32)[:, None] * 10}

    cache = ShardedCache.build(out / "cache", {"test": 1}, 9, compute, shard_size=2)
    rows = [float(cache[i]["x"][0]) for i in range(len(cache))]
    (out / f"cache{acc.process_index}.json").write_text(json.dumps({"computed": computed, "rows": rows}))
    acc.end_training()


if __name__ == "__main__":
    main()
