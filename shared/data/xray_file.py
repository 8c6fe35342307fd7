"""Read one X-ray file a user hands over: PNG, JPEG (any PIL mode, 16-bit scaled by its bit depth) or DICOM.

DICOM needs ``pydicom`` (the ``app`` extra). The stored values go through the file's rescale
(slope/intercept) and VOI window (the file's Window Center/Width or VOI LUT; else the full value
range), and ``MONOCHROME1`` images (bright = low attenuation) are inverted, so every image comes
out as an 8-bit grey PIL image in which bone is bright. Every failure is a :class:`DataError`
whose one-line message names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import _IMAGE_ERRORS, DataError, _is_dicom, to_grey

__all__ = ["read_xray", "dicom_to_grey"]

#: a DICOM or image side above this is refused (PIL's decompression-bomb guard covers PNG/JPEG)
MAX_SIDE = 16384


def dicom_to_grey(path: str | os.PathLike[str]) -> Image.Image:
    """An 8-bit grey image of a DICOM file's first frame, windowed, MONOCHROME1 inverted."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install 'radloop[app]')") from None
    try:
        ds = pydicom.dcmread(str(path))
        raw = ds.pixel_array
    except Exception as err:  # pydicom raises many types for a corrupt file; all mean "unreadable"
        raise DataError(f"{path}: not a readable DICOM image ({type(err).__name__}: {err})") from None
    if raw.ndim == 3 and raw.shape[-1] not in (3, 4):
        raw = raw[0]  # first frame of a multi-frame image
    if raw.ndim != 2:
        raise DataError(f"{path}: DICOM pixel data of shape {raw.shape} is not a grey image")
    if max(raw.shape) > MAX_SIDE:
        raise DataError(f"{path}: DICOM image of {raw.shape[1]} x {raw.shape[0]} px is larger than {MAX_SIDE} px")
    values = apply_modality_lut(raw, ds).astype(np.float64)
    has_window = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_window:
        values = apply_voi_lut(values, ds).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L")


def read_xray(path: str | os.PathLike[str]) -> Image.Image:
    """An 8-bit grey PIL image of a PNG, JPEG or DICOM file; :class:`DataError` names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if _is_dicom(path):
        return dicom_to_grey(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_grey(im)
    except _IMAGE_ERRORS as err:
        raise DataError(f"{path.name}: not an image this app reads (PNG, JPEG or DICOM): "
                        f"{type(err).__name__}") from None
