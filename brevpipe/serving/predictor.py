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

from brevpipe.data.encoder import MultiHotEncoder, OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.jobs.liveness import temp_prefix


class Predictor:
    """Scores for images: ``predict(batch)`` on preprocessed arrays, ``predict_urls(urls)``
    on image files (any fsspec URL)."""

    def __init__(self, model: Any, metadata: dict[str, Any]) -> None:
        self.model = model
        self.metadata = metadata
        self.source: dict[str, Any] = {}  # which model this is (set by resolve_model)
        self.classes: list[str] = list(metadata["classes"])
        preprocessing = dict(metadata["preprocessing"])
        self.loader = ImageLoader.from_record(preprocessing)
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
    if not hasattr(tarfile, "data_filter"):
        raise ConfigError("unpacking a model archive safely needs tarfile's extraction filters "
                          "(Python 3.10.12, 3.11.4, 3.12 or newer): upgrade Python.")
    folder = Path(tempfile.mkdtemp(prefix=temp_prefix("model")))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the unpacked copy, at exit
    archive = folder / "saved_model.tar.gz"
    storage.download(archive_url, archive)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")  # refuses absolute paths and links out
    except tarfile.FilterError as exc:
        member = getattr(getattr(exc, "tarinfo", None), "name", "?")
        raise ConfigError(f"{archive_url}: refusing archive member {member!r} ({exc}); an "
                          "exported model holds only files inside its folder.") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ConfigError(f"{archive_url} is not a readable .tar.gz archive ({exc}): give a "
                          "job's artifacts/model/saved_model.tar.gz.") from None  # fmt: skip
    archive.unlink()
    if not (folder / "model.json").is_file():
        raise ConfigError(f"{archive_url} holds no model.json: export it again with brevpipe.")
    try:
        metadata = json.loads((folder / "model.json").read_text())
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{archive_url}: model.json is not JSON ({exc}).") from None
    check_metadata_fields(metadata, archive_url)
    try:
        model = tf.saved_model.load(str(folder / "saved_model"))
    except Exception as exc:  # noqa: BLE001 - any failure: the archive is unusable
        raise ConfigError(f"{archive_url}: cannot load its SavedModel ({type(exc).__name__}); "
                          "export the model again.") from None  # fmt: skip
    check_signature(metadata, model, archive_url)
    return Predictor(model, metadata)


MAX_SIDE = 8192  # pixels per side of a model's input; model.json is untrusted input


def check_metadata_fields(metadata: Any, url: str) -> None:
    """model.json's fields, checked before anything is built from them (one clear error
    naming the field): classes, preprocessing, input_shape."""
    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{url}: model.json {field} {why}; export the model again.")

    if not isinstance(metadata, dict):
        raise bad("", "is not an object")
    classes = metadata.get("classes")
    if (not isinstance(classes, list) or not classes or len(classes) > 100_000
            or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes)):
        raise bad("'classes'", "must be a non-empty list of distinct names")
    preprocessing = metadata.get("preprocessing")
    if not isinstance(preprocessing, dict):
        raise bad("'preprocessing'", "must be an object (the loader's settings)")
    size = preprocessing.get("target_size")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in size)):
        raise bad("'preprocessing.target_size'", f"must be [height, width], 1 to {MAX_SIDE}")
    known = set(ImageLoader.__dataclass_fields__)
    unknown = sorted(set(preprocessing) - known)
    if unknown:
        raise bad("'preprocessing'", f"has unknown keys {unknown}")
    try:
        loader = ImageLoader.from_record(preprocessing)
    except (ConfigError, TypeError, ValueError) as exc:
        raise bad("'preprocessing'", f"is invalid ({exc})") from None
    shape = metadata.get("input_shape")
    if shape is not None and list(shape) != list(loader.output_shape):
        raise bad("'input_shape'", f"{shape} does not match preprocessing "
                                   f"{list(loader.output_shape)}")  # fmt: skip


def check_signature(metadata: dict[str, Any], model: Any, url: str) -> None:
    """The SavedModel's serving signature against model.json: input shape, channels and (for
    classification) the number of classes."""
    loader_shape = list(ImageLoader.from_record(metadata["preprocessing"]).output_shape)
    try:
        [(inputs, _)] = [f.structured_input_signature for f in model.serve.concrete_functions]
        outputs = model.serve.concrete_functions[0].structured_outputs
    except (AttributeError, ValueError):
        raise ConfigError(f"{url}: the SavedModel has no single 'serve' signature; export the "
                          "model again with brevpipe.") from None  # fmt: skip
    expected = [d for d in inputs[0].shape.as_list()[1:]]
    if expected != loader_shape:
        raise ConfigError(f"{url}: model.json preprocessing gives images of shape {loader_shape} "
                          f"(target_size, color_mode) but the model takes {expected}; export "
                          "the model again.")  # fmt: skip
    if metadata.get("task", "classification") != "segmentation":
        classes = outputs.shape.as_list()[-1] if hasattr(outputs, "shape") else None
        if classes is not None and classes != len(metadata["classes"]):
            raise ConfigError(f"{url}: model.json lists {len(metadata['classes'])} classes but "
                              f"the model scores {classes}; export the model again.")
