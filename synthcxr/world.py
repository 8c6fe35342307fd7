"""SynthCXR's structural causal model: who the patient is, how the film was taken, what it shows.

Identity (:class:`Patient`: anatomy) and pathology (a tuple of :class:`Finding`) are independent
causes of the image; the acquisition (:class:`Acquisition`: pose, exposure, noise seed) is a third,
per-study cause. The report is written from the pathology alone. Because rendering is a pure
function of these three, the true counterfactual of any edit of the findings is known.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FINDING_SPECS",
    "FindingSpec",
    "Finding",
    "Patient",
    "Acquisition",
    "DEFAULT_PREVALENCE",
    "sample_patient",
    "sample_acquisition",
    "sample_findings",
    "stable_seed",
]


@dataclass(frozen=True)
class FindingSpec:
    """What attributes a finding takes. Empty tuples mean the attribute does not apply."""

    name: str
    severities: tuple[str, ...] = ()
    lateralities: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


FINDING_SPECS: dict[str, FindingSpec] = {
    spec.name: spec
    for spec in (
        FindingSpec("Cardiomegaly", severities=("mild", "moderate", "severe")),
        FindingSpec("Enlarged Cardiomediastinum", severities=("mild", "moderate", "severe")),
        FindingSpec("Pleural Effusion", ("small", "moderate", "large"), ("right", "left", "bilateral")),
        FindingSpec("Pneumothorax", ("small", "moderate", "large"), ("right", "left"), ("apex",)),
        FindingSpec("Consolidation", ("small", "moderate", "large"), ("right", "left"), ("upper", "lower")),
        FindingSpec("Pneumonia", ("mild", "moderate", "severe"), ("right", "left"), ("upper", "middle", "lower")),
        FindingSpec("Atelectasis", ("mild", "moderate"), ("right", "left"), ("base", "retrocardiac")),
        FindingSpec("Edema", ("mild", "moderate", "severe"), ("bilateral",), ("perihilar",)),
        FindingSpec("Lung Lesion", ("small", "large"), ("right", "left"), ("upper", "middle", "lower"),
                    ("nodule", "mass")),
        FindingSpec("Fracture", (), ("right", "left"), ("middle", "lower"), ("rib",)),
        FindingSpec("Support Devices", (), (), (), ("endotracheal tube", "central venous catheter", "pacemaker")),
    )
}

#: Default per-study prevalence: long-tailed, the rarest at 0.8%.
DEFAULT_PREVALENCE: dict[str, float] = {
    "Cardiomegaly": 0.16,
    "Support Devices": 0.12,
    "Pleural Effusion": 0.12,
    "Atelectasis": 0.10,
    "Edema": 0.06,
    "Consolidation": 0.05,
    "Enlarged Cardiomediastinum": 0.04,
    "Pneumonia": 0.03,
    "Lung Lesion": 0.02,
    "Pneumothorax": 0.015,
    "Fracture": 0.008,
}


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, identical across processes and Python versions."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Finding:
    """One finding with its attributes. ``seed`` fixes the finding's exact shape and position."""

    name: str
    severity: str | None = None
    laterality: str | None = None
    zone: str | None = None
    kind: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        spec = FINDING_SPECS.get(self.name)
        if spec is None:
            raise ValueError(f"unknown finding '{self.name}'; known: {sorted(FINDING_SPECS)}")
        for attr, allowed in (
            ("severity", spec.severities),
            ("laterality", spec.lateralities),
            ("zone", spec.zones),
            ("kind", spec.kinds),
        ):
            value = getattr(self, attr)
            if not allowed and value is not None:
                raise ValueError(f"{self.name}: takes no {attr} (got {value!r})")
            if allowed and value is None:
                # Fill a missing attribute with the first allowed value so that hand-written
                # findings such as Finding("Pleural Effusion") render.
                object.__setattr__(self, attr, allowed[0])
            elif value is not None and value not in allowed:
                raise ValueError(f"{self.name}: {attr}={value!r} is not one of {list(allowed)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls) if f.name in data})

    @property
    def sides(self) -> tuple[int, ...]:
        """Image-space sides: -1 is the image left (patient right), +1 the image right."""
        return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}.get(self.laterality or "", ())


