"""What each dashboard page shows, as plain data for its template, read from job records.

Records come from buckets that others may write: anything of an unexpected type is left out
with a note (``unknown``), never trusted; templates escape every value.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from brevpipe.config.compose import flatten, redact
from brevpipe.jobs.compare import number, shown
from brevpipe.jobs.records import JobRecord
from brevpipe.ui.index import Listed

PAGE_SIZE = 50
SORTS = ("start", "duration", "metric", "status", "pipeline", "name")


def sweep_of(record: JobRecord) -> dict[str, Any] | None:
    """The sweep a job is a trial of (output.json's ``sweep``), if it is well formed."""
    sweep = (record.output or {}).get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("id"), str):
        trial = sweep.get("trial")
        overrides = sweep.get("overrides")
        return {"id": sweep["id"], "trial": trial if isinstance(trial, int) else None,
                "overrides": [str(o) for o in overrides] if isinstance(overrides, list) else []}
    return None


def progress(record: JobRecord) -> str:
    """``epoch 3/15`` for a job that is training, else empty."""
    history = (record.output or {}).get("history")
    trainer = record.config.get("trainer") if isinstance(record.config, dict) else None
    epochs = trainer.get("epochs") if isinstance(trainer, dict) else None
    if record.status != "running" or not isinstance(history, list):
        return ""
    total = f"/{epochs}" if isinstance(epochs, int) else ""
    return f"epoch {len(history)}{total}"


def event_name(job_id: str) -> str:
    """The server-sent event of a job's row: a digest, since a folder name can hold anything
    (a line break would end the event's name and start data of its own)."""
    return "job-" + hashlib.sha256(job_id.encode("utf-8", "replace")).hexdigest()[:20]


def row(listed: Listed) -> dict[str, Any]:
    """One job's row of the jobs page; a record whose values cannot be read is ``unknown``."""
    try:
        return _row(listed)
    except Exception as exc:  # noqa: BLE001 - someone else's record: shown, never a 500
        return {"id": listed.id, "short": listed.id[:24], "root": listed.root, "name": "",
                "pipeline": "", "status": "unknown", "progress": "", "archived": False,
                "start": "", "duration_s": None, "metric_name": "", "metric": None, "tags": [],
                "dataset": "",
                "sweep": None, "event": event_name(listed.id),
                "problem": f"the record cannot be shown ({type(exc).__name__})"}  # fmt: skip


def _row(listed: Listed) -> dict[str, Any]:
    record = listed.record
    name, value = record.key_metric
    choices = (record.output or {}).get("choices")
    tags = [*record.tags, *([f"{k}={v}" for k, v in sorted(choices.items())
                             if k in ("model", "dataset")] if isinstance(choices, dict) else [])]
    return {
        "id": record.id, "short": record.id[:8] if len(record.id) > 24 else record.id,
        "root": listed.root,
        "name": record.job.get("name") or "", "pipeline": record.pipeline,
        "status": record.status, "progress": progress(record), "archived": record.archived,
        "start": record.job.get("start") or "", "duration_s": record.duration_s,
        "metric_name": name or "", "metric": number(value),
        "tags": tags, "dataset": record.dataset_digest or "", "sweep": sweep_of(record),
        "problem": record.problem,
        "event": event_name(record.id),
    }  # fmt: skip


def _sort_key(sort: str, item: dict[str, Any]) -> Any:
    value = {"start": item["start"], "duration": item["duration_s"], "metric": item["metric"],
             "status": item["status"], "pipeline": item["pipeline"], "name": item["name"]}[sort]
    return (value is None, value if value is not None else 0)


