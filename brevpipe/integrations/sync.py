"""``brevpipe jobs sync``: replay jobs' buckets into MLflow once it is reachable again.

A job whose mirror failed (a server away, a store locked) completed anyway; its output.json
says what is missing (``mlflow.pending``). Syncing makes its run hold everything the bucket
records, adding only what is missing, and records the run in output.json. The tracking store
comes from the command line or from output.json; output.json is read from a bucket, so a
store it names is used only when it is a sqlite file that exists or the job root's default:
a job is never sent to a server that only a file in a bucket names.
"""

from __future__ import annotations

import os
from typing import Any

from brevpipe.integrations import mirror, mlflow_store
from brevpipe.io import storage
from brevpipe.jobs.job import JobStatus, now
from brevpipe.jobs.layout import JobBucket, default_tracking_uri
from brevpipe.jobs.records import JobRecord, JobRegistryError


def incomplete(record: JobRecord) -> bool:
    """Whether the job ended with its MLflow mirror incomplete (``jobs sync`` completes it)."""
    return bool(((record.output or {}).get("mlflow") or {}).get("pending"))


def store_for(record: JobRecord, root: str, explicit: str | None) -> str:
    """The tracking URI to sync ``record`` into (see the module's note on trust)."""
    if explicit:
        return explicit
    recorded = ((record.output or {}).get("mlflow") or {}).get("tracking_uri")
    if not recorded:
        raise JobRegistryError(
            f"job {record.id} ran with tracking off: name a store to mirror it into, "
            "e.g. --tracking-uri sqlite:///mlflow.db"
        )
    path = str(recorded).removeprefix("sqlite:///")
    if recorded == default_tracking_uri(root) or (
        str(recorded).startswith("sqlite:///") and os.path.isfile(path)
    ):
        return str(recorded)
    raise JobRegistryError(
        f"job {record.id}'s output.json names the tracking store {recorded!r}; brevpipe sends "
        f"a job only to a store you name: add --tracking-uri {recorded} if it is yours"
    )


def sync_record(record: JobRecord, root: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Mirror one job into MLflow (idempotent); what was added, as a dict."""
    output = record.output
    if output is None:
        raise JobRegistryError(f"job {record.id} has no readable output.json ({record.problem})")
    if record.status == JobStatus.RUNNING:
        raise JobRegistryError(
            f"job {record.id} is running: its own process mirrors it; sync it once it has ended"
        )
    uri = store_for(record, root, tracking_uri)
    recorded = output.get("mlflow") or {}
    experiment = (recorded.get("experiment") or
                  ((record.config.get("tracking") or {}).get("experiment")) or
                  record.pipeline or "Default")  # fmt: skip
    mlflow_store.reachable(uri)
    client = mlflow_store.open_client(uri)
    result = mirror.sync_job(client, uri, str(experiment), output, record.bucket)
    state = {k: v for k, v in recorded.items() if k not in ("pending", "error")}
    state.update({"tracking_uri": uri, "experiment": str(experiment), "synced": now(),
                  "experiment_id": result.experiment_id, "run_id": result.run_id})  # fmt: skip
    if result.model_uri:
        state["model_uri"] = result.model_uri
    storage.write_json(JobBucket(record.bucket).output, {**output, "mlflow": state})
    return {
        "id": record.id, "tracking_uri": uri, "run_id": result.run_id,
        "created": result.created, "params": result.params,
        "metric_points": result.metric_points, "artifacts": result.artifacts,
        "model": result.model, "status": result.status, "notes": result.notes,
    }  # fmt: skip
