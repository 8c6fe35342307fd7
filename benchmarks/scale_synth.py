"""The data path at scale: prepare, frozen-output cache and training reads for 10k / 30k / 100k SynthCXR studies.

    python benchmarks/scale_synth.py [--sizes 10000 30000 100000] [--work runs/scale] \\
        [--backbone zoo:radclip_small] [--autoencoder zoo:autoencoder64] \\
        [--json benchmarks/results/scale_synth_cpu2.json]

Per size N (a SynthCXR set at 64 px, ``patients = N / 3``, generated once under ``--work``):

* ``prepare``: ``radloop data prepare --size 64`` of the set (seconds; a rerun skips finished images);
* ``cache``: the diffusion trainer's frozen outputs of the training split (:class:`report2image.train.CachedPairs`:
  autoencoder latents, text tokens, image embeddings, images) built into memory-mapped shards
  (``data.feature_cache``) and, beside it, in memory as without a cache: build seconds, size on disk, and the
  peak memory of the process that built and then read it (each measurement in a fresh process): ``peak_rss_mb``,
  the resident size, which counts the pages of the memory-mapped shards a read touched (page cache the kernel
  drops under pressure), and ``peak_anon_mb``, the process's own memory (sampled every 50 ms);
* ``read``: training-order reads through the trainer's loader (batch 64, shuffled) for ``--read-batches``
  batches: samples/s from the shards vs from memory.

The target: the process's own memory with the sharded cache stays flat as N grows; in memory it grows with N.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _anon_mb() -> float:
    """Resident anonymous memory (MB): the process's own heap, not the pages of memory-mapped files, which the
    kernel counts in the resident size too but can drop and re-read at will."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _AnonPeak:
    """The largest :func:`_anon_mb` seen, sampled every 50 ms by a daemon thread."""

    def __init__(self) -> None:
        import threading

        self.peak = _anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _anon_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _anon_mb())


def _dir_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure(annotation: str, mode: str, cache_dir: str | None, backbone: str, autoencoder: str,
            read_batches: int) -> dict[str, Any]:
    """One process: build the cache (``mode`` "sharded" or "memory"), read batches, report time and peak RSS."""
    import torch
    from diffusers import AutoencoderKL

    from report2image.train import CachedPairs, DiffusionPairs
    from shared.backbone.clip import RadCLIP
    from shared.data.dataset import collate_samples
    from shared.training import training_loader
    from shared.zoo import resolve_zoo

    torch.manual_seed(0)
    anon = _AnonPeak()
    pairs = DiffusionPairs(annotation, "train", 64)
    vae = AutoencoderKL.from_pretrained(resolve_zoo(autoencoder)).eval()
    clip = RadCLIP.from_pretrained(backbone).eval()
    start = time.perf_counter()
    cached = CachedPairs(pairs, vae, clip, image_embeds=True, cache_dir=cache_dir if mode == "sharded" else None)
    build = time.perf_counter() - start
    loader = training_loader(cached, 64, 0, collate_samples)
    start, seen = time.perf_counter(), 0
    for k, batch in enumerate(loader):
        seen += len(batch["index"])
        if k + 1 >= read_batches:
            break
    read = time.perf_counter() - start
    return {"studies": len(pairs), "build_seconds": round(build, 1), "read_samples_per_s": round(seen / read, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "peak_anon_mb": round(anon.stop(), 1)}


def _worker(args: argparse.Namespace) -> None:
    print(json.dumps(measure(args.annotation, args.mode, args.cache_dir, args.backbone, args.autoencoder,
                             args.read_batches)))


def _in_subprocess(annotation: Path, mode: str, cache_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--annotation", str(annotation), "--mode", mode,
           "--cache-dir", str(cache_dir), "--backbone", args.backbone, "--autoencoder", args.autoencoder,
           "--read-batches", str(args.read_batches)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} measurement failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    p.add_argument("--work", default="runs/scale")
    p.add_argument("--backbone", default="zoo:radclip_small")
    p.add_argument("--autoencoder", default="zoo:autoencoder64")
    p.add_argument("--read-batches", dest="read_batches", type=int, default=200)
    p.add_argument("--json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--annotation", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["sharded", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", dest="cache_dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    from shared.data.prepare import prepare_dataset
    from synthcxr import SynthConfig, generate_dataset

    work = Path(args.work)
    result: dict[str, Any] = {
        "benchmark": "scale_synth", "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "command": " ".join(["python", "benchmarks/scale_synth.py", *sys.argv[1:]]), "sizes": {}}
    for n in args.sizes:
        data = work / f"synth{n}"
        start, synth_s = time.perf_counter(), None  # None: the set was already there (same seed, same studies)
        if not (data / "annotation.json").is_file():
            generate_dataset(data, SynthConfig(patients=max(n // 3, 1), studies_per_patient=3, size=64, seed=5000 + n,
                                               workers=os.cpu_count() or 1), progress=False)
            synth_s = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        prepare_dataset(data / "annotation.json", work / f"prepared{n}", size=64, workers=os.cpu_count() or 1,
                        progress=False)
        prepare_s = time.perf_counter() - start
        annotation = work / f"prepared{n}" / "annotation.json"
        cache_dir = work / f"cache{n}"
        row: dict[str, Any] = {"synth_seconds": synth_s, "prepare_seconds": round(prepare_s, 1),
                               "sharded": _in_subprocess(annotation, "sharded", cache_dir, args)}
        row["sharded"]["cache_mb"] = round(_dir_mb(cache_dir), 1)
        row["sharded_reused"] = _in_subprocess(annotation, "sharded", cache_dir, args)
        row["memory"] = _in_subprocess(annotation, "memory", cache_dir, args)
        result["sizes"][str(n)] = row
        print(json.dumps({n: row}), file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
