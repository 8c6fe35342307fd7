"""Training-step speed, memory and MFU of the backbone, a report decoder and the diffusion UNet.

    accelerate launch --num_processes 1 --mixed_precision bf16 benchmarks/gpu/train_speed.py --out R.json
    python benchmarks/gpu/train_speed.py --cpu-dry-run --out R.json      # tiny sizes, on a CPU

Sizes are the paper settings: RadCLIP ``radclip_base``, the IU X-ray and MIMIC-CXR baseline decoder
configs (``configs/{iu_xray,mimic_cxr}/baseline.yaml``) and ``ldm_base``, each at 2-3 batch sizes.
Per row: seconds per step, steps/s, samples/s, peak memory (CUDA allocated, or the process's max RSS
on a CPU), model FLOPs of one training step counted by ``torch.utils.flop_counter`` (forward and
backward) and **MFU** = achieved FLOP/s / the device's dense bf16 peak (H200: 989 TFLOP/s; none on a
CPU). One JSON object, printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
#: dense bf16 peak FLOP/s by device name fragment
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}

FULL = {"backbone": ("radclip_base", [64, 128, 256]),
        "decoder": ([ROOT / "configs/iu_xray/baseline.yaml", ROOT / "configs/mimic_cxr/baseline.yaml"], [16, 64, 128]),
        "unet": ("ldm_base", [32, 64, 128])}
DRY = {"backbone": ("radclip_tiny", [2, 4]),
       "decoder": ([ROOT / "configs/iu_xray/baseline.yaml"], [2, 4]),
       "unet": ("ldm_tiny", [2, 4])}
#: what the dry run shrinks in the decoder configs
DRY_DECODER = ["model.name=baseline_tiny", "data.image_size=32", "data.max_length=12"]


def _backbone_step(name: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from shared.backbone import build_backbone
    from shared.backbone.train import contrastive_loss
    from shared.text.tokenizer import ReportTokenizer

    tok = ReportTokenizer(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(756)])
    model = build_backbone(name, tok).to(device)
    x = torch.randn(batch, 1, model.image_size, model.image_size, device=device)
    ids = torch.randint(4, len(tok), (batch, min(60, model.context_length)), device=device)

    def loss() -> torch.Tensor:
        out = model(x, ids)
        return contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)

    return model, loss


def _decoder_step(config: Path, batch: int, device: torch.device, overrides: Sequence[str]
                  ) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    import image2report  # noqa: F401  (registers every decoder)
    from image2report.models import build_report_model
    from image2report.train import ReportExperiment
    from shared.config import load_config

    cfg = load_config(ReportExperiment(), config, overrides)
    d, m = cfg.data, cfg.model
    model = build_report_model(m.name, 760, image_size=d.image_size, max_views=d.max_views, max_length=d.max_length,
                               **dict(m.options)).to(device)
    x = torch.randn(batch, d.max_views, 1, d.image_size, d.image_size, device=device)
    ids = torch.randint(4, 760, (batch, d.max_length), device=device)
    ids[:, 0] = 1
    return model, lambda: model(x, ids).loss


def _unet_step(name: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from report2image.models import build_unet, latent_size, load_ldm_config

    cfg = load_ldm_config(name)
    model = build_unet(cfg).to(device)
    s, c = latent_size(cfg), int(cfg["vae"]["latent_channels"])
    latents = torch.randn(batch, c, s, s, device=device)
    context = torch.randn(batch, 77, int(cfg["unet"]["cross_attention_dim"]), device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    noise = torch.randn_like(latents)
    return model, lambda: torch.nn.functional.mse_loss(model(latents, t, encoder_hidden_states=context).sample, noise)


def measure(accelerator: Accelerator, model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int,
            peak_flops: float | None) -> dict:
    """Time ``steps`` training steps after two warm-up steps; count one step's FLOPs."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, opt = accelerator.prepare(model, opt)
    model.train()

    def step() -> None:
        with accelerator.autocast():
            loss = loss_fn()
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    cuda = accelerator.device.type == "cuda"
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    achieved = flops / seconds
    return {"seconds_per_step": round(seconds, 4), "steps_per_s": round(1 / seconds, 3),
            "flops_per_step": int(flops), "achieved_tflops": round(achieved / 1e12, 4),
            "mfu": round(achieved / peak_flops, 4) if peak_flops else None, "peak_memory_mb": round(peak_mb, 1)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on a CPU (the test runs this)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; dry run 1)")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu_dry_run)
    sizes, steps = (DRY, args.steps or 1) if args.cpu_dry_run else (FULL, args.steps or 10)
    device = accelerator.device
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if device.type == "cuda" else None
    rows = []
    jobs: list[tuple[str, str, int, Callable]] = []
    backbone, bb_batches = sizes["backbone"]
    jobs += [("backbone", backbone, b, lambda b=b: _backbone_step(backbone, b, device)) for b in bb_batches]
    configs, dec_batches = sizes["decoder"]
    extra = DRY_DECODER if args.cpu_dry_run else []
    jobs += [("decoder", str(c.relative_to(ROOT)), b, lambda c=c, b=b: _decoder_step(c, b, device, extra))
             for c in configs for b in dec_batches]
    unet, unet_batches = sizes["unet"]
    jobs += [("unet", unet, b, lambda b=b: _unet_step(unet, b, device)) for b in unet_batches]
    for kind, what, batch, build in jobs:
        row = {"component": kind, "model": what, "batch": batch}
        try:
            model, loss_fn = build()
            row.update(measure(accelerator, model, loss_fn, steps, peak))
            row["samples_per_s"] = round(batch * row["steps_per_s"], 2)
        except torch.OutOfMemoryError as err:  # a batch that does not fit is a result, not a crash
            row["error"] = f"out of memory: {str(err).splitlines()[0][:160]}"
        finally:
            accelerator.free_memory()
        rows.append(row)
        accelerator.print(json.dumps(row))
    result = {"benchmark": "gpu_train_speed", "device": name, "device_type": device.type,
              "mixed_precision": accelerator.mixed_precision, "torch": torch.__version__,
              "peak_bf16_flops": peak, "steps_timed": steps, "rows": rows,
              "command": "benchmarks/gpu/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if args.out and accelerator.is_main_process:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
