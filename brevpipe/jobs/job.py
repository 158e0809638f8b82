"""A Job: one execution of a pipeline, with its id, status, job bucket and output.json."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
import subprocess
import tempfile
import uuid
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from brevpipe import __version__
from brevpipe.config.compose import REPO_DIR, redact
from brevpipe.errors import DiskFullError
from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket
from brevpipe.jobs.liveness import temp_prefix

SCHEMA_VERSION = 1
ENVIRONMENT_PACKAGES = (
    "tensorflow", "tensorflow-cpu", "keras", "hydra-core", "omegaconf", "albumentations",
    "fsspec", "s3fs", "mlflow", "pandas", "numpy", "pillow",
)  # fmt: skip


class JobStatus(str, Enum):  # enum.StrEnum is Python 3.11+; this behaves the same
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    PRUNED = "pruned"  # a sweep's trial its pruner ended early (not a failure)


# What a listing shows besides a job's own status (brevpipe jobs list).
LOST = "lost"  # output.json says running, but the heartbeat went stale (killed without a word)
UNKNOWN = "unknown"  # no readable output.json
STATUSES = (*(str(s) for s in JobStatus), LOST, UNKNOWN)


class JobListener(Protocol):
    """Receives a job's metrics as they happen (the MLflow mirror is one)."""

    def on_metrics(self, metrics: dict[str, float], step: int | None) -> None: ...


class Tracker(Protocol):
    """Mirrors a job somewhere else (MLflow: :mod:`brevpipe.integrations.tracking`)."""

    def start(self) -> None: ...

    def finish(self, job: Job) -> None: ...


class NullTracker:
    """Tracking turned off (``tracking=none``)."""

    def start(self) -> None:
        pass

    def finish(self, job: Job) -> None:
        pass


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Python, package versions and the git commit of the source tree, if any."""
    packages = {}
    for name in ("brevpipe", *ENVIRONMENT_PACKAGES):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    env: dict[str, Any] = {"python": platform.python_version(), "packages": packages}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


class Job:
    """One run of a pipeline: its bucket ``{root}/{id}/``, metrics, stages and status.

    ``output.json`` is rewritten atomically whenever :meth:`write_output` is called (the
    runner does so at every stage end) and at the end of the job.
    """

    def __init__(
        self,
        *,
        root: str,
        config: dict[str, Any],
        seed: int,
        job_id: str | None = None,
        name: str = "job",
        pipeline: str = "",
        choices: dict[str, str] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.id = job_id or str(uuid.uuid4())
        self.root = storage.normalize(root)
        self.bucket = JobBucket.of(self.root, self.id)
        self.bucket_url = self.bucket.url
        self.name = name
        self.pipeline = pipeline
        self.config = redact(config)
        self.choices = dict(choices or {})
        self.tags = list(tags or [])
        self.seed = int(seed)
        self.status = JobStatus.CREATED
        self.start_time: str | None = None
        self.end_time: str | None = None
        self.error: str | None = None
        self.resumed: list[str] = []
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.stages: dict[str, dict[str, Any]] = {}
        self.samples: dict[str, Any] = {}
        self.dataset: dict[str, Any] = {}  # the data's digest (brevpipe.data.lineage)
        self.model: dict[str, Any] = {}
        self.mlflow: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.listeners: list[JobListener] = []
        self._temp_dir: str | None = None
        self._environment = environment()

    # -- paths ------------------------------------------------------------------------------
    def temp_path(self, *parts: str) -> str:
        """A local scratch path (not persisted); its parent folder exists."""
        if self._temp_dir is None:
            # the pid in the name: a later job removes it if this process was killed
            self._temp_dir = tempfile.mkdtemp(prefix=f"{temp_prefix()}{self.id[:8]}-")
        path = Path(self._temp_dir, *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    @property
    def output_url(self) -> str:
        return self.bucket.output

    # -- metrics ----------------------------------------------------------------------------
    def add_metric(self, name: str, value: float) -> None:
        """Record a final metric (flat ``name -> number``)."""
        self.add_metrics({name: value})

    def add_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        if step is None:
            self.metrics.update(clean)
        for listener in self.listeners:
            listener.on_metrics(clean, step)

    def add_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        """Record one epoch of training history and pass it to the listeners."""
        row = {"epoch": int(epoch), **{k: float(v) for k, v in logs.items()}}
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        self.add_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        """Start the job: resume from an existing bucket if there is one, write info.json."""
        if storage.exists(self.output_url):
            previous = storage.read_json(self.output_url)
            self.stages = previous.get("stages", {})
            self.start_time = previous.get("job", {}).get("start")
            self.resumed = [*previous.get("job", {}).get("resumed", []), now()]
        self.start_time = self.start_time or now()
        self.status = JobStatus.RUNNING
        storage.write_json(
            self.bucket.info,
            {
                "schema_version": SCHEMA_VERSION,
                "job": {"id": self.id, "name": self.name, "pipeline": self.pipeline},
                "config": self.config,
                "choices": self.choices,
                "seed": self.seed,
            },
        )
        self.write_output()

    def complete(self) -> None:
        self._finish(JobStatus.COMPLETED)

    def fail(self, error: BaseException) -> None:
        self.error = f"{type(error).__name__}: {error}"
        self._finish(JobStatus.FAILED)

    def stop(self, reason: str = "stopped by the user (interrupt)") -> None:
        self.error = reason
        self._finish(JobStatus.STOPPED)

    def prune(self, reason: str) -> None:
        """End as ``pruned``: a sweep's pruner stopped this trial at the end of an epoch."""
        self.error = reason
        self._finish(JobStatus.PRUNED)

    def _finish(self, status: JobStatus) -> None:
        self.status = status
        self.end_time = now()
        for stage in self.stages.values():  # the stage that was running ends with the job
            if stage.get("status") == "running":
                stage["status"] = str(status)
        self.write_output()
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # -- output.json ------------------------------------------------------------------------
    def to_output(self) -> dict[str, Any]:
        job = {
            "id": self.id,
            "name": self.name,
            "pipeline": self.pipeline,
            "status": str(self.status),
            "start": self.start_time,
            "end": self.end_time,
            "bucket": self.bucket_url,
            "resumed": self.resumed,
            "brevpipe_version": __version__,
            "tags": self.tags,
        }
        if self.error:
            job["error"] = self.error
        return {
            "schema_version": SCHEMA_VERSION,
            "job": job,
            "config": self.config,
            "choices": self.choices,
            "seed": self.seed,
            "metrics": self.metrics,
            "history": sorted(self.history, key=lambda h: h["epoch"]),
            "stages": self.stages,
            "samples": self.samples,
            "dataset": self.dataset,
            "model": self.model,
            "environment": self._environment,
            "mlflow": self.mlflow,
            **self.extra,
        }

    def write_output(self) -> None:
        """Write output.json. A job that has ended on a full device keeps the last complete
        version (the write is atomic) and says so, rather than hiding why it ended."""
        try:
            storage.write_json(self.output_url, self.to_output())
        except DiskFullError as exc:
            if self.status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.PRUNED):
                raise
            logging.getLogger("brevpipe").warning(
                "output.json of job %s keeps its last complete version: %s", self.id, exc)
