"""Latent diffusion (report -> image). Not built yet: see issue 6."""
