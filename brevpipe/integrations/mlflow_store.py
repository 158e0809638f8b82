"""Reaching an MLflow tracking store: a client whose store exists, created by one process at
a time; calls retried while a sqlite store is busy; a fast check that a server answers."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

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
        return MlflowClient(tracking_uri=uri)
    from filelock import FileLock

    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=300):  # the client creates the store
        client = MlflowClient(tracking_uri=uri)
        retrying(client.search_experiments, max_results=1)
    return client


def reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when an HTTP tracking server does not answer (MLflow's client would retry
    every request for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

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
