"""Registered models in MLflow's model registry: registering a job's model, promoting a version
behind a gate, and the promotion log.

A job with ``tracking.register=<name>`` registers its image-in MLflow model (``mlflow_model``)
as a new version of ``<name>`` when it completes, tagged with its job id, config hash, dataset
digest, key metric and tags, and moves the alias ``candidate`` to it. Promotion moves another
alias (``champion``) after a gate; each promotion is appended to the registered model's log,
one registered-model tag per promotion (``brevpipe.promotion.00001``, JSON), so the log needs
no read-modify-write of one value. Aliases, not stages (MLflow deprecated stages).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import operator
import re
import secrets
from dataclasses import dataclass
from typing import Any

from brevpipe.config.compose import stable_hash
from brevpipe.errors import BrevpipeError
from brevpipe.integrations import mlflow_store
from brevpipe.jobs.tags import tags_of

CANDIDATE = "candidate"
MODEL_PATHS = ("mlflow_model", "mlflow_model_arrays")  # serving.mlflow_model's IMAGES, ARRAYS
PROMOTION_TAG = "brevpipe.promotion."
ARCHIVE_TAG = "brevpipe.archive_sha256"  # the exported archive a version stands for
TEST_REPORT_TAG = "brevpipe.test_report."
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
GATE = re.compile(r"\s*([A-Za-z0-9_./-]+)\s*(>=|<=|==|>|<)\s*(-?[0-9.eE+-]+)\s*")
OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt,
             "<": operator.lt}  # fmt: skip


class RegistryError(BrevpipeError):
    """A registry operation that cannot be done as asked (one line: what and the fix)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(f"{str(name)[:80]!r} is not a model name: 1 to 128 letters, digits, "
                            "'_', '.' or '-'.")  # fmt: skip
    return name


def check_alias(alias: str) -> str:
    if not ALIAS.fullmatch(alias or "") or alias.lower() in ("latest",) or alias[:1] == "v" \
            and alias[1:].isdigit():  # fmt: skip
        raise RegistryError(f"{alias!r} is not an alias: a letter or '_', then letters, digits, "
                            "'_' or '-' (not 'latest' nor v<number>).")  # fmt: skip
    return alias


def open_registry(uri: str) -> Any:
    """A client of the registry at ``uri``; one clear line when it cannot be one."""
    if uri.startswith("file:") or "://" not in uri:
        raise RegistryError(f"the tracking store {uri} is a file store, which has no model "
                            "registry: use a database (--tracking-uri sqlite:///mlflow.db, the "
                            "default) or an mlflow server (http://host:5000).")  # fmt: skip
    try:
        mlflow_store.reachable(uri)
    except OSError as exc:
        raise RegistryError(f"the model registry at {uri} does not answer ({exc}): start the "
                            "server or pass --tracking-uri.") from None  # fmt: skip
    return mlflow_store.open_client(uri)


def _metric_direction(name: str) -> int:
    """+1 when a larger value is better, -1 for losses and errors."""
    return -1 if re.search(r"loss|error|mse|mae", name) else 1


def version_tags(output: dict[str, Any]) -> dict[str, str]:
    """A registered version's tags from its job's output.json."""
    job = output.get("job") or {}
    config = output.get("config") or {}
    key = str((config.get("pipeline") or {}).get("key_metric") or "")
    value = (output.get("metrics") or {}).get(key)
    tags = {"brevpipe.job_id": str(job.get("id")), "brevpipe.bucket": str(job.get("bucket")),
            "brevpipe.config_hash": stable_hash(config),
            "brevpipe.dataset": str((output.get("dataset") or {}).get("digest") or ""),
            "brevpipe.key_metric": key}  # fmt: skip
    if isinstance(value, int | float):
        tags["brevpipe.key_metric_value"] = repr(float(value))
    if job_tags := tags_of(output):
        tags["brevpipe.tags"] = ",".join(job_tags)
    if archive := (output.get("model") or {}).get("archive_sha256"):
        tags[ARCHIVE_TAG] = str(archive)
    return tags


def model_path(output: dict[str, Any]) -> str:
    """The run's model to register: the image-in one (a segmentation model has only arrays)."""
    recorded = str((output.get("mlflow") or {}).get("model_uri") or "").rsplit("/", 1)[-1]
    return recorded if recorded in MODEL_PATHS else MODEL_PATHS[0]


