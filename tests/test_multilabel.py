"""Multi-label classification end to end: shapes side by side, sigmoid scores, per-label
metrics, decisions by threshold in predictions.csv, model.json and the predictor."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from brevpipe.engine.runner import run_job
from brevpipe.io import storage
from brevpipe.serving.predictor import load_predictor

pytestmark = pytest.mark.slow


def test_multilabel_job_reports_per_label_metrics_and_predicts_label_sets(tiny_config) -> None:
    job = run_job(tiny_config("dataset.max_labels=2", "encoder=multihot", "trainer.epochs=3"))
    output = storage.read_json(job.output_url)
    assert output["job"]["status"] == "completed"
    assert output["samples"]["count"] == 16 * 6  # 3 single + 3 pair folders
    metrics = output["metrics"]
    for name in ("circle", "square", "triangle"):
        for kind in ("precision", "recall", "f1"):
            assert 0.0 <= metrics[f"devel/{kind}/{name}"] <= 1.0
    assert 0.0 <= metrics["devel/hamming_loss"] <= 1.0
    assert "binary_accuracy" in output["history"][0]

    table = storage.read_bytes(job.bucket.artifact("predictions.csv"))
    predictions = pd.read_csv(io.BytesIO(table), keep_default_na=False)
    assert {"circle+square", "circle+triangle", "square+triangle"} <= set(predictions["true"])
    scores = predictions[[f"score_{c}" for c in ("circle", "square", "triangle")]].to_numpy()
    expected = ["+".join(c for c, v in zip(("circle", "square", "triangle"), row, strict=True)
                         if v >= 0.5) for row in scores]  # fmt: skip
    assert predictions["predicted"].tolist() == expected
    exact = (predictions["true"] == predictions["predicted"]).mean()
    assert metrics["devel/accuracy"] == pytest.approx(exact)  # devel only: no test split

    model = output["model"]
    assert model["multi_label"] is True and model["threshold"] == 0.5
    predictor = load_predictor(model["archive_url"])
    table = predictor.predict_urls(predictions["path"].tolist())
    np.testing.assert_allclose(table[[f"score_{c}" for c in predictor.classes]].to_numpy(),
                               scores, atol=1e-5)  # fmt: skip
    assert table["predicted"].tolist() == expected
    charts = output["stages"]["report"]
    assert charts["status"] == "completed"
    assert not storage.exists(job.bucket.artifact("charts", "confusion_devel.vl.json"))
    assert storage.exists(job.bucket.artifact("charts", "thresholds_devel.vl.json"))


def test_onehot_encoder_on_multilabel_data_names_the_fix(tiny_config) -> None:
    from brevpipe.errors import DataError

    with pytest.raises(DataError, match="encoder=multihot"):
        run_job(tiny_config("dataset.max_labels=2"))
