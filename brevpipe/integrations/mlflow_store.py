"""Reaching an MLflow tracking store: a client whose store exists, created by one process at
a time (a new sqlite store copied from an empty one); calls retried while a sqlite store is
busy; a fast check that a server answers."""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("brevpipe")

# sqlite errors of a store that another process is writing or creating: worth waiting out
BUSY = ("database is locked", "database table is locked", "duplicate column name",
        "Online migration expected", "OperationalError) table", "alembic_version")


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is busy (locked, or being created by another process)."""
    text = f"{exc} {exc.__cause__ or ''}"
    return any(marker in text for marker in BUSY)


def retrying(call: Callable[..., T], *args: Any, deadline_s: float = 60.0, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, tried again with backoff while the store is busy, for up
    to ``deadline_s``; other errors (and a store busy for longer) are raised."""
    give_up = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not is_busy(exc) or time.monotonic() + delay > give_up:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` whose store exists. A sqlite store is created (or its
    schema migrated) by one process at a time: a file lock beside it, since MLflow's own
    migration races when several jobs start on a new store."""
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    from filelock import FileLock

    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=300):  # the client creates the store
        if not path.exists():
            _copy_empty_store(path)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        retrying(client.search_experiments, max_results=1)
    return client


def _copy_empty_store(path: Path) -> None:
    """A new sqlite store at ``path``, copied from an empty one that is made once per MLflow
    version in the user cache folder: MLflow creates a store by running every migration of
    its schema (2-3 s, paid by a user's first job and by every new store); a copy takes
    milliseconds. The Default experiment keeps its artifacts beside the store, as brevpipe's
    own experiments do. Anything amiss leaves ``path`` absent: MLflow then creates it."""
    import mlflow

    from brevpipe.io.cache import user_cache_folder

    empty = user_cache_folder() / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        if not empty.exists():
            _make_empty_store(empty)
        shutil.copyfile(empty, partial)
        default = f"{artifact_root_for(f'sqlite:///{path}')}/0"
        with sqlite3.connect(partial) as db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                       (default,))  # fmt: skip
        db.close()
        os.replace(partial, path)
    except (OSError, sqlite3.Error) as exc:
        log.debug("MLflow creates the store %s (no copy of an empty one: %s)", path, exc)
        partial.unlink(missing_ok=True)


def _make_empty_store(empty: Path) -> None:
    """MLflow's empty store at ``empty``, made by one process at a time, written whole."""
    from filelock import FileLock
    from mlflow import MlflowClient

    empty.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{empty}.lock", timeout=300):
        if empty.exists():
            return
        partial = empty.with_name(f"{empty.name}.tmp-{os.getpid()}")
        partial.unlink(missing_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)
        os.replace(partial, empty)


def reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when an HTTP tracking server does not answer (MLflow's client would retry
    every request for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return

    with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
        pass


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite store) if needed."""
    experiment = retrying(client.get_experiment_by_name, name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return retrying(client.create_experiment, name, artifact_location=artifact_root_for(uri))
    except Exception:  # another job created it first
        experiment = retrying(client.get_experiment_by_name, name)
        if experiment is None:
            raise
        return experiment.experiment_id


def artifact_root_for(uri: str) -> str | None:
    """Local artifact folder beside a sqlite store (else the server decides)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None
