"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: a config field, a file, a name. The message names the thing and the reason."""


class DataError(UserError):
    """A data file is missing or malformed (the message names the file and, where there is one, the line)."""


class ConfigError(UserError):
    """A config field is invalid (the message names the field's path, e.g. ``final.tasks[2]``)."""
