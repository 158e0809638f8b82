"""The job registry, ``brevpipe jobs``: list, show, stop, archive, unarchive, statistics.

Everything is read from the job root (any fsspec URL): each job's ``artifacts/output.json``
(written by the job itself, never rewritten here), plus two small files the registry owns in
the job bucket: ``control/stop.json`` (a stop request) and ``registry.json`` (archived or not).
TensorFlow and MLflow are imported only by the functions that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import getpass
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from brevpipe.engine import storage
from brevpipe.engine.job import JobStatus, now
from brevpipe.engine.liveness import HEARTBEAT_FILE, is_stale, raise_if_signalled
from brevpipe.errors import BrevpipeError

log = logging.getLogger("brevpipe")

DEFAULT_ROOT = "./jobs"
STOP_MARKER = "control/stop.json"
REGISTRY_FILE = "registry.json"
UNKNOWN = "unknown"
LOST = "lost"  # output.json says running, but the heartbeat went stale (killed without a word)
STATUSES = (*(str(s) for s in JobStatus), LOST, UNKNOWN)
DONE_STAGE_STATUSES = ("completed", "cached")
SHORT_ID = 8
KEY_PARAMS = (
    "dataset.name", "dataset.url", "split.fractions", "sampler._target_", "loader.target_size",
    "augmenter._target_", "encoder._target_", "model._target_", "trainer.epochs",
    "trainer.batch_size", "trainer.lr", "trainer.schedule", "runtime.deterministic",
)  # fmt: skip


class JobRegistryError(BrevpipeError):
    """The registry cannot do what was asked: unknown job, unreadable root, wrong state."""


class StopRequested(KeyboardInterrupt):
    """Raised inside training when ``brevpipe jobs stop`` asked the job to stop.

    A :class:`KeyboardInterrupt`, so the runner ends the job as ``stopped`` (MLflow ``KILLED``)
    exactly as for Ctrl-C, and nothing catching ``Exception`` swallows it.
    """


# -- stop requests --------------------------------------------------------------------------
def who() -> str:
    """``user@host`` of this process (for the markers the registry writes)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def session_of(output: dict[str, Any]) -> str | None:
    """The current run of a job: its last resume time, else its start time."""
    job = output.get("job") or {}
    return (job.get("resumed") or [None])[-1] or job.get("start")


def request_stop(bucket_url: str, session: str | None = None) -> dict[str, Any]:
    """Write ``<bucket>/control/stop.json``; a running job ends as ``stopped`` at its next
    training batch. ``session`` (see :func:`session_of`) limits the request to the current run
    of the job, so that resuming it later (``brevpipe run job.id=...``) is not stopped again."""
    marker = {"requested": now(), "by": who(), "pid": os.getpid(), "session": session}
    storage.write_json(storage.join(bucket_url, STOP_MARKER), marker)
    return marker


def read_stop(bucket_url: str) -> dict[str, Any] | None:
    """The stop request of a job bucket, or None (read directly: no cached listing)."""
    try:
        return json.loads(storage.read_bytes(storage.join(bucket_url, STOP_MARKER)))
    except FileNotFoundError:
        return None
    except ValueError:  # a damaged marker still says "stop"
        return {}


def stop_requested(bucket_url: str, session: str | None = None) -> bool:
    """Whether a stop was requested (for run ``session`` when both sides know it)."""
    marker = read_stop(bucket_url)
    if marker is None:
        return False
    wanted = marker.get("session")
    return session is None or wanted is None or wanted == session


