"""The one error type the runner raises for bad input, so the CLI can print it without a traceback."""

from __future__ import annotations


class RunnerInputError(ValueError):
    """An input of a comparison is wrong (dataset, T, editor list); the message says what to change."""