def register_run(client: Any, name: str, run_id: str, output: dict[str, Any]) -> dict[str, Any]:
    """Register the run's model (:func:`model_path`) as a version of ``name`` and move
    ``candidate`` to it. Once per job and exported archive: a second call returns the version
    the first made and moves no alias."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    job_id = str((output.get("job") or {}).get("id"))
    archive = str((output.get("model") or {}).get("archive_sha256") or "")
    path = model_path(output)
    if not archive or not mlflow_store.retrying(client.list_artifacts, run_id, path):
        raise RegistryError(f"job {job_id} has no exported model in its MLflow run ({path}): "
                            "only a job that ran its export stage registers a model.")
    existing = [v for v in mlflow_store.retrying(client.search_model_versions,
                                                 f"run_id='{check_id(run_id)}'")  # fmt: skip
                if v.name == name and (v.tags or {}).get("brevpipe.job_id") == job_id
                and (v.tags or {}).get(ARCHIVE_TAG) == archive]
    if existing:
        version = min(existing, key=lambda v: int(v.version))
        return {"name": name, "version": int(version.version), "alias": CANDIDATE,
                "uri": f"models:/{name}/{version.version}"}  # fmt: skip
    try:
        mlflow_store.retrying(client.create_registered_model, name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = mlflow_store.retrying(client.get_run, run_id)
    version = mlflow_store.retrying(
        client.create_model_version, name, f"{run.info.artifact_uri}/{path}", run_id=run_id,
        tags=version_tags(output), description=f"brevpipe job {job_id}",
    )  # fmt: skip
    mlflow_store.retrying(client.set_registered_model_alias, name, CANDIDATE, version.version)
    return {"name": name, "version": int(version.version), "alias": CANDIDATE,
            "uri": f"models:/{name}/{version.version}"}  # fmt: skip


def check_id(run_id: str) -> str:
    """An MLflow run id, safe inside a filter string."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(run_id)):
        raise RegistryError(f"{str(run_id)[:80]!r} is not an MLflow run id.")
    return run_id


def get_model(client: Any, name: str) -> Any:
    """Registered model ``name``; a :class:`RegistryError` when there is none."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    try:
        return mlflow_store.retrying(client.get_registered_model, name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r}: brevpipe models list shows those "
                            "there are.") from None  # fmt: skip


def find_version(client: Any, name: str, ref: str | None) -> Any:
    """Version ``ref`` (a number, ``@alias``, or None for ``@candidate``) of model ``name``."""
    from mlflow.exceptions import MlflowException

    model = get_model(client, name)
    ref = ref or f"@{CANDIDATE}"
    try:
        if ref.startswith("@"):
            return mlflow_store.retrying(client.get_model_version_by_alias, name, ref[1:])
        if not ref.isdigit():
            raise RegistryError(f"{ref!r}: give a version number or @alias.")
        return mlflow_store.retrying(client.get_model_version, name, ref)
    except MlflowException:
        held = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
        raise RegistryError(f"model {name!r} has no version {ref} (aliases: {held}); brevpipe "
                            f"models show {name} lists its versions.") from None  # fmt: skip


def version_metrics(client: Any, version: Any) -> dict[str, float]:
    """The final metrics of the run a version was registered from."""
    if not version.run_id:
        return {}
    return dict(mlflow_store.retrying(client.get_run, version.run_id).data.metrics)


@dataclass
class Gate:
    """``metric op threshold``, such as ``devel/accuracy>=0.95``."""

    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = GATE.fullmatch(text)
        if not match:
            raise RegistryError(f"--require {text!r}: write METRIC>=NUMBER (or >, <=, <, ==), "
                                "such as devel/accuracy>=0.95.")  # fmt: skip
        try:
            return cls(match[1], match[2], float(match[3]))
        except ValueError:
            raise RegistryError(f"--require {text!r}: {match[3]!r} is not a number.") from None

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def promote(
    client: Any, name: str, ref: str | None, alias: str, require: list[Gate],
    than: str | None = None, by: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Move ``alias`` to version ``ref`` if every gate passes, and log the promotion; a
    :class:`RegistryError` naming the failed gate otherwise (nothing moved)."""
    check_alias(alias)
    version = find_version(client, name, ref)
    metrics = version_metrics(client, version)
    checked = []
    for gate in require:
        if gate.metric not in metrics:
            raise RegistryError(f"refused: version {version.version} has no metric "
                                f"{gate.metric!r} (it has {', '.join(sorted(metrics)) or 'none'})"
                                f"; alias {alias} not moved.")  # fmt: skip
        value = metrics[gate.metric]
        if not OPERATORS[gate.op](value, gate.threshold):
            raise RegistryError(f"refused: version {version.version} has {gate.metric} "
                                f"{value:.4g}, the gate is {gate}; alias {alias} not moved.")
        checked.append({"gate": str(gate), "value": value})
    previous = get_model(client, name).aliases.get(alias)
    if than:
        checked.append(_beats(client, name, version, metrics, than, alias))
    if previous is not None and int(previous) == int(version.version):
        return {"name": name, "alias": alias, "version": int(version.version), "moved": False,
                "from": int(previous), "gates": checked}  # fmt: skip
    record = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "by": by or _user(), "alias": alias,
        "from": int(previous) if previous is not None else None, "to": int(version.version),
        "metrics": {k: metrics[k] for k in sorted(metrics)
                    if k == (version.tags or {}).get("brevpipe.key_metric")
                    or any(k == g.metric for g in require)},
        "gates": checked,
    }  # fmt: skip
    # the log entry first, under a key no other promotion takes (time-ordered), then the alias:
    # a failure to move it takes the entry back; nothing is half-moved
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
    key = f"{PROMOTION_TAG}{stamp}-{secrets.token_hex(3)}"
    mlflow_store.retrying(client.set_registered_model_tag, name, key, json.dumps(record))
    try:
        mlflow_store.retrying(client.set_registered_model_alias, name, alias, version.version)
    except Exception:
        mlflow_store.retrying(client.delete_registered_model_tag, name, key)
        raise
    return {"name": name, "moved": True, "version": int(version.version), **record}