def clear_stop(bucket_url: str) -> None:
    """Remove the stop request of a job bucket, if any."""
    fs, path = storage.get_fs(storage.join(bucket_url, STOP_MARKER))
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def stop_callback(bucket_url: str, check_every_s: float = 2.0) -> Any:
    """A Keras callback that ends training when a stop is requested for ``bucket_url``.

    It looks at the marker on training batch end, at most every ``check_every_s`` seconds (a
    clock check before any storage call), sets ``model.stop_training`` and raises
    :class:`StopRequested`. Validation batches do not check: an epoch whose training is done
    gets its validation and its end-of-epoch callbacks (history, checkpoint), so a resumed job
    loses no finished epoch. Storage errors while checking are logged once and never stop
    training.
    """
    import keras

    output_url = storage.join(bucket_url, "artifacts", "output.json")

    class StopCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bucket_url = bucket_url
            self.check_every_s = float(check_every_s)
            self.session: str | None = None
            self._next_check = 0.0
            self._warned = False

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self._next_check = 0.0  # the first batch checks: a stop may predate training
            try:
                self.session = session_of(storage.read_json(output_url))
            except Exception:  # noqa: BLE001 - no job around this fit: any marker counts
                self.session = None

        def _check(self) -> None:
            clock = time.monotonic()
            if clock < self._next_check:
                return
            self._next_check = clock + self.check_every_s
            try:
                requested = stop_requested(self.bucket_url, self.session)
            except Exception as exc:  # noqa: BLE001 - a storage hiccup must not end training
                if not self._warned:
                    log.warning("cannot check for a stop request in %s: %s", self.bucket_url, exc)
                    self._warned = True
                return
            if requested:
                self.model.stop_training = True
                raise StopRequested(
                    f"stop requested for job bucket {self.bucket_url} ({STOP_MARKER})"
                )

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            raise_if_signalled()  # Ctrl-C or SIGTERM that TensorFlow swallowed
            self._check()

    return StopCallback()


# -- reading the job root -------------------------------------------------------------------
@dataclass
class JobRecord:
    """One job folder of a root: its output.json (None if unreadable) and registry state."""

    id: str
    bucket: str
    output: dict[str, Any] | None
    registry: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    heartbeat: dict[str, Any] | None = None

    @property
    def job(self) -> dict[str, Any]:
        return (self.output or {}).get("job") or {}

    @property
    def status(self) -> str:
        status = str(self.job.get("status") or UNKNOWN) if self.output else UNKNOWN
        if status == JobStatus.RUNNING and is_stale(self.heartbeat, session=session_of(
                self.output or {})):  # fmt: skip
            return LOST
        return status

    @property
    def archived(self) -> bool:
        return bool(self.registry.get("archived"))

    @property
    def pipeline(self) -> str:
        return self.job.get("pipeline") or ""

    @property
    def config(self) -> dict[str, Any]:
        return (self.output or {}).get("config") or {}

    @property
    def key_metric(self) -> tuple[str | None, float | None]:
        """The pipeline's key metric (``pipeline.key_metric``) and its final value, if any."""
        output = self.output or {}
        name = (self.config.get("pipeline") or {}).get("key_metric") or (
            output.get("pipeline_template") or {}
        ).get("key_metric")
        value = (output.get("metrics") or {}).get(name) if name else None
        return name, value

    @property
    def duration_s(self) -> float | None:
        start, end = parse_time(self.job.get("start")), parse_time(self.job.get("end"))
        if start is None:
            return None
        if end is None:
            if self.status != JobStatus.RUNNING:
                return None
            end = dt.datetime.now(dt.timezone.utc)
        return max(0.0, (end - start).total_seconds())

    def stage_status(self, stage: dict[str, Any]) -> str:
        """A stage's status; one left ``running`` by a job that ended gets the job's status."""
        status = str(stage.get("status") or "pending")
        if status == "running" and self.status not in (JobStatus.RUNNING, UNKNOWN):
            return self.status
        return status

    def summary(self) -> dict[str, Any]:
        """The ``list`` row as plain data."""
        name, value = self.key_metric
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "name": self.job.get("name"),
            "status": self.status,
            "archived": self.archived,
            "start": self.job.get("start"),
            "end": self.job.get("end"),
            "duration_s": self.duration_s,
            "key_metric": {"name": name, "value": value},
            "bucket": self.bucket,
            **({"problem": self.problem} if self.problem else {}),
        }


