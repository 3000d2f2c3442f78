"""cmdop-install."""

__version__ = "0.1.0"
