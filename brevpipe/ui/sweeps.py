"""The sweep page: the trials of one sweep, what each swept, the objective and the best so far."""

from __future__ import annotations

from typing import Any

from brevpipe.jobs.compare import number
from brevpipe.ui import charts
from brevpipe.ui.index import Listed
from brevpipe.ui.pages import sweep_of

NOT_COUNTED = ("failed", "lost", "stopped", "unknown")


def swept_value(text: str) -> Any:
    """``0.001`` -> 0.001, ``[8,16]`` stays text: a swept value as a number when it is one."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def sweep_page(sweep_id: str, listed: list[Listed]) -> dict[str, Any] | None:
    """The trials of ``sweep_id``, its objective and direction, and its charts; None if no job
    of the roots belongs to it."""
    members = [(item, sweep_of(item.record)) for item in listed]
    members = [(item, sweep) for item, sweep in members if sweep and sweep["id"] == sweep_id]
    if not members:
        return None
    members.sort(key=lambda m: (m[1]["trial"] is None, m[1]["trial"] or 0, m[0].id))
    config = members[0][0].record.config or {}
    settings = config.get("sweep") if isinstance(config.get("sweep"), dict) else {}
    pipeline = config.get("pipeline") if isinstance(config.get("pipeline"), dict) else {}
    objective = str(settings.get("objective") or pipeline.get("key_metric") or "")
    maximize = str(settings.get("direction") or "maximize") != "minimize"
    trials, axes = [], []
    for item, sweep in members:
        record = item.record
        values = {}
        for override in sweep["overrides"]:
            key, _, value = override.partition("=")
            if key and not key.startswith(("hydra.", "job.", "tracking.")):
                values[key] = swept_value(value)
                axes.append(key) if key not in axes else None
        metrics = (record.output or {}).get("metrics")
        value = number(metrics.get(objective)) if isinstance(metrics, dict) else None
        label = f"#{sweep['trial']}" if sweep["trial"] is not None else record.id[:8]
        trials.append({"id": record.id, "trial": sweep["trial"], "status": record.status,
                       "values": values, "objective": value, "label": label,
                       "marked": record.status in NOT_COUNTED})  # fmt: skip
    for trial in trials:
        trial["values"][objective or "objective"] = trial["objective"]
    counted = [t for t in trials if t["objective"] is not None]
    best = (max if maximize else min)(counted, key=lambda t: t["objective"]) if counted else None
    order = [{"trial": t["trial"] if t["trial"] is not None else i, "objective": t["objective"]}
             for i, t in enumerate(trials)]  # fmt: skip
    return {
        "id": sweep_id, "objective": objective, "maximize": maximize, "trials": trials,
        "axes": axes, "best": best,
        "parallel": charts.parallel_coordinates(trials, [*axes, objective or "objective"]),
        "progress": charts.best_so_far(order, maximize),
    }  # fmt: skip