def parse_time(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _storage_error(root: str, exc: Exception) -> JobRegistryError:
    return JobRegistryError(
        f"cannot read job root {root}: {type(exc).__name__}: {exc}; check --root and, for "
        "s3://, the AWS_* variables (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...)"
    )


def job_ids(root: str) -> list[str]:
    """The job folders of ``root`` (sorted); an error that names the root if it is missing."""
    root = storage.normalize(root)
    try:
        fs, path = storage.get_fs(root)
        fs.invalidate_cache(path)
        if not fs.isdir(path):
            raise JobRegistryError(
                f"job root {root} does not exist; pass --root URL (the job.root jobs ran "
                "with, e.g. --root s3://bucket/jobs) or run `brevpipe run` first"
            )
        entries = fs.ls(path, detail=True)
    except JobRegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, OS errors: one clear line
        raise _storage_error(root, exc) from exc
    names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")
    return sorted(n for n in names if n and not n.startswith((".", "_")))


def load_jobs(root: str, ids: Iterable[str] | None = None) -> list[JobRecord]:
    """Records of ``ids`` (default: every job of ``root``), reading all their output.json and
    registry.json files in one concurrent ``fs.cat`` (one request per file, in parallel on S3).
    """
    root = storage.normalize(root)
    ids = job_ids(root) if ids is None else list(ids)
    if not ids:
        return []
    fs, root_path = storage.get_fs(root)
    paths = {}
    for job_id in ids:
        paths[job_id] = (
            storage.join(root_path, job_id, "artifacts", "output.json"),
            storage.join(root_path, job_id, REGISTRY_FILE),
            storage.join(root_path, job_id, HEARTBEAT_FILE),
        )
    try:
        contents = fs.cat([p for pair in paths.values() for p in pair], on_error="return")
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(root, exc) from exc
    records = []
    for job_id, (output_path, registry_path, heartbeat_path) in paths.items():
        output, problem = _parse_json(
            contents.get(fs._strip_protocol(output_path)), "artifacts/output.json",
            missing="a job still starting, or not a job folder",
        )  # fmt: skip
        registry, _ = _parse_json(contents.get(fs._strip_protocol(registry_path)), REGISTRY_FILE)
        heartbeat, _ = _parse_json(contents.get(fs._strip_protocol(heartbeat_path)),
                                   HEARTBEAT_FILE)  # fmt: skip
        if output is not None and (wrong := shape_problem(output)):
            output, problem = None, f"artifacts/output.json is not a brevpipe output.json: {wrong}"
        records.append(JobRecord(job_id, storage.join(root, job_id), output, registry or {},
                                 problem, heartbeat))  # fmt: skip
    return records


# The fields that listing and statistics read, with the types a job writes (None allowed).
_OUTPUT_SHAPE: dict[str, tuple[type, ...]] = {
    "job": (dict,), "job.id": (str,), "job.name": (str,), "job.pipeline": (str,),
    "job.status": (str,), "job.start": (str,), "job.end": (str,), "metrics": (dict,),
    "config": (dict,), "config.pipeline": (dict,), "pipeline_template": (dict,),
    "stages": (dict,), "history": (list,),
}  # fmt: skip


def shape_problem(output: dict[str, Any]) -> str | None:
    """What is wrong with the types of an output.json's fields (None when nothing is): one
    malformed file makes its job ``unknown`` with this note, never breaks a listing."""
    for path, types in _OUTPUT_SHAPE.items():
        node: Any = output
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, types):
            return f"'{path}' is {type(node).__name__}, not {types[0].__name__}"
    if not isinstance(output.get("job"), dict):
        return "no 'job' object"
    if output["job"].get("status") not in (None, *STATUSES):
        return f"'job.status' {str(output['job']['status'])[:40]!r} is not a job status"
    metrics = output.get("metrics") or {}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
        return "'metrics' holds values that are not numbers"
    stages = output.get("stages") or {}
    if not all(isinstance(v, dict) for v in stages.values()):
        return "'stages' holds entries that are not objects"
    return None


