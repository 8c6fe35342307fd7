"""The one Accelerate training loop every trainer in the suite uses."""

from .loop import NonFiniteLossError, TrainConfig, Trainer, TrainResult, seed_everything

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "TrainResult", "seed_everything"]
