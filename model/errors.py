"""Typed errors of the engine.

Front ends turn `DemiUserError` into one line on stderr and exit code 2; anything else
that escapes is a runtime failure (exit code 1). Each message is one line that tells the
user what is wrong and, where it can, what to do.
"""

from __future__ import annotations


class DemiError(Exception):
    """Base class of every error Demi raises on purpose."""


class DemiUserError(DemiError):
    """Bad input from the user: a path, a name, a position, a setting."""


class ModelNotFoundError(DemiUserError):
    """The model name, directory or hub id does not resolve to a model."""


class ConfigError(DemiUserError):
    """`config.json` is missing, unparsable or describes an unsupported model."""


class CheckpointError(DemiUserError):
    """The weights are missing, truncated, or do not match the config."""


class TokenizerError(DemiUserError):
    """The tokenizer files are missing or unreadable."""


class InsufficientMemoryError(DemiUserError):
    """Loading the model would need more memory than the machine has free."""


class ContextOverflowError(DemiUserError):
    """The prompt (plus the tokens asked for) does not fit in the context window."""
