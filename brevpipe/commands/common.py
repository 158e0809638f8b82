"""What ``brevpipe predict`` and ``brevpipe serve`` share: the parser's frame, the arguments
that name a model (MODEL, ``--job-root``, ``--tracking-uri``), loading it, and one-line messages
on stderr.

Imports stay light: the model (TensorFlow, MLflow) is loaded only by :func:`load_model`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from brevpipe.config.settings import DEFAULT_JOB_ROOT
from brevpipe.errors import BrevpipeError

if TYPE_CHECKING:
    from brevpipe.serving.predictor import Predictor

MODEL_KINDS = "archive URL, job bucket URL, job id, or MLflow URI"


def new_parser(command: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """The parser of ``brevpipe COMMAND``, its help ending with ``examples`` (one a line)."""
    return argparse.ArgumentParser(
        prog=f"brevpipe {command}",
        description=description,
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_argument(parser: argparse.ArgumentParser, detail: str,
                       optional: bool = False) -> None:  # fmt: skip
    """The ``MODEL`` positional argument (read by :func:`load_model`)."""
    parser.add_argument("model", metavar="MODEL", nargs="?" if optional else None,
                        help=f"{MODEL_KINDS} {detail}")


def add_model_options(parser: argparse.ArgumentParser, tracking_help: str) -> None:
    """``--job-root`` and ``--tracking-uri``: where MODEL is looked up (see :func:`load_model`)."""
    parser.add_argument("--job-root", default=DEFAULT_JOB_ROOT, metavar="URL",
                        help=f"where job ids are looked up (default {DEFAULT_JOB_ROOT})")
    parser.add_argument("--tracking-uri", metavar="URI", help=tracking_help)


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     *names: str) -> None:  # fmt: skip
    """A usage error (exit code 2) naming the first of these options below 1."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: use 1 or more")


def load_model(args: argparse.Namespace) -> Predictor:
    """The :class:`Predictor` for ``args.model``, looked up with ``--job-root`` and
    ``--tracking-uri``; a :class:`BrevpipeError` says why not."""
    from brevpipe.serving.resolve import resolve_model

    return resolve_model(args.model, args.job_root, args.tracking_uri)


def say(command: str, message: str) -> None:
    """One line on stderr: ``brevpipe COMMAND: message``."""
    print(f"brevpipe {command}: {message}", file=sys.stderr)


def error(command: str, exc: BrevpipeError) -> int:
    """Report ``exc`` as one line on stderr (``brevpipe COMMAND: error: ...``, no traceback);
    returns the exit code, 1."""
    say(command, f"error: {exc}")
    return 1
