"""The MLflow mirror of a job in a process of its own: what ``brevpipe run`` uses for its job.

MLflow's import and store cost 1-2 s of Python. In the job's process they share one
interpreter lock with TensorFlow's import and with training (a background thread there slowed
the default job's second epoch from 0.5 s to 1.6 s); a process of its own imports MLflow on
another core while the job imports TensorFlow, opens the run at once, and ends it after the
job. That process (:mod:`brevpipe.integrations.mirror_worker`) runs the same
:class:`~brevpipe.integrations.tracking.MlflowTracker` on a view of the job, fed JSON lines
on its standard input: the job at its start, each epoch's metrics, the job at its end. Its
log lines come back on its standard output and are logged here, as is the job's ``mlflow``
section once the run is open and when the mirror is done. Jobs run inside another program
(a notebook, the dashboard's threads, the tests) keep the thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from brevpipe.io import storage
from brevpipe.jobs.job import Job

log = logging.getLogger("brevpipe")

WORKER = "brevpipe.integrations.mirror_worker"
# How long a job waits at its end for the worker to end its run (MLflow's requests time out
# and the live mirror's flush gives up sooner; this bounds a worker that hangs).
FINISH_S = 300.0

# Set by ``brevpipe run`` and ``brevpipe rerun`` for the one job of their process: a process
# of its own pays only where the job is the process's whole work.
OWN_PROCESS: contextvars.ContextVar[bool] = contextvars.ContextVar("brevpipe_mirror_process",
                                                                   default=False)  # fmt: skip


@contextlib.contextmanager
def own_process(on: bool = True) -> Iterator[None]:
    """Within: a job's MLflow mirror runs in a process of its own (when ``on``: the job is
    the process's whole work); as before afterwards (a program that called the command
    in-process keeps its threads)."""
    token = OWN_PROCESS.set(on)
    try:
        yield
    finally:
        OWN_PROCESS.reset(token)


class ProcessMirror:
    """The job's side of a mirror process (a :class:`~brevpipe.jobs.job.Tracker` and
    :class:`~brevpipe.jobs.job.JobListener`). ``settings``: the tracker's arguments
    (``uri``, ``experiment``, ``parent``, ``register``); ``commands``: what completes the
    mirror (``sync``) and the registration (``register``) later, named if the process ends
    without answering."""

    def __init__(self, job: Job, settings: dict[str, Any], section: dict[str, Any],
                 commands: dict[str, str]) -> None:  # fmt: skip
        self.job = job
        self.settings = settings
        self.section = section  # the job's mlflow section until the worker sends its own
        self.commands = commands
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._answer: dict[str, Any] | None = None
        self._ended: str | None = None  # the status the worker was sent
        self._lock = threading.Lock()  # one line at a time on the worker's input

    def start(self) -> None:
        self.job.mlflow = dict(self.section)
        self.job.listeners.append(self)
        # the package this job runs, for the worker too (a source tree, a changed directory)
        here = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        # a session of its own: Ctrl-C and a SIGTERM to the job's process group reach the
        # job, which still needs the worker to end its run
        self._process = subprocess.Popen(
            [sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, encoding="utf-8", bufsize=1, start_new_session=True,
            env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,),
                                        name="mlflow-mirror-process", daemon=True)  # fmt: skip
        self._reader.start()
        options = storage.current()  # credentials too: on the pipe, never on a command line
        self._send({"start": {**self.settings, "root": self.job.root,
                              "storage": {"options": options.options,
                                          "timeout_s": options.timeout_s},
                              "output": self.job.to_output()}})  # fmt: skip

    def on_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        """Hand the points to the worker: a line on a pipe, nothing else in training's way."""
        self._send({"metrics": metrics, "step": step})

    def finish(self, job: Job) -> None:
        """Send the job as it ended and wait (at most :data:`FINISH_S`) for the worker to make
        its run match it: the run is complete when this returns, or output.json says what is
        not. Interrupted while waiting, the worker is ended and the job ends as it would."""
        reason = None
        if self._ended is None:
            self._ended = str(job.status)
            self._send({"end": job.to_output()})
            try:
                reason = self._wait()
            except BaseException:  # Ctrl-C while the run was being ended
                self._kill()
                self._record(job, "interrupted while the mirror ended the run")
                raise
        elif self._ended != str(job.status):  # stopped while the worker ended it as before
            self._answer = None
            reason = f"the run was ended as {self._ended}, the job as {job.status}"
        self._record(job, reason)

    def _wait(self) -> str | None:
        """Close the worker's input and wait for it; why it did not answer, if it did not."""
        process = self._process
        if process is None:
            return "the MLflow mirror's process did not start"
        if process.stdin is not None:
            with contextlib.suppress(OSError):  # the worker is gone: said below
                process.stdin.close()
        try:
            process.wait(FINISH_S)
        except subprocess.TimeoutExpired:
            self._kill()
            return f"the MLflow mirror's process did not end within {FINISH_S:g} s"
        if self._reader is not None:
            self._reader.join(5)
        return f"the MLflow mirror's process ended without answering ({process.returncode})"

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._answer = None

    def _record(self, job: Job, reason: str | None) -> None:
        """The worker's ``mlflow`` section into output.json, or what is missing and why."""
        if self._answer is not None:
            job.mlflow = self._answer
        else:
            mlflow = {**job.mlflow, "error": reason}
            mlflow["pending"] = ["run" if not mlflow.get("run_id") else "end"]
            register = self.settings.get("register")
            if register and job.status == "completed" and "registry" not in mlflow:
                mlflow["registry"] = {"name": register, "error": reason}
                log.warning("registering the model of job %s as %r failed (%s); once the "
                            "registry answers, run: %s", job.id, register, reason,
                            self.commands["register"])  # fmt: skip
            job.mlflow = mlflow
            log.warning("MLflow run of job %s is incomplete (%s); once MLflow is reachable, "
                        "run: %s", job.id, reason, self.commands["sync"])  # fmt: skip
        job.write_output()

    def _send(self, message: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdin.closed:
            return
        # gone: finish() says so; a value JSON cannot hold is sent as its text, as
        # output.json writes it
        with contextlib.suppress(OSError, ValueError), self._lock:
            process.stdin.write(json.dumps(message, default=str) + "\n")
            process.stdin.flush()

    def _read(self, stream: IO[str]) -> None:
        """The worker's lines: log records, the run once open, the final section. A line
        that is none of these is passed over."""
        for line in stream:
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    continue
                if "log" in message:
                    level, text = message["log"]
                    log.log(int(level), "%s", text)
                elif "opened" in message:  # a new dict: output.json may be being written
                    self.job.mlflow = {**self.job.mlflow, **dict(message["opened"])}
                elif "done" in message and isinstance(message["done"], dict):
                    self._answer = message["done"]
            except (ValueError, TypeError):
                continue
