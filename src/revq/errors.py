"""Errors that the CLI reports as a message (exit code 2) instead of a traceback.

Raise :class:`RevqError` (or a subclass) for anything a *user* can fix: a bad path, an
impossible configuration, missing weights. Programming errors stay ordinary exceptions.
"""


class RevqError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


class ConfigError(RevqError, ValueError):
    """An impossible or inconsistent configuration."""


class MissingResourceError(RevqError, FileNotFoundError):
    """Weights, data or statistics that could not be found (the message lists what was tried)."""
