"""The ``brevpipe`` command: one table of commands, each in its own module.

A command is a row of :data:`COMMANDS` and a module ``brevpipe.commands.<name>`` with
``main(args) -> int`` (and ``build_parser()`` when it parses with argparse: tab completion reads
its flags from it). Imports stay light here: no TensorFlow, no MLflow, no Hydra.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import NoReturn

from brevpipe import __version__
from brevpipe.commands import completion

HELP_COLUMN = 28  # where the commands' descriptions start in ``brevpipe --help``


@dataclass(frozen=True)
class Command:
    """One ``brevpipe`` command: its name, its arguments and what it does, for ``--help``."""

    name: str
    arguments: str
    summary: str
    runs_job: bool = False  # SIGTERM stops its job as Ctrl-C does

    @property
    def module(self) -> str:
        return f"brevpipe.commands.{self.name}"

    def help_lines(self) -> list[str]:
        head = f"  {self.name} {self.arguments}".ljust(HELP_COLUMN)
        lines = self.summary.splitlines()
        return [head + lines[0], *(" " * HELP_COLUMN + line for line in lines[1:])]


COMMANDS = (
    Command("run", "[overrides...]", """\
compose the config and run one job; print its id, job bucket
and MLflow run. Hydra overrides and flags work:
  brevpipe run model=small_cnn trainer.epochs=5 seed=7
  brevpipe run -m trainer.lr=1e-3,1e-4 seed=1,2   (a sweep)
  brevpipe run --cfg job      (print the composed config)
  brevpipe run --help         (config groups and options)
resume an interrupted job:  brevpipe run job.id=<id> ...""", runs_job=True),
    Command("rerun", "URL [overrides...]", """\
run a job again, exactly, from its saved output.json
(local or s3://...); brevpipe rerun --help for options""", runs_job=True),
    Command("predict", "MODEL IMAGES...", """\
score images (files, globs, folders; local or s3://) with an
exported model, a job id or an MLflow model URI; CSV or JSON"""),
    Command("serve", "MODEL", """\
an HTTP prediction service (FastAPI): /predict, /tasks, /health,
/model, /docs; bearer-token (JWT) auth"""),
    Command("jobs", "<action> ...", """\
the job registry: list, show, stop, archive, unarchive,
statistics, sync (brevpipe jobs --help)"""),
    Command("sweep", "list|show|resume", """\
the sweeps of a job root: their trials and best, and resuming
one after a crash (brevpipe sweep --help)"""),
    Command("models", "<action> ...", """\
registered models in MLflow: list, show, promote (an alias
behind gates), register (brevpipe models --help)"""),
    Command("ui", "[--root URL ...]", """\
a local web dashboard over job roots: watch, compare, debug
and launch jobs (http://127.0.0.1:8765; brevpipe ui --help)"""),
    Command("cache", "info|clear", """\
the data cache that jobs share (runtime.cache_root): listings
and decoded images (brevpipe cache --help)"""),
    Command("schema", "[GROUP[=OPTION]]", """\
the settings as JSON Schema; --components lists the registered
components (brevpipe schema --help)"""),
    Command("init", "DIR", """\
write a minimal user project: a package with its own model
builder (registered by entry point), a preset and a README"""),
    Command("completion", "bash|zsh|fish", """\
the shell's tab completion of commands, flags, config groups,
options and keys:  eval "$(brevpipe completion bash)\""""),
)
BY_NAME = {command.name: command for command in COMMANDS}


def usage() -> str:
    """``brevpipe --help``: the commands of :data:`COMMANDS`."""
    lines = [
        "usage: brevpipe <command> [arguments]",
        "",
        f"brevpipe {__version__}: declarative, seeded image-model training pipelines.",
        "",
        "commands:",
        *(line for command in COMMANDS for line in command.help_lines()),
        "",
        "options:",
        "  -h, --help".ljust(HELP_COLUMN) + "show this message",
        "  --version".ljust(HELP_COLUMN) + "print the version",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``brevpipe`` console script and ``python -m brevpipe``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    if args[0] in ("__complete", "-sc", "--shell-completion"):

        if args[0] == "__complete":  # what brevpipe's completion script asks
            return completion.complete_from_environment(COMMANDS)
        return completion.hydra_query(args[1:], COMMANDS)  # what a script from Hydra's asks
    command = BY_NAME.get(args[0])
    if command is None:
        print(f"brevpipe: unknown command '{args[0]}'; choose one of: "
              f"{', '.join(BY_NAME)} (see brevpipe --help)", file=sys.stderr)  # fmt: skip
        return 2
    if command.runs_job:
        from brevpipe.jobs.liveness import terminate_as_interrupt

        terminate_as_interrupt()  # SIGTERM ends a job as 'stopped', like Ctrl-C
    try:
        return importlib.import_module(command.module).main(args[1:])
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        if terminated:
            cause = "terminated (SIGTERM)"
        else:
            cause = "stopped on request (brevpipe jobs stop)" if str(exc) else "interrupted"
        job_note = "; the job is marked 'stopped'" if command.runs_job else ""
        print(f"brevpipe: {cause}{job_note}.", file=sys.stderr)
        return 143 if terminated else 130


def console_main() -> NoReturn:
    """The ``brevpipe`` console script and ``python -m brevpipe``: :func:`main`, then exit.

    A process that imported TensorFlow spends 1-2 s of CPU after its last line freeing
    TensorFlow's, Keras's and MLflow's modules one by one (the plain Keras script pays it too).
    Once the command returned, its exit handlers ran (temporary files, locks, child processes,
    logging) and its output is flushed, the process ends without that teardown: the job is
    complete and written by then. Other threads still working keep the usual exit."""
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon]  # fmt: skip
    run_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, as multiprocessing uses
    if "tensorflow" not in sys.modules or others or run_handlers is None or \
            not isinstance(code, int):  # fmt: skip
        raise SystemExit(code)
    run_handlers()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: as Python's own exit says it
            code = code or 120
    os._exit(code)
