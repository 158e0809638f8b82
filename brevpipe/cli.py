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

options:
  -h, --help                show this message
  --version                 print the version
"""

COMMANDS = ("run", "rerun")


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
    from brevpipe import app

    try:
        return app.run_command(rest) if command == "run" else app.rerun_command(rest)
    except KeyboardInterrupt:
        print("brevpipe: interrupted; the job is marked 'stopped'.", file=sys.stderr)
        return 130
