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

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import BaseJournalBackend, JournalStorage

from brevpipe.errors import ConfigError
from brevpipe.io import storage

RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
NAME_DIGITS = 10
EXCLUSIVE_REMOTE = ("s3", "s3a")  # file systems whose exclusive create brevpipe relies on


class FsspecJournal(BaseJournalBackend):
    """Optuna's journal as numbered, immutable objects under ``url`` (a local folder or an
    ``s3://`` prefix). Thread-safe; process-safe through exclusive creation."""

    def __init__(self, url: str) -> None:
        self.url = storage.normalize(url)
        protocol = storage.protocol_of(self.url)
        if not storage.is_local(self.url) and protocol not in EXCLUSIVE_REMOTE:
            raise ConfigError(
                f"an Optuna journal needs a local or s3:// job root (exclusive writes); "
                f"{self.url} is on {protocol}: give the study an RDB URL, "
                "search.storage=postgresql://..."
            )
        self._logs: list[dict[str, Any]] = []
        self._objects = 0  # the entries read so far came from objects 0 .. _objects-1
        self._lock = threading.Lock()

    def _name(self, number: int) -> str:
        return storage.join(self.url, f"{number:0{NAME_DIGITS}d}.json")

    def _catch_up(self) -> None:
        """Read the objects written since the last call (all of them at first)."""
        while True:
            names = self._listed_from(self._objects)
            if not names:
                return
            blobs = storage.cat_many(names)
            for name in names:
                blob = blobs[name]
                if isinstance(blob, BaseException):
                    raise blob
                batch = json.loads(blob)
                if not isinstance(batch, list):
                    raise ValueError(f"{name} is not an Optuna journal batch")
                self._logs.extend(batch)
                self._objects += 1

    def _listed_from(self, first: int) -> list[str]:
        """The consecutive object names from ``first`` on that exist now."""
        fs, path = storage.get_fs(self.url)
        try:
            fs.invalidate_cache(path)
            found = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            return []
        names, number = [], first
        while f"{number:0{NAME_DIGITS}d}.json" in found:
            names.append(self._name(number))
            number += 1
        return names

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        with self._lock:
            self._catch_up()
            return list(self._logs[log_number_from:])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = json.dumps(logs).encode()
        with self._lock:
            self._catch_up()
            while not self._create(self._name(self._objects), data):
                self._catch_up()  # another process took that number: read it, try the next

    def _create(self, url: str, data: bytes) -> bool:
        """Create ``url`` with ``data`` unless it exists; whether this call created it."""
        if storage.is_local(url):
            folder = Path(url).parent
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as tmp:
                tmp.write(data)
            try:
                os.link(tmp.name, url)  # atomic and exclusive: readers never see half a batch
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp.name)
            return True
        fs, path = storage.get_fs(url)
        try:
            storage.call(fs, url, "pipe_file", path, data, mode="create")
        except FileExistsError:
            return False
        return True


def journal_url(root: str, sweep_id: str) -> str:
    """The default study storage of a sweep: ``<root>/sweeps/<id>.optuna``."""
    return storage.join(storage.normalize(root), "sweeps", f"{sweep_id}.optuna")


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage from ``url``: an RDB URL, or a journal folder (local or s3://)."""
    if url.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES:
        return RDBStorage(url, heartbeat_interval=None)
    return JournalStorage(FsspecJournal(url))