def _parse_json(
    data: bytes | Exception | None, what: str, missing: str = ""
) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object read by ``fs.cat(..., on_error="return")``, or ``(None, problem)``."""
    if data is None or isinstance(data, FileNotFoundError):
        return None, f"no {what}" + (f" ({missing})" if missing else "")
    if isinstance(data, Exception):
        return None, f"cannot read {what}: {type(data).__name__}: {data}"
    try:
        parsed = json.loads(data)
    except RecursionError:
        return None, f"{what} is nested too deeply to be a job's file"
    except ValueError as exc:
        return None, f"{what} is not valid JSON ({exc})"
    if not isinstance(parsed, dict):
        return None, f"{what} is not a JSON object"
    return parsed, None


def resolve_id(root: str, job_id: str, ids: list[str] | None = None) -> str:
    """The job folder ``job_id`` names (a full id or a unique prefix), or an error that names
    the root and lists close ids."""
    root = storage.normalize(root)
    ids = job_ids(root) if ids is None else ids
    if job_id in ids:
        return job_id
    matches = [i for i in ids if i.startswith(job_id)] if job_id else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise JobRegistryError(
            f"'{job_id}' matches {len(matches)} jobs in {root}: {', '.join(matches[:5])}; "
            "give more characters of the id"
        )
    close = difflib.get_close_matches(job_id, ids, n=3, cutoff=0.6)
    by_prefix = {i[: len(job_id)]: i for i in ids}
    close += [by_prefix[p] for p in difflib.get_close_matches(job_id, list(by_prefix), n=3)]
    close = list(dict.fromkeys(close))[:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise JobRegistryError(
        f"no job '{job_id}' in {root}{hint} (`brevpipe jobs list --all --root {root}` lists "
        "the jobs there)"
    )


def get_job(root: str, job_id: str) -> JobRecord:
    """The record of one job (``job_id`` may be a unique prefix); it must have an output.json."""
    (record,) = load_jobs(root, [resolve_id(root, job_id)])
    if record.output is None:
        raise JobRegistryError(
            f"job {record.id} in {storage.normalize(root)} has no readable output.json "
            f"({record.problem}); look into {record.bucket} or remove the folder"
        )
    return record


def list_jobs(
    root: str,
    *,
    status: str | None = None,
    pipeline: str | None = None,
    include_archived: bool = False,
) -> list[JobRecord]:
    """Jobs of ``root``, newest first, filtered by status and pipeline; archived ones only
    with ``include_archived``."""
    records = [
        r
        for r in load_jobs(root)
        if (include_archived or not r.archived)
        and (status is None or r.status == status)
        and (pipeline is None or r.pipeline == pipeline)
    ]
    return sorted(records, key=lambda r: (r.job.get("start") or "", r.id), reverse=True)


# -- show and statistics --------------------------------------------------------------------
def dotted(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def artifact_files(bucket: str) -> list[dict[str, Any]]:
    """``artifacts/`` files of a bucket, ``{"path", "size"}`` relative to it (sorted)."""
    fs, path = storage.get_fs(storage.join(bucket, "artifacts"))
    fs.invalidate_cache(path)
    found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return [
        {"path": name[len(base):] if name.startswith(base) else name, "size": info.get("size")}
        for name, info in sorted(found.items())
        if ".tmp-" not in name
    ]  # fmt: skip


def describe(record: JobRecord) -> dict[str, Any]:
    """What ``show`` prints: config summary, metrics, stages, artifacts, MLflow run."""
    output = record.output or {}
    config = record.config
    params = {k: v for k in KEY_PARAMS if (v := dotted(config, k)) is not None}
    stages = [
        {
            "name": name,
            "status": record.stage_status(stage),
            "cached": stage.get("status") == "cached",
            "seconds": stage.get("seconds"),
        }
        for name, stage in (output.get("stages") or {}).items()
    ]
    name, value = record.key_metric
    return {
        **record.summary(),
        "error": record.job.get("error"),
        "config": {
            "choices": output.get("choices") or {},
            "seed": output.get("seed"),
            "key_metric": name,
            "params": params,
        },
        "metrics": output.get("metrics") or {},
        "stages": stages,
        "artifacts": artifact_files(record.bucket),
        "mlflow": output.get("mlflow") or {},
        "registry": record.registry,
        "stop_request": read_stop(record.bucket),
    }


def statistics(record: JobRecord) -> dict[str, Any]:
    """Progress of a running or finished job, from its output.json (rewritten by the runner
    at every stage end and every epoch) and its stages' ``stage.json`` markers."""
    output = record.output or {}
    history = output.get("history") or []
    epochs_total = dotted(record.config, "trainer.epochs")
    epochs_done = max((int(h.get("epoch", 0)) for h in history), default=0)
    recorded = output.get("stages") or {}
    declared = list(dotted(record.config, "pipeline.stages") or {}) or list(recorded)
    names = declared + [n for n in recorded if n not in declared]
    markers = _stage_markers(record.bucket, [n for n in names if n in recorded])
    stages = []
    for name in names:
        stage = recorded.get(name) or {}
        marker = (markers.get(name) or {}).get("recorded") or {}
        metrics = dict(marker.get("metrics") or {})
        if not metrics and marker.get("history"):
            metrics = {k: v for k, v in marker["history"][-1].items() if k != "epoch"}
        stages.append({
            "name": name, "status": record.stage_status(stage),
            "seconds": stage.get("seconds"), "metrics": metrics,
        })  # fmt: skip
    done = sum(s["status"] in DONE_STAGE_STATUSES for s in stages)
    latest = dict(history[-1]) if history else {}
    return {
        "id": record.id,
        "status": record.status,
        "pipeline": record.pipeline,
        "elapsed_s": record.duration_s,
        "epoch": epochs_done,
        "num_epochs": epochs_total,
        "epoch_progress": _percent(epochs_done, epochs_total),
        "stages_done": done,
        "stages_total": len(stages),
        "stage_progress": _percent(done, len(stages)),
        "latest_epoch": latest,
        "stages": stages,
        "metrics": output.get("metrics") or {},
    }


