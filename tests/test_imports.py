"""The import direction of DESIGN.md: shared <- image2report, report2image, evaluation <- radloop."""

import os
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_is_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_shared_imports_no_project_package():
    for path in (ROOT / "shared").rglob("*.py"):
        text = path.read_text()
        for pkg in ("image2report", "report2image", "evaluation", "radloop"):
            assert f"import {pkg}" not in text and f"from {pkg}" not in text, f"{path} imports {pkg}"
    assert os.path.isdir(ROOT / "configs")
