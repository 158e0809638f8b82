"""Sweeps: a record per ``brevpipe run -m`` and, in MLflow, one parent run per sweep with one
nested child run per job.

A Hydra callback (configured in ``conf/config.yaml`` under ``hydra.callbacks``) writes the
sweep's record (its overrides, objective; with tracking, the MLflow parent run it opens) to the
job root, ``<job.root>/sweeps/<sweep id>.json``; ``brevpipe sweep list|show|resume`` read it.
A sweep started again with the same sweep folder (``brevpipe sweep resume``) finds its record
and keeps its parent run; its trials' job ids are its id and their numbers, so a completed
trial is reused and an interrupted one resumes from its checkpoint. Every job
reads it from there, whichever launcher runs the job and on whichever node (basic, joblib
workers, a Ray cluster): the job root is the one thing driver and jobs share, never the
driver's disk. The sweep id needs nothing from the driver either: each job computes it from
its own config (:func:`sweep_id`). When the multirun ends, the parent gets the summary
(:mod:`brevpipe.integrations.sweep_summary`): the best objective value and job, and a table
of the children as an artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from brevpipe.config.compose import redact_url
from brevpipe.engine import cluster
from brevpipe.errors import ConfigError
from brevpipe.integrations.mlflow_store import ensure_experiment, open_client
from brevpipe.integrations.search import check_search
from brevpipe.integrations.sweep_summary import summarize
from brevpipe.io import storage
from brevpipe.jobs import layout

log = logging.getLogger("brevpipe")


def sweep_id(cwd: str, sweep_dir: str) -> str:
    """The sweep's id, equal in the driver and in every job on any node: the sweep folder's
    name and a hash of (folder brevpipe started in, resolved sweep folder). Hydra resolves
    ``hydra.sweep.dir`` (``${now:...}``) once in the driver and gives each job's config that
    value; ``hydra.runtime.cwd`` is the driver's folder in every job."""
    digest = hashlib.sha256(json.dumps([str(cwd), str(sweep_dir)]).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(sweep_dir)).name).strip("-.")[:40]
    return f"{name}-{digest}" if name else digest


def job_root(root: str, cwd: str) -> str:
    """``job.root`` as a URL: a relative local path is taken from ``cwd`` (where brevpipe
    started, not where a launcher runs the job)."""
    if storage.is_local(root) and not Path(root.removeprefix("file://")).expanduser().is_absolute():
        root = str(Path(cwd) / root.removeprefix("file://"))
    return storage.normalize(root)


def record_url(config: DictConfig, hydra_cfg: Any) -> str:
    """Where the sweep's record lives: ``<job.root>/sweeps/<sweep id>.json``."""
    cwd = str(hydra_cfg.runtime.cwd)
    return layout.sweep_record(job_root(str(config.job.root), cwd),
                               sweep_id(cwd, str(hydra_cfg.sweep.dir)))  # fmt: skip


def use_storage_options(config: DictConfig) -> None:
    """The job's ``storage.options`` (an S3 endpoint...) before touching the job root."""
    node = config.get("storage")
    settings = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    assert isinstance(settings, dict)
    storage.configure(settings.get("options"), settings.get("timeout_s"))


def tracks_sweep(config: DictConfig) -> bool:
    """Tracking is on, and this process may open the sweep's parent run (:func:`writes_sweep`)."""
    return bool((config.get("tracking") or {}).get("enabled", False)) and writes_sweep(config)


def parent_run(config: DictConfig, hydra_cfg: Any) -> dict[str, Any] | None:
    """What a job of a sweep needs to nest its MLflow run (``{tracking_uri, run_id, ...}``),
    read from the job root; None, with a warning, when the record cannot be read."""
    if not tracks_sweep(config):
        return None
    url = record_url(config, hydra_cfg)
    try:
        use_storage_options(config)
        record = storage.read_json(url)
    except Exception as exc:  # noqa: BLE001 - the job runs anyway, its run not nested
        log.warning(
            "sweep record %s cannot be read (%s: %s): this job's MLflow run is not nested "
            "under the sweep's parent run", url, type(exc).__name__, exc,
        )  # fmt: skip
        return None
    record["overrides"] = redact_url(" ".join(hydra_cfg.overrides.task))
    return record


def writes_sweep(config: DictConfig) -> bool:
    """Whether this process keeps the sweep's record: not a worker other than the chief of a
    multi-worker job (each worker runs the same ``brevpipe run -m``)."""
    try:
        role = cluster.role_of(config)
    except ConfigError:
        return True
    return role is None or role.is_chief


def other_sweep(record: dict[str, Any], fresh: dict[str, Any]) -> str | None:
    """Why the sweep ``fresh`` describes is not the one of ``record`` (the same sweep folder,
    other overrides), or None: a record from before brevpipe kept overrides is anyone's."""
    keys = ("overrides", "cwd", "sweep_dir")
    if "overrides" not in record or [record.get(k) for k in keys] == [fresh[k] for k in keys]:
        return None
    return folder_taken(record, fresh["sweep_dir"])


def folder_taken(record: dict[str, Any], folder: str) -> str:
    return (f"the sweep folder {folder} already holds sweep {record.get('sweep_id')} with other "
            f"overrides ({' '.join(map(str, record.get('overrides') or []))[:200]}): give this "
            "sweep a folder of its own (hydra.sweep.dir=...), or resume that one (brevpipe "
            f"sweep resume {record.get('sweep_id')})")


