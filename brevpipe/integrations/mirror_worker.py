"""The MLflow mirror's own process (:mod:`brevpipe.integrations.mirror_process` starts it):
:class:`~brevpipe.integrations.tracking.MlflowTracker` on a view of the job that the job's
process feeds through standard input; log lines and the job's ``mlflow`` section go back on
standard output, one JSON object per line.

    python -m brevpipe.integrations.mirror_worker   # not a command for people
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import IO, Any

from brevpipe.integrations.tracking import MlflowTracker
from brevpipe.io import storage
from brevpipe.jobs.job import JobStatus

OWN_KEYS = {"schema_version", "job", "config", "choices", "seed", "metrics", "history",
            "stages", "samples", "dataset", "model", "environment", "mlflow"}  # fmt: skip


class JobView:
    """What the tracker reads of a job, from its output.json as the job's process sent it;
    the ``mlflow`` section is the tracker's own (output.json is written by the job)."""

    def __init__(self, output: dict[str, Any], root: str) -> None:
        self.root = root
        self.mlflow: dict[str, Any] = {}
        self.listeners: list[Any] = []
        self.update(output)

    def update(self, output: dict[str, Any]) -> None:
        self._output = output
        job = output["job"]
        self.id, self.bucket_url, self.pipeline = job["id"], job["bucket"], job["pipeline"]
        self.status = JobStatus(job["status"])
        self.extra = {k: v for k, v in output.items() if k not in OWN_KEYS}

    def to_output(self) -> dict[str, Any]:
        return {**self._output, "mlflow": self.mlflow}

    def write_output(self) -> None:
        """The job's process writes output.json, with the section this process answers."""


class Answer:
    """One JSON object per line on the job's pipe, from any thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, **message: Any) -> None:
        with self.lock:
            self.stream.write(json.dumps(message, default=str) + "\n")
            self.stream.flush()


class Forward(logging.Handler):
    """brevpipe's log records, sent to the job's process, which logs them."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # noqa: BLE001 - a bad record: logging's own report, on stderr
            self.handleError(record)
            return
        with contextlib.suppress(OSError, ValueError):  # the job's process is gone
            self.answer(log=[record.levelno, text])


class Worker(MlflowTracker):
    """The tracker, saying when its run is open."""

    answer: Answer

    def _open_run(self) -> None:
        super()._open_run()
        self.answer(opened={k: self.job.mlflow[k] for k in ("experiment_id", "run_id")})


def main() -> None:
    # in a session of its own, and deaf to Ctrl-C and SIGTERM all the same: the job, which
    # these stop, needs this process to end its run; this ends when the job's pipe closes
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    # the pipe to the job is a descriptor of its own; anything else written to standard
    # output (MLflow, native code, child processes) goes to the console, not the pipe
    answer = Answer(os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8"))
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logger = logging.getLogger("brevpipe")
    logger.handlers[:] = [Forward(answer)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    first = sys.stdin.readline()
    if not first:
        return
    start = json.loads(first)["start"]
    storage.configure(start["storage"]["options"], start["storage"]["timeout_s"])
    job = JobView(start["output"], start["root"])
    tracker = Worker(job, start["uri"], start["experiment"], start["parent"],  # type: ignore[arg-type]
                     start["register"])  # fmt: skip
    tracker.answer = answer
    tracker.start()
    tracker.open_now()
    for line in sys.stdin:
        message = json.loads(line)
        if "metrics" in message:
            tracker.on_metrics(message["metrics"], message["step"])
        elif "end" in message:
            job.update(message["end"])
            tracker.finish(job)  # type: ignore[arg-type]
            answer(done=job.mlflow)
            return


if __name__ == "__main__":
    main()
