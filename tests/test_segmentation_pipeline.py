"""The segmentation pipeline end to end: shapes with masks, a U-Net, IoU/Dice per class
checked against the saved predictions, export, report."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brevpipe.engine.runner import run_job
from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.serving.predictor import load_predictor
from tests.conftest import compose_config

pytestmark = pytest.mark.slow


def segmentation_config(tmp_path: Path, *extra: str):
    shapes = [] if "dataset=folder" in extra else [
        f"dataset.cache_dir={tmp_path / 'datasets'}",
        "dataset.samples_per_class=12",
        "dataset.image_size=32",
    ]  # fmt: skip
    return compose_config([
        "pipeline=segmentation",
        f"job.root={tmp_path / 'jobs'}",
        *shapes,
        "loader.target_size=[32,32]",
        "model.filters=[8,16]",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ])  # fmt: skip


def test_segmentation_job_end_to_end(tmp_path: Path) -> None:
    job = run_job(segmentation_config(tmp_path, "augmenter=tf_light"))
    output = storage.read_json(job.output_url)
    assert output["job"]["status"] == "completed"
    assert list(output["stages"]) == ["samples", "split", "train", "evaluate", "export", "report"]
    metrics = output["metrics"]
    for name in ("background", "circle", "square", "triangle"):
        assert 0.0 <= metrics[f"devel/iou/{name}"] <= metrics[f"devel/dice/{name}"] <= 1.0
    assert 0.0 <= metrics["devel/mean_iou"] <= 1.0 and "devel/pixel_accuracy" in metrics
    assert [h["epoch"] for h in output["history"]] == [1, 2]

    rows = pd.read_csv(io.BytesIO(storage.read_bytes(job.bucket.artifact("predictions.csv"))))
    assert len(rows) == output["samples"]["by_purpose"]["devel"]
    assert set(rows.columns) >= {"path", "purpose", "pixel_accuracy", "mean_iou", "mean_dice"}
    # equal-sized images: the per-image pixel accuracies average to the split's
    assert rows["pixel_accuracy"].mean() == pytest.approx(metrics["devel/pixel_accuracy"])

    model = output["model"]
    assert model["task"] == "segmentation"
    assert model["classes"] == ["background", "circle", "square", "triangle"]
    predictor = load_predictor(model["archive_url"])
    scores = predictor.predict(np.zeros((1, 32, 32, 3), np.float32))
    assert scores.shape == (1, 32, 32, 4)
    with pytest.raises(ConfigError, match="segmentation model"):
        predictor.predict_urls(rows["path"].tolist()[:1])
    for name in ("report.html", "segmentation_overlays.png", "charts/iou_dice_devel.vl.json",
                 "charts/training_curves.vl.json", "samples_pivot.json"):  # fmt: skip
        assert storage.exists(job.bucket.artifact(name)), name


def test_segmentation_needs_masks_and_classes(tmp_path: Path) -> None:
    images = tmp_path / "parts" / "ok"
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "a.png")
    config = segmentation_config(tmp_path, "dataset=folder", f"dataset.url={tmp_path / 'parts'}",
                                 "dataset.mask_suffix=_mask.png")  # fmt: skip
    with pytest.raises(Exception, match="mask.s. not found"):
        run_job(config)
    Image.new("L", (32, 32)).save(images / "a_mask.png")
    with pytest.raises(ConfigError, match="masks.classes"):
        run_job(segmentation_config(tmp_path, "dataset=folder", f"dataset.url={tmp_path / 'parts'}",
                                    "dataset.mask_suffix=_mask.png"))  # fmt: skip
