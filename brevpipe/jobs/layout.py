"""The job bucket's layout: the one place that knows where each of a job's files lives.

    <root>/<job id>/                  the job bucket (any fsspec URL)
        info.json                     written once when the job opens
        registry.json                 archived or not (brevpipe jobs archive)
        control/stop.json             a stop request (brevpipe jobs stop)
        control/heartbeat.json        rewritten while the job runs
        artifacts/output.json         the job's record (DESIGN.md: the output.json contract)
        artifacts/stages/<stage>/     each stage's outputs and its stage.json marker
        artifacts/...                 what users open: report.html, model/, predictions.csv...
    <root>/sweeps/<sweep id>.json     a sweep's MLflow parent run, read by its jobs on any node
                                      (not a job: brevpipe jobs skips it)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brevpipe.io import storage

INFO = "info.json"
REGISTRY = "registry.json"
STOP = "control/stop.json"
HEARTBEAT = "control/heartbeat.json"
ARTIFACTS = "artifacts"
STAGES = "stages"  # under artifacts/
OUTPUT = "output.json"
STAGE_MARKER = "stage.json"
SPLIT = "sample_identification.csv"  # the split a rerun reuses
PREDICTIONS = "predictions.csv"
MODEL_ARCHIVE = "saved_model.tar.gz"
SWEEPS = "sweeps"  # under the root, beside the job buckets
NOT_JOBS = frozenset({SWEEPS})  # folders of a root that are no job buckets


def default_tracking_uri(job_root: str) -> str:
    """The MLflow store of a job root's jobs unless ``tracking.uri`` names one:
    ``sqlite:///<parent of the job root>/mlflow.db``; the current folder for remote roots."""
    base = Path(job_root).parent if storage.is_local(job_root) else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def sweep_record(root: str, sweep_id: str) -> str:
    """The record of sweep ``sweep_id`` under the job root: ``<root>/sweeps/<sweep id>.json``."""
    return storage.join(root, SWEEPS, f"{sweep_id}.json")


@dataclass(frozen=True)
class JobBucket:
    """The paths of one job bucket, from its URL (``<root>/<job id>``)."""

    url: str

    @classmethod
    def of(cls, root: str, job_id: str) -> JobBucket:
        return cls(storage.join(root, job_id))

    @property
    def root(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[0]

    @property
    def job_id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[1]

    @property
    def info(self) -> str:
        return storage.join(self.url, INFO)

    @property
    def registry(self) -> str:
        return storage.join(self.url, REGISTRY)

    @property
    def stop(self) -> str:
        return storage.join(self.url, STOP)

    @property
    def heartbeat(self) -> str:
        return storage.join(self.url, HEARTBEAT)

    @property
    def output(self) -> str:
        return self.artifact(OUTPUT)

    @property
    def split(self) -> str:
        return self.artifact(SPLIT)

    @property
    def model(self) -> str:
        """The exported model's folder: model.keras, saved_model.tar.gz, model.json."""
        return self.artifact("model")

    @property
    def model_archive(self) -> str:
        return self.artifact("model", MODEL_ARCHIVE)

    def artifact(self, *parts: str) -> str:
        """A path under ``artifacts/``."""
        return storage.join(self.url, ARTIFACTS, *parts)

    def stage(self, name: str, *parts: str) -> str:
        """A stage's folder (``artifacts/stages/<name>``), or a path in it."""
        return self.artifact(STAGES, name, *parts)

    def stage_marker(self, name: str) -> str:
        return self.stage(name, STAGE_MARKER)
