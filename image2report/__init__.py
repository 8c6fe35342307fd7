"""Report decoders (image -> report): baseline, UAR, CMCRL (VLCI) and IFNet.

Importing the package registers every decoder in ``image2report.models.REPORT_DECODERS``.
"""

from . import cmcrl, ifnet, uar  # noqa: F401  (register cmcrl*, ifnet*, uar*)
