"""Run by tests/test_distributed.py under `accelerate launch` with 2 CPU processes (gloo)."""

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from shared.backbone.train import BackboneExperiment, train_backbone
from shared.config import load_config


def main() -> None:
    annotation, out = sys.argv[1], Path(sys.argv[2])
    cfg = load_config(BackboneExperiment(), None, [
        f"data.annotation={annotation}", "model.name=radclip_tiny", "data.batch_size=4", "data.min_freq=1",
        "train.max_steps=2", f"train.output_dir={out / 'run'}", "train.eval_every=100", "train.progress=false",
    ])
    import shared.training.loop as loop

    original = loop.Trainer._save_model

    def save_and_capture(self, name, use_ema=True):
        path = original(self, name, use_ema)
        if name == "final":  # still inside the process group (end_training comes after)
            # Parameters are what DDP keeps identical; BatchNorm running statistics are per-rank buffers.
            model = self.accelerator.unwrap_model(self.model)
            state = {k: v.detach().clone() for k, v in model.named_parameters()}
            torch.save({"world": self.accelerator.num_processes, "state": state},
                       out / f"rank{self.accelerator.process_index}.pt")
        return path

    loop.Trainer._save_model = save_and_capture
    train_backbone(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
