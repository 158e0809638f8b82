"""brevpipe's model as an MLflow model any MLflow tool can load and serve.

Two pyfunc models are logged with each job's run, both "models from code" (MLflow keeps a
three-line file that builds :class:`BrevpipeModel`: nothing is pickled) holding the exported
archive (``saved_model.tar.gz``: the SavedModel and ``model.json``), so nothing depends on Keras
at load time:

- ``mlflow_model`` takes **images**: encoded file bytes (a column ``image`` of a DataFrame, a
  list, or one ``bytes``), or base64 text in JSON (``mlflow models serve`` decodes the
  ``binary`` column of its signature). Each image is decoded and preprocessed by the model's
  own loader exactly as ``brevpipe serve`` does (:class:`ModelService`), so the scores equal
  ``brevpipe predict`` on the same files. The answer is a table like predictions.csv:
  ``predicted`` and ``score_<class>`` per image. This is the model brevpipe registers.
- ``mlflow_model_arrays`` takes float32 batches already preprocessed as ``model.json``'s
  ``preprocessing`` says (``[n, height, width, channels]``) and answers ``[n, classes]``.

Loading either needs brevpipe installed beside MLflow (``--env-manager local``, or an
environment with brevpipe): the model's class lives here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tarfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from unittest import mock

import mlflow.pyfunc
import mlflow.utils.environment

from brevpipe import __version__
from brevpipe.errors import DataError
from brevpipe.serving.service import ModelService

IMAGES, ARRAYS = "mlflow_model", "mlflow_model_arrays"  # artifact paths in the run
ARCHIVE_KEY = "archive"
IMAGE_COLUMN = "image"
REQUIRES = f"brevpipe {__version__} beside MLflow (mlflow models serve --env-manager local)"


class BrevpipeModel(mlflow.pyfunc.PythonModel):
    """The exported archive behind MLflow's pyfunc interface; ``inputs``: ``images`` or
    ``arrays``."""

    # the signature logged with each model is its schema: MLflow is not to read predict()'s
    # type hints for one (it warns when there are none)
    _skip_type_hint_validation = True

    def __init__(self, inputs: str = "images") -> None:
        if inputs not in ("images", "arrays"):
            raise ValueError(f"inputs={inputs!r}: images or arrays")
        self.inputs = inputs
        self._predictor: Any = None
        self._service: Any = None

    def load_context(self, context: Any) -> None:
        from brevpipe.serving.predictor import load_predictor

        predictor = load_predictor(str(context.artifacts[ARCHIVE_KEY]))
        self._predictor = predictor
        if self.inputs == "images":
            self._service = ModelService(predictor, task_threads=1)

    def predict(self, context, model_input, params=None):  # type hints: MLflow reads them
        import numpy as np
        import pandas as pd

        if self.inputs == "arrays":
            return self._predictor.predict(np.asarray(model_input, dtype=np.float32))
        rows = self._service.predict(image_bytes(model_input))
        classes = self._service.predictor.classes
        return pd.DataFrame(
            [{"predicted": r["predicted"], **{f"score_{c}": r["scores"][c] for c in classes}}
             for r in rows],
            columns=["predicted", *(f"score_{c}" for c in classes)],
        )  # fmt: skip


def image_bytes(model_input: Any) -> list[tuple[str, bytes]]:
    """``(name, encoded bytes)`` of each image in what a caller passed: a DataFrame (column
    ``image``, or its only column), a dict with ``image``, a list or array of images, or one
    image; each as bytes or base64 text."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input:
            values = list(model_input[IMAGE_COLUMN])
        elif model_input.shape[1] == 1:
            values = list(model_input.iloc[:, 0])
        else:
            raise DataError(f"give the images in a column named {IMAGE_COLUMN!r}; the input has "
                            f"{list(model_input.columns)[:10]}.")  # fmt: skip
    elif isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise DataError(f"give the images under {IMAGE_COLUMN!r}.")
        found = model_input[IMAGE_COLUMN]
        values = list(found) if isinstance(found, list | tuple | np.ndarray) else [found]
    elif isinstance(model_input, bytes | str):
        values = [model_input]
    elif isinstance(model_input, list | tuple | np.ndarray | pd.Series):
        values = list(np.asarray(model_input, dtype=object).ravel())
    else:
        raise DataError(f"cannot read images from a {type(model_input).__name__}: give image "
                        "file bytes, base64 text, or a DataFrame with an 'image' column.")
    if not values:
        raise DataError("no images given.")
    return [(f"image-{i}", _decoded(value, i)) for i, value in enumerate(values)]


