"""Rewrite a wheel without the files that match a pattern, with a RECORD that lists what is left.

    python benchmarks/gpu/slim_wheel.py .whl/pycocoevalcap-1.2-py3-none-any.whl '*.jar' '*.gz'

pycocoevalcap's wheel is 104 MB, mostly Java programs and METEOR's paraphrase table; the GPU machine
has no Java, so METEOR, SPICE and the PTB tokenizer cannot run there anyway, and the device tool
carries at most 64 MiB. BLEU, ROUGE-L and CIDEr are pure Python and stay.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import sys
import zipfile
from pathlib import Path


def slim(path: Path, patterns: list[str]) -> tuple[int, int]:
    """Rewrite ``path`` in place; returns (bytes before, bytes after)."""
    before = path.stat().st_size
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in src.infolist():
            name = info.filename
            if name == record_name or any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            data = src.read(name)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
        rows.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(rows) + "\n")
    tmp.replace(path)
    return before, path.stat().st_size


if __name__ == "__main__":
    wheel, *globs = sys.argv[1:]
    b, a = slim(Path(wheel), globs)
    sys.stdout.write(f"{wheel}: {b / 1e6:.1f} MB -> {a / 1e6:.1f} MB\n")
