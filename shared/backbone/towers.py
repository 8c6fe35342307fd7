"""Small CNN image towers for CXRs, registered in timm's model registry.

open_clip builds timm towers by name (``vision_cfg.timm_model_name``), so registering them here
makes them usable in any open_clip config. ResNets with BasicBlocks; the small ones have output
stride 8, so a 64 px film gives an 8 x 8 grid of tokens for the decoders (the base one: stride 16,
14 x 14 at 224 px). On a CPU they learn far faster from a few thousand images than a ViT of the
same cost.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from ..registry import Registry

__all__ = ["TOWERS", "cxr_resnet_tiny", "cxr_resnet_small", "cxr_resnet_small_fine", "cxr_resnet_base"]

#: the suite's CNN towers; each is also a timm model, so ``timm.create_model`` and open_clip's
#: ``vision_cfg.timm_model_name`` build it by name.
TOWERS = Registry("tower", "CNN image towers (also registered in timm)")


def _register(fn: Callable[..., ResNet]) -> Callable[..., ResNet]:
    return TOWERS.register()(register_model(fn))


def _resnet(name: str, layers: tuple[int, ...], channels: tuple[int, ...], stem: int, output_stride: int,
            **kwargs) -> ResNet:
    # No pretrained weights exist for these towers: timm's builder is told so, nothing is fetched.
    kwargs.pop("pretrained", None)
    kwargs.setdefault("output_stride", output_stride)
    if not kwargs.get("pretrained_cfg"):
        kwargs["pretrained_cfg"] = {"num_classes": 0, "input_size": (3, 64, 64), "mean": (0.5,) * 3,
                                    "std": (0.5,) * 3, "first_conv": "conv1", "classifier": "fc"}
    return build_model_with_cfg(ResNet, name, pretrained=False, block=BasicBlock, layers=layers, channels=channels,
                                stem_width=stem, **kwargs)


@_register
def cxr_resnet_tiny(pretrained: bool = False, **kwargs) -> ResNet:
    """For tests: 4 stages of one block, 8-32 channels."""
    return _resnet("cxr_resnet_tiny", (1, 1, 1, 1), (8, 16, 32, 32), 8, 8, **kwargs)


@_register
def cxr_resnet_small(pretrained: bool = False, **kwargs) -> ResNet:
    """CPU recipe: 4 stages of one block, 32-256 channels, 8 x 8 grid at 64 px."""
    return _resnet("cxr_resnet_small", (1, 1, 1, 1), (32, 64, 128, 256), 32, 8, **kwargs)


@_register
def cxr_resnet_small_fine(pretrained: bool = False, **kwargs) -> ResNet:
    """cxr_resnet_small with a stride-2 stem (no max pool): its first block sees every other pixel instead of
    every fourth, so a thin finding a few pixels across (a rib's step-off) reaches it before any pooling. The
    same grid as cxr_resnet_small (output stride 8); a judge's training step at 128 px, batch 64, took 1.2 s
    instead of 0.8 on the project's 2-core CPU."""
    # timm counts the output stride with the max pool; without it the stride is halved (16 -> 8)
    model = _resnet("cxr_resnet_small_fine", (1, 1, 1, 1), (32, 64, 128, 256), 32, 16, **kwargs)
    model.maxpool = nn.Identity()
    for info in model.feature_info[1:]:
        info["reduction"] //= 2
    return model


@_register
def cxr_resnet_base(pretrained: bool = False, **kwargs) -> ResNet:
    """GPU: ResNet-18 layout (2-2-2-2 blocks, 64-512 channels) at output stride 16."""
    return _resnet("cxr_resnet_base", (2, 2, 2, 2), (64, 128, 256, 512), 64, 16, **kwargs)
