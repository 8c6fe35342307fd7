"""A self-contained HTML report: images inlined as base64 PNGs, no scripts, no network.

Sections (each a ``<section id=...>``, which the demo test checks): ``stages``, ``metrics``,
``images``, ``counterfactuals``, ``reports``, ``roundtrip``, ``augmentation``, ``curves``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from shared.labels import CHEXPERT_LABELS
from shared.text.labeler import ReportLabeler

__all__ = ["png_data_uri", "image_grid", "curves_png", "highlight_findings", "metric_table", "render_html", "SECTIONS"]

SECTIONS = ("stages", "metrics", "images", "counterfactuals", "reports", "roundtrip", "augmentation", "curves")


def png_data_uri(image: Image.Image | np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI; arrays are (H, W) floats in [0, 1]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8), mode="L")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 2, pad: int = 2) -> Image.Image:
    """Tile (H, W) [0, 1] arrays row by row (rows may differ in length), enlarged ``scale`` times."""
    h, w = rows[0][0].shape
    ncol = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = np.clip(img, 0, 1)
    im = Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def curves_png(histories: Mapping[str, Sequence[Mapping[str, float]]],
               selection: Mapping[str, str] | None = None) -> Image.Image:
    """Training loss and the validation selection metric (``selection[name]``, without ``val/``)
    against step, one panel per model."""
    selection = selection or {}
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n, h in histories.items() if any("train/loss" in r for r in h)]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 2.6), squeeze=False)
    for ax, (name, metric) in zip(axes[0], ((n, selection.get(n)) for n in names), strict=False):
        hist = histories[name]
        loss = [(r["step"], r["train/loss"]) for r in hist if "train/loss" in r]
        ax.plot(*zip(*loss, strict=True), color="tab:blue")
        ax.set_ylabel("train loss", fontsize=8, color="tab:blue")
        val = [(r["step"], r[f"val/{metric}"]) for r in hist
               if metric and isinstance(r.get(f"val/{metric}"), float) and math.isfinite(r[f"val/{metric}"])]
        if val:
            twin = ax.twinx()
            twin.plot(*zip(*val, strict=True), "o-", color="tab:orange", markersize=3)
            twin.set_ylabel(f"val {metric}", fontsize=8, color="tab:orange")
            twin.tick_params(labelsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def highlight_findings(report: str, labeler: ReportLabeler, reference: set[str] | None = None) -> str:
    """HTML of ``report`` with each positive mention marked and named; green when the reference
    report states the same finding, red when it does not (``reference`` = its positive findings)."""
    result = labeler.label(report)
    text = html.escape(report)
    for m in sorted({(m.text, m.label) for m in result.mentions if m.value == 1}, key=lambda x: -len(x[0])):
        mention, label = m
        cls = "" if reference is None else (" ok" if label in reference else " bad")
        esc = html.escape(mention)
        text = text.replace(esc, f'<mark class="f{cls}" title="{html.escape(label)}">{esc}</mark>', 1)
    return text


def positive_findings(report: str, labeler: ReportLabeler) -> set[str]:
    labels = labeler.label(report).labels
    return {n for n in CHEXPERT_LABELS if labels[n] == 1}


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return html.escape(str(v))


def metric_table(rows: Mapping[str, Any] | Sequence[Sequence[Any]], header: Sequence[str] = ("metric", "value")) -> str:
    """An HTML table from ``{name: value}`` or a list of rows."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in items)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td:last-child{font-variant-numeric:tabular-nums}img{image-rendering:pixelated;max-width:100%}
mark.f{background:#fff3b0}mark.ok{background:#c8f0c8}mark.bad{background:#f6c4c4}.note{color:#555;font-size:.9em}
figure{display:inline-block;margin:.3em;text-align:center}figcaption{font-size:.8em;color:#555}
"""


def render_html(title: str, sections: Mapping[str, tuple[str, str]], intro: str = "") -> str:
    """The page: ``sections`` maps each id in :data:`SECTIONS` to (heading, inner HTML)."""
    missing = [s for s in SECTIONS if s not in sections]
    if missing:
        raise ValueError(f"report sections missing: {missing}")
    body = "".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{inner}</section>'
                   for sid, (head, inner) in sections.items())
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p class=\"note\">{intro}</p>"
            f"{body}</body></html>\n")
