"""Kill trainings and workflows with SIGKILL at random instants, run them again, and check they end where an
uninterrupted run ends. Prints JSON.

    python benchmarks/reliability_kill.py [--kills 20] [--processes 1 2] [--steps 40] \\
        [--workflows synth generate_report generate_image augment demo] [--workflow-kills 5] \\
        [--json benchmarks/results/reliability_cpu2.json]

``--json`` merges the result into that file under ``"kills"`` (``reliability_inputs.py`` writes ``"inputs"``).

Trainings, per configuration (1 process, or 2 gloo processes through ``accelerate launch``): a tiny report
decoder (``baseline_tiny`` on a small SynthCXR set, a checkpoint every 2 steps) trains once without
interruption; then the same run is started, killed (the whole process group, SIGKILL) at a random instant,
inspected and restarted until ``--kills`` kills have happened, and finally left to finish. After every kill:
every folder under a final checkpoint name must load (``safetensors`` readable) and ``best/`` and ``final/``,
when present, must hold a loadable model; a ``.partial_checkpoint_*`` folder (a kill during ``save_state``) is
counted. At the end the final weights are compared with the uninterrupted run's: bit-identical is the target.

Workflows (``radloop synth``, ``generate report``, ``generate image``, ``augment``, ``demo --quick``), each at
a tiny size: an uninterrupted run, then ``--workflow-kills`` kill-and-rerun cycles into another folder, then
a last run to the end. After every kill, no file under a final name may be truncated (every PNG decodes,
every JSON parses, every safetensors file loads); at the end the outputs (files, with run times and other
clock readings left out of the JSON) must equal the uninterrupted run's.

A run that exits with an error on its own (not killed) stops its configuration and is reported with the
end of its stderr; nothing loops forever.
"""

from __future__ import annotations

import argparse
import hashlib
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from reliability_inputs import merge_into
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ("synth", "generate_report", "generate_image", "augment", "demo")


class RunFailed(RuntimeError):
    """A run ended with an error on its own (not by our kill)."""


def _radloop(args: list[str], processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "radloop", *args]
    # a fresh rendezvous port per launch: a killed launch's port may still be held for a while
    port = str(random.Random().randint(20000, 60000))
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
            "-m", "radloop", *args]


def train_command(data: Path, out: Path, steps: int, processes: int) -> list[str]:
    args = ["train", "report", f"data.annotation={data / 'annotation.json'}", "model.name=baseline_tiny",
            "data.image_size=32", "data.batch_size=8", "data.min_freq=1", "data.max_length=40", "data.val_samples=4",
            f"train.max_steps={steps}", "train.checkpoint_every=2", "train.eval_every=10", "train.log_every=5",
            "train.progress=false", "train.checkpoints_total_limit=3", f"train.output_dir={out}"]
    return _radloop(args, processes)


def workflow_command(name: str, work: Path, out: Path) -> list[str]:
    """The tiny command of one workflow, writing into ``out`` (inputs under ``work``, see :func:`prepare`)."""
    data = work / "data" / "annotation.json"
    if name == "synth":
        return _radloop(["synth", "--out", str(out), "--patients", "60", "--size", "32", "--seed", "3", "--quiet"])
    if name == "generate_report":
        return _radloop(["generate", "report", "--checkpoint", str(work / "report_model" / "final"),
                         "--annotation", str(data), "--split", "test", "--num-beams", "1",
                         "--out", str(out / "reports.json")])
    if name == "generate_image":
        return _radloop(["generate", "image", "--checkpoint", "zoo:ldm64", "--reports-file",
                         str(work / "reports.txt"), "--steps", "8", "--batch-size", "4", "--guidance", "5",
                         "--out", str(out)])
    if name == "augment":
        return _radloop(["augment", f"annotation={data}", "diffusion=zoo:ldm64", f"output_dir={out}",
                         "findings=[Pneumothorax,Fracture]", "per_finding=4", "seeds=[0,1]", "num_inference_steps=4",
                         "upweight_real=true", "significance_samples=50", "report.model.name=baseline_tiny",
                         "report.data.image_size=32", "report.data.batch_size=8", "report.data.min_freq=1",
                         "report.data.max_length=40", "report.data.val_samples=4", "report.train.max_steps=6",
                         "report.train.eval_every=3", "report.train.checkpoint_every=2", "report.train.warmup_steps=0"])
    if name == "demo":
        return _radloop(["demo", "--quick", "--out", str(out)])
    raise ValueError(f"unknown workflow '{name}'; known: {WORKFLOWS}")