def check_same_sweep(config: DictConfig, hydra_cfg: Any) -> None:
    """In a trial: refuse to run into another sweep's jobs (a sweep folder used again): this
    trial's overrides must be one combination of the record's."""
    url = record_url(config, hydra_cfg)
    try:
        record = storage.read_json(url) if storage.exists(url) else None
    except Exception:  # noqa: BLE001 - no record to compare with: the trial runs
        return
    if not isinstance(record, dict) or not isinstance(record.get("overrides"), list):
        return
    swept = _values(record["overrides"])
    task = [redact_url(str(o)) for o in hydra_cfg.overrides.task]  # as the record keeps them
    trial = {key: values[0] for key, values in _values(task).items()}
    if any(key not in trial or trial[key] not in values for key, values in swept.items()):
        raise ConfigError(folder_taken(record, str(hydra_cfg.sweep.dir)))


def _values(overrides: Any) -> dict[str, list[str]]:
    """``{key: the values it takes}`` of Hydra overrides (a sweep's: several)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = {}
    for override in OverridesParser.create().parse_overrides([str(o) for o in overrides]):
        if override.is_interval_sweep():  # any value in it: nothing to enumerate
            continue
        key = override.get_key_element()
        found[key] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                      else [override.get_value_element_as_str()])  # fmt: skip
    return found


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_record(config: DictConfig, hydra_cfg: Any, url: str) -> dict[str, Any]:
    """A sweep's record: what ``brevpipe sweep list|show|resume`` read, and (with tracking) its
    MLflow parent run. ``overrides`` and ``hydra_overrides`` rerun the same sweep."""
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra
                       if not str(o).startswith("hydra.sweep.dir=")]  # fmt: skip
    return {
        "sweep_id": url.rsplit("/", 1)[-1].removesuffix(".json"),
        "record_url": url,
        "objective": str(config.sweep.objective),
        "direction": str(config.sweep.direction),
        "register": config.tracking.get("register"),
        "sweep_dir": str(hydra_cfg.sweep.dir),
        "cwd": str(hydra_cfg.runtime.cwd),
        "overrides": [redact_url(str(o)) for o in hydra_cfg.overrides.task],
        "hydra_overrides": [str(o) for o in hydra_overrides],
        "sweeper": str((hydra_cfg.get("sweeper") or {}).get("_target_") or ""),
        "created": _now(),
    }


class MlflowSweepCallback(Callback):
    """Writes the sweep's record (``<job root>/sweeps/<id>.json``) and opens and summarises its
    MLflow parent run (``tracking=none``: the record only). A sweep whose record exists is one
    resumed (``brevpipe sweep resume``): it keeps its record and its parent run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        try:  # in every process that runs the sweep (each worker of a multi-worker one)
            check_search(config, hydra_cfg)
        except ConfigError as exc:  # before any trial: Hydra catches only Exception here
            log.error("error: %s", exc)
            raise SystemExit(1) from None
        if not writes_sweep(config):
            return
        url = record_url(config, hydra_cfg)
        try:
            use_storage_options(config)
            record = storage.read_json(url) if storage.exists(url) else None
        except Exception as exc:  # noqa: BLE001 - an unreadable record: a new one replaces it
            log.warning("sweep record %s cannot be read (%s): writing a new one", url, exc)
            record = None
        fresh = new_record(config, hydra_cfg, url)
        if record is None:
            record = fresh
        elif (problem := other_sweep(record, fresh)) is not None:
            log.error("error: %s", problem)
            raise SystemExit(1)  # before any trial (Hydra catches only Exception here)
        else:
            record["resumed"] = [*record.get("resumed", []), _now()]
            record.pop("ended", None)
            log.info("sweep %s resumed: its completed trials are reused", record["sweep_id"])
        record["running"] = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        if tracks_sweep(config):
            _open_parent_run(record, config, hydra_cfg, url)
        try:
            storage.write_json(url, record)
        except Exception as exc:  # noqa: BLE001 - the jobs will warn that they are not nested
            log.warning("cannot write the sweep record %s: %s", url, exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not writes_sweep(config):
            return
        url = record_url(config, config.hydra)
        try:
            use_storage_options(config)
            if not storage.exists(url):  # the start warned
                return
            record = storage.read_json(url)
            if tracks_sweep(config) and record.get("run_id"):
                summarize(record)
            record.pop("running", None)
            storage.write_json(url, {**record, "ended": _now()})
        except Exception as exc:  # noqa: BLE001
            log.warning("could not summarise the sweep: %s", exc)


def _open_parent_run(record: dict[str, Any], config: DictConfig, hydra_cfg: Any,
                     url: str) -> None:  # fmt: skip
    """The sweep's MLflow parent run into ``record``: the one it has (a resumed sweep, marked
    running again), else a new one."""
    from brevpipe.integrations.tracking import tracking_uri_for

    root = job_root(str(config.job.root), str(hydra_cfg.runtime.cwd))
    uri = tracking_uri_for(config.tracking.get("uri"), root)
    try:
        client = open_client(uri)
        if record.get("run_id") and record.get("tracking_uri") == uri:
            client.update_run(str(record["run_id"]), status="RUNNING")
            return
        experiment_id = ensure_experiment(client, config.tracking.get("experiment")
                                          or config.pipeline.name, uri)  # fmt: skip
        run = client.create_run(
            experiment_id,
            run_name=f"sweep-{Path(str(hydra_cfg.sweep.dir)).name}",
            tags={"brevpipe.sweep": "true", "brevpipe.pipeline": str(config.pipeline.name),
                  "brevpipe.sweep_overrides": redact_url(" ".join(hydra_cfg.overrides.task)),
                  "brevpipe.sweep_record": url},
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the sweep goes on without its parent run
        log.warning("MLflow parent run for the sweep failed at %s: %s", uri, exc)
        return
    record.update({"tracking_uri": uri, "experiment_id": experiment_id,
                   "run_id": run.info.run_id})  # fmt: skip
    log.info("sweep: MLflow parent run %s (%s), record %s", run.info.run_id, uri, url)
