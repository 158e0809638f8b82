"""Test reports: a trained model evaluated on another labelled dataset, with no training.

``brevpipe run pipeline=test test.model=models:/parts@champion dataset=folder
dataset.url=s3://bucket/line3`` is a job of its own: it lists and splits the dataset (every
image for ``test``), loads the model (an archive URL, job bucket, job id or MLflow model URI),
and runs the classification pipeline's evaluate and report stages with the model's own
preprocessing. output.json's ``tested_model`` section records which model that was (its job,
registered name and version, archive hash); the MLflow mirror links the report to that version.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from brevpipe.engine.context import StageContext
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage


class ArchiveModel:
    """An exported model's predictor with the one method evaluation calls, ``predict``."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def predict(self, dataset: Any, steps: int, verbose: int = 0) -> np.ndarray:
        batches = [self.predictor.predict(batch) for batch in dataset.take(steps)]
        return np.concatenate(batches) if batches else np.zeros((0, len(self.predictor.classes)))


def load_model(
    ctx: StageContext, samples: pd.DataFrame, *, model: str | None, job_root: str,
    tracking_uri: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The model under test, its classes and its loader settings (evaluation decodes the
    images as the model was trained to see them); refuses a dataset with classes the model
    does not know."""
    from brevpipe.serving.resolve import model_archive_url, resolve_model

    if not model:
        raise ConfigError("pipeline=test needs the model to test: test.model=<archive URL | job "
                          "id | models:/NAME@ALIAS>.")  # fmt: skip
    predictor = resolve_model(model, job_root, tracking_uri)
    if predictor.metadata.get("task") not in (None, "single_label", "multi_label"):
        raise ConfigError(f"test.model={model} is a {predictor.metadata.get('task')} model: "
                          "pipeline=test reports on classification models.")  # fmt: skip
    labels = sorted({label for category in samples["category"] for label in category})
    unknown = [label for label in labels if label not in predictor.classes]
    if unknown:
        raise DataError(f"the dataset's classes {unknown[:10]} are not the model's "
                        f"{predictor.classes[:20]}: test a dataset of the model's classes (or "
                        "map them: dataset.class_mapping, dataset.classes).")  # fmt: skip
    source = dict(predictor.source)
    archive = (model_archive_url(f"runs:/{source['run_id']}/mlflow_model", job_root, tracking_uri)
               if "run_id" in source else model_archive_url(model, job_root))  # fmt: skip
    ctx.set_section("tested_model", {
        **source,
        "archive_url": archive,
        "archive_sha256": hashlib.sha256(storage.read_bytes(archive)).hexdigest(),
        "job_id": predictor.metadata.get("job_id"),
        "classes": list(predictor.classes),
    })  # fmt: skip
    loader = {"_target_": "loader:image_loader", **predictor.metadata["preprocessing"]}
    return {"model": ArchiveModel(predictor), "classes": list(predictor.classes),
            "loader": loader}  # fmt: skip


def report(
    ctx: StageContext, split_samples: pd.DataFrame, evaluation: dict[str, Any],
    predictions: pd.DataFrame, loader: dict[str, Any], *, pivot: dict[str, list[str]],
    atlas_size: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """The classification report of the tested model (no training curves, no training batch)."""
    from brevpipe.stages import classification

    return classification.report(ctx, split_samples, evaluation, {"url": None}, predictions, [],
                                 loader=loader, pivot=pivot, atlas_size=atlas_size)