def prepare(work: Path, steps: int, env: dict[str, str]) -> Path:
    """The inputs: a tiny SynthCXR set (every finding common), a tiny trained decoder, a reports file."""
    from synthcxr import SynthConfig, generate_dataset

    data = work / "data"
    if not (data / "annotation.json").is_file():
        generate_dataset(data, SynthConfig(patients=30, studies_per_patient=2, size=32, seed=3, workers=1,
                                           prevalence={name: 0.3 for name in SynthConfig().prevalence}))
    if not (work / "report_model" / "final").is_dir():
        run_to_end(train_command(data, work / "report_model", steps, 1), env)
    reports = [
        "Large left pleural effusion.", "Moderate cardiomegaly.", "No acute cardiopulmonary abnormality.",
        "Small right pneumothorax.", "Endotracheal tube in place. Mild pulmonary edema.", "Left rib fracture."]
    (work / "reports.txt").write_text("\n".join(reports * 2) + "\n")
    return data


# -- what a killed run left ----------------------------------------------------------------------------
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


def _readable(path: Path) -> bool:
    """Whether a file under a final name is whole: PNGs decode, JSON parses, safetensors load."""
    try:
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    json.loads(line)
        elif path.suffix == ".safetensors":
            return _loadable(path)
        return True
    except Exception:  # any reader's error means a damaged file
        return False


def truncated_files(out: Path) -> list[str]:
    """Files under final names (not ``.``-hidden temp files) that do not read back whole."""
    if not out.is_dir():
        return []
    return [str(p.relative_to(out)) for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
            and not _readable(p)]


# -- the outputs an uninterrupted run and a killed-and-rerun run must share ----------------------------
#: JSON keys that read a clock, a path or a process, or hash paths (they differ between any two runs)
_VOLATILE = ("seconds", "minutes", "time", "started", "argv", "command", "output_dir", "path", "host", "pid",
             "fingerprint")
#: files that record the run itself rather than its outputs
_RUN_RECORDS = {"config.yaml", "train_config.json", "train_result.json", "history.json", "report.html",
                "training_curves.png", "run_config.yaml"}


def _normalised_json(value: Any, out: Path) -> Any:
    if isinstance(value, dict):
        return {k: _normalised_json(v, out) for k, v in value.items() if not any(w in k.lower() for w in _VOLATILE)}
    if isinstance(value, list):
        return [_normalised_json(v, out) for v in value]
    if isinstance(value, str):
        return value.replace(str(out), "<out>")
    return value


def _comparable(p: Path, out: Path) -> bytes:
    """A file's bytes; for JSON, its content without volatile keys (a damaged JSON file: its bytes)."""
    if p.suffix in (".json", ".jsonl"):
        lines = p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]
        try:
            return json.dumps([_normalised_json(json.loads(x), out) for x in lines if x.strip()],
                              sort_keys=True).encode()
        except ValueError:
            pass
    return p.read_bytes()


