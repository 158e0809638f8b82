"""Replaying a job bucket into MLflow, idempotently: what makes the mirror converge.

The job bucket is the truth; its MLflow run is a copy. :func:`sync_job` makes the run match
the bucket's ``output.json`` (params, every epoch's metrics with their steps, the final
metrics, tags, artifacts, the model, the end status) and adds only what is missing, so it can
run any number of times: at the end of every job, and later through ``brevpipe jobs sync``
when the job's own attempt failed (a server away, a store locked). Reaching the store
(a client, retries while it is busy) is :mod:`brevpipe.integrations.mlflow_store`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevpipe import __version__
from brevpipe.config.compose import flatten
from brevpipe.integrations.mlflow_store import ensure_experiment, is_busy, retrying
from brevpipe.integrations.registry import NAME, link_test_report
from brevpipe.io import storage
from brevpipe.jobs import layout
from brevpipe.jobs.details import dotted
from brevpipe.jobs.job import JobStatus
from brevpipe.jobs.records import parse_time
from brevpipe.jobs.tags import tags_of

log = logging.getLogger("brevpipe")

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
RUN_STATUS = {
    JobStatus.COMPLETED: "FINISHED",
    JobStatus.FAILED: "FAILED",
    JobStatus.STOPPED: "KILLED",
    JobStatus.PRUNED: "KILLED",  # with the tag brevpipe.pruned: a pruned trial did not fail
}
SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
DIGEST = re.compile(r"[0-9a-f]{8,64}")
ARTIFACTS_TAG = "brevpipe.mirror.artifacts"  # fingerprint of the artifacts last uploaded
MODEL_TAG = "brevpipe.mirror.model"  # set once the MLflow-format model is logged


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


def run_tags(output: dict[str, Any], bucket: str) -> dict[str, str]:
    """The run's tags: the job, its bucket, pipeline and version (and git commit, sweep)."""
    job = output.get("job") or {}
    tags = {
        "brevpipe.job_id": str(job.get("id")),
        "brevpipe.bucket": bucket,
        "brevpipe.pipeline": str(job.get("pipeline") or ""),
        "brevpipe.version": str(job.get("brevpipe_version") or __version__),
    }
    if commit := (output.get("environment") or {}).get("git_commit"):
        tags["mlflow.source.git.commit"] = str(commit)
    if job_tags := tags_of(output):
        tags["brevpipe.tags"] = ",".join(job_tags)
        tags.update({f"brevpipe.tag.{tag}": "true" for tag in job_tags})
    if digest := dataset_digest(output):
        tags["brevpipe.dataset"] = digest
    if job.get("status") == JobStatus.PRUNED:
        tags["brevpipe.pruned"] = "true"
    mlflow = output.get("mlflow") or {}
    if mlflow.get("parent_run_id"):  # a job of a sweep: nested under the sweep's run
        tags["mlflow.parentRunId"] = str(mlflow["parent_run_id"])
        tags["brevpipe.overrides"] = str(mlflow.get("overrides", ""))
    return tags


def metric_points(output: dict[str, Any]) -> list[tuple[str, float, int]]:
    """``(name, value, step)`` of every number the run should hold: each epoch's logs at the
    epoch's step, the final metrics at step 0 (as the live mirror logs them)."""
    points = []
    for row in output.get("history") or []:
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            continue
        points += [(k, float(v), row["epoch"]) for k, v in row.items()
                   if k != "epoch" and _number(v)]  # fmt: skip
    points += [(k, float(v), 0) for k, v in (output.get("metrics") or {}).items() if _number(v)]
    return points


def _millis(text: Any) -> int | None:
    """An output.json time as MLflow's milliseconds (None when missing or unreadable)."""
    when = parse_time(text) if isinstance(text, str) else None
    return int(when.timestamp() * 1000) if when else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def point_key(name: str, value: float, step: int) -> tuple[str, int, str]:
    """A metric point as a set member (NaN equal to NaN)."""
    return name, int(step), "nan" if math.isnan(value) else repr(float(value))


def logged_points(client: Any, run_id: str) -> set[tuple[str, int, str]]:
    """Every metric point the run holds (:func:`point_key`)."""
    run = retrying(client.get_run, run_id)
    return {point_key(m.key, m.value, m.step) for name in run.data.metrics
            for m in retrying(client.get_metric_history, run_id, name)}  # fmt: skip


@dataclass
class SyncResult:
    """What one :func:`sync_job` added to the run (all zero: it was already complete)."""

    run_id: str
    experiment_id: str
    created: bool = False
    params: int = 0
    metric_points: int = 0
    artifacts: bool = False
    model: bool = False
    status: str | None = None
    model_uri: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.params or self.metric_points or self.artifacts
                    or self.model or self.status)  # fmt: skip