@dataclass(frozen=True)
class Patient:
    """Anatomy of one patient, in normalised patient coordinates (x right on the image, y down)."""

    patient_id: str
    seed: int
    body_w: float = 0.9
    body_h: float = 1.25
    lung_cx: float = 0.40
    lung_w: float = 0.29
    lung_top: float = -0.70
    base_right: float = 0.44
    base_left: float = 0.48
    dome_h: float = 0.12
    heart_cx: float = 0.07
    heart_cy: float = 0.26
    heart_w: float = 0.30
    heart_h: float = 0.19
    medi_w: float = 0.085
    rib_spacing: float = 0.145
    rib_slope: float = 0.35
    rib_phase: float = 0.0
    clav_y: float = -0.60
    soft_tissue: float = 0.55
    bone: float = 1.0
    sex: str = "F"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Patient:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class Acquisition:
    """How one film was taken: pose (rotation in degrees, shift, scale), exposure and noise."""

    rotation: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    gain: float = 1.0
    gamma: float = 1.0
    noise: float = 0.01
    noise_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Acquisition:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def sample_patient(patient_id: str, seed: int) -> Patient:
    """Draw one patient's anatomy. Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    u = rng.uniform
    base_right = u(0.40, 0.48)
    return Patient(
        patient_id=patient_id,
        seed=int(seed),
        body_w=u(0.98, 1.08),
        body_h=u(1.15, 1.35),
        lung_cx=u(0.37, 0.42),
        lung_w=u(0.26, 0.31),
        lung_top=u(-0.74, -0.64),
        base_right=base_right,
        base_left=base_right + u(0.02, 0.06),
        dome_h=u(0.09, 0.14),
        heart_cx=u(0.05, 0.09),
        heart_cy=u(0.19, 0.24),
        heart_w=u(0.28, 0.32),
        heart_h=u(0.2, 0.24),
        medi_w=u(0.075, 0.095),
        rib_spacing=u(0.135, 0.155),
        rib_slope=u(0.2, 0.35),
        rib_phase=u(0.0, 1.0),
        clav_y=u(-0.64, -0.56),
        soft_tissue=u(0.50, 0.60),
        bone=u(0.85, 1.15),
        sex=str(rng.choice(["F", "M"])),
    )


def sample_acquisition(seed: int, pose_jitter: float = 1.0) -> Acquisition:
    """Draw one study's pose and exposure. ``pose_jitter=0`` gives the canonical pose."""
    rng = np.random.default_rng(seed)
    j = float(pose_jitter)
    return Acquisition(
        rotation=float(rng.uniform(-3.0, 3.0) * j),
        shift_x=float(rng.uniform(-0.03, 0.03) * j),
        shift_y=float(rng.uniform(-0.03, 0.03) * j),
        scale=float(1.0 + rng.uniform(-0.03, 0.03) * j),
        gain=float(rng.uniform(0.92, 1.08)),
        gamma=float(rng.uniform(0.9, 1.1)),
        noise=float(rng.uniform(0.005, 0.015)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_findings(
    rng: np.random.Generator,
    prevalence: Mapping[str, float] | None = None,
    max_findings: int = 4,
) -> tuple[Finding, ...]:
    """Draw the findings of one study: independent Bernoulli draws, attributes uniform.

    Args:
        rng: the study's generator.
        prevalence: per-finding probability; defaults to :data:`DEFAULT_PREVALENCE`.
        max_findings: keep at most this many (the first drawn in spec order).
    """
    prevalence = DEFAULT_PREVALENCE if prevalence is None else prevalence
    unknown = set(prevalence).difference(FINDING_SPECS)
    if unknown:
        raise ValueError(f"unknown finding(s) in prevalence: {sorted(unknown)}")

    def pick(options: Sequence[str]) -> str | None:
        return str(options[rng.integers(len(options))]) if options else None

    out: list[Finding] = []
    for name, spec in FINDING_SPECS.items():
        if rng.random() >= float(prevalence.get(name, 0.0)):
            continue
        laterality, zone = pick(spec.lateralities), pick(spec.zones)
        if name == "Atelectasis" and zone == "retrocardiac":
            laterality = "left"  # the retrocardiac space is behind the heart, on the left

        out.append(
            Finding(
                name=name,
                severity=pick(spec.severities),
                laterality=laterality,
                zone=zone,
                kind=pick(spec.kinds),
                seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    return tuple(out[:max_findings])
