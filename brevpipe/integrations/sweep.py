"""Sweeps in MLflow: one parent run per ``brevpipe run -m``, one nested child run per job.

A Hydra callback (configured in ``conf/config.yaml`` under ``hydra.callbacks``) opens the
parent run when the multirun starts and writes its id into the sweep folder
(``brevpipe_sweep.json``), where every job finds it, whichever launcher runs the job
(basic, joblib workers, Ray). When the multirun ends, the parent gets the summary: the best
objective value and job, and a table of the children as an artifact.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from brevpipe.engine import storage

log = logging.getLogger("brevpipe")
SWEEP_FILE = "brevpipe_sweep.json"


def sweep_file(sweep_dir: str, cwd: str | None = None) -> Path:
    """The sweep's record, relative paths taken from the folder the sweep started in."""
    folder = Path(sweep_dir)
    if not folder.is_absolute() and cwd:
        folder = Path(cwd) / folder
    return folder / SWEEP_FILE


def parent_run(sweep_dir: str, cwd: str | None) -> dict[str, Any] | None:
    """What a job of a sweep needs to nest its run: ``{tracking_uri, run_id}``, if any."""
    path = sweep_file(sweep_dir, cwd)
    return json.loads(path.read_text()) if path.is_file() else None


class MlflowSweepCallback(Callback):
    """Opens and summarises the MLflow parent run of a sweep (``tracking=none``: nothing)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = config.get("tracking") or {}
        if not tracking.get("enabled", False):
            return
        from mlflow import MlflowClient

        from brevpipe.integrations.tracking import ensure_experiment, tracking_uri_for

        uri = tracking_uri_for(tracking.get("uri"), storage.normalize(str(config.job.root)))
        name = tracking.get("experiment") or config.pipeline.name
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = ensure_experiment(client, name, uri)
            run = client.create_run(
                experiment_id,
                run_name=f"sweep-{Path(config.hydra.sweep.dir).name}",
                tags={"brevpipe.sweep": "true", "brevpipe.pipeline": str(config.pipeline.name),
                      "brevpipe.sweep_overrides": " ".join(config.hydra.overrides.task)},
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the sweep goes on without its parent run
            log.warning("MLflow parent run for the sweep failed at %s: %s", uri, exc)
            return
        record = {
            "tracking_uri": uri,
            "experiment_id": experiment_id,
            "run_id": run.info.run_id,
            "objective": str(config.sweep.objective),
            "direction": str(config.sweep.direction),
        }
        path = sweep_file(str(config.hydra.sweep.dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
        log.info("sweep: MLflow parent run %s (%s)", run.info.run_id, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = sweep_file(str(config.hydra.sweep.dir))
        if not path.is_file():
            return
        record = json.loads(path.read_text())
        try:
            summarize(record)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not summarise the sweep in MLflow: %s", exc)


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Rank the sweep's child runs by the objective; log the summary to the parent run."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    parent, objective = record["run_id"], record["objective"]
    children = client.search_runs(
        [record["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    rows = [
        {
            "run_id": run.info.run_id,
            "job_id": run.data.tags.get("brevpipe.job_id"),
            "overrides": run.data.tags.get("brevpipe.overrides", ""),
            "status": run.info.status,
            objective: run.data.metrics.get(objective),
            "bucket": run.data.tags.get("brevpipe.bucket"),
        }
        for run in children
    ]
    table = pd.DataFrame(rows, columns=["run_id", "job_id", "overrides", "status", objective,
                                        "bucket"])  # fmt: skip
    scored = table.dropna(subset=[objective])
    summary: dict[str, Any] = {"objective": objective, "direction": record["direction"],
                               "children": len(table), "scored": len(scored)}  # fmt: skip
    if len(scored):
        ascending = record["direction"].lower().startswith("min")
        best = scored.sort_values(objective, ascending=ascending, kind="stable").iloc[0]
        summary.update(
            best_value=float(best[objective]), best_run_id=best["run_id"],
            best_job_id=best["job_id"], best_overrides=best["overrides"],
        )  # fmt: skip
        client.log_metric(parent, f"best/{objective}", float(best[objective]))
        client.set_tag(parent, "brevpipe.best_job_id", str(best["job_id"]))
        client.set_tag(parent, "brevpipe.best_run_id", str(best["run_id"]))
    with tempfile.TemporaryDirectory(prefix="brevpipe-sweep-") as tmp:
        table.to_csv(Path(tmp, "sweep_children.csv"), index=False)
        Path(tmp, "sweep_summary.json").write_text(json.dumps(summary, indent=2))
        client.log_artifacts(parent, tmp)
    failed = any(status != "FINISHED" for status in table["status"])
    client.set_terminated(parent, "FAILED" if failed or table.empty else "FINISHED")
    return summary
