"""Image transforms for grayscale chest X-rays.

No horizontal flips: a flip swaps the patient's left and right and so the laterality words
of the report. Training uses the R2Gen recipe of resize-then-random-crop (e.g. 128 -> 112)
with a little intensity jitter; evaluation resizes and centre-crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import transforms as T

__all__ = ["build_transform", "PreprocessConfig", "PREPROCESS_FILE"]

#: the file of a model folder that holds its :class:`PreprocessConfig`
PREPROCESS_FILE = "preprocessor_config.json"


@dataclass
class PreprocessConfig:
    """How a model's input images are made: saved with the model, read by validation and every inference path,
    so a checkpoint is chosen and scored on the same pixels."""

    image_size: int
    #: the side before the centre crop (None: resized straight to ``image_size``)
    resize: int | None = None
    mean: float = 0.5
    std: float = 0.5

    def transform(self, train: bool = False) -> T.Compose:
        """PIL image -> (1, image_size, image_size) model input (the datasets' evaluation transform)."""
        return build_transform(self.image_size, self.resize, train=train, mean=self.mean, std=self.std)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] image tensors (N, C, H, W) -> the model's input: resized (bilinear, antialiased) to the side
        before the crop, centre-cropped as ``CenterCrop`` crops, normalised."""
        side = self.resize or self.image_size
        x = images.float()
        if x.shape[-2:] != (side, side):
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                                                antialias=True)
        if side != self.image_size:
            top = int(round((side - self.image_size) / 2.0))
            x = x[..., top:top + self.image_size, top:top + self.image_size]
        return (x - self.mean) / self.std


def build_transform(
    image_size: int = 112,
    resize: int | None = None,
    train: bool = False,
    mean: float = 0.5,
    std: float = 0.5,
) -> T.Compose:
    """A transform from a PIL grayscale image to a (1, image_size, image_size) float tensor.

    Args:
        image_size: side of the output crop.
        resize: side the image is resized to before cropping (default: ``image_size``, no crop).
        train: random crop and intensity jitter instead of the centre crop.
        mean, std: normalisation; the defaults map [0, 1] to [-1, 1].
    """
    resize = resize or image_size
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be >= image_size ({image_size})")
    steps: list = [T.Grayscale(num_output_channels=1), T.Resize((resize, resize), antialias=True)]
    if train:
        steps += [T.RandomCrop(image_size), T.ColorJitter(brightness=0.1, contrast=0.1)]
    else:
        steps += [T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize([mean], [std])]
    return T.Compose(steps)