def fingerprint(out: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of a run's outputs; JSON with volatile keys and the folder's name removed;
    checkpoints, caches and run records left out."""
    prints = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if (not p.is_file() or any(part.startswith(".") for part in rel.parts) or p.name in _RUN_RECORDS
                or any(part in ("checkpoints", "feature_cache", "best", "final", "tokenizer") for part in rel.parts)):
            continue
        prints[str(rel)] = hashlib.sha256(_comparable(p, out)).hexdigest()
    return prints


# -- running and killing --------------------------------------------------------------------------------
def run_to_end(cmd: list[str], env: dict[str, str], log: Path | None = None) -> float:
    start = time.perf_counter()
    with open(log or os.devnull, "w") as err:
        rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err).returncode
    if rc != 0:
        tail = log.read_text()[-600:] if log else ""
        raise RunFailed(f"{' '.join(cmd[2:6])}... exited with {rc}: {tail}")
    return time.perf_counter() - start


def kill_loop(cmd_for: Callable[[], list[str]], env: dict[str, str], kills: int, window: float,
              rng: random.Random, after_kill: Callable[[], dict[str, int]], log: Path,
              restart: Callable[[], None]) -> dict[str, Any]:
    """Start, kill at a random instant in [0.2, 1] x ``window``, ``after_kill``, repeat ``kills`` times.

    A run that finishes before its kill is started over from nothing (``restart``); one that fails on its
    own raises :class:`RunFailed`.
    """
    totals: dict[str, Any] = {"kills": 0, "finished_before_kill": 0}
    while totals["kills"] < kills:
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd_for(), env=env, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=rng.uniform(0.2 * window, window))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        if rc is not None:
            if rc != 0:
                raise RunFailed(f"a restarted run exited with {rc}: {log.read_text()[-600:]}")
            totals["finished_before_kill"] += 1  # too late: the run had finished; start over
            restart()
            continue
        totals["kills"] += 1
        for key, value in after_kill().items():
            totals[key] = totals.get(key, 0) + value
    return totals


def compare(a: Path, b: Path) -> dict[str, Any]:
    wa = load_file(str(next(a.glob("*.safetensors"))))
    wb = load_file(str(next(b.glob("*.safetensors"))))
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return {"bit_identical": all(torch.equal(wa[k], wb[k]) for k in wa), "max_abs_diff": diff}


def training_case(work: Path, data: Path, n: int, steps: int, kills: int, env: dict[str, str],
                  rng: random.Random) -> dict[str, Any]:
    ref, run = work / f"ref_{n}", work / f"killed_{n}"
    for folder in (ref, run):
        shutil.rmtree(folder, ignore_errors=True)
    seconds = run_to_end(train_command(data, ref, steps, n), env, work / "log.txt")

    def after_kill() -> dict[str, int]:
        seen = inspect(run)
        return {"partial_checkpoints_seen": seen["partial_checkpoints"],
                "broken_checkpoints": seen["broken_checkpoints"],
                "broken_model_folders": seen["broken_model_folders"]}

    totals = kill_loop(lambda: train_command(data, run, steps, n), env, kills, seconds, rng, after_kill,
                       work / "log.txt", lambda: shutil.rmtree(run))
    run_to_end(train_command(data, run, steps, n), env, work / "log.txt")
    return {"uninterrupted_seconds": round(seconds, 1), **totals, **compare(ref / "final", run / "final")}


def workflow_case(name: str, work: Path, kills: int, env: dict[str, str], rng: random.Random) -> dict[str, Any]:
    ref, run = work / f"wf_{name}_ref", work / f"wf_{name}_killed"
    for folder in (ref, run):
        shutil.rmtree(folder, ignore_errors=True)
    seconds = run_to_end(workflow_command(name, work, ref), env, work / "log.txt")
    truncated: list[str] = []

    def after_kill() -> dict[str, int]:
        bad = truncated_files(run)
        truncated.extend(bad)
        return {"truncated_files_seen": len(bad)}

    totals = kill_loop(lambda: workflow_command(name, work, run), env, kills, seconds, rng, after_kill,
                       work / "log.txt", lambda: shutil.rmtree(run, ignore_errors=True))
    rerun_seconds = run_to_end(workflow_command(name, work, run), env, work / "log.txt")
    a, b = fingerprint(ref), fingerprint(run)
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return {"uninterrupted_seconds": round(seconds, 1), "last_rerun_seconds": round(rerun_seconds, 1), **totals,
            "truncated_examples": truncated[:3], "outputs_compared": len(a), "same_outputs": not differing,
            "differing_outputs": differing[:5]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="kills per training configuration")
    p.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workflows", nargs="*", default=list(WORKFLOWS), choices=WORKFLOWS)
    p.add_argument("--workflow-kills", dest="workflow_kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="working folder (default: a temporary one, removed)")
    p.add_argument("--json")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="radloop_kill_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = prepare(work, args.steps, env)
    result: dict[str, Any] = {
        "benchmark": "reliability_kill", "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "command": " ".join(["python", "benchmarks/reliability_kill.py", *sys.argv[1:]]),
        "trainings": {}, "workflows": {}}
    def training(n: int) -> tuple[str, str, Callable[[], dict[str, Any]]]:
        return "trainings", f"{n}_process", lambda: training_case(work, data, n, args.steps, args.kills, env, rng)

    # one process first, then the workflows, then several processes (the slowest: two interpreters to start)
    cases = [training(n) for n in args.processes if n == 1]
    cases += [("workflows", name, lambda name=name: workflow_case(name, work, args.workflow_kills, env, rng))
              for name in args.workflows]
    cases += [training(n) for n in args.processes if n != 1]
    for group, name, case in cases:
        start = time.perf_counter()
        try:
            result[group][name] = case()
        except RunFailed as err:
            result[group][name] = {"failed": str(err)}
        result[group][name]["benchmark_minutes"] = round((time.perf_counter() - start) / 60, 1)
        print(json.dumps({group: {name: result[group][name]}}), file=sys.stderr, flush=True)
        if args.json:  # after every case: a benchmark stopped half-way keeps what it measured
            merge_into(args.json, "kills", result)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
