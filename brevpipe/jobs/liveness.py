"""Whether a job is still alive: a heartbeat in its bucket, SIGTERM as a stop, stale temp folders.

A running job rewrites ``control/heartbeat.json`` every ``runtime.heartbeat_s`` seconds. A job
whose output.json says ``running`` but whose heartbeat is older than :data:`STALE_PERIODS`
periods was killed without a chance to say so (SIGKILL, the OOM killer, a lost machine):
``brevpipe jobs`` shows it as ``lost`` and can settle it. SIGTERM (``timeout``, ``docker
stop``) ends a job like Ctrl-C does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket

log = logging.getLogger("brevpipe")
STALE_PERIODS = 3
# brevpipe-[kind-]<pid>-<host>-...: the process and the machine (container) that made it
_TEMP_NAME = re.compile(r"^brevpipe-(?:[a-z]+-)?(\d+)-([0-9a-f]{6})-")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a job ends as ``stopped`` (like Ctrl-C)."""


# Set by SIGINT/SIGTERM: an interrupt raised where Python swallows exceptions (a __del__, a
# weakref callback inside TensorFlow) must still end the job, at the next batch or stage.
_SIGNALLED: list[BaseException] = []


def raise_if_signalled() -> None:
    """Raise the interrupt a signal asked for, if it was swallowed before reaching the job."""
    if _SIGNALLED:
        raise _SIGNALLED[0]


def host_token() -> str:
    """A short token of this machine (or container): temp folders of another host sharing
    /tmp are never taken for ours."""

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_prefix(kind: str = "") -> str:
    """The prefix of a temporary folder of this process: ``brevpipe-[kind-]<pid>-<host>-``
    (:func:`clean_stale_temp` removes it once the process has ended)."""
    return f"brevpipe-{kind + '-' if kind else ''}{os.getpid()}-{host_token()}-"


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise :class:`Terminated` and SIGINT ``KeyboardInterrupt`` in the main
    thread, remembered for :func:`raise_if_signalled` (no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum: int, frame: Any) -> None:
        _SIGNALLED.append(Terminated("terminated (SIGTERM)"))
        raise _SIGNALLED[-1]

    def on_int(signum: int, frame: Any) -> None:
        _SIGNALLED.append(KeyboardInterrupt())
        raise _SIGNALLED[-1]

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Heartbeat:
    """Writes ``<bucket>/control/heartbeat.json`` every ``period_s`` seconds from a daemon
    thread while a job runs; a storage hiccup is logged, never fatal."""

    def __init__(self, bucket_url: str, period_s: float, session: str | None) -> None:
        self.url = JobBucket(bucket_url).heartbeat
        self.period_s = float(period_s)
        self.session = session
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        storage.write_json(self.url, {
            "time": now().isoformat(timespec="milliseconds"), "period_s": self.period_s,
            "pid": os.getpid(), "host": socket.gethostname(), "session": self.session,
        })  # fmt: skip

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is not a failed job
                log.warning("cannot write the heartbeat %s: %s", self.url, exc)

    def start(self) -> Heartbeat:
        self.beat()  # also replaces a killed run's beat (period 0: never stale)
        if self.period_s <= 0:
            return self
        self._thread = threading.Thread(target=storage.carried(self._run), name="heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 30)


def is_stale(
    heartbeat: dict[str, Any] | None, at: dt.datetime | None = None, session: str | None = None
) -> bool:
    """Whether a heartbeat record is older than :data:`STALE_PERIODS` of its periods (a job
    without one, written before heartbeats existed, is never stale; nor is one of another run
    of the job than ``session``, the one output.json describes)."""
    if not isinstance(heartbeat, dict):
        return False
    if session is not None and heartbeat.get("session") not in (None, session):
        return False
    try:
        beat = dt.datetime.fromisoformat(str(heartbeat["time"]))
        period = float(heartbeat.get("period_s") or 0)
    except (KeyError, ValueError, TypeError):
        return False
    if beat.tzinfo is None:  # written elsewhere without a time zone: UTC
        beat = beat.replace(tzinfo=dt.timezone.utc)
    if period <= 0:
        return False
    return ((at or now()) - beat).total_seconds() > STALE_PERIODS * period


def clean_stale_temp(folder: str | None = None) -> list[str]:
    """Remove ``brevpipe-*`` temporary folders whose process has ended (a killed job's
    scratch space, image copies, unpacked models); returns what was removed."""
    removed = []
    base = Path(folder or tempfile.gettempdir())
    host = host_token()
    for path in base.glob("brevpipe-*"):
        match = _TEMP_NAME.match(path.name)
        if not match or match.group(2) != host or not path.is_dir():
            continue
        if _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    if removed:
        log.info("removed %d temporary folder(s) of ended processes", len(removed))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
