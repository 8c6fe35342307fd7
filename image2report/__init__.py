"""Report decoders (image -> report): baseline and UAR; CMCRL and IFNet to come (issue 5).

Importing the package registers every decoder in ``image2report.models.REPORT_MODELS``.
"""

from . import uar  # noqa: F401  (registers uar, uar_tiny)
