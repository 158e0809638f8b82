"""The dashboard's view of its job roots: every job's record, cached in this process and
refreshed by reading only what can still change (new folders, jobs not yet ended), with the
statuses that changed since a given version for the live page."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from brevpipe.errors import BrevpipeError
from brevpipe.io import storage
from brevpipe.jobs.job import JobStatus
from brevpipe.jobs.records import JobRecord, job_ids, load_jobs

log = logging.getLogger("brevpipe.ui")
ENDED = frozenset({JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.STOPPED.value,
                   JobStatus.PRUNED.value})


@dataclass
class Listed:
    """A job of one of the roots."""

    root: str
    record: JobRecord

    @property
    def id(self) -> str:
        return self.record.id


@dataclass
class JobIndex:
    """Jobs of ``roots``; :meth:`jobs` refreshes at most every ``refresh_s`` seconds, and reads
    every job again (archived flags set elsewhere, rewritten records) every ``full_every_s``."""

    roots: list[str]
    refresh_s: float = 0.5
    full_every_s: float = 30.0
    errors: dict[str, str] = field(default_factory=dict)  # root -> one line
    version: int = 0
    _jobs: dict[str, Listed] = field(default_factory=dict)
    _changed: dict[str, int] = field(default_factory=dict)  # job id -> version it changed in
    _dirty: set[str] = field(default_factory=set)  # ended jobs to read again
    _refreshed: float = float("-inf")
    _full: float = float("-inf")
    _reading: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.roots = [storage.normalize(root) for root in self.roots]

    def jobs(self) -> list[Listed]:
        """Every job of every readable root, newest first."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[Listed], int]:
        """The jobs, newest first, and the version they are at (a page that shows them asks
        for the changes after it)."""
        self.refresh()
        with self._lock:
            listed, version = list(self._jobs.values()), self.version
        return sorted(listed, key=lambda j: (str(j.record.job.get("start") or ""), j.id),
                      reverse=True), version  # fmt: skip

    def find(self, job_id: str) -> Listed | None:
        """The job ``job_id`` names (a full id, or a unique prefix)."""
        self.refresh()
        with self._lock:
            if job_id in self._jobs:
                return self._jobs[job_id]
            matches = [j for i, j in self._jobs.items() if job_id and i.startswith(job_id)]
        return matches[0] if len(matches) == 1 else None

    def changed_since(self, version: int) -> tuple[int, list[Listed]]:
        """The jobs whose status, epochs or record changed after ``version``, and the version
        now."""
        self.refresh()
        with self._lock:
            ids = [i for i, v in self._changed.items() if v > version and i in self._jobs]
            return self.version, [self._jobs[i] for i in ids]

    def forget(self, job_id: str) -> None:
        """Read this job again at the next refresh (after the dashboard changed it)."""
        with self._lock:
            self._refreshed = float("-inf")
            self._dirty.add(job_id)

    def refresh(self, force: bool = False) -> None:
        """Read what may have changed. The reading happens outside the lock, by one request at
        a time: the others answer from what was read before (a slow root delays no page
        once it has been listed)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed < self.refresh_s:
                return
            if self._reading and self._refreshed > float("-inf"):
                return
            self._reading = True
            full = now - self._full >= self.full_every_s
            ended = {i for i, j in self._jobs.items() if j.record.status in ENDED} - self._dirty
            self._dirty.clear()
        try:
            read = [(root, *self._read_root(root, full, ended)) for root in self.roots]
        finally:
            with self._lock:
                self._reading = False
        with self._lock:
            for root, ids, records in read:
                if ids is not None:
                    self._apply(root, ids, records)
            self._refreshed = time.monotonic()
            if full:
                self._full = self._refreshed

    def _failed(self, root: str, problem: str) -> tuple[None, list[JobRecord]]:
        """One line on every page, and in the log when it is new; the other roots go on."""
        with self._lock:
            if self.errors.get(root) != problem:
                log.warning("%s", problem)
            self.errors[root] = problem
        return None, []

    def _read_root(self, root: str, full: bool, ended: set[str]
                   ) -> tuple[list[str] | None, list[JobRecord]]:  # fmt: skip
        """The root's job ids and the records of those that may have changed (no lock held)."""
        try:
            ids = job_ids(root)
            stale = [i for i in ids if full or i not in ended]
            return ids, load_jobs(root, stale) if stale else []
        except BrevpipeError as exc:
            return self._failed(root, str(exc))
        except Exception as exc:  # noqa: BLE001 - credentials, network: one line, others go on
            return self._failed(root, f"cannot read job root {root}: {type(exc).__name__}: {exc}")

    def _apply(self, root: str, ids: list[str], records: list[JobRecord]) -> None:
        if self.errors.pop(root, None):
            log.info("job root %s can be read again", root)
        present = set(ids)
        for job_id in [i for i, j in self._jobs.items() if j.root == root and i not in present]:
            del self._jobs[job_id]
        for record in records:
            before = self._jobs.get(record.id)
            if before is None or fingerprint(before.record) != fingerprint(record):
                self.version += 1
                self._changed[record.id] = self.version
            self._jobs[record.id] = Listed(root, record)


def fingerprint(record: JobRecord) -> tuple[Any, ...]:
    """What the job list shows of a job: a change of any of it is pushed to open pages."""
    output = record.output or {}
    history = output.get("history")
    try:
        return (record.status, record.archived, str(record.job.get("end")),
                len(history) if isinstance(history, list) else 0,
                str(record.key_metric[1]))  # fmt: skip
    except Exception:  # noqa: BLE001 - a record of strange shape: compared by its text
        return ("unknown", repr(output)[:10_000])
