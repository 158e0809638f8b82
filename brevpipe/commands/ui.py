"""``brevpipe ui``: the local web dashboard (:mod:`brevpipe.ui`): arguments, then uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from brevpipe.errors import BrevpipeError
from brevpipe.io import storage
from brevpipe.io.cache import user_cache_folder
from brevpipe.jobs.records import DEFAULT_ROOT

EPILOG = """\
examples:
  brevpipe ui                                   the jobs of ./jobs at http://127.0.0.1:8765
  brevpipe ui --root ./jobs --root s3://bucket/jobs
  brevpipe ui --host 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_urlsafe())')"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brevpipe ui", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A web dashboard over job roots: the jobs with live statuses, a job's "
        "config, curves, report and artifacts, compare, sweeps, errors, launch and try.",
    )  # fmt: skip
    parser.add_argument("--root", action="append", metavar="URL",
                        help=f"a job root (folder or fsspec URL); repeat for several "
                             f"(default {DEFAULT_ROOT})")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="default 127.0.0.1; any other address needs --token")
    parser.add_argument("--port", type=int, default=8765, help="default 8765")
    parser.add_argument("--token", help="the token every request needs off this machine, and "
                        "every action (launch, stop, archive) always (or BREVPIPE_UI_TOKEN)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="brevpipe ui: %(message)s")
    from brevpipe.ui.app import create_app
    from brevpipe.ui.safety import Guard

    roots = [storage.normalize(root) for root in (args.root or [DEFAULT_ROOT])]
    try:
        guard = Guard.for_address(args.host, args.token)
    except BrevpipeError as exc:
        print(f"brevpipe ui: {exc}", file=sys.stderr)
        return 2
    app = create_app(roots, guard, user_cache_folder() / "ui", host=args.host)
    where = f"http://{args.host}:{args.port}/"
    print(f"brevpipe ui: {', '.join(roots)} at {where}"
          + (f"?token={guard.token}" if guard.for_reads else ""), flush=True)  # fmt: skip
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