def _percent(done: int, total: Any) -> float | None:
    return round(100.0 * min(done, total) / total, 1) if isinstance(total, int) and total else None


def _stage_markers(bucket: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """The runner's ``stage.json`` markers of the given stages, read concurrently."""
    if not names:
        return {}
    fs, path = storage.get_fs(bucket)
    paths = {n: storage.join(path, "artifacts", "stages", n, "stage.json") for n in names}
    contents = fs.cat(list(paths.values()), on_error="return")
    markers = {}
    for name, stage_path in paths.items():
        parsed, _ = _parse_json(contents.get(fs._strip_protocol(stage_path)), "stage.json")
        if parsed is not None:
            markers[name] = parsed
    return markers


# -- stop, archive --------------------------------------------------------------------------
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
    storage.write_json(storage.join(record.bucket, "artifacts", "output.json"),
                       {**output, "job": job, "stages": stages})  # fmt: skip
    record.output = {**output, "job": job, "stages": stages}
    # if it was only slow (a beat held up), the stop request ends it for real
    request_stop(record.bucket, session_of(output))
    mlflow = output.get("mlflow") or {}
    if mlflow.get("tracking_uri") and mlflow.get("run_id"):
        try:
            _check_tracking_store(mlflow["tracking_uri"])
            from mlflow import MlflowClient

            MlflowClient(mlflow["tracking_uri"]).set_terminated(mlflow["run_id"], "KILLED")
        except Exception as exc:  # noqa: BLE001 - the bucket's copy is what counts
            log.warning("could not mark MLflow run %s KILLED: %s", mlflow["run_id"], exc)
    return reason


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
    storage.write_json(storage.join(record.bucket, REGISTRY_FILE), state)
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
    elif uri.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            pass


# -- console output -------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def format_time(text: str | None, short: bool = False) -> str:
    """Local time; ``short`` as ``ls -l`` does (``Nov 25 05:55``; the year if not this one)."""
    stamp = parse_time(text)
    if stamp is None:
        return "-"
    stamp = stamp.astimezone()
    if not short:
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    this_year = stamp.year == dt.datetime.now().year
    return stamp.strftime("%b %d %H:%M" if this_year else "%b %d  %Y")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def short_ids(ids: list[str]) -> dict[str, str]:
    """Id prefixes of at least ``SHORT_ID`` characters that tell the given ids apart."""
    unique, longest, length = len(set(ids)), max((len(i) for i in ids), default=0), SHORT_ID
    while length < longest and len({i[:length] for i in ids}) < unique:
        length += 2
    return {i: i[:length] for i in ids}


def _console() -> Any:
    """Rich console for tables; no markup, so that paths and errors print as they are."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped or logged: no terminal to fit, keep rows on one line
    return console


def _styled(*parts: str | tuple[str, str]) -> Any:
    from rich.text import Text

    return Text.assemble(*parts)


def _table(title: str | None, *columns: str, keep: dict[str, int] | None = None) -> Any:
    """A compact table; the ``keep`` columns (name -> width) are never wrapped or cut."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  padding=(0, 1, 0, 0), show_edge=False)  # fmt: skip
    keep = keep or {}
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in keep,
                         min_width=keep.get(column))  # fmt: skip
    return table


