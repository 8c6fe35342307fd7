"""Metrics for reports, images and the loop. Not built yet: see issue 3."""
