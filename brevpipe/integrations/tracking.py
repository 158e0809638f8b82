"""The MLflow mirror of a job: params, live metrics, tags and artifacts.

MLflow is imported only when tracking is on. If MLflow fails, the job goes on: everything
stays in the job bucket, one warning is printed and output.json's ``mlflow.error`` says why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from brevpipe import __version__
from brevpipe.engine import layout, storage
from brevpipe.engine.config import flatten
from brevpipe.engine.job import Job, JobStatus, NullTracker, Tracker

log = logging.getLogger("brevpipe")

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
RUN_STATUS = {
    JobStatus.COMPLETED: "FINISHED",
    JobStatus.FAILED: "FAILED",
    JobStatus.STOPPED: "KILLED",
}


def default_tracking_uri(job_root: str) -> str:
    """``sqlite:///<parent of the job root>/mlflow.db``; the current folder for remote roots."""
    base = Path(job_root).parent if storage.is_local(job_root) else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def tracking_uri_for(uri: str | None, job_root: str) -> str:
    """``tracking.uri`` when set, else the default store for ``job_root``."""
    return uri or default_tracking_uri(job_root)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite store) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root_for(uri))


def artifact_root_for(uri: str) -> str | None:
    """Local artifact folder beside a sqlite store (else the server decides)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def params_of(config: dict[str, Any]) -> dict[str, str]:
    """Flattened config as MLflow params; over-long values are truncated with a warning."""
    params = {}
    for key, value in flatten(config):
        text = "null" if value is None else str(value)
        if len(text) > MAX_PARAM_VALUE:
            log.warning("MLflow param %s truncated to %d characters", key, MAX_PARAM_VALUE)
            text = text[: MAX_PARAM_VALUE - 3] + "..."
        params[key] = text
    return params


class MlflowTracker:
    """Mirrors one job into one MLflow run through :class:`mlflow.MlflowClient`."""

    def __init__(
        self, job: Job, uri: str, experiment: str, parent: dict[str, Any] | None = None
    ) -> None:
        self.job = job
        self.uri = uri
        self.experiment = experiment
        self.parent = parent or {}
        self.client: Any = None
        self.run_id: str | None = None
        self.failed = False

    def _warn(self, what: str, exc: BaseException) -> None:
        if not self.failed:
            log.warning(
                "MLflow mirror at %s failed while %s: %s (the job goes on; everything stays "
                "in its bucket)",
                self.uri,
                what,
                exc,
            )
        self.failed = True
        self.job.mlflow["error"] = f"{what}: {type(exc).__name__}: {exc}"

    def start(self) -> None:
        self.job.mlflow = {"tracking_uri": self.uri, "experiment": self.experiment}
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param

            self._reachable()
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = ensure_experiment(self.client, self.experiment, self.uri)
            tags = {
                "brevpipe.job_id": self.job.id,
                "brevpipe.bucket": self.job.bucket_url,
                "brevpipe.pipeline": self.job.pipeline,
                "brevpipe.version": __version__,
            }
            if commit := self.job.to_output()["environment"].get("git_commit"):
                tags["mlflow.source.git.commit"] = commit
            if self.parent.get("run_id"):  # a job of a sweep: nest under the sweep's run
                tags["mlflow.parentRunId"] = self.parent["run_id"]
                tags["brevpipe.overrides"] = self.parent.get("overrides", "")
            run = self.client.create_run(
                experiment_id, run_name=f"{self.job.name}-{self.job.id[:8]}", tags=tags
            )
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in params_of(self.job.config).items()]
            for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
            self.job.mlflow.update({"experiment_id": experiment_id, "run_id": self.run_id})
            self.job.listeners.append(self)
            log.info("MLflow run %s (%s)", self.run_id, self.uri)
        except Exception as exc:  # noqa: BLE001 - any MLflow failure must not stop the job
            self._warn("starting the run", exc)

    def on_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        if self.run_id is None or self.failed:
            return
        try:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            batch = [Metric(k, v, stamp, step or 0) for k, v in metrics.items()]
            for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])
        except Exception as exc:  # noqa: BLE001
            self._warn("logging metrics", exc)

    def finish(self, job: Job) -> None:
        if self.run_id is None or self.failed:
            job.write_output()
            return
        for what, step in (("logging artifacts", self._log_artifacts),
                           ("logging the model", self._log_model)):  # fmt: skip
            try:
                step(job)
            except Exception as exc:  # noqa: BLE001
                self._warn(what, exc)
        try:
            self.client.set_terminated(self.run_id, RUN_STATUS.get(job.status, "FAILED"))
        except Exception as exc:  # noqa: BLE001
            self._warn("finishing the run", exc)
        job.write_output()

    def _log_artifacts(self, job: Job) -> None:
        """The bucket's artifacts (stage caches excluded) under the run's artifacts."""
        import tempfile

        fs, root = storage.get_fs(job.artifact_path())
        with tempfile.TemporaryDirectory(prefix="brevpipe-mlflow-") as tmp:
            for path in fs.find(root):
                relative = path[len(root.rstrip("/")) :].strip("/")
                if relative.startswith(f"{layout.STAGES}/") or ".tmp-" in relative:
                    continue
                local = Path(tmp, relative)
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(local))
            self.client.log_artifacts(self.run_id, tmp)

    def _log_model(self, job: Job) -> None:
        """The exported Keras model in MLflow's model format, under ``mlflow_model``:
        ``mlflow.pyfunc.load_model(job.mlflow["model_uri"]).predict(images)`` gives scores
        for a batch of images preprocessed as ``model.json``'s ``preprocessing`` says."""
        keras_url = (job.model or {}).get("keras_url")
        if not keras_url or job.status != JobStatus.COMPLETED:
            return
        import tempfile
        from importlib.metadata import PackageNotFoundError, version

        import keras
        import mlflow.keras
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        try:
            tensorflow = f"tensorflow-cpu=={version('tensorflow-cpu')}"
        except PackageNotFoundError:
            tensorflow = f"tensorflow=={version('tensorflow')}"
        with tempfile.TemporaryDirectory(prefix="brevpipe-mlflow-model-") as tmp:
            local = Path(tmp, "model.keras")
            storage.download(keras_url, local)
            metadata = {k: job.model[k] for k in ("classes", "input_shape", "preprocessing")
                        if k in job.model}  # fmt: skip
            model = keras.models.load_model(local)
            signature = ModelSignature(
                inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]))]),
                outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]))]),
            )
            mlflow.keras.save_model(
                model, str(Path(tmp, "mlflow_model")), signature=signature, metadata=metadata,
                pip_requirements=[tensorflow, f"keras=={keras.__version__}"],
            )  # fmt: skip
            self.client.log_artifacts(self.run_id, str(Path(tmp, "mlflow_model")), "mlflow_model")
        job.mlflow["model_uri"] = f"runs:/{self.run_id}/mlflow_model"

    def _reachable(self) -> None:
        """Fail fast (one clear warning) when an HTTP tracking server does not answer."""
        if not self.uri.startswith(("http://", "https://")):
            return
        import urllib.request

        with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=5):
            pass


@dataclass
class TrackingSettings:
    """Where each job is mirrored in MLflow.

    ``uri``: null = ``sqlite:///`` beside the job root, or any tracking URI (``http://host:5000``);
    ``experiment``: null = the pipeline's name; ``enabled: false`` turns the mirror off.

    Settings:
    ``enabled``: mirror each job into MLflow (false: no tracking)
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None

    def tracker(self, job: Job, parent: dict[str, Any] | None = None) -> Tracker:
        """The job's mirror (what the runner calls: it knows no MLflow)."""
        return make_tracker(asdict(self), job, parent)


def make_tracker(
    tracking: dict[str, Any], job: Job, parent: dict[str, Any] | None = None
) -> Tracker:
    """The job's mirror; ``parent`` (``{run_id, overrides}``) nests it in a sweep's run."""
    if not tracking.get("enabled", False):
        return NullTracker()
    uri = tracking_uri_for(tracking.get("uri"), job.root)
    if parent and parent.get("tracking_uri") not in (None, uri):
        parent = None  # the sweep's run lives in another store
    return MlflowTracker(job, uri, tracking.get("experiment") or job.pipeline, parent)
