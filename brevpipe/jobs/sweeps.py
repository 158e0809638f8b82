"""The sweeps of a job root, read for ``brevpipe sweep list|show|resume``.

A sweep is its record, ``<root>/sweeps/<id>.json`` (written by the sweep's Hydra callback,
:mod:`brevpipe.integrations.sweep`), and its trials: the jobs of the root whose output.json
names the sweep (``sweep.id``). Records come from a bucket: what they say is checked before
use (an id is a name, overrides are strings).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from brevpipe.io import storage
from brevpipe.jobs import layout
from brevpipe.jobs.output_json import parse_json
from brevpipe.jobs.records import JobRecord, JobRegistryError, load_jobs

SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")


@dataclass
class Sweep:
    """A sweep's record and its trials (job records, by trial number)."""

    id: str
    record: dict[str, Any]
    trials: list[JobRecord] = field(default_factory=list)

    @property
    def objective(self) -> str:
        return str(self.record.get("objective") or "")

    @property
    def maximize(self) -> bool:
        return not str(self.record.get("direction") or "maximize").lower().startswith("min")

    @property
    def status(self) -> str:
        """``running`` (no end recorded), ``ended``, or ``interrupted`` (ended with trials
        that did not complete, or never ended and no trial is running)."""
        statuses = [t.status for t in self.trials]
        if "ended" in self.record and all(s in ("completed", "pruned") for s in statuses):
            return "ended"
        if "running" in statuses and "ended" not in self.record:
            return "running"
        return "interrupted"

    def value(self, trial: JobRecord) -> float | None:
        value = ((trial.output or {}).get("metrics") or {}).get(self.objective)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    @property
    def best(self) -> JobRecord | None:
        scored = [t for t in self.trials if t.status == "completed" and self.value(t) is not None]
        if not scored:
            return None
        pick = max if self.maximize else min
        return pick(scored, key=lambda t: self.value(t) or 0.0)

    def rows(self) -> list[dict[str, Any]]:
        """One row per trial: number, job, status, its own values (the overrides the sweep's
        command line does not give every trial), objective, epochs trained and planned."""
        shared = {unescaped(o) for o in self.record.get("overrides") or []}
        rows = []
        for trial in self.trials:
            output = trial.output or {}
            overrides = [str(o) for o in (output.get("sweep") or {}).get("overrides") or []]
            rows.append({"trial": trial_number(trial), "job_id": trial.id,
                         "status": trial.status,
                         "values": " ".join(o for o in overrides
                                            if unescaped(o) not in shared),
                         "objective": self.value(trial),
                         "epochs": len(output.get("history") or []),
                         "planned_epochs": planned_epochs(output)})  # fmt: skip
        return rows

    def epochs_saved(self) -> dict[str, int]:
        """Epochs the pruned trials did not train, of all the epochs the trials planned."""
        rows = self.rows()
        planned = sum(r["planned_epochs"] or r["epochs"] for r in rows)
        saved = sum(max(0, (r["planned_epochs"] or 0) - r["epochs"]) for r in rows
                    if r["status"] == "pruned")  # fmt: skip
        return {"saved": saved, "planned": planned}

    def summary(self) -> dict[str, Any]:
        best = self.best
        statuses = [t.status for t in self.trials]
        return {"id": self.id, "status": self.status, "created": self.record.get("created"),
                "ended": self.record.get("ended"), "resumed": self.record.get("resumed", []),
                "objective": self.objective, "direction": "maximize" if self.maximize
                else "minimize", "trials": len(self.trials),
                "completed": statuses.count("completed"), "pruned": statuses.count("pruned"),
                "epochs": self.epochs_saved(),
                "overrides": self.record.get("overrides", []),
                "best": {"job_id": best.id, "trial": trial_number(best),
                         "value": self.value(best)} if best else None,
                "mlflow_run": self.record.get("run_id")}  # fmt: skip


def unescaped(override: Any) -> str:
    """An override as the command line gave it (Hydra escapes ``:`` and ``=`` in a job's)."""
    return str(override).replace("\\", "")


def planned_epochs(output: dict[str, Any]) -> int | None:
    """``trainer.epochs`` of a job's config (None when it has none)."""
    epochs = ((output.get("config") or {}).get("trainer") or {}).get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def trial_number(record: JobRecord) -> int:
    trial = ((record.output or {}).get("sweep") or {}).get("trial")
    return trial if isinstance(trial, int) else -1


def sweep_ids(root: str) -> list[str]:
    """The ids of the sweep records under ``root`` (none: an empty list)."""
    folder = storage.join(storage.normalize(root), layout.SWEEPS)
    try:
        fs, path = storage.get_fs(folder)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n.removesuffix(".json") for n in names
                  if n.endswith(".json") and SWEEP_ID.fullmatch(n.removesuffix(".json")))


def read_record(url: str) -> dict[str, Any]:
    """A sweep record from its URL; :class:`JobRegistryError` when it is missing or not one."""
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise JobRegistryError(f"no sweep record at {url}: brevpipe sweep list shows the sweeps "
                               "of a root (--root).") from None  # fmt: skip
    record, problem = parse_json(data, url)
    if record is None or not isinstance(record, dict) or not SWEEP_ID.fullmatch(
            str(record.get("sweep_id"))):  # fmt: skip
        raise JobRegistryError(f"{url} is not a sweep record ({problem or 'no sweep_id'}).")
    return record


def list_sweeps(root: str) -> list[Sweep]:
    """The sweeps of ``root`` with their trials, newest first."""
    root = storage.normalize(root)
    ids = sweep_ids(root)
    if not ids:
        return []
    trials: dict[str, list[JobRecord]] = {}
    for job in load_jobs(root):
        sweep = (job.output or {}).get("sweep")
        if isinstance(sweep, dict) and isinstance(sweep.get("id"), str):
            trials.setdefault(sweep["id"], []).append(job)
    sweeps = []
    for sweep_id in ids:
        try:
            record = read_record(layout.sweep_record(root, sweep_id))
        except JobRegistryError:
            continue
        found = sorted(trials.get(sweep_id, []), key=trial_number)
        sweeps.append(Sweep(sweep_id, record, found))
    return sorted(sweeps, key=lambda s: str(s.record.get("created") or ""), reverse=True)


def get_sweep(root: str, name: str) -> Sweep:
    """Sweep ``name`` (an id, a unique prefix of one, or a record URL) of ``root``."""
    if name.endswith(".json") and "/" in name:
        record = read_record(storage.normalize(name))
        root = storage.normalize(name).rsplit("/", 2)[0]
        name = str(record["sweep_id"])
    sweeps = list_sweeps(root)
    found = [s for s in sweeps if s.id == name] or [s for s in sweeps if s.id.startswith(name)]
    if not found:
        raise JobRegistryError(f"no sweep {name!r} under {storage.normalize(root)} (brevpipe "
                               "sweep list --root URL shows them).")  # fmt: skip
    if len(found) > 1:
        raise JobRegistryError(f"sweep {name!r} is ambiguous: {', '.join(s.id for s in found)}")
    return found[0]
