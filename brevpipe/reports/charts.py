"""Vega-Lite chart specs (plain dicts with their data inlined) for a job's report."""

from __future__ import annotations

from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"


def _chart(title: str, data: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"$schema": SCHEMA, "title": title, "data": {"values": data}, **spec}


def dataset_summary(by_purpose_category: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Images per category, stacked by purpose."""
    rows = [{"purpose": purpose, "category": category, "count": count}
            for purpose, counts in by_purpose_category.items()
            for category, count in counts.items()]  # fmt: skip
    return _chart(
        "Images per category and purpose", rows, mark="bar",
        encoding={
            "x": {"field": "category", "type": "nominal", "title": "category"},
            "y": {"field": "count", "type": "quantitative", "title": "images"},
            "color": {"field": "purpose", "type": "nominal"},
            "tooltip": [{"field": "category"}, {"field": "purpose"}, {"field": "count"}],
        },
    )  # fmt: skip


def training_curves(history: list[dict[str, float]]) -> dict[str, Any]:
    """Loss and accuracy per epoch, training and validation, one panel per metric."""
    rows = []
    for row in history:
        for key, value in row.items():
            if key == "epoch" or key == "learning_rate":
                continue
            split = "devel" if key.startswith("val_") else "train"
            rows.append({"epoch": row["epoch"], "metric": key.removeprefix("val_"),
                         "split": split, "value": value})  # fmt: skip
    return _chart(
        "Training curves", rows,
        facet={"column": {"field": "metric", "type": "nominal", "title": None}},
        spec={
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": {"field": "epoch", "type": "quantitative"},
                "y": {"field": "value", "type": "quantitative", "title": None},
                "color": {"field": "split", "type": "nominal"},
                "tooltip": [{"field": "epoch"}, {"field": "split"}, {"field": "value"}],
            },
        },
        resolve={"scale": {"y": "independent"}},
    )  # fmt: skip


def confusion_matrix(matrix: list[list[int]], classes: list[str], purpose: str) -> dict[str, Any]:
    """Counts of (true, predicted) pairs as a heat map with the numbers written in."""
    rows = [{"true": classes[t], "predicted": classes[p], "count": matrix[t][p]}
            for t in range(len(classes)) for p in range(len(classes))]  # fmt: skip
    encoding = {
        "x": {"field": "predicted", "type": "nominal", "sort": classes},
        "y": {"field": "true", "type": "nominal", "sort": classes},
    }
    return _chart(
        f"Confusion matrix ({purpose})", rows,
        layer=[
            {"mark": "rect", "encoding": {**encoding, "color": {
                "field": "count", "type": "quantitative", "scale": {"scheme": "blues"}}}},
            {"mark": {"type": "text"}, "encoding": {**encoding, "text": {"field": "count"}}},
        ],
    )  # fmt: skip


def threshold_curves(curves: dict[str, dict[str, list[float]]], purpose: str) -> dict[str, Any]:
    """Per class: true and false reject rates across score thresholds."""
    rows = []
    for name, curve in curves.items():
        for i, threshold in enumerate(curve["threshold"]):
            for rate in ("true_reject_rate", "false_reject_rate"):
                rows.append({"class": name, "threshold": threshold,
                             "rate": rate.replace("_", " "), "value": curve[rate][i]})  # fmt: skip
    return _chart(
        f"Reject rates across thresholds ({purpose})", rows,
        facet={"column": {"field": "class", "type": "nominal", "title": None}},
        spec={
            "width": 180,
            "mark": "line",
            "encoding": {
                "x": {"field": "threshold", "type": "quantitative"},
                "y": {"field": "value", "type": "quantitative", "title": "rate"},
                "color": {"field": "rate", "type": "nominal"},
            },
        },
    )  # fmt: skip


def per_class_scores(scalars: dict[str, float], kinds: list[str], purpose: str) -> dict[str, Any]:
    """Grouped bars of per-class scores such as ``iou/<class>`` and ``dice/<class>``."""
    rows = [{"class": name.split("/", 1)[1], "score": kind, "value": value}
            for name, value in scalars.items() for kind in kinds
            if name.startswith(f"{kind}/")]  # fmt: skip
    return _chart(
        f"{' and '.join(k.upper() if len(k) <= 3 else k.title() for k in kinds)} per class "
        f"({purpose})", rows,
        mark="bar",
        encoding={
            "x": {"field": "class", "type": "nominal", "title": None},
            "xOffset": {"field": "score"},
            "y": {"field": "value", "type": "quantitative", "scale": {"domain": [0, 1]},
                  "title": None},
            "color": {"field": "score", "type": "nominal"},
            "tooltip": [{"field": "class"}, {"field": "score"},
                        {"field": "value", "format": ".3f"}],
        },
    )  # fmt: skip