STATUS_STYLE = {"completed": "green", "failed": "red", "running": "cyan", "stopped": "yellow",
                UNKNOWN: "magenta"}  # fmt: skip


def print_list(records: list[JobRecord], root: str) -> None:
    console = _console()
    if not records:
        console.print(f"no jobs in {root} (add --all to include archived ones)")
        return
    short = short_ids([r.id for r in records])
    names = {r.key_metric[0] for r in records if r.output is not None}
    shared = names.pop() if len(names) == 1 else None  # one key metric: it heads the column
    # one key metric: it heads the value column; several: a column names each job's
    columns = ["id", "pipeline", "status", "start", "duration",
               *([shared] if shared else ["key metric", "value"])]  # fmt: skip
    table = _table(None, *columns, keep={"id": len(next(iter(short.values()))), "start": 12})
    for record in records:
        name, value = record.key_metric
        status = _styled((record.status, STATUS_STYLE.get(record.status, "")),
                         "*" if record.archived else "")  # fmt: skip
        metric = "-" if not name or value is None else format_value(value)
        named = [metric] if shared else [name or "-", metric]
        table.add_row(short[record.id], record.pipeline or "-", status,
                      format_time(record.job.get("start"), short=True),
                      format_duration(record.duration_s), *named)  # fmt: skip
    console.print(table)
    if any(r.archived for r in records):
        console.print("* archived (listed with --all only)", style="dim")
    for record in records:
        if record.problem:
            console.print(f"note: {short[record.id]}: {record.problem}", style="dim")


