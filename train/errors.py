"""User errors of the training pipeline; the CLI prints each as one line and exits 2."""

from __future__ import annotations

from demi.model.errors import CheckpointError, DemiUserError


class CorpusError(DemiUserError):
    """The corpus is empty, or a file in it is unreadable or binary."""


class TrainConfigError(DemiUserError):
    """A training setting is out of range or inconsistent with the model or the data."""


class ResumeError(CheckpointError):
    """A training checkpoint is missing, corrupt, or from a different run setup."""


class VocabularyMismatchError(DemiUserError):
    """Distillation needs the teacher and the student to share one vocabulary."""


class ProblemFileError(DemiUserError):
    """A HumanEval-format problem file is missing or malformed."""
