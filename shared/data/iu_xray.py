"""Read the 3,955 IU X-ray (OpenI) radiology reports that ship inside the torchxrayvision wheel.

The archive ``torchxrayvision/data/NLMCXR_reports.tgz`` is located with
``importlib.util.find_spec`` and read directly; the torchxrayvision package is never imported.
Each report gives its findings, impression, comparison and indication sections, the
human-coded MeSH terms (``major``: coded by people; ``automatic``: by MTI) and the image ids.
Licence of the reports: CC BY-NC-ND 4.0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["IUReport", "find_iu_reports_archive", "read_iu_reports", "write_iu_reports", "iu_split",
           "split_iu_reports"]

#: the IU report splits (by report id; the test part is kept out of every training)
IU_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}

ARCHIVE_NAME = "NLMCXR_reports.tgz"


@dataclass
class IUReport:
    """One OpenI report. ``mesh_major`` terms look like ``"Cardiomegaly/mild"``."""

    uid: str
    findings: str
    impression: str
    comparison: str = ""
    indication: str = ""
    mesh_major: list[str] = field(default_factory=list)
    mesh_automatic: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Findings then impression, the text most report metrics are computed on."""
        return " ".join(t for t in (self.findings, self.impression) if t)

    @property
    def is_normal(self) -> bool:
        return self.mesh_major == ["normal"]

    def to_dict(self) -> dict:
        return asdict(self)


def find_iu_reports_archive() -> Path:
    """Path of ``NLMCXR_reports.tgz`` inside the installed torchxrayvision wheel.

    Raises:
        FileNotFoundError: torchxrayvision is not installed or lacks the archive, with how to fix it.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    hint = "install it with `pip install --no-deps torchxrayvision` (the Makefile does)"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"torchxrayvision is not installed, so the IU X-ray reports are absent; {hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / ARCHIVE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{ARCHIVE_NAME} not found in the torchxrayvision package; {hint}")


def _text(node: ET.Element | None) -> str:
    return " ".join((node.text or "").split()) if node is not None else ""


def _parse(xml_bytes: bytes, name: str) -> IUReport:
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as err:
        raise ValueError(f"{name}: not valid XML ({err})") from None
    sections = {
        (node.get("Label") or "").upper(): _text(node) for node in root.iter("AbstractText")
    }
    uid_node = root.find("uId")
    mesh = root.find("MeSH")
    return IUReport(
        uid=uid_node.get("id", "") if uid_node is not None else Path(name).stem,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        comparison=sections.get("COMPARISON", ""),
        indication=sections.get("INDICATION", ""),
        mesh_major=[_text(n) for n in mesh.findall("major")] if mesh is not None else [],
        mesh_automatic=[_text(n) for n in mesh.findall("automatic")] if mesh is not None else [],
        image_ids=[n.get("id", "") for n in root.findall("parentImage")],
    )


def read_iu_reports(archive: str | os.PathLike[str] | None = None) -> list[IUReport]:
    """All reports in the archive, sorted by their numeric id (CXR1, CXR2, ...)."""
    path = Path(archive) if archive is not None else find_iu_reports_archive()
    if not path.is_file():
        raise FileNotFoundError(f"IU X-ray reports archive not found: {path}")
    reports = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                fh = tar.extractfile(member)
                if fh is not None:
                    reports.append(_parse(fh.read(), f"{path}:{member.name}"))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"cannot read IU X-ray reports archive {path}: {err}") from None

    def key(r: IUReport) -> tuple[int, str]:
        digits = "".join(ch for ch in r.uid if ch.isdigit())
        return (int(digits) if digits else 0, r.uid)

    return sorted(reports, key=key)


def iu_split(uid: str) -> str:
    """The split of an IU report, from a hash of its id alone: the same report lands in the same
    split whatever else is read, in any order, on any machine."""
    u = int.from_bytes(hashlib.sha256(f"radloop-iu-split:{uid}".encode()).digest()[:8], "big") / 2 ** 64
    edge = 0.0
    for name, fraction in IU_SPLIT_FRACTIONS.items():
        edge += fraction
        if u < edge:
            return name
    return "test"


def split_iu_reports(reports: list[IUReport]) -> dict[str, list[IUReport]]:
    """``{"train": [...], "val": [...], "test": [...]}`` by :func:`iu_split`; reports without text are left out."""
    out: dict[str, list[IUReport]] = {name: [] for name in IU_SPLIT_FRACTIONS}
    for report in reports:
        if report.text.strip():
            out[iu_split(report.uid)].append(report)
    return out


def write_iu_reports(out: str | os.PathLike[str], archive: str | os.PathLike[str] | None = None) -> int:
    """Write all reports as JSON Lines (``.jsonl``) or one JSON list (any other suffix); returns the count."""
    from ..io import atomic_write_text

    reports = read_iu_reports(archive)
    out = Path(out)
    if out.suffix == ".jsonl":
        text = "\n".join(json.dumps(r.to_dict()) for r in reports) + "\n"
    else:
        text = json.dumps([r.to_dict() for r in reports], indent=1) + "\n"
    atomic_write_text(out, text)
    return len(reports)
