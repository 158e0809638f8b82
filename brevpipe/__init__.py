"""brevpipe: declarative, seeded, config-driven image-model training pipelines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("brevpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]  # the public API is brevpipe.api (kept out of here: the CLI starts fast)
