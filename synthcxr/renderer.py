"""Render a SynthCXR radiograph from (patient, findings, acquisition).

The renderer builds a density map in normalised patient coordinates (x to the image right,
y downwards; the patient's right lung is on the image left, as on a PA film), then turns it
into brightness with a Beer-Lambert-like curve, the study's exposure and its noise.

Every finding contributes a term with compact support (edges are smoothstep ramps about two
pixels wide, blobs are polynomial bumps), so rendering the same patient
and acquisition with other findings changes only the pixels the changed findings touch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .world import Acquisition, Finding, Patient, stable_seed

__all__ = ["render", "VIEWS"]

VIEWS = ("frontal", "lateral")
_F = np.float32

_SEVERITY_LEVEL = {
    None: 1,
    "trace": 0,
    "small": 0,
    "mild": 0,
    "moderate": 1,
    "large": 2,
    "severe": 2,
}


def _soft(d: np.ndarray, eps: float) -> np.ndarray:
    """1 inside (d < -eps), 0 outside (d > eps), a smoothstep ramp between: compact support."""
    t = np.clip(0.5 - d / _F(2.0 * eps), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(_F)


def _bump(r: np.ndarray) -> np.ndarray:
    """(1 - r^2)^2 for |r| < 1, else exactly 0."""
    return np.square(np.clip(1.0 - np.square(r), 0.0, None)).astype(_F)


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    return (np.sqrt(np.square((x - cx) / a) + np.square((y - cy) / b)) - 1.0) * min(a, b)


def _segment_dist(x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.sqrt(np.square(x - (p0[0] + t * dx)) + np.square(y - (p0[1] + t * dy)))


def _polyline(x: np.ndarray, y: np.ndarray, points: list[tuple[float, float]], width: float) -> np.ndarray:
    """Intensity of a tube of half-width ``width`` along a polyline (1 on the axis, 0 outside)."""
    dist = np.min([_segment_dist(x, y, a, b) for a, b in zip(points[:-1], points[1:], strict=False)], axis=0)
    return _bump(dist / width)


class _Frame:
    """Pixel grid of one film in patient coordinates, after the acquisition's pose."""

    def __init__(self, size: int, acq: Acquisition) -> None:
        c = (np.arange(size, dtype=_F) + _F(0.5)) / _F(size) * _F(2.0) - _F(1.0)
        u, v = np.meshgrid(c, c)
        theta = np.deg2rad(acq.rotation)
        cos, sin = _F(np.cos(theta)), _F(np.sin(theta))
        du, dv = u - _F(acq.shift_x), v - _F(acq.shift_y)
        scale = _F(acq.scale)
        self.x = ((cos * du + sin * dv) / scale).astype(_F)
        self.y = ((-sin * du + cos * dv) / scale).astype(_F)
        self.eps = 1.2 / size / float(acq.scale)  # ~ one pixel in patient units
        self.size = size


def _lung_sd(x: np.ndarray, y: np.ndarray, p: Patient, side: int, dome: bool = True) -> np.ndarray:
    """Signed distance to one lung field (side -1: image left / patient right)."""
    cx, a = side * p.lung_cx, p.lung_w
    base = p.base_right if side < 0 else p.base_left
    q = (y - p.lung_top) / (base - p.lung_top)
    apex = np.sqrt(np.clip(1.0 - np.square(np.clip((0.3 - q) / 0.3, 0.0, None)), 0.0, None))
    half = np.where(q < 0.3, apex, 1.0 + 0.08 * (q - 0.3))
    sd = np.maximum((np.abs(x - cx) / a - half) * a, p.lung_top - y)
    if dome:
        pn = np.clip((x - cx) / a, -1.0, 1.0)
        sd = np.maximum(sd, y - (base - p.dome_h * (1.0 - np.square(pn))))
    else:
        sd = np.maximum(sd, y - (base + 0.02))
    return sd


def _lung_geometry(p: Patient, side: int) -> tuple[float, float, float, float]:
    """(centre x, half width, top y, base y) of one lung."""
    return side * p.lung_cx, p.lung_w, p.lung_top, (p.base_right if side < 0 else p.base_left)


