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
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

from brevpipe.io import storage
from brevpipe.jobs.job import Job

log = logging.getLogger("brevpipe")

WORKER = "brevpipe.integrations.mirror_worker"

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
    (``uri``, ``experiment``, ``parent``, ``register``); ``sync`` the command that completes
    the mirror later, named if the process ends without answering."""

    def __init__(self, job: Job, settings: dict[str, Any], section: dict[str, Any],
                 sync: str) -> None:  # fmt: skip
        self.job = job
        self.settings = settings
        self.section = section  # the job's mlflow section until the worker sends its own
        self.sync = sync
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._answer: dict[str, Any] | None = None
        self._lock = threading.Lock()  # one line at a time on the worker's input

    def start(self) -> None:
        self.job.mlflow = dict(self.section)
        self.job.listeners.append(self)
        self._process = subprocess.Popen(
            [sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, encoding="utf-8", bufsize=1,
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
        """Send the job as it ended and wait for the worker to make its run match it (the run
        is complete when this returns); take the worker's ``mlflow`` section into output.json."""
        self._send({"end": job.to_output()})
        if self._process is not None:
            if self._process.stdin is not None:
                with contextlib.suppress(OSError):  # the worker is gone: said below
                    self._process.stdin.close()
            self._process.wait()
        if self._reader is not None:
            self._reader.join()
        if self._answer is None:
            code = self._process.returncode if self._process else None
            job.mlflow["pending"] = ["run" if not job.mlflow.get("run_id") else "end"]
            job.mlflow["error"] = f"the MLflow mirror's process ended without answering ({code})"
            log.warning("MLflow run of job %s is incomplete (%s); once MLflow is reachable, "
                        "run: %s", job.id, job.mlflow["error"], self.sync)  # fmt: skip
        else:
            job.mlflow = self._answer
        job.write_output()

    def _send(self, message: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdin.closed:
            return
        with contextlib.suppress(OSError, ValueError), self._lock:  # gone: finish() says so
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()

    def _read(self, stream: IO[str]) -> None:
        """The worker's lines: log records, the run once open, the final section."""
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "log" in message:
                level, text = message["log"]
                log.log(int(level), "%s", text)
            elif "opened" in message:
                self.job.mlflow.update(message["opened"])
            elif "done" in message:
                self._answer = message["done"]

