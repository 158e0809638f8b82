"""``brevpipe serve MODEL``: an HTTP prediction service (FastAPI) for an exported model.

The app: :mod:`brevpipe.serving.app`; tokens: :mod:`brevpipe.serving.auth`. This module parses
the arguments, prints, and runs uvicorn; ``--make-token`` prints a bearer token and exits.
TensorFlow, MLflow and the app are imported only when a model is served.
"""

from __future__ import annotations

import argparse

from brevpipe.commands import common
from brevpipe.errors import BrevpipeError
from brevpipe.serving.auth import DEFAULT_SECRET_ENV, NEW_SECRET, make_token, read_secret
from brevpipe.serving.service import MAX_PENDING_TASKS, MAX_PIXELS

COMMAND = "serve"
AT_LEAST_ONE = ("max_batch", "max_bytes", "workers_threads", "expires_in", "max_pending",
                "max_pixels")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``brevpipe serve``."""
    parser = common.new_parser(
        COMMAND,
        "Serve a model over HTTP: POST /predict, POST /tasks, GET /tasks/{id}, GET /model, "
        "GET /health, docs at /docs. Requests need 'Authorization: Bearer <JWT>'.",
        [f"export {DEFAULT_SECRET_ENV}=$({NEW_SECRET})",
         "brevpipe serve jobs/<id>/artifacts/model/saved_model.tar.gz --port 8080",
         "TOKEN=$(brevpipe serve --make-token --expires-in 3600)",
         'curl -H "Authorization: Bearer $TOKEN" -F files=@a.png localhost:8080/predict'],
    )  # fmt: skip
    common.add_model_argument(parser, "(as for brevpipe predict); not needed with --make-token",
                       optional=True)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    parser.add_argument("--port", type=int, default=8080, help="default 8080")
    parser.add_argument("--secret-env", default=DEFAULT_SECRET_ENV, metavar="NAME",
                        help=f"environment variable holding the JWT secret (default "
                        f"{DEFAULT_SECRET_ENV})")  # fmt: skip
    parser.add_argument("--secret-file", metavar="PATH", help="read the JWT secret from a file")
    parser.add_argument("--max-batch", type=int, default=64, metavar="N",
                        help="most images per request (more: 413); default 64")
    parser.add_argument("--max-bytes", type=int, default=10 * 2**20, metavar="N",
                        help="largest request body (larger: 413); default 10 MiB")
    parser.add_argument("--workers-threads", type=int, default=2, metavar="N",
                        help="threads running /tasks in the background; default 2")
    parser.add_argument("--max-pending", type=int, default=MAX_PENDING_TASKS, metavar="N",
                        help=f"most /tasks queued or running (more: 503); default "
                        f"{MAX_PENDING_TASKS}")  # fmt: skip
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                        help=f"largest image in pixels (larger: 422); default {MAX_PIXELS}")
    parser.add_argument("--public-docs", action="store_true",
                        help="serve /docs and /openapi.json without a token")
    common.add_model_options(parser, "MLflow store for runs:/ and models:/ URIs (default as for "
                      "brevpipe predict)")  # fmt: skip
    parser.add_argument("--reload-alias", type=float, metavar="SECONDS",
                        help="with MODEL models:/NAME@ALIAS: check the alias every SECONDS and "
                             "serve the version it moves to, without a restart")  # fmt: skip
    parser.add_argument("--make-token", action="store_true",
                        help="print a bearer token signed with the secret, and exit")
    parser.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS",
                        help="lifetime of --make-token's token (default 3600)")
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe serve``; returns the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.make_token and not args.model:
        parser.error("give MODEL (or --make-token)")
    common.require_positive(parser, args, *AT_LEAST_ONE)
    try:
        secret = read_secret(args.secret_env, args.secret_file)
        if args.make_token:
            print(make_token(secret, args.expires_in))
            return 0
        import uvicorn

        from brevpipe.serving.app import create_app

        app = create_app(common.load_model(args), secret, args.max_batch, args.max_bytes,
                         args.workers_threads, args.max_pending, args.max_pixels,
                         args.public_docs)  # fmt: skip
        watcher = None
        if args.reload_alias is not None:
            from brevpipe.serving.reload import AliasWatcher

            watcher = AliasWatcher(app.state.service, args.model, args.reload_alias,
                                   args.job_root, args.tracking_uri)  # fmt: skip
    except BrevpipeError as exc:
        return common.error(COMMAND, exc)
    source = app.state.service.predictor.source
    version = f" (version {source['version']})" if "version" in source else ""
    common.say(COMMAND, f"{args.model}{version} at http://{args.host}:{args.port} (docs: /docs)")
    if watcher is not None:
        watcher.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        if watcher is not None:
            watcher.stop()
    return 0
