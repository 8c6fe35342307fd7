"""The wheel carries every model config, and an install outside the repo builds every registered model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources, so the build's own folders (build/, *.egg-info) never land in the checkout.
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".*_cache"))
    # no build isolation: the build backend (setuptools) is already installed, nothing is fetched
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out)], check=True, cwd=out, timeout=300)
    (found,) = out.glob("radloop-*.whl")
    return found


@pytest.fixture(scope="module")
def zoo_wheel(wheel) -> Path:
    """The zoo as its own distribution (``zoo/pyproject.toml``), built from the same copy of the sources."""
    out = wheel.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(out / "src" / "zoo"), "--no-deps",
                    "--no-build-isolation", "--no-index", "-q", "-w", str(out)], check=True, cwd=out, timeout=300)
    (found,) = out.glob("radloop_zoo-*.whl")
    return found


def _fresh_venv(tmp_path: Path, *wheels: Path) -> tuple[Path, Path]:
    """A venv outside the repo holding only ``wheels``; torch and the other dependencies come from this
    environment's site-packages through a ``.pth`` line (whose own ``.pth`` files, the editable install's
    finder among them, are not processed). Returns (python, its site-packages)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    *map(str, wheels)], check=True, timeout=300)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "radloop_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, purelib


def _run_outside(python: Path, script: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RADLOOP_ZOO")}
    run = subprocess.run([str(python), "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_wheel_holds_every_model_config(wheel):
    from radloop.registries import list_families, load_registries
    from shared.registry import get_registry

    load_registries()
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(Path(e.source).relative_to(REPO).as_posix() for f in list_families()
                     for e in get_registry(f).entries() if e.source.endswith(".json"))
    assert len(configs) >= 8  # radclip_* and ldm_*
    missing = [c for c in configs if c not in names]
    assert not missing, f"model configs missing from the wheel: {missing}"


def test_installed_wheel_builds_every_registered_model(wheel, tmp_path):
    """A fresh venv outside the repo: the wheel alone provides radloop; torch and the other
    dependencies come from this environment's site-packages through a ``.pth`` line (whose own
    ``.pth`` files, the editable install's finder among them, are not processed)."""
    python, purelib = _fresh_venv(tmp_path, wheel)
    script = f"""
import shared
from pathlib import Path
assert Path(shared.__file__).is_relative_to(Path(r'{purelib}')), shared.__file__
from radloop.registries import load_registries
from shared.registry import get_registry, list_models
from shared.text.tokenizer import ReportTokenizer
load_registries()
tok = ReportTokenizer.fit(["no acute findings ."], min_freq=1)
needs = {{"backbone": {{"tokenizer": tok}}, "lsu": {{"vocab_size": 10}}, "radcare": {{"vocab_size": 10}},
         "report_decoder": {{"vocab_size": 10}}}}
built = 0
for family, names in list_models().items():
    if family == "trainer":
        continue
    reg = get_registry(family)
    for name in names:
        # every config is read; every CPU-sized variant (and every tower and LDM config) is built;
        # the paper-sized models are built at full size by the GPU check
        if name.endswith(("_tiny", "_small")) or family in ("tower", "ldm"):
            reg.build(name, **needs.get(family, {{}}))
            built += 1
        else:
            reg.config(name)
print("built", built)
"""
    assert int(_run_outside(python, script, tmp_path).split()[-1]) >= 20


def test_installed_wheels_load_zoo_entries_and_generate(wheel, zoo_wheel, tmp_path):
    """radloop + radloop_zoo installed outside the repo, no RADLOOP_ZOO: zoo:ifnet writes a report and
    zoo:ldm64 draws an X-ray, both found through the installed zoo package."""
    python, purelib = _fresh_venv(tmp_path, wheel, zoo_wheel)
    script = f"""
from pathlib import Path
import torch
from shared.zoo import zoo_root
assert zoo_root().is_relative_to(Path(r'{purelib}')), zoo_root()
from image2report.generator import ReportGenerator
from report2image import ReportToCXRPipeline
pipe = ReportToCXRPipeline.from_pretrained("zoo:ldm64")
image = pipe.generate_batched(["Large left pleural effusion."], batch_size=1, seed=0, output_type="pt",
                              num_inference_steps=2)
assert image.shape[-1] == 64 and 0 <= float(image.min()) and float(image.max()) <= 1, image.shape
gen = ReportGenerator.from_pretrained("zoo:ifnet")
texts = gen.generate(image * 2 - 1)  # (1, 1, 64, 64) in [-1, 1]
assert len(texts) == 1 and texts[0].strip(), texts
print("ok", texts[0])
"""
    assert _run_outside(python, script, tmp_path).startswith("ok")
