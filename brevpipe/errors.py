"""Errors that users fix by changing their config or data (printed as one clear line)."""


class BrevpipeError(Exception):
    """A user-facing error: the message names the thing and the fix."""


class ConfigError(BrevpipeError):
    """The composed config or pipeline declaration is invalid."""


class DataError(BrevpipeError):
    """The dataset cannot be used as it is (missing, empty, corrupt)."""


class StorageError(BrevpipeError):
    """A storage call failed or got no answer in time (the message names the URL)."""