def find_run(client: Any, experiment_id: str, output: dict[str, Any]) -> Any | None:
    """The job's run: the one output.json records, else the newest run tagged with its id."""
    from mlflow.entities import ViewType

    job_id = str((output.get("job") or {}).get("id"))
    recorded = (output.get("mlflow") or {}).get("run_id")
    if isinstance(recorded, str) and SAFE_ID.fullmatch(recorded):
        try:
            run = retrying(client.get_run, recorded)
            if run.data.tags.get("brevpipe.job_id") == job_id:
                return run
        except Exception as exc:  # noqa: BLE001 - not in this store: look it up by tag
            if is_busy(exc):
                raise
    runs = retrying(client.search_runs, [experiment_id],
                    filter_string=f"tags.`brevpipe.job_id` = '{job_id}'",
                    run_view_type=ViewType.ALL, order_by=["attributes.start_time DESC"],
                    max_results=1)  # fmt: skip
    return runs[0] if runs else None


def sync_job(
    client: Any, uri: str, experiment: str, output: dict[str, Any], bucket: str,
    *, final: bool = True,
) -> SyncResult:  # fmt: skip
    """Make the job's MLflow run hold everything ``output`` (the job's output.json, read from
    ``bucket``) records, adding only what is missing. ``final``: also upload the artifacts
    and the model and end the run as the job ended (when the job has ended)."""
    job = output.get("job") or {}
    job_id = str(job.get("id"))
    if not SAFE_ID.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} is not a job id")
    experiment_id = ensure_experiment(client, experiment, uri)
    run = find_run(client, experiment_id, output)
    tags = run_tags(output, bucket)
    result = SyncResult(run_id="", experiment_id=experiment_id)
    if run is None:
        start = _millis(job.get("start"))
        run = retrying(client.create_run, experiment_id, start_time=start,
                       run_name=f"{job.get('name') or 'job'}-{job_id[:8]}", tags=tags)  # fmt: skip
        result.created = True
    run_id = result.run_id = run.info.run_id
    missing_tags = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
    for key, value in missing_tags.items():
        retrying(client.set_tag, run_id, key, value)
    if "brevpipe.pruned" in run.data.tags and "brevpipe.pruned" not in tags:  # resumed since
        retrying(client.delete_tag, run_id, "brevpipe.pruned")
    _sync_params(client, run, output, result)
    _sync_metrics(client, run_id, output, result)
    _sync_dataset(client, run, output)
    status = RUN_STATUS.get(job.get("status"))
    if final and status:
        _sync_artifacts(client, run, bucket, result)
        _sync_model(client, run, output, bucket, result)
        if status == "FINISHED":
            _link_test_report(client, run_id, output, result)
        if run.info.status != status or not run.info.end_time:
            end = _millis(job.get("end"))
            retrying(client.set_terminated, run_id, status, end_time=end)
            result.status = status
    return result


