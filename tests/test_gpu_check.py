"""The GPU device check, run here with tiny sizes; the wheel slimmer that makes its wheels fit."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_check_script_cpu_dry_run_writes_every_row(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run([str(REPO / "benchmarks/gpu/check.sh"), "--cpu-dry-run"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "train_speed.json").read_text())
    assert {r["component"] for r in result["rows"]} == {"backbone", "decoder", "unet"}
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["flops_per_step"] > 0 and row["seconds_per_step"] > 0 and row["samples_per_s"] > 0
        assert row["mfu"] is None  # no bf16 peak on a CPU


def test_slim_wheel_drops_files_and_rewrites_record(tmp_path):
    spec = importlib.util.spec_from_file_location("slim_wheel", REPO / "benchmarks/gpu/slim_wheel.py")
    slim_wheel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slim_wheel)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "X = 1\n")
        z.writestr("pkg/big.jar", b"\0" * 10_000)
        z.writestr("pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
        z.writestr("pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("pkg-1.0.dist-info/RECORD", "stale\n")
    slim_wheel.slim(wheel, ["*.jar"])
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        record = z.read("pkg-1.0.dist-info/RECORD").decode().splitlines()
        init = z.read("pkg/__init__.py")
    assert "pkg/big.jar" not in names and "pkg/__init__.py" in names
    digest = base64.urlsafe_b64encode(hashlib.sha256(init).digest()).rstrip(b"=").decode()
    assert f"pkg/__init__.py,sha256={digest},{len(init)}" in record
    assert not any("big.jar" in line for line in record)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=120)
    assert (target / "pkg" / "__init__.py").read_text() == "X = 1\n"
