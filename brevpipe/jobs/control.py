"""Stopping a job from outside: the stop request in its bucket (``control/stop.json``),
written by ``brevpipe jobs stop``, and what a running job does about it."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import time
from typing import Any

from brevpipe.io import storage
from brevpipe.jobs.job import now
from brevpipe.jobs.layout import STOP, JobBucket
from brevpipe.jobs.liveness import raise_if_signalled

log = logging.getLogger("brevpipe")


class StopRequested(KeyboardInterrupt):
    """Raised inside training when ``brevpipe jobs stop`` asked the job to stop.

    A :class:`KeyboardInterrupt`, so the runner ends the job as ``stopped`` (MLflow ``KILLED``)
    exactly as for Ctrl-C, and nothing catching ``Exception`` swallows it.
    """


class TrialPruned(KeyboardInterrupt):
    """Raised at the end of an epoch when a sweep's pruner ends this trial: the runner ends the
    job as ``pruned`` (MLflow ``KILLED``, tag ``brevpipe.pruned``) and returns it; like
    :class:`StopRequested`, nothing catching ``Exception`` swallows it."""


def who() -> str:
    """``user@host`` of this process (for the markers ``brevpipe jobs`` writes)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def session_of(output: dict[str, Any]) -> str | None:
    """The current run of a job: its last resume time, else its start time."""
    job = output.get("job") or {}
    return (job.get("resumed") or [None])[-1] or job.get("start")


def request_stop(bucket_url: str, session: str | None = None) -> dict[str, Any]:
    """Write ``<bucket>/control/stop.json``; a running job ends as ``stopped`` at its next
    training batch. ``session`` (see :func:`session_of`) limits the request to the current run
    of the job, so that resuming it later (``brevpipe run job.id=...``) is not stopped again."""
    marker = {"requested": now(), "by": who(), "pid": os.getpid(), "session": session}
    storage.write_json(JobBucket(bucket_url).stop, marker)
    return marker


def read_stop(bucket_url: str) -> dict[str, Any] | None:
    """The stop request of a job bucket, or None (read directly: no cached listing)."""
    try:
        return json.loads(storage.read_bytes(JobBucket(bucket_url).stop))
    except FileNotFoundError:
        return None
    except ValueError:  # a damaged marker still says "stop"
        return {}


def stop_requested(bucket_url: str, session: str | None = None) -> bool:
    """Whether a stop was requested (for run ``session`` when both sides know it)."""
    marker = read_stop(bucket_url)
    if marker is None:
        return False
    wanted = marker.get("session")
    return session is None or wanted is None or wanted == session


def clear_stop(bucket_url: str) -> None:
    """Remove the stop request of a job bucket, if any."""
    fs, path = storage.get_fs(JobBucket(bucket_url).stop)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def stop_callback(bucket_url: str, check_every_s: float = 2.0) -> Any:
    """A Keras callback that ends training when a stop is requested for ``bucket_url``.

    It looks at the marker on training batch end, at most every ``check_every_s`` seconds (a
    clock check before any storage call), sets ``model.stop_training`` and raises
    :class:`StopRequested`. Validation batches do not check: an epoch whose training is done
    gets its validation and its end-of-epoch callbacks (history, checkpoint), so a resumed job
    loses no finished epoch. Storage errors while checking are logged once and never stop
    training.
    """
    import keras

    output_url = JobBucket(bucket_url).output

    class StopCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bucket_url = bucket_url
            self.check_every_s = float(check_every_s)
            self.session: str | None = None
            self._next_check = 0.0
            self._warned = False

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self._next_check = 0.0  # the first batch checks: a stop may predate training
            try:
                self.session = session_of(storage.read_json(output_url))
            except Exception:  # noqa: BLE001 - no job around this fit: any marker counts
                self.session = None

        def _check(self) -> None:
            clock = time.monotonic()
            if clock < self._next_check:
                return
            self._next_check = clock + self.check_every_s
            try:
                requested = stop_requested(self.bucket_url, self.session)
            except Exception as exc:  # noqa: BLE001 - a storage hiccup must not end training
                if not self._warned:
                    log.warning("cannot check for a stop request in %s: %s", self.bucket_url, exc)
                    self._warned = True
                return
            if requested:
                self.model.stop_training = True
                raise StopRequested(
                    f"stop requested for job bucket {self.bucket_url} ({STOP})"
                )

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            raise_if_signalled()  # Ctrl-C or SIGTERM that TensorFlow swallowed
            self._check()

    return StopCallback()
