"""The job registry: the jobs of a job root, read for ``brevpipe jobs list|show|statistics``.

Everything is read from the job root (any fsspec URL): each job's ``artifacts/output.json``
(written by the job itself, never rewritten here), its heartbeat and ``registry.json``
(archived or not), in one concurrent read. :mod:`brevpipe.jobs.details` describes one
job; stopping and archiving are :mod:`brevpipe.integrations.lifecycle`.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from brevpipe.config.settings import DEFAULT_JOB_ROOT
from brevpipe.errors import BrevpipeError
from brevpipe.io import storage
from brevpipe.jobs import layout
from brevpipe.jobs.control import session_of
from brevpipe.jobs.job import LOST, UNKNOWN, JobStatus
from brevpipe.jobs.layout import JobBucket
from brevpipe.jobs.liveness import is_stale
from brevpipe.jobs.output_json import parse_json, shape_problem
from brevpipe.jobs.tags import tags_of

DEFAULT_ROOT = DEFAULT_JOB_ROOT
SHORT_ID = 8


class JobRegistryError(BrevpipeError):
    """The registry cannot do what was asked: unknown job, unreadable root, wrong state."""


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
    def mirror_pending(self) -> list[str]:
        """What the job's MLflow run lacks (``brevpipe jobs sync`` adds it); empty if nothing."""
        pending = ((self.output or {}).get("mlflow") or {}).get("pending")
        return [str(p) for p in pending] if isinstance(pending, list) else []

    @property
    def pipeline(self) -> str:
        return self.job.get("pipeline") or ""

    @property
    def tags(self) -> list[str]:
        return tags_of(self.output or {})

    @property
    def dataset_digest(self) -> str | None:
        """The digest of the data the job used (output.json's ``dataset.digest``), if any."""
        dataset = (self.output or {}).get("dataset")
        digest = dataset.get("digest") if isinstance(dataset, dict) else None
        return digest if isinstance(digest, str) else None

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
            "tags": self.tags,
            "dataset": self.dataset_digest,
            "bucket": self.bucket,
            **({"mlflow_pending": self.mirror_pending} if self.mirror_pending else {}),
            **({"problem": self.problem} if self.problem else {}),
        }


def parse_time(text: str | None) -> dt.datetime | None:
    """An ISO time; one without a time zone is taken as UTC (a record written elsewhere)."""
    try:
        parsed = dt.datetime.fromisoformat(text) if text else None
    except (ValueError, TypeError):
        return None
    return parsed.replace(tzinfo=dt.timezone.utc) if parsed and not parsed.tzinfo else parsed


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
    return sorted(n for n in names
                  if n and not n.startswith((".", "_")) and n not in layout.NOT_JOBS)  # fmt: skip


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
            JobBucket.of(root_path, job_id).output,
            JobBucket.of(root_path, job_id).registry,
            JobBucket.of(root_path, job_id).heartbeat,
        )
    try:
        contents = fs.cat([p for pair in paths.values() for p in pair], on_error="return")
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(root, exc) from exc
    records = []
    for job_id, (output_path, registry_path, heartbeat_path) in paths.items():
        output, problem = parse_json(
            contents.get(fs._strip_protocol(output_path)), "artifacts/output.json",
            missing="a job still starting, or not a job folder",
        )  # fmt: skip
        registry, _ = parse_json(contents.get(fs._strip_protocol(registry_path)), layout.REGISTRY)
        heartbeat, _ = parse_json(contents.get(fs._strip_protocol(heartbeat_path)),
                                   layout.HEARTBEAT)  # fmt: skip
        if output is not None and (wrong := shape_problem(output)):
            output, problem = None, f"artifacts/output.json is not a brevpipe output.json: {wrong}"
        records.append(JobRecord(job_id, JobBucket.of(root, job_id).url, output, registry or {},
                                 problem, heartbeat))  # fmt: skip
    return records


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
    tags: Iterable[str] = (),
    dataset: str | None = None,
) -> list[JobRecord]:
    """Jobs of ``root``, newest first, filtered by status, pipeline, tags (a job must carry
    each) and dataset digest (or a prefix of one); archived ones only with
    ``include_archived``."""
    wanted = set(tags)
    records = [
        r
        for r in load_jobs(root)
        if (include_archived or not r.archived)
        and (status is None or r.status == status)
        and (pipeline is None or r.pipeline == pipeline)
        and wanted <= set(r.tags)
        and (not dataset or (r.dataset_digest or "").startswith(dataset))
    ]
    return sorted(records, key=lambda r: (r.job.get("start") or "", r.id), reverse=True)
