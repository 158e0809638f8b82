"""``brevpipe predict MODEL IMAGES...``: score image files with an exported model.

MODEL: see :mod:`brevpipe.serving.resolve`; IMAGES and the scoring: :mod:`brevpipe.serving.batch`.
This module parses the arguments and prints; TensorFlow and MLflow are imported only when a
model is loaded (``--help`` stays light).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from brevpipe.commands import common
from brevpipe.errors import BrevpipeError
from brevpipe.serving.batch import (
    FORMATS,
    Progress,
    check_destination,
    expand_images,
    format_table,
    predict_images,
    write_output,
)

COMMAND = "predict"


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``brevpipe predict``."""
    parser = common.new_parser(
        COMMAND,
        "Score images with an exported model; prints a table with path, predicted and "
        "score_<class> columns (CSV or JSON).",
        ["brevpipe predict jobs/<id>/artifacts/model/saved_model.tar.gz data/*.png",
         "brevpipe predict <job-id> s3://bucket/new/ --format json --output preds.json",
         "brevpipe predict runs:/<run_id>/mlflow_model 's3://b/x/**/*.jpg' --on-error skip"],
    )  # fmt: skip
    common.add_model_argument(parser, "(runs:/<run_id>/mlflow_model, models:/<name>/<version>)")
    parser.add_argument("images", metavar="IMAGES", nargs="+",
                        help="image files, globs (quote them) or folders; local or any fsspec URL")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="write the table here (any fsspec URL) instead of stdout")
    parser.add_argument("--format", choices=FORMATS,
                        help="csv (default) or json; default json when --output ends in .json")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    common.add_model_options(parser, "MLflow store for runs:/ and models:/ URIs (default "
                      "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db beside --job-root)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="an unreadable image: stop with an error naming it (default), or "
                        "skip it with a warning on stderr")  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe predict``; returns the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    common.require_positive(parser, args, "batch_size")
    fmt = args.format or ("json" if (args.output or "").lower().endswith(".json") else "csv")
    try:
        urls = expand_images(args.images)  # cheap mistakes first, before loading TensorFlow
        output = check_destination(args.output) if args.output else None
        predictor = common.load_model(args)
        with _progress_bar(len(urls) > args.batch_size) as progress:
            table = predict_images(predictor, urls, args.batch_size, on_error=args.on_error,
                                   progress=progress)  # fmt: skip
        for url, reason in table.attrs.get("skipped", []):
            common.say(COMMAND, f"warning: skipped {url}: {reason}")
        data = format_table(table, fmt)
        if output:
            write_output(output, data, fmt, len(table))
            common.say(COMMAND, f"wrote {len(table)} results to {output}")
        else:
            sys.stdout.write(data.decode())
            sys.stdout.flush()
    except BrevpipeError as exc:
        return common.error(COMMAND, exc)
    return 0


class _progress_bar:  # noqa: N801 - used like a function: with _progress_bar(...) as update
    """A rich progress bar on stderr when it is a terminal and there is more than one batch."""

    def __init__(self, wanted: bool) -> None:
        self.bar: Any = None
        if wanted and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as Bar

            self.bar = Bar(console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("scoring", total=None)

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self) -> Progress | None:
        if self.bar is None:
            return None
        self.bar.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
