"""Kill a training with SIGKILL at random instants, restart it, and check it ends where an uninterrupted run
ends. Prints JSON.

    python benchmarks/reliability_kill.py [--kills 20] [--processes 1 2] [--steps 40] \
        [--json benchmarks/results/reliability_kill_cpu2.json]

Per configuration (1 process, or 2 gloo processes through ``accelerate launch``): a tiny report decoder
(``baseline_tiny`` on a small SynthCXR set, a checkpoint every 2 steps) trains once without
interruption; then the same run is started, killed (the whole process group, SIGKILL) at a random
instant, inspected and restarted until ``--kills`` kills have happened, and finally left to finish.

After every kill: every folder under a final checkpoint name must load (``safetensors`` readable, the
accelerate files present) and ``best/`` and ``final/``, when present, must hold a loadable model; a
``.partial_checkpoint_*`` folder (a kill during ``save_state``) is counted. At the end the final
weights are compared with the uninterrupted run's: bit-identical is the target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def train_command(data: Path, out: Path, steps: int, processes: int) -> list[str]:
    args = ["train", "report", f"data.annotation={data / 'annotation.json'}", "model.name=baseline_tiny",
            "data.image_size=32", "data.batch_size=8", "data.min_freq=1", "data.max_length=40", "data.val_samples=4",
            f"train.max_steps={steps}", "train.checkpoint_every=2", "train.eval_every=10", "train.log_every=5",
            "train.progress=false", "train.checkpoints_total_limit=3", f"train.output_dir={out}"]
    if processes == 1:
        return [sys.executable, "-m", "radloop", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "radloop", *args]


def _loadable(path: Path) -> bool:
    try:
        load_file(str(path))
        return True
    except Exception:  # a truncated file raises safetensors' own error type
        return False


def _loadable_model(folder: Path) -> bool:
    weights = list(folder.glob("*.safetensors"))
    return (folder / "config.json").is_file() and bool(weights) and all(_loadable(w) for w in weights)


def inspect(run: Path) -> dict[str, int]:
    """Counts of what a killed run left: complete and broken checkpoints, partial folders, bad model folders."""
    out = {"checkpoints": 0, "broken_checkpoints": 0, "partial_checkpoints": 0, "broken_model_folders": 0}
    ckpts = run / "checkpoints"
    if ckpts.is_dir():
        for folder in ckpts.iterdir():
            if folder.name.startswith(".partial_checkpoint_"):
                out["partial_checkpoints"] += 1
            elif folder.name.startswith("checkpoint_"):
                ok = _loadable(folder / "model.safetensors")
                out["checkpoints" if ok else "broken_checkpoints"] += 1
    for name in ("best", "final"):
        if (run / name).exists() and not _loadable_model(run / name):
            out["broken_model_folders"] += 1
    return out


def run_to_end(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def kill_loop(cmd: list[str], env: dict[str, str], run: Path, kills: int, window: float,
              rng: random.Random) -> dict[str, Any]:
    totals = {"kills": 0, "finished_before_kill": 0, "partial_checkpoints_seen": 0, "broken_checkpoints": 0,
              "broken_model_folders": 0}
    while totals["kills"] < kills:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        delay = rng.uniform(0.2 * window, window)
        try:
            proc.wait(timeout=delay)
            totals["finished_before_kill"] += 1  # too late: the run had finished; start over
            shutil.rmtree(run)
            continue
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        totals["kills"] += 1
        seen = inspect(run)
        totals["partial_checkpoints_seen"] += seen["partial_checkpoints"]
        totals["broken_checkpoints"] += seen["broken_checkpoints"]
        totals["broken_model_folders"] += seen["broken_model_folders"]
    return totals


def compare(a: Path, b: Path) -> dict[str, Any]:
    wa = load_file(str(next(a.glob("*.safetensors"))))
    wb = load_file(str(next(b.glob("*.safetensors"))))
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return {"bit_identical": all(torch.equal(wa[k], wb[k]) for k in wa), "max_abs_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="working folder (default: a temporary one, removed)")
    p.add_argument("--json")
    args = p.parse_args()
    from shared.data.synthcxr import SynthConfig, generate_dataset

    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="radloop_kill_"))
    data = work / "data"
    if not (data / "annotation.json").is_file():
        generate_dataset(data, SynthConfig(patients=30, studies_per_patient=2, size=32, seed=3))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result: dict[str, Any] = {"benchmark": "reliability_kill", "machine": f"{platform.machine()} CPU",
                              "command": f"python benchmarks/reliability_kill.py --kills {args.kills} --processes "
                                         + " ".join(map(str, args.processes)) + f" --steps {args.steps}",
                              "configurations": {}}
    for n in args.processes:
        ref, run = work / f"ref_{n}", work / f"killed_{n}"
        for folder in (ref, run):
            shutil.rmtree(folder, ignore_errors=True)
        seconds = run_to_end(train_command(data, ref, args.steps, n), env)
        totals = kill_loop(train_command(data, run, args.steps, n), env, run, args.kills, seconds, rng)
        run_to_end(train_command(data, run, args.steps, n), env)
        result["configurations"][f"{n}_process"] = {"uninterrupted_seconds": round(seconds, 1), **totals,
                                                     **compare(ref / "final", run / "final")}
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