def print_show(info: dict[str, Any]) -> None:
    console = _console()
    console.print(_styled((f"job {info['id']}", "bold"), f"  {info['status']}",
                          "  (archived)" if info["archived"] else ""))  # fmt: skip
    lines = [
        ("pipeline", info["pipeline"]),
        ("bucket", info["bucket"]),
        ("start", format_time(info["start"])),
        ("end", format_time(info["end"])),
        ("duration", format_duration(info["duration_s"])),
        ("error", info.get("error")),
        ("stop request", _stop_text(info.get("stop_request"))),
    ]
    for label, value in lines:
        if value:
            console.print(f"  {label:<13} {value}")
    config = info["config"]
    table = _table("config", "key", "value")
    for group, choice in sorted(config["choices"].items()):
        table.add_row(group, str(choice))
    table.add_row("seed", format_value(config["seed"]))
    table.add_row("key_metric", format_value(config["key_metric"]))
    for key, value in config["params"].items():
        table.add_row(key, format_value(value))
    console.print(table)
    if info["metrics"]:
        table = _table("metrics", "name", "value")
        for name, value in sorted(info["metrics"].items()):
            table.add_row(name, format_value(value))
        console.print(table)
    if info["stages"]:
        table = _table("stages", "stage", "status", "cached", "seconds")
        for stage in info["stages"]:
            table.add_row(stage["name"], str(stage["status"]), "yes" if stage["cached"] else "",
                          format_value(stage["seconds"]))  # fmt: skip
        console.print(table)
    table = _table("artifacts", "path", "size")
    caches = [a for a in info["artifacts"] if a["path"].startswith("stages/")]
    for artifact in info["artifacts"]:
        if not artifact["path"].startswith("stages/"):
            table.add_row(artifact["path"], format_size(artifact["size"]))
    if caches:
        total = sum(a["size"] or 0 for a in caches)
        table.add_row(f"stages/ ({len(caches)} files: stage caches)", format_size(total))
    console.print(table)
    mlflow = info["mlflow"]
    if mlflow.get("run_id"):
        console.print(f"  mlflow: run {mlflow['run_id']} in '{mlflow.get('experiment')}' at "
                      f"{mlflow.get('tracking_uri')}")  # fmt: skip
    else:
        console.print("  mlflow: no run" + (f" ({mlflow['error']})" if "error" in mlflow else ""))


def _stop_text(marker: dict[str, Any] | None) -> str | None:
    if marker is None:
        return None
    return f"at {marker.get('requested', '?')} by {marker.get('by', '?')}"


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(size)


def print_statistics(stats: dict[str, Any]) -> None:
    console = _console()
    console.print(_styled((f"job {stats['id']}", "bold"), f"  {stats['status']}  elapsed "
                          f"{format_duration(stats['elapsed_s'])}"))  # fmt: skip
    epochs = stats["num_epochs"] if stats["num_epochs"] is not None else "?"
    console.print(f"  epochs  {stats['epoch']}/{epochs}"
                  + (f"  ({stats['epoch_progress']:.0f}%)"
                     if stats["epoch_progress"] is not None else ""))  # fmt: skip
    console.print(f"  stages  {stats['stages_done']}/{stats['stages_total']}"
                  + (f"  ({stats['stage_progress']:.0f}%)"
                     if stats["stage_progress"] is not None else ""))  # fmt: skip
    if stats["latest_epoch"]:
        latest = stats["latest_epoch"]
        values = "  ".join(f"{k} {format_value(v)}" for k, v in latest.items() if k != "epoch")
        console.print(f"  epoch {latest.get('epoch')}: {values}")
    table = _table("stages", "stage", "status", "seconds", "metrics")
    for stage in stats["stages"]:
        # Summary metrics only (``devel/accuracy``, not ``devel/f1/circle``); json has all.
        shown = {k: v for k, v in sorted(stage["metrics"].items()) if k.count("/") <= 1}
        metrics = ", ".join(f"{k} {format_value(v)}" for k, v in shown.items())
        if hidden := len(stage["metrics"]) - len(shown):
            metrics += f" (+{hidden} more: --format json)"
        table.add_row(stage["name"], str(stage["status"]), format_value(stage["seconds"]),
                      metrics or "-")  # fmt: skip
    console.print(table)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- command line ---------------------------------------------------------------------------
