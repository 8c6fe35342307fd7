"""Latent diffusion (report -> image) on diffusers: Diff-CXR noise filtering and vision-aware text
conditioning, causal disentanglement with counterfactuals, long-tail initial-noise optimisation.
"""

from .conditioning import ReportConditioner
from .noise_filter import LatentNoiseFilter
from .pipeline import CXRPipelineOutput, ReportToCXRPipeline

__all__ = ["ReportConditioner", "LatentNoiseFilter", "ReportToCXRPipeline", "CXRPipelineOutput"]
