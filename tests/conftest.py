"""Shared fixtures: a tiny SynthCXR dataset written once per test session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from synthcxr import SynthConfig, generate_dataset


@pytest.fixture(scope="session")
def tiny_synth_cfg() -> SynthConfig:
    # Raised prevalences so that every finding appears in a few dozen studies.
    return SynthConfig(
        patients=24, studies_per_patient=2, size=32, views=2, seed=7, workers=1,
        prevalence={name: 0.3 for name in SynthConfig().prevalence},
        degraded_fraction=0.2, wrong_report_fraction=0.15,
    )


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory, tiny_synth_cfg):
    out = tmp_path_factory.mktemp("synth")
    summary = generate_dataset(out, tiny_synth_cfg)
    return out, summary


@pytest.fixture
def load_benchmark(monkeypatch):
    """``load_benchmark(name)`` imports ``benchmarks/<name>.py`` as a module, for the test only: benchmarks/
    on the path (as ``python benchmarks/<name>.py`` has it, so sibling imports work) and the module in
    ``sys.modules`` (dataclasses look their module up there)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load
