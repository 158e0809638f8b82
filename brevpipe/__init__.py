"""brevpipe: declarative, seeded, config-driven image-model training pipelines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("brevpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]

from brevpipe import moved  # noqa: E402 - after __version__, which the moved modules may read

moved.install()  # import paths from before the 2026-11-26 layout keep working
