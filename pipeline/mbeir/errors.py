"""Errors raised to the user for bad configuration (never for bad records: those become Rejects)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag or input location is wrong; the message says what to change."""


class OutputError(RuntimeError):
    """Writing the outputs failed in a way the user must fix (a full disk); the message says what to do."""
