"""Demi: a local, private coding assistant."""

__version__ = "0.1.0"
