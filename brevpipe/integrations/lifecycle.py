"""Stopping and archiving jobs (``brevpipe jobs stop|archive|unarchive``):
the job bucket's record first, then its MLflow run (KILLED, deleted or restored)."""

from __future__ import annotations

import logging
import os
from typing import Any

from brevpipe.integrations.mlflow_store import reachable
from brevpipe.io import storage
from brevpipe.jobs.control import read_stop, request_stop, session_of, who
from brevpipe.jobs.job import LOST, JobStatus, now
from brevpipe.jobs.layout import JobBucket
from brevpipe.jobs.records import JobRecord, JobRegistryError, get_job

log = logging.getLogger("brevpipe")


def stop_job(root: str, job_id: str) -> dict[str, Any]:
    """Request a stop of a running job; an error if it is not running."""
    record = get_job(root, job_id)
    if record.status == LOST:
        return {"id": record.id, "bucket": record.bucket, "settled": settle_lost(record)}
    if record.status != JobStatus.RUNNING:
        raise JobRegistryError(
            f"job {record.id} is {record.status}, not running: there is nothing to stop "
            "(`brevpipe jobs list --status running` lists running jobs)"
        )
    previous = read_stop(record.bucket)
    session = session_of(record.output or {})
    if previous and previous.get("session") in (None, session):
        return {"id": record.id, "bucket": record.bucket, "already": True, **previous}
    marker = request_stop(record.bucket, session)
    return {"id": record.id, "bucket": record.bucket, "already": False, **marker}


def settle_lost(record: JobRecord) -> str:
    """End a lost job for the record: output.json ``stopped`` (with why), its running stage too,
    its MLflow run KILLED. ``brevpipe run job.id=...`` can still resume it."""
    output = dict(record.output or {})
    beat = (record.heartbeat or {}).get("time")
    reason = f"lost: no heartbeat since {beat}; settled by brevpipe jobs ({who()})"
    job = {**output.get("job", {}), "status": str(JobStatus.STOPPED), "end": now(),
           "error": reason}  # fmt: skip
    stages = {name: {**stage, "status": str(JobStatus.STOPPED)}
              if stage.get("status") == "running" else stage
              for name, stage in (output.get("stages") or {}).items()}  # fmt: skip
    storage.write_json(JobBucket(record.bucket).output,
                       {**output, "job": job, "stages": stages})  # fmt: skip
    record.output = {**output, "job": job, "stages": stages}
    # if it was only slow (a beat held up), the stop request ends it for real
    request_stop(record.bucket, session_of(output))
    mlflow = output.get("mlflow") or {}
    if mlflow.get("tracking_uri"):
        _mirror_settled(record, mlflow)
    return reason


def _mirror_settled(record: JobRecord, mlflow: dict[str, Any]) -> None:
    """The settled job's MLflow run, KILLED: the whole run replayed from the bucket into a
    store ``brevpipe jobs sync`` trusts (the job root's own, or a sqlite file that exists),
    which creates it if the job died before it opened it; elsewhere (a server named by
    output.json, which comes from a bucket), only the recorded run is marked KILLED."""
    from brevpipe.integrations.sync import store_for, sync_record

    root = JobBucket(record.bucket).root
    try:
        try:
            uri = store_for(record, root, None)
        except JobRegistryError:
            if not mlflow.get("run_id"):
                raise
            uri = None
        if uri is None:
            _check_tracking_store(mlflow["tracking_uri"])
            from mlflow import MlflowClient

            MlflowClient(mlflow["tracking_uri"]).set_terminated(mlflow["run_id"], "KILLED")
        else:
            result = sync_record(record, root, uri)
            record.output = {**(record.output or {}), "mlflow": {
                **mlflow, "tracking_uri": uri, "run_id": result["run_id"]}}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the bucket's copy is what counts
        log.warning("could not mirror the settled job %s into MLflow at %s (%s); once it is "
                    "reachable, run: brevpipe jobs sync %s --root %s", record.id,
                    mlflow["tracking_uri"], exc, record.id, root)  # fmt: skip


def set_archived(root: str, job_id: str, archived: bool) -> dict[str, Any]:
    """Archive (hide from ``list``) or unarchive a job; its MLflow run is deleted or restored.

    Writes ``registry.json`` in the job bucket (output.json is left as the job wrote it). An
    MLflow store that cannot be reached gives a warning in the result, not an error.
    """
    record = get_job(root, job_id)
    if archived and record.status == LOST:
        settle_lost(record)
    if archived and record.status == JobStatus.RUNNING:
        raise JobRegistryError(
            f"job {record.id} is running; stop it first (brevpipe jobs stop {record.id}), "
            "then archive it"
        )
    state = {**record.registry, "archived": archived, "changed": now(), "by": who()}
    storage.write_json(JobBucket(record.bucket).registry, state)
    mlflow = (record.output or {}).get("mlflow") or {}
    message, warning = mirror_lifecycle(mlflow, deleted=archived)
    return {"id": record.id, "archived": archived, "mlflow": message, "warning": warning}


def mirror_lifecycle(mlflow: dict[str, Any], *, deleted: bool) -> tuple[str, str | None]:
    """Delete (``deleted``) or restore a job's MLflow run: ``(what happened, warning)``; the
    warning says why the run could not be changed (an unreachable store, say)."""
    uri, run_id = mlflow.get("tracking_uri"), mlflow.get("run_id")
    if not uri or not run_id:
        return "no MLflow run recorded for this job", None
    try:
        _check_tracking_store(uri)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        stage = client.get_run(run_id).info.lifecycle_stage
        if deleted and stage != "deleted":
            client.delete_run(run_id)
        elif not deleted and stage == "deleted":
            client.restore_run(run_id)
    except Exception as exc:  # noqa: BLE001 - an unreachable MLflow must not block archiving
        verb = "delete" if deleted else "restore"
        reason = (str(exc).splitlines() or [""])[0]
        return f"MLflow run {run_id} left as it was", (
            f"could not {verb} MLflow run {run_id} at {uri} ({type(exc).__name__}: {reason}); "
            "run this command again once the tracking store is reachable"
        )
    return f"MLflow run {run_id} {'deleted' if deleted else 'restored'} at {uri}", None


def _check_tracking_store(uri: str) -> None:
    """Fail fast: a sqlite file that is not there (MLflow would create an empty one), or an
    HTTP server that does not answer (MLflow's client would retry for minutes)."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no MLflow store {path}")
    else:
        reachable(uri)
