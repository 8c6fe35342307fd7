"""One implementation of "draw these reports into this folder", for `radloop generate image` and the augmentation.

A folder holds the images of one request (pipeline, reports, seed, sampler settings, batch size), stamped in
``.generate_request.json`` before the first image is written. A rerun of the same request skips every batch whose
images are all on disk (each batch is seeded by its start index alone, so what it would draw again is what is
there); another request is refused by name, or, with ``replace=True`` (a workflow's own scratch folder), starts
the folder afresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.io import atomic_save_image, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["REQUEST_FILE", "generate_into"]

REQUEST_FILE = ".generate_request.json"


def _resolved(pipe: Any, pipeline: str | None, num_inference_steps: int | None, guidance_scale: float | None,
              sampler: str | None) -> dict[str, Any]:
    """The sampling this request runs with: each unset value is the pipeline's saved one."""
    from report2image.pipeline import ReportToCXRPipeline, SamplingConfig

    if pipe is not None:
        saved = getattr(pipe, "sampling", None) or SamplingConfig()
    else:
        saved = ReportToCXRPipeline.saved_sampling(pipeline)
    return {"num_inference_steps": saved.num_inference_steps if num_inference_steps is None else num_inference_steps,
            "guidance_scale": saved.guidance_scale if guidance_scale is None else guidance_scale,
            "sampler": saved.sampler if sampler is None else sampler}


def generate_into(out: str | Path, reports: Sequence[str], names: Sequence[str], pipeline: str | None = None,
                  pipe: Any = None, seed: int = 0, batch_size: int = 32, num_inference_steps: int | None = None,
                  guidance_scale: float | None = None, sampler: str | None = None,
                  replace: bool = False) -> tuple[dict[str, Any], int]:
    """Draw ``reports[i]`` as ``out/<names[i]>.png``, resumable (see the module docstring).

    Args:
        pipeline: the pipeline's folder or ``zoo:NAME`` (loaded only when a batch is missing), or None with
            ``pipe``, an already loaded :class:`~report2image.ReportToCXRPipeline`.
        num_inference_steps, guidance_scale, sampler: None takes the pipeline's saved value.
        replace: another request's stamp starts the folder afresh instead of raising FileExistsError.

    Returns:
        The request as stamped (every sampling value resolved) and how many batches an earlier run had written.
    """
    if (pipeline is None) == (pipe is None):
        raise ValueError("give either pipeline (a folder or zoo:NAME) or pipe (a loaded pipeline)")
    if len(names) != len(reports):
        raise ValueError(f"{len(reports)} reports but {len(names)} names")
    out = Path(out)
    request = {"pipeline": str(pipeline) if pipeline is not None else None, "reports": list(reports), "seed": seed,
               "batch_size": batch_size, **_resolved(pipe, pipeline, num_inference_steps, guidance_scale, sampler)}
    stamp = out / REQUEST_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) != request:
        if not replace:
            raise FileExistsError(f"{out} holds images of another request ({REQUEST_FILE} differs): use another "
                                  "output folder")
        for name in names:
            (out / f"{name}.png").unlink(missing_ok=True)
    atomic_write_text(stamp, json.dumps(request, indent=1) + "\n")
    starts = [k for k in range(0, len(reports), batch_size)
              if not all((out / f"{n}.png").is_file() for n in names[k:k + batch_size])]
    skipped = -(-len(reports) // batch_size) - len(starts)
    if starts:
        if pipe is None:
            from report2image import ReportToCXRPipeline

            pipe = ReportToCXRPipeline.from_pretrained(pipeline)
            pipe.set_progress_bar_config(disable=True)
        pipe.use_sampler(request["sampler"])
        for k in starts:
            batch = pipe.generate_batched(list(reports[k:k + batch_size]), batch_size, seed + k,
                                          request["num_inference_steps"], request["guidance_scale"], output_type="pil")
            for name, image in zip(names[k:k + batch_size], batch, strict=True):
                atomic_save_image(image, out / f"{name}.png")
    return request, skipped
