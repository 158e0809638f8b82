"""Errors that users fix by changing their config or data (printed as one clear line)."""


class BrevpipeError(Exception):
    """A user-facing error: the message names the thing and the fix."""


class ConfigError(BrevpipeError):
    """The composed config or pipeline declaration is invalid."""


class DataError(BrevpipeError):
    """The dataset cannot be used as it is (missing, empty, corrupt)."""


class StorageError(BrevpipeError):
    """A storage call failed or got no answer in time (the message names the URL)."""


class DiskFullError(StorageError):
    """A local write found its device full: ``free`` bytes left, ``needed`` to write."""

    def __init__(self, message: str, url: str, free: int, needed: int) -> None:
        super().__init__(message)
        self.url, self.free, self.needed = url, free, needed
