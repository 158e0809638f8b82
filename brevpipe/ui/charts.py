"""Vega-Lite specs of the dashboard's own charts (compare and sweep pages); a job's curves are
the report's (:func:`brevpipe.reports.charts.training_curves`)."""

from __future__ import annotations

from typing import Any

from brevpipe.reports.charts import SCHEMA


def overlaid_curves(histories: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Every job's curves on shared axes, one panel per metric, a colour per job."""
    rows = [{"job": job, "epoch": entry["epoch"], "metric": key, "value": value}
            for job, history in histories.items() for entry in history
            for key, value in entry.items() if key not in ("epoch", "learning_rate")]  # fmt: skip
    return {
        "$schema": SCHEMA, "title": "Learning curves", "data": {"values": rows},
        "facet": {"field": "metric", "type": "nominal", "title": None}, "columns": 2,
        "spec": {"mark": {"type": "line", "point": True}, "width": 260, "height": 160,
                 "encoding": {
                     "x": {"field": "epoch", "type": "quantitative"},
                     "y": {"field": "value", "type": "quantitative", "title": None},
                     "color": {"field": "job", "type": "nominal"},
                     "tooltip": [{"field": "job"}, {"field": "epoch"}, {"field": "value"}]}},
        "resolve": {"scale": {"y": "independent"}},
    }  # fmt: skip


def parallel_coordinates(trials: list[dict[str, Any]], axes: list[str]) -> dict[str, Any]:
    """One line per trial across the swept values and the objective, each axis scaled to its
    own range (numbers) or spread evenly (text); the tooltip shows the values."""
    rows = []
    for axis in axes:
        values = [t["values"].get(axis) for t in trials]
        numbers = [v for v in values if isinstance(v, int | float)]
        texts = sorted({str(v) for v in values if not isinstance(v, int | float)})
        low, high = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
        for trial, value in zip(trials, values, strict=True):
            if isinstance(value, int | float):
                position = 0.5 if high == low else (value - low) / (high - low)
            elif value is None:
                continue
            else:
                position = (texts.index(str(value)) + 0.5) / len(texts)
            rows.append({"trial": trial["label"], "axis": axis, "position": position,
                         "value": str(value), "status": trial["status"]})  # fmt: skip
    return {
        "$schema": SCHEMA, "title": "Swept values and the objective", "width": 520,
        "height": 240, "data": {"values": rows},
        "mark": {"type": "line", "point": True, "opacity": 0.8},
        "encoding": {
            "x": {"field": "axis", "type": "nominal", "sort": axes, "title": None,
                  "axis": {"labelAngle": 0}},
            "y": {"field": "position", "type": "quantitative", "axis": None},
            "detail": {"field": "trial"},
            "color": {"field": "status", "type": "nominal"},
            "tooltip": [{"field": "trial"}, {"field": "axis"}, {"field": "value"}]},
    }  # fmt: skip


def best_so_far(points: list[dict[str, Any]], maximize: bool) -> dict[str, Any]:
    """The objective of each trial in order, and the best up to it."""
    rows, best = [], None
    for point in points:
        value = point["objective"]
        if value is not None:
            best = value if best is None else (max if maximize else min)(best, value)
        rows.append({"trial": point["trial"], "kind": "trial", "value": value})
        rows.append({"trial": point["trial"], "kind": "best so far", "value": best})
    return {
        "$schema": SCHEMA, "title": "Objective by trial", "width": 520, "height": 200,
        "data": {"values": [r for r in rows if r["value"] is not None]},
        "mark": {"type": "line", "point": True},
        "encoding": {"x": {"field": "trial", "type": "quantitative",
                           "axis": {"tickMinStep": 1, "format": "d"}},
                     "y": {"field": "value", "type": "quantitative", "title": None},
                     "color": {"field": "kind", "type": "nominal", "title": None},
                     "tooltip": [{"field": "trial"}, {"field": "kind"}, {"field": "value"}]},
    }  # fmt: skip
