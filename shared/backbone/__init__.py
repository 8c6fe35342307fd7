"""The shared vision-language backbone (open_clip towers); UAR's LSU and CRA and CMCRL's RadCARE live beside their
decoders in :mod:`image2report`."""

from .clip import BACKBONES, BackboneOutput, RadCLIP, build_backbone, load_model_config

__all__ = ["BACKBONES", "BackboneOutput", "RadCLIP", "build_backbone", "load_model_config"]