def _zone_y(p: Patient, side: int, zone: str | None) -> float:
    _, _, top, base = _lung_geometry(p, side)
    frac = {"apex": 0.08, "upper": 0.25, "middle": 0.5, "lower": 0.72, "base": 0.85}.get(zone or "", 0.5)
    return top + frac * (base - top)


def _vessels(fr: _Frame, p: Patient, side: int, n: int = 9) -> np.ndarray:
    """Branching lung markings radiating from the hilum, fixed per patient and side."""
    rng = np.random.default_rng(stable_seed(p.seed, "vessels", side))
    hx, hy = side * 0.2, -0.02
    out = np.zeros_like(fr.x)
    # Markings reach 0.75 from the hilum on the lateral side only: work on those pixels alone.
    near = (side * (fr.x - hx) > -0.02) & (np.abs(fr.y - hy) < 0.76) & (side * (fr.x - hx) < 0.76)
    dx, dy = fr.x[near] - hx, fr.y[near] - hy
    acc = np.zeros_like(dx)
    for beta in np.linspace(-1.15, 1.15, n) + rng.uniform(-0.12, 0.12, n):
        ux, uy = np.float32(side * np.cos(beta)), np.float32(np.sin(beta))
        r = dx * ux + dy * uy
        perp = dx * uy - dy * ux
        freq, phase = np.float32(rng.uniform(8, 14)), np.float32(rng.uniform(0, 6.3))
        width = np.float32(0.014) * np.clip(1.0 - r / np.float32(0.75), 0.15, 1.0)
        fade = np.clip(1.0 - r / np.float32(0.7), 0.0, 1.0) * (r > 0)
        acc += _bump((perp - np.float32(0.02) * np.sin(r * freq + phase)) / width) * fade
    out[near] = np.clip(acc, 0.0, 1.0)
    return out


def _rib_phase(t: np.ndarray, y: np.ndarray, p: Patient) -> np.ndarray:
    return (y + p.rib_slope * t - 0.8 * np.square(t)) / p.rib_spacing + p.rib_phase


def _ribs(fr: _Frame, p: Patient, side: int, fractures: list[Finding]) -> np.ndarray:
    t = side * fr.x
    base = p.base_right if side < 0 else p.base_left
    cage = _soft(np.maximum.reduce([
        p.medi_w * 0.9 - t, t - (p.lung_cx + p.lung_w * 1.12), p.lung_top - 0.08 - fr.y, fr.y - base - 0.04,
    ]), 3 * fr.eps)
    phase = _rib_phase(t, fr.y, p)
    ribs = np.power(np.sin(np.pi * phase), 8).astype(_F)
    for f in fractures:
        # A break with a step-off in one lateral rib: inside a small window around the rib,
        # the lateral fragment is displaced and a thin lucent gap crosses the cortex.
        rng = np.random.default_rng(stable_seed(p.seed, f.seed, "fracture"))
        t0 = p.lung_cx + p.lung_w * rng.uniform(0.45, 0.75)
        k0 = np.floor(_rib_phase(np.float32(t0), np.float32(_zone_y(p, side, f.zone)), p)) + 0.5
        window = (np.abs(phase - k0) < 0.75) & (np.abs(t - t0 - 0.06) < 0.09)
        shifted = np.power(np.sin(np.pi * (phase + 0.4)), 8)
        broken = np.where(t > t0, shifted, ribs) * (1.0 - _bump((t - t0) / max(0.02, 1.2 * fr.eps)))
        ribs = np.where(window, broken, ribs).astype(_F)
    return ribs * cage


def _clavicle(fr: _Frame, p: Patient, side: int) -> np.ndarray:
    t = side * fr.x
    yc = p.clav_y - 0.14 * (t - 0.08) + 0.1 * np.square(t - 0.3)
    along = _soft(np.maximum(0.06 - t, t - 0.58), 2 * fr.eps)
    return _bump((fr.y - yc) / 0.032) * along


@dataclass
class _Lung:
    """One lung field while its findings are drawn: aeration (0..1), marking visibility, added density."""

    cx: float
    a: float
    top: float
    base: float
    sd: np.ndarray
    vessels: np.ndarray
    aer: np.ndarray
    marks: np.ndarray
    extra: np.ndarray