def _beats(client: Any, name: str, version: Any, metrics: dict[str, float], than: str,
           alias: str) -> dict[str, Any]:  # fmt: skip
    """The ``--than ALIAS`` gate: the version's key metric is better than the one that alias
    holds (a first promotion passes)."""
    check_alias(than.removeprefix("@"))
    held = client.get_registered_model(name).aliases.get(than.removeprefix("@"))
    key = (version.tags or {}).get("brevpipe.key_metric") or ""
    if held is None:
        return {"gate": f"better than @{than}", "value": None, "note": f"@{than} holds no version"}
    other = version_metrics(client, client.get_model_version(name, held))
    if key not in metrics or key not in other:
        raise RegistryError(f"refused: the key metric {key or '?'} is missing from version "
                            f"{version.version} or version {held} (@{than}); alias {alias} not "
                            "moved.")  # fmt: skip
    better = (metrics[key] - other[key]) * _metric_direction(key) > 0
    if not better:
        raise RegistryError(f"refused: version {version.version} has {key} {metrics[key]:.4g}, "
                            f"not better than version {held} (@{than}) with {other[key]:.4g}; "
                            f"alias {alias} not moved.")  # fmt: skip
    return {"gate": f"better than @{than}", "value": metrics[key], "than": other[key]}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "unknown"


def promotions(model: Any) -> list[dict[str, Any]]:
    """A registered model's promotion log, oldest first (unreadable entries left out)."""
    log = []
    for key in sorted(k for k in model.tags if k.startswith(PROMOTION_TAG)):
        try:
            entry = json.loads(model.tags[key])
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            log.append(entry)
    return log


def test_reports(version: Any) -> list[dict[str, Any]]:
    """The test reports linked to a version (:func:`link_test_report`), oldest first."""
    reports = []
    for key in sorted(k for k in (version.tags or {}) if k.startswith(TEST_REPORT_TAG)):
        try:
            entry = json.loads(version.tags[key])
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            reports.append(entry)
    return sorted(reports, key=lambda r: str(r.get("at") or ""))


def link_test_report(client: Any, name: str, number: int, output: dict[str, Any],
                     run_id: str | None) -> None:  # fmt: skip
    """Tag version ``number`` of ``name`` with a test job's key metrics and MLflow run."""
    job = output.get("job") or {}
    metrics = {k: v for k, v in (output.get("metrics") or {}).items()
               if isinstance(v, int | float) and "/" in k}  # fmt: skip
    entry = {"job_id": job.get("id"), "run_id": run_id, "at": job.get("end"),
             "dataset": (output.get("dataset") or {}).get("digest"),
             "source": (output.get("dataset") or {}).get("source"),
             "tags": tags_of(output), "metrics": metrics}  # fmt: skip
    mlflow_store.retrying(client.set_model_version_tag, name, str(number),
                          f"{TEST_REPORT_TAG}{job.get('id')}", json.dumps(entry))  # fmt: skip