EPILOG = """\
examples:
  brevpipe jobs list                          jobs in ./jobs, newest first
  brevpipe jobs list --status running --root s3://bucket/jobs
  brevpipe jobs show <id>                     an id or a unique prefix of one
  brevpipe jobs statistics <id> --format json
  brevpipe jobs stop <id>                     ends as 'stopped' at the next training batch
  brevpipe jobs archive <id>                  hidden from list (--all shows it); MLflow run deleted
"""


def build_parser() -> argparse.ArgumentParser:
    """``brevpipe jobs`` with its subcommands; ``--root``/``--format`` go before or after."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        help=f"job root: a folder or fsspec URL (default {DEFAULT_ROOT})",
    )
    common.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                        help="output format (default table)")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="brevpipe jobs", parents=[common], epilog=EPILOG,
        description="The job registry: the jobs of a job root and their state.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="one row per job")
    listing.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    listing.add_argument("--pipeline", help="only jobs of this pipeline")
    listing.add_argument("--all", action="store_true", help="include archived jobs")
    for action, text in (
        ("show", "config summary, metrics, stages, artifacts, MLflow run"),
        ("stop", "ask a running job to stop (it ends as 'stopped')"),
        ("archive", "hide a job from list; delete its MLflow run"),
        ("unarchive", "show an archived job again; restore its MLflow run"),
        ("statistics", "progress: epochs and stages done, latest metrics"),
    ):
        sub = actions.add_parser(action, parents=[common], help=text)
        sub.add_argument("id", help="a job id or a unique prefix of one")
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe jobs ...``; exit code 0 ok, 1 error, 2 usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if not args.action:
        parser.print_help(sys.stderr)
        return 2
    root = storage.normalize(getattr(args, "root", None) or DEFAULT_ROOT)
    as_json = getattr(args, "format", "table") == "json"
    handler: Callable[[argparse.Namespace, str, bool], int] = HANDLERS[args.action]
    try:
        return handler(args, root, as_json)
    except BrevpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, root: str, as_json: bool) -> int:
    records = list_jobs(root, status=args.status, pipeline=args.pipeline,
                        include_archived=args.all)  # fmt: skip
    if as_json:
        print_json([r.summary() for r in records])
    else:
        print_list(records, root)
    return 0


def _show(args: argparse.Namespace, root: str, as_json: bool) -> int:
    info = describe(get_job(root, args.id))
    if as_json:
        print_json(info)
    else:
        print_show(info)
    return 0


def _statistics(args: argparse.Namespace, root: str, as_json: bool) -> int:
    stats = statistics(get_job(root, args.id))
    if as_json:
        print_json(stats)
    else:
        print_statistics(stats)
    return 0


def _stop(args: argparse.Namespace, root: str, as_json: bool) -> int:
    result = stop_job(root, args.id)
    if as_json:
        print_json(result)
    elif "settled" in result:
        print(f"job {result['id']} was lost (killed without a word); now marked 'stopped' "
              f"({result['settled']}); resume it with brevpipe run job.id={result['id']} ...")
    elif result["already"]:
        print(f"a stop of job {result['id']} was already requested at "
              f"{result.get('requested')} by {result.get('by')}; it ends as 'stopped' at its "
              "next training batch")  # fmt: skip
    else:
        marker = storage.join(result["bucket"], STOP_MARKER)
        print(f"stop requested for job {result['id']} ({marker}); it ends as 'stopped' at its "
              "next training batch")  # fmt: skip
    return 0


def _archive(args: argparse.Namespace, root: str, as_json: bool) -> int:
    result = set_archived(root, args.id, args.action == "archive")
    if result["warning"]:
        print(f"warning: {result['warning']}", file=sys.stderr)
    if as_json:
        print_json(result)
    else:
        print(f"job {result['id']} {args.action}d; {result['mlflow']}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, str, bool], int]] = {
    "list": _list, "show": _show, "statistics": _statistics, "stop": _stop,
    "archive": _archive, "unarchive": _archive,
}  # fmt: skip
