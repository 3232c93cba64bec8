"""User-facing errors: each names the file/record/key/step and says what to do.

The CLI prints these as one message (no traceback) and exits with code 2.
"""
from __future__ import annotations


class FacekdError(Exception):
    """Base of every error meant for the user rather than a developer."""


class ConfigError(FacekdError):
    """params.yaml (or a preset) is invalid: names the key and the valid choices."""


class DataError(FacekdError):
    """An input file is missing, corrupt or malformed: names the file and record/line."""


class TrainingError(FacekdError):
    """Training cannot go on (non-finite loss, mismatched checkpoint): names the step/part."""


class RegistryError(FacekdError):
    """Model registry / promotion problem; the champion is never touched."""


class ExportError(FacekdError):
    """An exported model violates a check."""