def jobs_page(listed: list[Listed], params: dict[str, str]) -> dict[str, Any]:
    """The jobs page: filtered, sorted, paged rows; sweeps folded into one row each unless
    the page filters by one."""
    rows = [row(item) for item in listed]
    status, pipeline = params.get("status", ""), params.get("pipeline", "")
    sweep, text = params.get("sweep", ""), params.get("q", "").strip().lower()
    archived = params.get("archived") == "1"
    pipelines = sorted({r["pipeline"] for r in rows if r["pipeline"]})
    selected = [
        r for r in rows
        if (archived or not r["archived"]) and (not status or r["status"] == status)
        and (not pipeline or r["pipeline"] == pipeline)
        and (not sweep or (r["sweep"] or {}).get("id") == sweep)
        and (not text or text in " ".join([r["id"], r["name"], r["pipeline"], r["status"],
                                           r["dataset"], *r["tags"]]).lower())
    ]  # fmt: skip
    sweeps: dict[str, dict[str, Any]] = {}
    if not sweep:  # one row per sweep, where its first trial would be
        folded = []
        for r in selected:
            if r["sweep"] is None:
                folded.append(r)
                continue
            group = sweeps.get(r["sweep"]["id"])
            if group is None:
                group = sweeps[r["sweep"]["id"]] = {"sweep_row": True, "id": r["sweep"]["id"],
                                                    "trials": [], "start": r["start"]}
                folded.append(group)
            group["trials"].append(r)
            group["start"] = max(group["start"], r["start"])
        selected = folded
    sort = params.get("sort") if params.get("sort") in SORTS else "start"
    descending = params.get("order", "desc") != "asc"
    jobs = [r for r in selected if "sweep_row" not in r]
    jobs.sort(key=lambda r: _sort_key(sort, r), reverse=descending)
    ordered = sorted([r for r in selected if "sweep_row" in r], key=lambda g: g["start"],
                     reverse=True) + jobs  # fmt: skip
    pages = max(1, math.ceil(len(ordered) / PAGE_SIZE))
    asked = params.get("page", "")
    page = min(int(asked) if asked.isdecimal() and len(asked) < 7 else 1, pages) or 1
    for group in sweeps.values():
        statuses = [t["status"] for t in group["trials"]]
        group["summary"] = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    names = {r["metric_name"] for r in rows if r["metric_name"]}
    return {
        "metric_header": names.pop() if len(names) == 1 else "key metric",
        "rows": ordered[(page - 1) * PAGE_SIZE : page * PAGE_SIZE], "page": page, "pages": pages,
        "total": len(ordered), "pipelines": pipelines, "params": params, "sort": sort,
        "descending": descending,
    }  # fmt: skip


def config_tables(record: JobRecord) -> dict[str, Any]:
    """The job's group choices, then every resolved setting, secrets redacted."""
    output = record.output or {}
    choices = output.get("choices") if isinstance(output.get("choices"), dict) else {}
    config = record.config if isinstance(record.config, dict) else {}
    try:
        settings = [(k, shown(v)) for k, v in flatten(redact(config))]
    except RecursionError:
        settings = [("(config)", "unknown: nested too deeply to show")]
    return {"choices": [(str(k), shown(v)) for k, v in sorted(choices.items(), key=str)],
            "settings": settings}


def history_rows(record: JobRecord) -> tuple[list[dict[str, float]], str | None]:
    """The epochs' metrics as numbers, and a note when some were not readable."""
    history = (record.output or {}).get("history")
    if not isinstance(history, list):
        return [], None if history is None else "the history is not a list: unknown"
    rows = []
    for entry in history:
        if isinstance(entry, dict) and isinstance(entry.get("epoch"), int):
            values = {str(k): number(v) for k, v in entry.items() if k != "epoch"}
            rows.append({"epoch": entry["epoch"],
                         **{k: v for k, v in values.items() if v is not None}})  # fmt: skip
    note = None if len(rows) == len(history) else "some epochs are not readable: left out"
    return rows, note


def stages(record: JobRecord) -> list[dict[str, Any]]:
    entries = (record.output or {}).get("stages")
    if not isinstance(entries, dict):
        return []
    return [{"name": str(name), "status": record.stage_status(stage),
             "cached": stage.get("status") == "cached", "seconds": number(stage.get("seconds"))}
            for name, stage in entries.items() if isinstance(stage, dict)]  # fmt: skip


def mlflow_link(record: JobRecord) -> dict[str, str] | None:
    """The job's MLflow run: its id, store and, for a server, a link to the run's page."""
    mlflow = (record.output or {}).get("mlflow")
    if not isinstance(mlflow, dict) or not isinstance(mlflow.get("run_id"), str):
        return None
    uri = str(mlflow.get("tracking_uri") or "")
    link = f"{uri.rstrip('/')}/#/runs/{mlflow['run_id']}" if uri.startswith(("http://",
                                                                               "https://")) else ""
    return {"run_id": mlflow["run_id"], "uri": uri, "link": link,
            "experiment": str(mlflow.get("experiment") or "")}  # fmt: skip


def lineage(record: JobRecord) -> dict[str, Any]:
    """What the job page says of the job's data and models: its tags, its dataset digest, the
    model version it registered and the model it tested (plain values; a broken record's
    parts are left out)."""
    output = record.output or {}
    dataset = output.get("dataset") if isinstance(output.get("dataset"), dict) else {}
    mlflow = output.get("mlflow") if isinstance(output.get("mlflow"), dict) else {}
    registry = mlflow.get("registry")
    tested = output.get("tested_model") if isinstance(output.get("tested_model"), dict) else {}
    sources = dataset.get("source") if isinstance(dataset.get("source"), list) else []
    return {
        "tags": record.tags,
        "dataset": record.dataset_digest,
        "count": number(dataset.get("count")),
        "source": ", ".join(s for s in sources[:3] if isinstance(s, str)),
        "registered": {k: str(registry[k]) for k in ("name", "version", "alias", "error",
                                                     "deferred") if k in registry}
        if isinstance(registry, dict) else {},
        "tested": {k: str(tested[k]) for k in ("model", "name", "version", "job_id")
                   if k in tested},
    }  # fmt: skip
