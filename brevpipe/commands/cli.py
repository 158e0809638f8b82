"""The ``brevpipe`` command. Imports stay light here: no TensorFlow, no MLflow, no Hydra."""

from __future__ import annotations

import sys

from brevpipe import __version__

USAGE = f"""\
usage: brevpipe <command> [arguments]

brevpipe {__version__}: declarative, seeded image-model training pipelines.

commands:
  run [overrides...]        compose the config and run one job; print its id, job bucket
                            and MLflow run. Hydra overrides and flags work:
                              brevpipe run model=small_cnn trainer.epochs=5 seed=7
                              brevpipe run -m trainer.lr=1e-3,1e-4 seed=1,2   (a sweep)
                              brevpipe run --cfg job      (print the composed config)
                              brevpipe run --help         (config groups and options)
                            resume an interrupted job:  brevpipe run job.id=<id> ...
  rerun URL [overrides...]  run a job again, exactly, from its saved output.json
                            (local or s3://...); brevpipe rerun --help for options
  predict MODEL IMAGES...   score images (files, globs, folders; local or s3://) with an
                            exported model, a job id or an MLflow model URI; CSV or JSON
  serve MODEL               an HTTP prediction service (FastAPI): /predict, /tasks, /health,
                            /model, /docs; bearer-token (JWT) auth
  jobs <action> ...         the job registry: list, show, stop, archive, unarchive,
                            statistics (brevpipe jobs --help)
  cache info|clear          the data cache that jobs share (runtime.cache_root): listings
                            and decoded images (brevpipe cache --help)
  schema [GROUP[=OPTION]]   the settings as JSON Schema; --components lists the registered
                            components (brevpipe schema --help)
  init DIR                  write a minimal user project: a package with its own model
                            builder (registered by entry point), a preset and a README

options:
  -h, --help                show this message
  --version                 print the version
"""

COMMANDS = ("run", "rerun", "predict", "serve", "jobs", "cache", "schema", "init")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``brevpipe`` console script and ``python -m brevpipe``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"brevpipe: unknown command '{command}'; choose one of: {', '.join(COMMANDS)} "
            "(see brevpipe --help)",
            file=sys.stderr,
        )
        return 2
    if command in ("run", "rerun"):
        from brevpipe.engine.liveness import terminate_as_interrupt

        terminate_as_interrupt()  # SIGTERM ends a job as 'stopped', like Ctrl-C
    try:
        if command in ("run", "rerun"):
            from brevpipe.commands import run

            return (run.run_command if command == "run" else run.rerun_command)(rest)
        if command == "predict":
            from brevpipe.commands import predict

            return predict.main(rest)
        if command == "serve":
            from brevpipe.commands import serve

            return serve.main(rest)
        if command == "schema":
            from brevpipe.commands import schema

            return schema.main(rest)
        if command == "init":
            from brevpipe.commands import init

            return init.main(rest)
        if command == "cache":
            from brevpipe.commands import cache

            return cache.main(rest)
        from brevpipe.commands import jobs

        return jobs.main(rest)
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        if terminated:
            cause = "terminated (SIGTERM)"
        else:
            cause = "stopped on request (brevpipe jobs stop)" if str(exc) else "interrupted"
        job_note = "; the job is marked 'stopped'" if command in ("run", "rerun") else ""
        print(f"brevpipe: {cause}{job_note}.", file=sys.stderr)
        return 143 if terminated else 130
