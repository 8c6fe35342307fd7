"""A 2-process CPU run through `accelerate launch` (gloo) ends with the same parameters on both ranks."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _launch(script: str, port: int, *args: str) -> None:
    """Run ``tests/<script> args`` as 2 gloo processes through ``accelerate launch``; fail with its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(ROOT / "tests" / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_training_keeps_ranks_in_sync(tmp_path, tiny_synth):
    out, _ = tiny_synth
    _launch("dist_backbone_run.py", 29517, str(out / "annotation.json"), str(tmp_path))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world"] == r1["world"] == 2
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0)
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_noise_filter_statistics_are_gathered_from_every_rank(tmp_path):
    from report2image.noise_filter import LatentNoiseFilter

    _launch("dist_noise_filter_run.py", 29518, str(tmp_path))
    r0, r1 = torch.load(tmp_path / "filter0.pt"), torch.load(tmp_path / "filter1.pt")
    # one process seeing rank 0's then rank 1's share of every batch
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from dist_noise_filter_run import batches
    finally:
        sys.path.pop(0)
    single = LatentNoiseFilter(40, signal="both", warmup_steps=0)
    for parts in zip(batches(0, 2), batches(1, 2), strict=True):
        single.update(*(torch.cat([a, b]) for a, b in zip(*parts, strict=True)))
    assert r0["seen"].sum() == single.seen.sum() > 0
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=0, atol=0)
        torch.testing.assert_close(r1[k], v, rtol=0, atol=0)


def test_every_process_builds_its_share_of_a_sharded_cache(tmp_path):
    import json

    _launch("dist_shard_cache_run.py", 29519, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"cache{r}.json").read_text()) for r in (0, 1))
    assert r0["computed"] == [[0, 2], [4, 6], [8, 9]] and r1["computed"] == [[2, 4], [6, 8]]
    assert r0["rows"] == r1["rows"] == [10.0 * i for i in range(9)]
