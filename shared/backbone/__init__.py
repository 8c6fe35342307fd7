"""The shared vision-language backbone (open_clip towers), UAR's LSU and CRA, and CMCRL's RadCARE."""

from .clip import BACKBONE_REGISTRY, BackboneOutput, RadCLIP, build_backbone, load_model_config
from .retrieval import retrieval_metrics

__all__ = ["BACKBONE_REGISTRY", "BackboneOutput", "RadCLIP", "build_backbone", "load_model_config",
           "retrieval_metrics"]
