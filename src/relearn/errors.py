"""Errors shared across the package's layers (kept here so raising one imports nothing heavy)."""

from __future__ import annotations


class StepFailed(Exception):
    """Bad input data: the step stops the run with this readable message instead of a stack trace."""
