"""A sweep's end in MLflow: its child runs ranked by the objective, the summary logged to its
parent run, and (``tracking.register``) its best finished trial registered."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from brevpipe.integrations.registry import register_run
from brevpipe.io import storage
from brevpipe.jobs import layout

log = logging.getLogger("brevpipe")


def root_of(record: dict[str, Any]) -> str:
    """The job root of a sweep: its record is ``<root>/sweeps/<id>.json``."""
    return str(record.get("record_url") or "").rsplit("/", 2)[0]


def register_best(client: Any, record: dict[str, Any], best: Any) -> dict[str, Any]:
    """Register the sweep's best trial (``tracking.register``); its output.json records it.
    The trial's bucket comes from an MLflow tag: it must be a job of the sweep's own root."""
    root, job_id = root_of(record), str(best["job_id"])
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", job_id):
        raise ValueError(f"{job_id[:80]!r} is not a job id")
    bucket = layout.JobBucket.of(root, job_id)
    if not root or storage.normalize(str(best["bucket"])) != bucket.url:
        raise ValueError(f"the best trial's bucket {best['bucket']!r} is not job {job_id} of "
                         f"the sweep's root {root!r}")  # fmt: skip
    output = storage.read_json(bucket.output)
    entry = register_run(client, str(record["register"]), str(best["run_id"]), output)
    output.setdefault("mlflow", {})["registry"] = entry
    storage.write_json(bucket.output, output)
    log.info("sweep: best trial %s registered as %s version %s (@%s)", job_id,
             record["register"], entry["version"], entry["alias"])  # fmt: skip
    return entry


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Rank the sweep's child runs by the objective; log the summary to the parent run."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"],
                          registry_uri=record["tracking_uri"])
    parent, objective = record["run_id"], record["objective"]
    children = client.search_runs(
        [record["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    rows = [
        {
            "run_id": run.info.run_id,
            "job_id": run.data.tags.get("brevpipe.job_id"),
            "overrides": run.data.tags.get("brevpipe.overrides", ""),
            # a pruned trial's run is KILLED with a tag: it did not fail
            "status": "PRUNED" if run.data.tags.get("brevpipe.pruned") == "true"
            else run.info.status,
            objective: run.data.metrics.get(objective),
            "bucket": run.data.tags.get("brevpipe.bucket"),
        }
        for run in children
    ]
    table = pd.DataFrame(rows, columns=["run_id", "job_id", "overrides", "status", objective,
                                        "bucket"])  # fmt: skip
    scored = table.dropna(subset=[objective])
    pruned = int((table["status"] == "PRUNED").sum())
    summary: dict[str, Any] = {"objective": objective, "direction": record["direction"],
                               "children": len(table), "scored": len(scored),
                               "pruned": pruned}  # fmt: skip
    client.log_metric(parent, "pruned_trials", pruned)
    ascending = record["direction"].lower().startswith("min")
    if len(scored):
        best = scored.sort_values(objective, ascending=ascending, kind="stable").iloc[0]
        summary.update(
            best_value=float(best[objective]), best_run_id=best["run_id"],
            best_job_id=best["job_id"], best_overrides=best["overrides"],
        )  # fmt: skip
        client.log_metric(parent, f"best/{objective}", float(best[objective]))
        client.set_tag(parent, "brevpipe.best_job_id", str(best["job_id"]))
        client.set_tag(parent, "brevpipe.best_run_id", str(best["run_id"]))
    finished = scored[scored["status"] == "FINISHED"]
    if record.get("register") and len(finished):
        best = finished.sort_values(objective, ascending=ascending, kind="stable").iloc[0]
        try:
            summary["registered"] = register_best(client, record, best)
            client.set_tag(parent, "brevpipe.registered", summary["registered"]["uri"])
        except Exception as exc:  # noqa: BLE001 - the summary and the parent run end anyway
            summary["registration_error"] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("sweep: registering the best trial %s as %r failed (%s); once the "
                        "registry answers, run: brevpipe models register %s --root %s "
                        "--tracking-uri %s", best["job_id"], record["register"], exc,
                        best["job_id"], root_of(record), record["tracking_uri"])  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="brevpipe-sweep-") as tmp:
        table.to_csv(Path(tmp, "sweep_children.csv"), index=False)
        Path(tmp, "sweep_summary.json").write_text(json.dumps(summary, indent=2))
        client.log_artifacts(parent, tmp)
    failed = any(status not in ("FINISHED", "PRUNED") for status in table["status"])
    client.set_terminated(parent, "FAILED" if failed or table.empty else "FINISHED")
    return summary
