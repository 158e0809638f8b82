"""The errors page: a classification job's confusion matrix from its per-sample predictions
(``artifacts/predictions.csv``), the samples behind one cell, and a segmentation job's worst
images by IoU, drawn with their true and predicted masks where the evaluation drew them
(``overlay``). Only paths listed in that table can be shown as images."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from brevpipe.io import storage
from brevpipe.jobs.layout import PREDICTIONS, JobBucket

MAX_ROWS = 200_000  # a table longer than a job writes is someone else's file
MAX_BYTES = 256 * 2**20


def predictions(bucket: str) -> pd.DataFrame | None:
    """The job's per-sample table, or None when it has none (not evaluated yet) or it is not
    one (too large, not CSV, no ``path`` column)."""
    url = JobBucket(bucket).artifact(PREDICTIONS)
    try:
        fs, path = storage.get_fs(url)
        if not fs.isfile(path) or (fs.size(path) or 0) > MAX_BYTES:
            return None
        table = pd.read_csv(io.BytesIO(storage.read_bytes(url)), dtype=str,
                            keep_default_na=False, nrows=MAX_ROWS)  # fmt: skip
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    return table if "path" in table.columns and "purpose" in table.columns else None


def score(row: pd.Series, label: str) -> float | None:
    try:
        return float(row.get(f"score_{label}", ""))
    except ValueError:
        return None


def errors_page(table: pd.DataFrame, params: dict[str, str]) -> dict[str, Any]:
    """Classification (``true`` and ``predicted`` columns): the matrix of one purpose and the
    samples of the chosen cell. Segmentation (``iou``): the worst images first."""
    purposes = sorted(set(table["purpose"])) if "purpose" in table else []
    purpose = params.get("purpose") if params.get("purpose") in purposes else (
        "test" if "test" in purposes else (purposes[0] if purposes else ""))
    subset = table[table["purpose"] == purpose] if purpose else table
    if {"true", "predicted"} <= set(table.columns):
        labels = sorted(set(subset["true"]) | set(subset["predicted"]))
        counts = subset.groupby(["true", "predicted"]).size().to_dict()
        matrix = [[counts.get((t, p), 0) for p in labels] for t in labels]
        true, predicted = params.get("true"), params.get("predicted")
        cell = subset[(subset["true"] == true) & (subset["predicted"] == predicted)] \
            if true is not None and predicted is not None else subset.iloc[0:0]  # fmt: skip
        samples = [{"path": r["path"], "true": r["true"], "predicted": r["predicted"],
                    "score": score(r, r["predicted"])} for _, r in cell.iterrows()]  # fmt: skip
        return {"kind": "classification", "purposes": purposes, "purpose": purpose,
                "labels": labels, "matrix": matrix, "true": true, "predicted": predicted,
                "samples": samples}  # fmt: skip
    if "mean_iou" in table.columns:
        ranked = subset.assign(iou=pd.to_numeric(subset["mean_iou"], errors="coerce"))
        ranked = ranked.sort_values("iou", na_position="first", kind="stable").head(48)
        samples = [{"path": r["path"], "iou": r["iou"], "overlay": r.get("overlay", "")}
                   for _, r in ranked.iterrows()]  # fmt: skip
        return {"kind": "segmentation", "purposes": purposes, "purpose": purpose,
                "samples": samples}  # fmt: skip
    return {"kind": "unknown", "purposes": purposes, "purpose": purpose, "samples": []}
