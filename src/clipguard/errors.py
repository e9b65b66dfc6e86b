"""Exceptions with messages meant for the user (the CLI prints them as one line, no traceback)."""


class ClipguardError(Exception):
    """Base class of every error whose message tells the user what is wrong and how to fix it."""


class ManifestError(ClipguardError):
    """A manifest cannot be read or lacks the columns the contract requires."""


class ConfigError(ClipguardError):
    """An argument or configuration value is invalid (unknown name, value out of range, ...)."""


class EmbeddingError(ClipguardError):
    """An embedding folder is missing, malformed, or holds non-finite values."""
