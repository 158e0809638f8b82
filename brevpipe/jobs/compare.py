"""Comparing jobs: which settings differ and how the metrics moved. One module for
``brevpipe jobs diff`` and the dashboard's compare page.

Records come from job buckets that others may write: a value of any JSON type, a metric that is
a string, a config that is not a mapping all compare as text, never fail.
"""

from __future__ import annotations

import json
from typing import Any

from brevpipe.config.compose import flatten, redact
from brevpipe.jobs.records import JobRecord

MISSING = "(unset)"


def shown(value: Any) -> str:
    """A config value as one line of text (lists and mappings as compact JSON)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (RecursionError, TypeError, ValueError):  # nested too deeply, keys of mixed types
        return "unknown"


def number(value: Any) -> float | None:
    """A metric's value when it is a finite number, else None (a string, NaN, a list...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def config_rows(records: list[JobRecord]) -> list[dict[str, Any]]:
    """One row per setting of any of the jobs: the group choices first (``choice:<group>``),
    then every resolved key, with secrets redacted; ``changed`` when the values differ."""
    tables = []
    for record in records:
        output = record.output or {}
        choices = output.get("choices") if isinstance(output.get("choices"), dict) else {}
        config = record.config if isinstance(record.config, dict) else {}
        table = {f"choice:{group}": shown(value) for group, value in choices.items()}
        try:
            table.update((key, shown(value)) for key, value in flatten(redact(config)))
        except RecursionError:
            table["(config)"] = "unknown: nested too deeply to compare"
        tables.append(table)
    keys = list(dict.fromkeys(k for table in tables for k in table))
    keys.sort(key=lambda k: (not k.startswith("choice:"), k))
    rows = []
    for key in keys:
        values = [table.get(key, MISSING) for table in tables]
        rows.append({"key": key, "values": values, "changed": len(set(values)) > 1})
    return rows


def metric_rows(records: list[JobRecord]) -> list[dict[str, Any]]:
    """One row per metric of any of the jobs: the values, and each job's delta from the first
    job's (None where either is not a number)."""
    tables = [(record.output or {}).get("metrics") for record in records]
    tables = [table if isinstance(table, dict) else {} for table in tables]
    names = sorted({name for table in tables for name in table}, key=str)
    rows = []
    for name in names:
        values = [table.get(name) for table in tables]
        base = number(values[0])
        deltas = [None if base is None or number(v) is None else number(v) - base
                  for v in values]  # fmt: skip
        rows.append({"name": str(name), "values": [number(v) if number(v) is not None else
                                                    (None if v is None else shown(v))
                                                    for v in values],
                     "deltas": deltas,
                     "changed": len({shown(v) for v in values}) > 1})  # fmt: skip
    return rows


def compare(records: list[JobRecord], changes_only: bool = True) -> dict[str, Any]:
    """The comparison of two or more jobs: ids, config rows and metric rows (with
    ``changes_only``, only the settings and metrics whose values differ)."""
    rows, metrics = config_rows(records), metric_rows(records)
    return {
        "jobs": [record.id for record in records],
        "config": [row for row in rows if row["changed"] or not changes_only],
        "equal_settings": sum(not row["changed"] for row in rows),
        "metrics": [row for row in metrics if row["changed"] or not changes_only],
        "equal_metrics": sum(not row["changed"] for row in metrics),
    }
