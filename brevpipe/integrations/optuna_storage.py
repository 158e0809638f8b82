"""Where an Optuna sweep keeps its study: a storage every trial process reaches (the driver, a
joblib worker, a Ray node), and which outlives the driver so that a resumed sweep continues it.

``search.storage`` may name an RDB URL (``sqlite:///...``, ``postgresql://...``); by default the
study is Optuna's journal under the job root, ``<root>/sweeps/<sweep id>.optuna/``, on any file
system the root is on. The journal is a folder of numbered JSON objects, each a batch of
Optuna's log entries; an append creates the next number exclusively (a local ``link``, or S3's
``If-None-Match: *``), so concurrent writers never overwrite each other and every reader sees
one order of the same entries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.storages.journal._storage import JournalOperation  # not re-exported by Optuna

from brevpipe.errors import ConfigError, StorageError
from brevpipe.integrations.search import is_rdb_url, takes_journal
from brevpipe.io import storage
from brevpipe.jobs import layout

log = logging.getLogger("brevpipe")

NAME_DIGITS = 10
MAX_BATCH_BYTES = 4 * 2**20  # Optuna writes a trial's few entries at once: kilobytes
# the journal's operations (CREATE_STUDY = 0 ...), from the Optuna installed: an entry of a
# newer operation must not be taken for a planted one
MAX_OP_CODE = max(JournalOperation)
CREATE_ATTEMPTS = 50
_CHECKED: set[str] = set()  # the S3 journals whose exclusive writes this process checked


class FsspecJournal(BaseJournalBackend):
    """Optuna's journal as numbered, immutable objects under ``url`` (a local folder or an
    ``s3://`` prefix). Thread-safe; process-safe through exclusive creation. The objects come
    from a bucket: one that is not a batch of journal entries (too large, not JSON, not a list
    of entries) is skipped with a warning, the same way by every reader."""

    def __init__(self, url: str) -> None:
        self.url = storage.normalize(url)
        if not takes_journal(self.url):
            raise ConfigError(
                f"an Optuna journal needs a local or s3:// job root (exclusive writes); "
                f"{self.url} is on {storage.protocol_of(self.url)}: give the study an RDB URL, "
                "search.storage=postgresql://..."
            )
        self._logs: list[dict[str, Any]] = []
        self._objects = 0  # the entries read so far came from objects 0 .. _objects-1
        self._lock = threading.Lock()
        if not storage.is_local(self.url):
            check_exclusive(self.url)

    def _name(self, number: int) -> str:
        return storage.join(self.url, f"{number:0{NAME_DIGITS}d}.json")

    def _catch_up(self) -> None:
        """Read the objects written since the last call (all of them at first)."""
        names = self._listed_from(self._objects)
        wanted = [name for name, size in names.items() if size <= MAX_BATCH_BYTES]
        blobs = storage.cat_many(wanted) if wanted else {}
        for name, size in names.items():
            blob = blobs.get(name, b"")  # an oversized object is not read
            if isinstance(blob, BaseException):
                raise blob
            self._logs.extend(journal_batch(name, blob, size))
            self._objects += 1

    def _listed_from(self, first: int) -> dict[str, int]:
        """The consecutive objects from ``first`` on that exist now, with their sizes."""
        fs, path = storage.get_fs(self.url)
        try:  # never a cached listing: another thread's could be older than our last write
            listed = storage.call(fs, self.url, "ls", path, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        sizes = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                 for e in listed}  # fmt: skip
        found, number = {}, first
        while (name := f"{number:0{NAME_DIGITS}d}.json") in sizes:
            found[self._name(number)] = sizes[name]
            number += 1
        return found

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        with self._lock:
            self._catch_up()
            return list(self._logs[log_number_from:])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = json.dumps(logs).encode()
        if len(data) > MAX_BATCH_BYTES:  # every reader would skip it
            raise StorageError(f"an Optuna journal batch of {len(data):,} bytes is more than "
                               f"{MAX_BATCH_BYTES:,}: {self.url} cannot keep it")  # fmt: skip
        with self._lock:
            self._catch_up()
            for attempt in range(CREATE_ATTEMPTS):
                if self._create(self._name(self._objects), data):
                    # read-your-writes without a listing: every object before this one is read
                    self._logs.extend(json.loads(data))
                    self._objects += 1
                    return
                time.sleep(min(1.0, 0.01 * 2**attempt))
                self._catch_up()  # another process took that number: read it, try the next
            raise StorageError(f"could not append to the Optuna journal {self.url} in "
                               f"{CREATE_ATTEMPTS} attempts: too many writers at once")

    def _create(self, url: str, data: bytes) -> bool:
        """Create ``url`` with ``data`` unless it exists; whether this call created it."""
        if storage.is_local(url):
            return create_local(url, data)
        fs, path = storage.get_fs(url)
        try:
            storage.call(fs, url, "pipe_file", path, data, mode="create")
        except OSError as exc:
            if not taken(exc):
                raise
            # s3fs retries a PUT whose answer was lost: "exists" may be this very batch
            with contextlib.suppress(OSError):
                return bool(storage.read_bytes(url) == data)
            return False
        return True


def taken(exc: OSError) -> bool:
    """Whether an exclusive S3 write failed because the object exists or another write to it
    is in flight: s3fs gives FileExistsError for a 412 that names If-None-Match, EBUSY for a
    bare 409, and a plain OSError for AWS's ConditionalRequestConflict (409) or a 412 from a
    store that names no condition."""
    if isinstance(exc, FileExistsError) or exc.errno == errno.EBUSY:
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    code = (response.get("Error") or {}).get("Code")
    return status in (409, 412) or code in ("ConditionalRequestConflict", "PreconditionFailed")


def journal_batch(name: str, blob: bytes, size: int) -> list[dict[str, Any]]:
    """The entries of one journal object; none (with a warning) when it is not a batch."""
    problem = None
    if size > MAX_BATCH_BYTES:
        problem = f"{size:,} bytes, more than {MAX_BATCH_BYTES:,}"
    else:
        try:
            batch = json.loads(blob)
        except (ValueError, RecursionError) as exc:
            batch, problem = None, f"not JSON ({type(exc).__name__})"
        if problem is None and not (isinstance(batch, list) and all(
                isinstance(e, dict) and type(e.get("op_code")) is int
                and 0 <= e["op_code"] <= MAX_OP_CODE and isinstance(e.get("worker_id"), str)
                for e in batch)):  # fmt: skip
            problem = "not a list of Optuna journal entries"
    if problem is None:
        return batch
    log.warning("Optuna journal object %s skipped: %s", name, problem)
    return []


def create_local(url: str, data: bytes) -> bool:
    """Create the local file ``url`` with ``data`` unless it exists, atomically: the data is
    written and synced beside it, then hard-linked to its name (which fails if it exists)."""
    folder = Path(url).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)  # others who may read the job root may read the journal
    try:
        os.link(tmp.name, url)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"the job root's file system does not take hard links ({exc}), which "
                          "an Optuna journal needs: give the study an RDB URL, "
                          "search.storage=sqlite:////absolute/path/study.db") from None
    finally:
        os.unlink(tmp.name)
    return True


def check_exclusive(url: str) -> None:
    """Refuse an S3 endpoint that ignores ``If-None-Match`` (some S3-compatible stores): the
    journal would lose entries. Checked once per process and URL."""
    if url in _CHECKED:
        return
    probe = storage.join(url, f".exclusive-{uuid.uuid4().hex}")
    fs, path = storage.get_fs(probe)
    storage.call(fs, probe, "pipe_file", path, b"1", mode="create")
    try:
        storage.call(fs, probe, "pipe_file", path, b"2", mode="create")
    except OSError as exc:
        if not taken(exc):
            raise
        _CHECKED.add(url)
        return
    finally:
        with contextlib.suppress(OSError):
            storage.call(fs, probe, "rm_file", path)
    raise ConfigError(f"the store of {url} overwrote an object created with If-None-Match: an "
                      "Optuna journal there would lose entries; give the study an RDB URL, "
                      "search.storage=postgresql://...")


def journal_url(root: str, sweep_id: str) -> str:
    """The default study storage of a sweep: ``<root>/sweeps/<id>.optuna``."""
    return storage.join(storage.normalize(root), layout.SWEEPS, f"{sweep_id}.optuna")


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage from ``url``: an RDB URL, or a journal folder (local or s3://)."""
    if is_rdb_url(url):
        return RDBStorage(url)
    return JournalStorage(FsspecJournal(url))
