"""RadLoop application layer: the ``radloop`` command line and its workflows."""

__version__ = "0.1.0"