def _effusion(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y, eps = fr.x, fr.y, fr.eps
    lvl = _SEVERITY_LEVEL[f.severity]
    height = (0.08, 0.24, 0.45)[lvl] * (lung.base - lung.top)
    lateral = np.clip((side * (x - lung.cx) / lung.a + 1.0) / 2.0, 0.0, 1.0)
    meniscus = lung.base - height - 0.09 * np.square(lateral)
    fluid = _soft(meniscus - y, 1.5 * eps) * _soft(_lung_sd(x, y, p, side, dome=False), eps)
    lung.aer *= 1.0 - fluid
    lung.extra += 0.03 * fluid


def _pneumothorax(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y, eps = fr.x, fr.y, fr.eps
    c = (0.14, 0.26, 0.42)[_SEVERITY_LEVEL[f.severity]]
    hx, hy = side * 0.22, 0.05
    # The collapsed lung: the lung field shrunk towards the hilum, laterally and apically.
    xs = hx + (x - hx) / (1.0 - c)
    ys = np.where(y < hy, hy + (y - hy) / (1.0 - 0.8 * c), y)
    col_sd = _lung_sd(xs, ys, p, side) * (1.0 - c)
    collapsed = _soft(col_sd, eps)
    space = _soft(lung.sd, eps) * (1.0 - collapsed)
    lung.marks *= 1.0 - space
    lung.aer = lung.aer * (1.0 - 0.2 * c * collapsed) + 0.08 * space
    lung.extra += 0.09 * _bump(col_sd / (1.6 * eps)) * _soft(lung.sd, eps)


def _consolidation(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y, eps = fr.x, fr.y, fr.eps
    rng = np.random.default_rng(stable_seed(f.seed, "consolidation"))
    fissure = lung.top + 0.45 * (lung.base - lung.top) + 0.12 * side * (x - lung.cx)
    lobe = _soft(fissure - y, eps) if f.zone == "lower" else _soft(y - fissure, eps)
    radius = (0.2, 0.3, 0.55)[_SEVERITY_LEVEL[f.severity]]
    zx = lung.cx + side * rng.uniform(-0.05, 0.08)
    zy = _zone_y(p, side, f.zone) + rng.uniform(-0.04, 0.04)
    ang = np.arctan2(y - zy, x - zx)
    r = np.hypot(x - zx, y - zy) / (radius * (1.0 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6.3))))
    blob = lobe * _bump(np.clip(r - 0.35, 0.0, None) / 0.65)
    lung.aer *= 1.0 - 0.92 * blob
    lung.extra -= 0.06 * lung.vessels * blob  # air bronchograms: dark branching lines in the opacity


def _pneumonia(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y = fr.x, fr.y
    rng = np.random.default_rng(stable_seed(f.seed, "pneumonia"))
    patchy = np.zeros_like(x)
    for _ in range((4, 7, 10)[_SEVERITY_LEVEL[f.severity]]):
        px = lung.cx + side * rng.uniform(-0.12, 0.16)
        py = _zone_y(p, side, f.zone) + rng.uniform(-0.1, 0.1)
        patchy += 0.6 * _bump(np.hypot(x - px, y - py) / rng.uniform(0.07, 0.12))
    lung.aer *= 1.0 - 0.7 * np.clip(patchy, 0.0, 1.0)


def _atelectasis(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y, eps = fr.x, fr.y, fr.eps
    rng = np.random.default_rng(stable_seed(f.seed, "atelectasis"))
    thick = max((0.016, 0.03, 0.03)[_SEVERITY_LEVEL[f.severity]], 1.2 * eps)
    if f.zone == "retrocardiac":
        wedge = _soft(_ellipse_sd(x, y, side * 0.15, lung.base - 0.12, 0.08, 0.11), 2 * eps)
        lung.extra += (0.1 + 0.06 * _SEVERITY_LEVEL[f.severity]) * wedge
    else:
        y0 = lung.base - p.dome_h - 0.08 + rng.uniform(-0.03, 0.02)
        band = _bump((y - y0 - rng.uniform(-0.12, 0.12) * (x - lung.cx)) / thick)
        band *= _bump((x - lung.cx - side * rng.uniform(0.0, 0.08)) / 0.16)
        lung.aer *= 1.0 - 0.9 * band


def _edema(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y, eps = fr.x, fr.y, fr.eps
    level = _SEVERITY_LEVEL[f.severity]
    hx, hy = side * 0.2, 0.0
    haze = _bump(np.hypot((x - hx) / (0.3 + 0.1 * level), (y - hy) / (0.42 + 0.1 * level)))
    lung.aer *= 1.0 - (0.3 + 0.18 * level) * haze
    lung.marks *= 1.0 + 0.8 * haze
    if level >= 1:  # Kerley B lines: short horizontal lines at the lateral bases
        edge = lung.cx + side * lung.a * 0.98
        for k in range(4):
            yk = lung.base - 0.06 - 0.045 * k
            lung.extra += 0.05 * _bump((y - yk) / max(0.006, eps)) * _bump((x - edge + side * 0.03) / 0.035)


def _lesion(fr: _Frame, p: Patient, side: int, lung: _Lung, f: Finding) -> None:
    x, y, eps = fr.x, fr.y, fr.eps
    rng = np.random.default_rng(stable_seed(f.seed, "lesion"))
    radius = (0.04 if f.kind == "nodule" else 0.1) * (0.8 if f.severity == "small" else 1.2)
    lx = lung.cx + side * rng.uniform(-0.02, 0.12)
    ly = _zone_y(p, side, f.zone) + rng.uniform(-0.05, 0.05)
    ang = np.arctan2(y - ly, x - lx)
    lob = 1.0 + 0.1 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.06 * np.sin(5 * ang + rng.uniform(0, 6.3))
    lung.extra += 0.28 * _soft(np.hypot(x - lx, y - ly) - radius * lob, 1.5 * eps)


#: lung findings in drawing order (the order is part of the image: later ones act on earlier ones),
#: each with whether it is drawn only on its own side(s)
_LUNG_FINDINGS = (
    ("Pleural Effusion", _effusion, True),
    ("Pneumothorax", _pneumothorax, True),
    ("Consolidation", _consolidation, True),
    ("Pneumonia", _pneumonia, True),
    ("Atelectasis", _atelectasis, True),
    ("Edema", _edema, False),  # bilateral by nature: both lungs whatever the sides
    ("Lung Lesion", _lesion, True),
)


def _heart_and_mediastinum(fr: _Frame, p: Patient, by_name: dict[str, list[Finding]]
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(heart, mediastinum) masks; cardiomegaly and a widened mediastinum change their size."""
    x, y, eps = fr.x, fr.y, fr.eps
    cardio = by_name.get("Cardiomegaly", [])
    grow = 1.0 + (0.2 + 0.13 * _SEVERITY_LEVEL[cardio[0].severity] if cardio else 0.0)
    hw, hh = p.heart_w * grow, p.heart_h * (1.0 + 0.35 * (grow - 1.0))
    heart = _soft(_ellipse_sd(x, y, p.heart_cx + 0.55 * (hw - p.heart_w), p.heart_cy, hw, hh), eps)
    ecm = by_name.get("Enlarged Cardiomediastinum", [])
    widen = (0.45 + 0.35 * _SEVERITY_LEVEL[ecm[0].severity]) if ecm else 0.0
    upper = _bump((y + 0.32) / 0.42) * widen
    medi_sd = np.maximum(np.abs(x - 0.01) - p.medi_w * (1.0 + upper), y - p.heart_cy)
    knob = _ellipse_sd(x, y, p.medi_w + 0.035 + p.medi_w * upper, -0.36, 0.055, 0.05)
    return heart, _soft(np.minimum(medi_sd, knob), eps)


def _add_lung(dens: np.ndarray, fr: _Frame, p: Patient, side: int, by_name: dict[str, list[Finding]],
              not_central: np.ndarray, body: np.ndarray) -> None:
    """Add one side's aerated lung with its findings, ribs and clavicle to ``dens`` (in place)."""
    x, y, eps = fr.x, fr.y, fr.eps
    cx, a, top, base = _lung_geometry(p, side)
    lung_sd = _lung_sd(x, y, p, side)
    field = _soft(lung_sd, eps) * not_central
    lung = _Lung(cx, a, top, base, lung_sd, _vessels(fr, p, side), np.ones_like(x), np.ones_like(x), np.zeros_like(x))
    for name, draw, sided in _LUNG_FINDINGS:
        for f in by_name.get(name, []):
            if not sided or side in f.sides:
                draw(fr, p, side, lung, f)
    markings = 0.09 * field * np.clip(lung.aer, 0.0, 1.0) * lung.marks * lung.vessels
    dens += -0.44 * field * lung.aer + markings + lung.extra
    fractures = [f for f in by_name.get("Fracture", []) if side in f.sides]
    dens += 0.075 * p.bone * _ribs(fr, p, side, fractures) * body + 0.2 * p.bone * _clavicle(fr, p, side)


def _add_devices(dens: np.ndarray, fr: _Frame, p: Patient, devices: list[Finding]) -> None:
    """Support devices as radio-opaque lines and boxes, added to ``dens`` (in place)."""
    x, y, eps = fr.x, fr.y, fr.eps

    def tube(w: float) -> float:
        # Tubes and wires are drawn at least about a pixel wide, so that they stay visible at small sizes.
        return max(w, 1.2 * eps)

    for f in devices:
        rng = np.random.default_rng(stable_seed(f.seed, "device"))
        if f.kind == "endotracheal tube":
            tip = -0.42 + rng.uniform(-0.05, 0.05)
            dens += 0.4 * _polyline(x, y, [(0.005, -1.2), (0.005, tip)], tube(0.012))
        elif f.kind == "central venous catheter":
            pts = [(-0.62, -0.66), (-0.3, -0.55), (-0.08, -0.36), (-0.05, -0.12 + rng.uniform(-0.04, 0.04))]
            dens += 0.45 * _polyline(x, y, pts, tube(0.009))
        else:  # pacemaker: generator box in the left upper chest, leads into the heart
            gx, gy = 0.52 + rng.uniform(-0.04, 0.04), -0.62
            box = _soft(np.maximum(np.abs(x - gx) - 0.07, np.abs(y - gy) - 0.045), eps)
            leads = _polyline(x, y, [(gx - 0.05, gy), (0.22, -0.45), (0.04, 0.0), (0.1, p.heart_cy + 0.1)], tube(0.007))
            dens += 0.9 * box + 0.5 * leads


def _frontal(fr: _Frame, p: Patient, findings: Iterable[Finding]) -> np.ndarray:
    x, y, eps = fr.x, fr.y, fr.eps
    by_name: dict[str, list[Finding]] = {}
    for f in findings:
        by_name.setdefault(f.name, []).append(f)
    # 1. heart and mediastinum
    heart, medi = _heart_and_mediastinum(fr, p, by_name)
    # 2. the trunk: soft tissue, spine, trachea
    body = _soft(_ellipse_sd(x, y, 0.0, 0.2, p.body_w, p.body_h), 3 * eps)
    dens = p.soft_tissue * body + 0.06 * medi + 0.04 * heart
    spine = _soft(np.abs(x) - 0.055, 2 * eps) * body
    dens += 0.06 * p.bone * spine
    trachea = _soft(np.maximum(np.abs(x - 0.005) - 0.028, y + 0.2), eps)
    dens -= 0.18 * trachea
    # 3. each lung with its findings, ribs and clavicle
    not_central = (1.0 - heart) * (1.0 - medi)
    for side in (-1, 1):
        _add_lung(dens, fr, p, side, by_name, not_central, body)
    # 4. support devices
    _add_devices(dens, fr, p, by_name.get("Support Devices", []))
    return dens


def _lateral(fr: _Frame, p: Patient, findings: Iterable[Finding]) -> np.ndarray:
    """A lateral film: x is the antero-posterior axis (anterior on the image left)."""
    z, y, eps = fr.x, fr.y, fr.eps
    names = {f.name: f for f in findings}
    body = _soft(_ellipse_sd(z, y, 0.0, 0.15, 0.78, p.body_h), 3 * eps)
    base = 0.5 * (p.base_right + p.base_left)
    pz = np.clip(z / 0.62, -1.0, 1.0)
    lung_sd = np.maximum(_ellipse_sd(z, y, 0.0, 0.0, 0.62, 0.72 - p.lung_top * 0.05),
                         y - (base + 0.05 * pz - p.dome_h * (1.0 - np.square(pz))))
    grow = 1.0
    if "Cardiomegaly" in names:
        grow += 0.2 + 0.13 * _SEVERITY_LEVEL[names["Cardiomegaly"].severity]
    heart = _soft(_ellipse_sd(z, y, -0.2 - 0.05 * (grow - 1), p.heart_cy, 0.3 * grow, p.heart_h * 1.3), eps)
    lung = _soft(lung_sd, eps) * (1.0 - heart)
    aer = np.ones_like(z)
    extra = np.zeros_like(z)
    spine = _soft(np.abs(z - 0.62) - 0.09, 2 * eps) * body
    spine *= 0.7 + 0.3 * np.square(np.cos(np.pi * y / 0.16))
    if "Pleural Effusion" in names:
        height = (0.08, 0.2, 0.4)[_SEVERITY_LEVEL[names["Pleural Effusion"].severity]]
        meniscus = base - height * 1.2 - 0.1 * np.square(np.clip(z / 0.62, 0.0, 1.0))
        aer *= 1.0 - _soft(meniscus - y, 1.5 * eps) * _soft(_ellipse_sd(z, y, 0.0, 0.0, 0.62, 0.8), eps)
    for name in ("Consolidation", "Pneumonia", "Lung Lesion"):
        if name in names:
            f = names[name]
            rng = np.random.default_rng(stable_seed(f.seed, "lateral", name))
            zy = _zone_y(p, -1, f.zone)
            r = 0.05 if name == "Lung Lesion" else 0.15
            blob = _bump(np.hypot(z - rng.uniform(-0.2, 0.3), y - zy) / r)
            if name == "Lung Lesion":
                extra += 0.25 * blob
            else:
                aer *= 1.0 - 0.8 * blob
    if "Edema" in names:
        aer *= 1.0 - 0.4 * _bump(np.hypot(z / 0.35, y / 0.45))
    if "Support Devices" in names and names["Support Devices"].kind == "pacemaker":
        extra += 0.9 * _soft(np.maximum(np.abs(z + 0.55) - 0.04, np.abs(y + 0.6) - 0.05), eps)
    dens = p.soft_tissue * body - 0.4 * lung * aer + 0.15 * p.bone * spine + 0.04 * heart + extra
    dens += 0.15 * p.bone * _bump((z + 0.7 + 0.05 * y) / 0.03) * _soft(np.abs(y + 0.1) - 0.5, 2 * eps)
    return dens


def render(
    patient: Patient,
    findings: Iterable[Finding] = (),
    acquisition: Acquisition | None = None,
    size: int = 128,
    view: str = "frontal",
    noise: bool = True,
) -> np.ndarray:
    """Render one radiograph.

    Args:
        patient: anatomy (identity).
        findings: what the film shows (pathology).
        acquisition: pose, exposure and noise seed; the canonical acquisition when ``None``.
        size: output side in pixels.
        view: ``"frontal"`` (PA) or ``"lateral"``.
        noise: add the acquisition's quantum noise.

    Returns:
        ``(size, size)`` float32 array in [0, 1], bright = dense.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    acq = acquisition or Acquisition()
    fr = _Frame(int(size), acq)
    findings = tuple(findings)
    dens = _frontal(fr, patient, findings) if view == "frontal" else _lateral(fr, patient, findings)
    img = (1.0 - np.exp(-2.2 * np.clip(dens, 0.0, None))) / (1.0 - np.exp(-2.2 * 1.1))
    img = np.power(np.clip(acq.gain * img, 0.0, 1.0), acq.gamma)
    if noise and acq.noise > 0:
        rng = np.random.default_rng([acq.noise_seed, 0 if view == "frontal" else 1])
        img = img + acq.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
