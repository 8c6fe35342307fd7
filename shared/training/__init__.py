"""The one Accelerate training loop every trainer in the suite uses."""

from ..registry import Registry
from .loop import (
    EpochSeededDataset,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainResult,
    seed_everything,
    training_loader,
)

__all__ = ["EpochSeededDataset", "NonFiniteLossError", "TrainConfig", "Trainer", "TrainResult", "seed_everything",
           "training_loader", "TRAINERS"]

#: ``radloop train <name>``: each entry's builder trains from an experiment dataclass, given as
#: ``meta["experiment"]`` (the config schema) with ``meta["metric"]`` (what selects the checkpoint).
TRAINERS = Registry("trainer", "training entry points (radloop train NAME)")
