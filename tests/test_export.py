"""Export round trip: the archive alone, loaded from S3, predicts what the trained model did."""

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

pytestmark = pytest.mark.slow


def test_archive_from_s3_predicts_the_trained_models_scores(tiny_config, s3_bucket) -> None:
    job = run_job(tiny_config("tracking=none", f"job.root={s3_bucket}/jobs"))
    output = storage.read_json(job.output_url)
    archive = output["model"]["archive_url"]
    assert archive.startswith(f"{s3_bucket}/jobs/")
    table = storage.read_bytes(job.bucket.artifact("predictions.csv"))
    predictions = pd.read_csv(io.BytesIO(table))
    scores = [c for c in predictions.columns if c.startswith("score_")]

    predictor = load_predictor(archive)
    assert predictor.classes == output["model"]["classes"]
    assert predictor.metadata["preprocessing"] == output["model"]["preprocessing"]
    table = predictor.predict_urls(predictions["path"].tolist(), batch_size=5)
    assert table["path"].tolist() == predictions["path"].tolist()
    assert table["predicted"].tolist() == predictions["predicted"].tolist()
    np.testing.assert_allclose(table[scores].to_numpy(), predictions[scores].to_numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip

    with pytest.raises(ConfigError, match="does not exist"):
        load_predictor(f"{s3_bucket}/jobs/nope/saved_model.tar.gz")


@pytest.mark.slow
def test_readme_tensorflow_only_script_reproduces_predictions(tmp_path: Path) -> None:
    """The docs' plain-TensorFlow script, run on a trained job's archive with only
    model.json's numbers, gives the scores of the job's own predictions.csv."""
    import re
    import subprocess
    import sys

    from brevpipe.config.compose import REPO_DIR
    from tests.conftest import compose_config, tiny_overrides

    readme = (REPO_DIR / "docs" / "serving.md").read_text()
    (script,) = re.findall(r"```python\n(# score_with_tensorflow\.py.*?)```", readme, re.S)
    assert "brevpipe" not in script.replace("score_with_tensorflow.py", "")
    (tmp_path / "score.py").write_text(script)
    job = run_job(compose_config([*tiny_overrides(tmp_path), "tracking=none"]))
    expected = pd.read_csv(job.bucket.artifact("predictions.csv")).head(12)
    archive = job.bucket.artifact("model", "saved_model.tar.gz")
    command = [sys.executable, str(tmp_path / "score.py"), archive, *expected["path"]]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    got = pd.read_csv(io.StringIO(done.stdout))
    scores = [c for c in expected.columns if c.startswith("score_")]
    assert list(got.columns) == ["path", *scores]
    assert (got["path"] == expected["path"]).all()
    assert abs(got[scores].to_numpy() - expected[scores].to_numpy()).max() <= 1e-6
