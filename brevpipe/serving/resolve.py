"""Which exported model a name means: an archive URL, a job bucket, a job id or an MLflow URI.

MODEL is an exported archive URL (``.../artifacts/model/saved_model.tar.gz``), a job bucket URL,
a job id (under a job root) or an MLflow model URI (``runs:/<run_id>/mlflow_model``,
``models:/<name>/<version>``, ``models:/<name>@<alias>``). Job-bucket paths come from
:class:`~brevpipe.jobs.layout.JobBucket`; TensorFlow and MLflow are imported only when needed.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from brevpipe.config.settings import DEFAULT_JOB_ROOT
from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.jobs.layout import MODEL_ARCHIVE, JobBucket, default_tracking_uri
from brevpipe.jobs.liveness import temp_prefix

if TYPE_CHECKING:
    from brevpipe.serving.predictor import Predictor

ARCHIVE = "artifacts/model/saved_model.tar.gz"  # inside a job bucket: for messages only
RUN_ARCHIVE = "model/saved_model.tar.gz"  # inside an MLflow run's artifacts (tracking.py)
BUCKET_TAG = "brevpipe.bucket"  # the MLflow run tag naming the job bucket (tracking.py)

MODEL_HELP = (
    "give an archive URL (.../artifacts/model/saved_model.tar.gz), a job bucket URL, a job id "
    "under --job-root, or an MLflow model URI (runs:/<run_id>/mlflow_model, models:/<name>/<v>)"
)


def resolve_model(
    model: str, job_root: str = DEFAULT_JOB_ROOT, tracking_uri: str | None = None
) -> Predictor:
    """The :class:`Predictor` for MODEL (archive URL, job bucket, job id or MLflow URI); its
    ``source`` says which model that was (for a registered model: its name and version)."""
    from brevpipe.serving.predictor import load_predictor

    source: dict[str, Any] = {"model": model}
    if model.startswith(("runs:/", "models:/")):
        source.update(registered_version(model, job_root, tracking_uri))
        model = f"runs:/{source['run_id']}/mlflow_model"  # the version looked up, once
    archive = model_archive_url(model, job_root, tracking_uri)
    expected = source.pop("archive_sha256", None)
    if expected and hashlib.sha256(storage.read_bytes(archive)).hexdigest() != expected:
        raise ConfigError(f"{source['model']}: the archive at {archive} is not the one version "
                          f"{source.get('version')} was registered with (its job was run again "
                          "in place?); register that job again, or give another version.")
    predictor = load_predictor(archive)
    predictor.source = source
    return predictor


def registered_version(
    uri: str, job_root: str = DEFAULT_JOB_ROOT, tracking_uri: str | None = None
) -> dict[str, Any]:
    """``{run_id}`` of an MLflow model URI, with ``name`` and ``version`` (and ``alias``) for a
    registered model: the version an alias or ``latest`` means now."""
    kind, name, ref = parse_mlflow_uri(uri)
    client, store = _client(job_root, tracking_uri)
    if kind == "run":
        return {"run_id": name}
    version = _version_of(client, uri, store)
    if not version.run_id:
        raise ConfigError(f"{uri} was not registered from an MLflow run: give the archive URL.")
    found = {"run_id": version.run_id, "name": name, "version": int(version.version)}
    if archive := (version.tags or {}).get("brevpipe.archive_sha256"):
        found["archive_sha256"] = str(archive)
    return {**found, "alias": ref} if kind == "alias" else found


def _client(job_root: str, tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow import MlflowClient

    store = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
             or default_tracking_uri(storage.normalize(job_root)))  # fmt: skip
    return MlflowClient(tracking_uri=store, registry_uri=store), store


def model_archive_url(
    model: str, job_root: str = DEFAULT_JOB_ROOT, tracking_uri: str | None = None
) -> str:
    """The URL (or local path) of the ``saved_model.tar.gz`` that MODEL names.

    An MLflow URI leads to its run; the run's ``brevpipe.bucket`` tag to the job bucket and its
    archive. When that bucket is gone or unreachable, the copy of the archive that brevpipe
    logged into the run's artifacts (``model/saved_model.tar.gz``) is downloaded instead.
    """
    if model.startswith(("runs:/", "models:/")):
        return _archive_from_mlflow(model, job_root, tracking_uri)
    if model.endswith(".tar.gz"):
        return storage.normalize(model)
    location = storage.normalize(model)
    # a job bucket, or the model folder itself
    candidates = (JobBucket(location).model_archive, storage.join(location, MODEL_ARCHIVE))
    for candidate in candidates:
        if _exists(candidate):
            return candidate
    if "/" not in model and "://" not in model:  # a job id (or a unique prefix of one)
        return _archive_of_job_id(model, storage.normalize(job_root))
    raise ConfigError(f"{model} holds no exported model (no {ARCHIVE}): {MODEL_HELP}.")


def _exists(url: str) -> bool:
    try:
        return storage.exists(url)
    except Exception:  # noqa: BLE001 - an unreachable store means "not there" here
        return False


def _job_ids_like(job_id: str, root: str) -> list[str]:
    """``[job_id]`` if that job exists under ``root``, else the job ids it is a prefix of."""
    if _exists(JobBucket.of(root, job_id).url):
        return [job_id]
    try:
        fs, path = storage.get_fs(root)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except Exception:  # noqa: BLE001
        names = []
    return sorted(n for n in names if n.startswith(job_id))


def _archive_of_job_id(job_id: str, root: str) -> str:
    matches = _job_ids_like(job_id, root)
    if not matches:
        raise ConfigError(f"no job {job_id!r} under {root} (see brevpipe jobs list --root "
                          f"{root}); pass --job-root, or {MODEL_HELP}.")  # fmt: skip
    if len(matches) > 1:
        raise ConfigError(f"job id {job_id!r} is ambiguous under {root}: "
                          f"{', '.join(matches[:5])}; give more characters.")  # fmt: skip
    bucket = JobBucket.of(root, matches[0])
    archive = bucket.model_archive
    if not _exists(archive):
        status = "unknown"
        with contextlib.suppress(Exception):
            status = storage.read_json(bucket.output)["job"]["status"]
        raise ConfigError(f"job {matches[0]} (status {status}) has no exported model at "
                          f"{archive}: it did not reach the export stage; run it to the end "
                          "(brevpipe run job.id=<id> ...) or pick another job.")  # fmt: skip
    return archive


def _archive_from_mlflow(uri: str, job_root: str, tracking_uri: str | None) -> str:
    parse_mlflow_uri(uri)  # a malformed URI fails before MLflow is imported
    client, tracking_uri = _client(job_root, tracking_uri)
    run_id = _run_id_of(client, uri, tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{uri}: MLflow run {run_id} not found in {tracking_uri} "
                          f"({type(exc).__name__}); pass --tracking-uri.") from None  # fmt: skip
    bucket = run.data.tags.get(BUCKET_TAG)
    if bucket and _exists(JobBucket(bucket).model_archive):
        return JobBucket(bucket).model_archive
    return _download_run_archive(uri, run_id, bucket, tracking_uri)


def _download_run_archive(uri: str, run_id: str, bucket: str | None, tracking_uri: str) -> str:
    """The copy of the archive in the run's artifacts, downloaded to a temporary folder that
    goes when the process ends."""

    import mlflow.artifacts

    download = tempfile.mkdtemp(prefix=temp_prefix("mlflow"))
    atexit.register(shutil.rmtree, download, ignore_errors=True)
    try:
        return mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=RUN_ARCHIVE, tracking_uri=tracking_uri,
            dst_path=download,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        where = (f"its job bucket {bucket} has no {ARCHIVE}" if bucket
                 else f"it has no {BUCKET_TAG} tag")  # fmt: skip
        raise ConfigError(f"{uri}: MLflow run {run_id} is not a usable brevpipe job: {where} and "
                          f"its artifacts hold no {RUN_ARCHIVE} ({type(exc).__name__}); give the "
                          "archive URL instead.") from None  # fmt: skip


def parse_mlflow_uri(uri: str) -> tuple[str, str, str]:
    """``("run", run_id, "")``, ``("version", name, number|"latest")`` or ``("alias", name,
    alias)``; checked before MLflow is imported."""
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").strip("/").split("/", 1)[0]
        if not run_id:
            raise ConfigError(f"{uri}: write runs:/<run_id>/mlflow_model.")
        return "run", run_id, ""
    rest = uri.removeprefix("models:/").strip("/")
    if any(c in rest for c in "'\"`\\") or not rest.isprintable():
        raise ConfigError(f"{uri!r}: a model name has no quotes, backslashes or control "
                          "characters.")  # fmt: skip
    name, _, alias = rest.partition("@")
    if name and alias:
        return "alias", name, alias
    name, _, number = rest.partition("/")
    if name and (number == "latest" or number.isdigit()):
        return "version", name, number
    raise ConfigError(f"{uri}: use models:/<name>/<version>, models:/<name>/latest or "
                      "models:/<name>@<alias> (stages are not supported).")  # fmt: skip


def _run_id_of(client: Any, uri: str, tracking_uri: str) -> str:
    """The run id of ``runs:/<id>/...`` or of a registered model version ``models:/...``."""
    kind, name, _ = parse_mlflow_uri(uri)
    if kind == "run":
        return name
    version = _version_of(client, uri, tracking_uri)
    if not version.run_id:
        raise ConfigError(f"{uri} was not registered from an MLflow run: give the archive URL.")
    return version.run_id


def _version_of(client: Any, uri: str, tracking_uri: str) -> Any:
    """The registered model version ``models:/<name>/<version|latest>`` or ``@alias`` means."""
    kind, name, ref = parse_mlflow_uri(uri)
    try:
        if kind == "alias":
            version = client.get_model_version_by_alias(name, ref)
        elif ref == "latest":
            found = client.search_model_versions(f"name='{name}'")
            if not found:
                raise LookupError(f"no versions of {name}")
            version = max(found, key=lambda v: int(v.version))
        else:
            version = client.get_model_version(name, ref)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{uri}: no such registered model version in {tracking_uri} ("
                          f"{type(exc).__name__}); pass --tracking-uri or check the name "
                          "(brevpipe models show NAME).") from None  # fmt: skip
    return version
