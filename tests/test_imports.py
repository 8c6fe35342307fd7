"""The import direction of docs/architecture.md: shared <- synthcxr, image2report, report2image, evaluation <- radloop;
and the size rule of the packages."""

import os
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_is_kept(monkeypatch):
    import logging

    monkeypatch.chdir(ROOT)
    # import-linter configures logging with dictConfig, which disables every logger that exists: give them back
    # so that later tests still see the suite's log lines
    enabled = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
               and not lg.disabled]
    try:
        assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
    finally:
        for lg in enabled:
            lg.disabled = False


def test_shared_imports_no_project_package():
    for path in (ROOT / "shared").rglob("*.py"):
        text = path.read_text()
        for pkg in ("synthcxr", "image2report", "report2image", "evaluation", "radloop"):
            assert f"import {pkg}" not in text and f"from {pkg}" not in text, f"{path} imports {pkg}"
    assert os.path.isdir(ROOT / "configs")


def test_radloop_help_does_not_import_torch():
    """`radloop --help` answers at once: the CLI module and its parser import no torch (2.7 s before)."""
    import subprocess
    import sys

    code = ("import sys\nfrom radloop.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_no_function_over_60_lines_and_no_module_over_500():
    """The size rule of the house (docs/architecture.md): a function a reader takes in at once, a module a reader
    can hold; the packages only (tests and benchmarks are scripts)."""
    import ast

    long_functions, long_modules = [], []
    for package in ("shared", "synthcxr", "image2report", "report2image", "evaluation", "radloop"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if text.count("\n") > 500:
                long_modules.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60:
                        long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long_functions, long_functions
    assert not long_modules, long_modules