def _decoded(value: Any, index: int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"image {index}: text that is not base64; send the file's bytes "
                            "as base64.") from None  # fmt: skip
    raise DataError(f"image {index}: a {type(value).__name__}, not image bytes or base64 text.")


def requirements() -> list[str]:
    """TensorFlow and MLflow at this process's versions. Not brevpipe itself, which the model's
    code imports: it is not on PyPI, and an environment manager that installed a package of
    that name from an index could install anyone's; serve with ``--env-manager local`` in an
    environment that has brevpipe (the model's metadata says so)."""
    try:
        tensorflow = f"tensorflow-cpu=={version('tensorflow-cpu')}"
    except PackageNotFoundError:
        tensorflow = f"tensorflow=={version('tensorflow')}"
    return [tensorflow, f"mlflow=={version('mlflow')}"]


_SAVING = threading.Lock()  # one save at a time patches MLflow's module (dashboard threads)


@contextlib.contextmanager
def own_requirements_unchecked() -> Iterator[None]:
    """Skip MLflow's check that this environment satisfies the model's requirements while
    saving: :func:`requirements` are this process's own installed versions, so the check
    cannot fail, and it costs 0.7 s per process (it maps every installed distribution's
    files to modules). Where MLflow names it otherwise, the check runs."""
    name = "warn_dependency_requirement_mismatches"
    with _SAVING:
        if not hasattr(mlflow.utils.environment, name):
            yield
            return
        with mock.patch.object(mlflow.utils.environment, name, lambda requirements: None):
            yield


def save_models(archive: Path, folder: Path) -> dict[str, Path]:
    """Both pyfunc models of ``archive`` under ``folder`` (``{artifact path: folder}``).
    ``archive`` is read for ``model.json`` only: no TensorFlow, no Keras here."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    metadata = _model_json(archive)
    classes, shape = list(metadata["classes"]), list(metadata["input_shape"])
    segmentation = metadata.get("task") == "segmentation"
    kept = {k: metadata[k] for k in ("classes", "input_shape", "preprocessing", "task",
                                     "multi_label", "job_id") if k in metadata}  # fmt: skip
    signatures = {
        IMAGES: ModelSignature(
            inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
            outputs=Schema([ColSpec("string", "predicted"),
                            *(ColSpec("double", f"score_{c}") for c in classes)]),
        ),  # fmt: skip
        ARRAYS: ModelSignature(
            inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *shape))]),
            outputs=Schema([TensorSpec(np.dtype("float32"),
                                       (-1, *shape[:2], len(classes)) if segmentation
                                       else (-1, len(classes)))]),
        ),  # fmt: skip
    }
    saved = {}
    # MLflow copies the archive into each model with a progress bar per copy: noise in a job's
    # console (a user who set the variable keeps theirs)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # a segmentation model scores pixels: no table of class scores per image
    kinds = ((ARRAYS, "arrays"),) if segmentation else ((IMAGES, "images"), (ARRAYS, "arrays"))
    for path, inputs in kinds:
        saved[path] = folder / path
        # "models from code": MLflow keeps this file and runs it to load the model; nothing
        # is pickled
        code = folder / f"{path}.py"
        code.write_text(MODEL_CODE.format(inputs=inputs))
        with warnings.catch_warnings(), own_requirements_unchecked():
            # an example image would have to run the model here
            warnings.filterwarnings("ignore", ".*An input example was not provided")
            mlflow.pyfunc.save_model(
                str(saved[path]), python_model=str(code),
                artifacts={ARCHIVE_KEY: str(archive)}, signature=signatures[path],
                pip_requirements=requirements(),
                metadata={**kept, "inputs": inputs, "requires": REQUIRES},
            )  # fmt: skip
    return saved


MODEL_CODE = """\
# brevpipe's model for MLflow (brevpipe.serving.mlflow_model): loading it needs brevpipe.
import mlflow.models

from brevpipe.serving.mlflow_model import BrevpipeModel

mlflow.models.set_model(BrevpipeModel({inputs!r}))
"""


def _model_json(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("model.json")
        if member is None:
            raise DataError(f"{archive} holds no model.json: export the model again.")
        metadata = json.loads(member.read(1 << 20))
    if not isinstance(metadata, dict) or not isinstance(metadata.get("classes"), Sequence):
        raise DataError(f"{archive}: model.json has no classes: export the model again.")
    return metadata