def _sync_params(client: Any, run: Any, output: dict[str, Any], result: SyncResult) -> None:
    from mlflow.entities import Param

    existing = run.data.params
    params = [Param(k, v) for k, v in params_of(output.get("config") or {}).items()
              if k not in existing]  # fmt: skip
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        retrying(client.log_batch, run.info.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    result.params = len(params)


def _sync_metrics(client: Any, run_id: str, output: dict[str, Any], result: SyncResult) -> None:
    from mlflow.entities import Metric

    wanted = metric_points(output)
    stamp = int(time.time() * 1000)
    logged: set[tuple[str, int, str]] = set()
    read: set[str] = set()
    missing = []
    for name, value, step in wanted:
        if name not in read:
            history = retrying(client.get_metric_history, run_id, name)
            logged |= {point_key(name, m.value, m.step) for m in history}
            read.add(name)
        if point_key(name, value, step) not in logged:
            logged.add(point_key(name, value, step))
            missing.append(Metric(name, value, stamp, step))
    for i in range(0, len(missing), MAX_METRICS_PER_BATCH):
        retrying(client.log_batch, run_id, metrics=missing[i : i + MAX_METRICS_PER_BATCH])
    result.metric_points = len(missing)


def dataset_digest(output: dict[str, Any]) -> str | None:
    """The job's dataset digest (output.json's ``dataset.digest``), if it is one."""
    digest = (output.get("dataset") or {}).get("digest")
    return digest if isinstance(digest, str) and DIGEST.fullmatch(digest) else None


def _sync_dataset(client: Any, run: Any, output: dict[str, Any]) -> None:
    """The job's data as an MLflow dataset input of the run (``mlflow.log_input``'s record):
    named after the job's dataset, with brevpipe's digest and the dataset folder as source."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = dataset_digest(output)
    inputs = getattr(run, "inputs", None)
    logged = {d.dataset.digest for d in (getattr(inputs, "dataset_inputs", None) or [])}
    if digest is None or digest in logged:
        return
    record = output.get("dataset") or {}
    source = [str(s) for s in record.get("source") or [] if isinstance(s, str)]
    name = str(dotted(output.get("config") or {}, "dataset.name") or "dataset")[:250]
    dataset = Dataset(name=name, digest=digest, source_type="brevpipe",
                      source=json.dumps({"uri": source[0] if len(source) == 1 else source}),
                      profile=json.dumps({"num_rows": record.get("count")}))  # fmt: skip
    retrying(client.log_inputs, run.info.run_id, datasets=[
        DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])


def _link_test_report(client: Any, run_id: str, output: dict[str, Any],
                      result: SyncResult) -> None:  # fmt: skip
    """A test job (``pipeline=test``) of a registered version: listed under that version."""
    tested = output.get("tested_model") or {}
    name, version = tested.get("name"), tested.get("version")
    if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(version, int):
        return
    try:
        link_test_report(client, name, version, output, run_id)
    except Exception as exc:  # noqa: BLE001 - the run is complete without the link
        result.notes.append(f"test report not linked to {name} version {version}: {exc}")
        return
    retrying(client.set_tag, run_id, "brevpipe.tested_model", f"models:/{name}/{version}")


def _artifact_files(bucket: str) -> tuple[Any, str, dict[str, str]]:
    """The bucket's artifacts to mirror (stage caches and temp files excluded):
    ``(file system, artifacts folder, {relative path: fingerprint})``."""
    fs, root = storage.get_fs(layout.JobBucket(bucket).artifact())
    root = root.rstrip("/")
    files = {}
    for path, info in sorted(fs.find(root, detail=True).items()):
        relative = path[len(root) :].strip("/")
        if relative.startswith(f"{layout.STAGES}/") or ".tmp-" in relative:
            continue
        files[relative] = f"{info.get('size')}:{info.get('ETag') or info.get('mtime') or ''}"
    return fs, root, files


def _sync_artifacts(client: Any, run: Any, bucket: str, result: SyncResult) -> None:
    """Upload the bucket's artifacts unless the same files went up already (output.json,
    which changes as the mirror records itself, is not part of that check)."""

    fs, root, files = _artifact_files(bucket)
    listing = "\n".join(f"{k}={v}" for k, v in files.items() if k != layout.OUTPUT)
    fingerprint = hashlib.sha256(listing.encode()).hexdigest()[:16]
    if run.data.tags.get(ARTIFACTS_TAG) == fingerprint:
        return
    with tempfile.TemporaryDirectory(prefix="brevpipe-mlflow-") as tmp:
        for relative in files:
            local = Path(tmp, relative)
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{relative}", str(local))
        client.log_artifacts(run.info.run_id, tmp)
    retrying(client.set_tag, run.info.run_id, ARTIFACTS_TAG, fingerprint)
    result.artifacts = True


def _sync_model(
    client: Any, run: Any, output: dict[str, Any], bucket: str, result: SyncResult
) -> None:
    """The exported archive as MLflow models (:mod:`brevpipe.serving.mlflow_model`):
    ``mlflow_model`` takes images, ``mlflow_model_arrays`` preprocessed arrays. Only an archive
    inside the job's own bucket is read (output.json comes from a bucket: it may point
    anywhere)."""
    from brevpipe.serving.mlflow_model import ARRAYS, IMAGES, save_models

    run_id = run.info.run_id
    model = output.get("model") or {}
    archive_url = model.get("archive_url")
    status = (output.get("job") or {}).get("status")
    if not isinstance(archive_url, str) or status != JobStatus.COMPLETED:
        return
    images = model.get("task") != "segmentation"
    model_uri = f"runs:/{run_id}/{IMAGES if images else ARRAYS}"
    if run.data.tags.get(MODEL_TAG) == archive_url:
        result.model_uri = model_uri
        return
    artifacts = layout.JobBucket(bucket).artifact().rstrip("/") + "/"
    if not storage.normalize(archive_url).startswith(artifacts) or ".." in archive_url:
        result.notes.append(f"model {archive_url!r} is not in the job's bucket: not mirrored")
        return
    with tempfile.TemporaryDirectory(prefix="brevpipe-mlflow-model-") as tmp:
        local = Path(tmp, layout.MODEL_ARCHIVE)
        storage.download(storage.normalize(archive_url), local)
        for path, folder in save_models(local, Path(tmp)).items():
            client.log_artifacts(run_id, str(folder), path)
    retrying(client.set_tag, run_id, MODEL_TAG, archive_url)
    result.model = True
    result.model_uri = model_uri
