"""What a front end needs to report and stop a request, without importing the engine or torch.

The errors are the engine's own classes (one hierarchy, so `except DemiUserError` catches them
wherever they were raised); front ends take them from here so that they depend on the session
layer alone (the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from demi.model.cancel import CancelToken
from demi.model.errors import ContextOverflowError, DemiError, DemiUserError, ModelNotFoundError

__all__ = ["CancelToken", "ContextOverflowError", "DemiError", "DemiUserError", "ModelNotFoundError"]
