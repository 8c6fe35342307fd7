"""The one Accelerate training loop every trainer in the suite uses."""

from .loop import NonFiniteLossError, TrainConfig, Trainer, TrainResult, seed_everything, training_loader

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "TrainResult", "seed_everything", "training_loader"]
