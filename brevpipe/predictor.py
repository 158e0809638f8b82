"""A predictor rebuilt from an exported model archive alone (``saved_model.tar.gz``).

The archive holds the TensorFlow SavedModel and ``model.json`` (classes, input shape,
preprocessing); images go through the same :class:`ImageLoader` as in training, so the
preprocessing cannot drift.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevpipe import storage
from brevpipe.data.encoder import MultiHotEncoder, OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.errors import ConfigError


class Predictor:
    """Scores for images: ``predict(batch)`` on preprocessed arrays, ``predict_urls(urls)``
    on image files (any fsspec URL)."""

    def __init__(self, model: Any, metadata: dict[str, Any]) -> None:
        self.model = model
        self.metadata = metadata
        self.classes: list[str] = list(metadata["classes"])
        preprocessing = dict(metadata["preprocessing"])
        self.loader = ImageLoader(**preprocessing)
        self.encoder = (
            MultiHotEncoder(self.classes, threshold=float(metadata.get("threshold") or 0.5))
            if metadata.get("multi_label")
            else OneHotEncoder(self.classes)
        ).fit([])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Scores ``[n, classes]`` for a float32 batch preprocessed like the training data."""
        import tensorflow as tf

        return np.asarray(self.model.serve(tf.constant(images, tf.float32)))

    def decide(self, scores: np.ndarray) -> list[str]:
        """The predicted category per row: the top class, or for a multi-label model the
        classes scored at or above its threshold, joined by ``+`` (empty when none); the
        training encoder's own rule."""
        return ["+".join(category) for category in self.encoder.decode(np.asarray(scores))]

    def predict_urls(
        self,
        urls: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """One row per image: ``path``, ``predicted``, ``score_<class>``...

        ``progress``, if given, is called with the number of images of each batch once it is
        scored (for a progress bar)."""
        from brevpipe.data.pipeline import InputPipeline

        if self.metadata.get("task") == "segmentation":
            raise ConfigError("this is a segmentation model: a table of class scores per image "
                              "does not apply; call predict() for per-pixel scores.")  # fmt: skip

        samples = pd.DataFrame({"path": list(urls), "category": [()] * len(urls)})
        pipeline = InputPipeline(samples, self.loader, batch_size=batch_size,
                                 output_structure="image")  # fmt: skip
        batches = []
        for batch in pipeline.numpy_iterator():
            batches.append(self.predict(batch))
            if progress is not None:
                progress(len(batch))
        scores = np.concatenate(batches)
        table = pd.DataFrame(
            {"path": list(urls), "predicted": self.decide(scores)}
        )
        for i, name in enumerate(self.classes):
            table[f"score_{name}"] = scores[:, i]
        return table


def load_predictor(archive_url: str) -> Predictor:
    """Download and unpack ``saved_model.tar.gz`` from any fsspec URL; load it."""
    import tensorflow as tf

    if not storage.exists(archive_url):
        raise ConfigError(f"{archive_url} does not exist: give the URL of a job's "
                          "artifacts/model/saved_model.tar.gz.")  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="brevpipe-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the unpacked copy, at exit
    archive = folder / "saved_model.tar.gz"
    storage.download(archive_url, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")  # refuses absolute paths and links out
    archive.unlink()
    if not (folder / "model.json").is_file():
        raise ConfigError(f"{archive_url} holds no model.json: export it again with brevpipe.")
    metadata = json.loads((folder / "model.json").read_text())
    return Predictor(tf.saved_model.load(str(folder / "saved_model")), metadata)
