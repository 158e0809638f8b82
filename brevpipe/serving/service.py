"""The model behind ``brevpipe serve``: decodes uploads and scores them; asynchronous tasks.

Uploads are decoded by the model's own :class:`ImageLoader` (``decode`` then ``normalize``, the
steps the input pipeline runs for an image without augmentation), so scores equal
``brevpipe predict`` on the same files. One model call runs at a time (a lock). An image that
does not decode, or whose header announces more than ``max_pixels``, is a :class:`DataError`
naming it; more than ``max_pending`` tasks waiting is :class:`ServiceBusy`. The HTTP app is
:mod:`brevpipe.serving.app`.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from PIL import Image

from brevpipe.errors import BrevpipeError, ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

    from brevpipe.serving.predictor import Predictor

MAX_FINISHED_TASKS = 1000  # finished tasks kept for GET /tasks/{id}; the oldest go first
MAX_PENDING_TASKS = 256  # tasks queued or running (each holds its images): more get 503
MAX_PIXELS = 25_000_000  # per image, read from its header before decoding (decompression bombs)
DECODE_SLOTS = 4  # images decoded at once, whatever the number of request threads
STATES = ("PENDING", "STARTED", "SUCCESS", "FAILURE")


class ServiceBusy(BrevpipeError):
    """Too many asynchronous tasks are waiting (HTTP 503)."""


class ModelService:
    """Decodes uploads with the model's ImageLoader and scores them, one model call at a time;
    runs asynchronous tasks in a thread pool and remembers their state."""

    def __init__(
        self,
        predictor: Predictor,
        task_threads: int = 2,
        max_pending: int = MAX_PENDING_TASKS,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self._model_lock = threading.Lock()
        self._tasks_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self.max_pending = int(max_pending)
        self.max_pixels = int(max_pixels)
        self.tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._active = self._prepare(predictor)
        self.executor = ThreadPoolExecutor(max(1, task_threads), thread_name_prefix="brevpipe-task")

    def _prepare(self, predictor: Predictor) -> tuple[Predictor, Any]:
        """The predictor with its traced decoder, warmed on one image."""
        import numpy as np
        import tensorflow as tf

        if predictor.metadata.get("task") == "segmentation":
            raise ConfigError("this is a segmentation model: the service returns class scores "
                              "per image; serve a classification model.")  # fmt: skip
        loader = predictor.loader

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def decode(data: Any) -> Any:
            # the input pipeline's steps for one image: decode_source, resize, (no
            # augmentation), normalize
            return loader.normalize(loader.decode(data))

        decode.get_concrete_function()  # trace once, now
        with self._model_lock:
            predictor.predict(np.zeros((1, *loader.output_shape), np.float32))  # warm the model
        return predictor, decode

    @property
    def predictor(self) -> Predictor:
        return self._active[0]

    def swap(self, predictor: Predictor) -> None:
        """Serve ``predictor`` from now on (a moved alias): it is loaded and warmed first, then
        replaces the model in one step; a request under way finishes with the model it began
        with."""
        self._active = self._prepare(predictor)

    def decode(self, name: str, data: bytes, decoder: Any = None) -> np.ndarray:
        """One image as the model sees it; a :class:`DataError` naming it if it does not decode.
        ``decoder``: the active model's unless given."""
        from brevpipe.data.decode import error_text

        if not data:
            raise DataError(f"image {name!r} is empty.")
        self._check_pixels(name, data)
        try:
            with self._decode_slots:
                return (decoder or self._active[1])(data).numpy()
        except Exception as exc:  # noqa: BLE001 - any decode failure makes the image unusable
            reason = error_text(getattr(exc, "message", None) or str(exc) or "")
            if reason == "cannot decode":  # graph-mode errors keep their detail in the log
                reason = "not a readable JPEG, PNG, BMP, GIF or WebP file (corrupt or truncated?)"
            raise DataError(f"image {name!r} cannot be decoded: {reason}.") from None

    def _check_pixels(self, name: str, data: bytes) -> None:
        """Refuse images whose header announces more than ``max_pixels`` (a few kilobytes of
        PNG can decode to gigabytes), and images whose header Pillow cannot read: no decoder
        sees an image of unknown size."""

        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
        except Image.DecompressionBombError:  # Pillow's own limit, far above ours
            raise DataError(f"image {name!r} is over the limit of {self.max_pixels} pixels "
                            "(--max-pixels): send a smaller image.") from None  # fmt: skip
        except Exception:  # noqa: BLE001 - whatever Pillow raises on a header it cannot read
            raise DataError(f"image {name!r} cannot be decoded: not a readable JPEG, PNG, BMP, "
                            "GIF or WebP file (corrupt or truncated?).") from None  # fmt: skip
        if width * height > self.max_pixels:
            raise DataError(f"image {name!r} is {width}x{height} pixels, over the limit of "
                            f"{self.max_pixels} (--max-pixels): send a smaller image.")  # fmt: skip

    def predict_batch(self, images: np.ndarray, predictor: Predictor | None = None) -> np.ndarray:
        """Scores for preprocessed images; the model is called by one thread at a time."""
        with self._model_lock:
            return (predictor or self.predictor).predict(images)

    def predict(self, images: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """``[{name, predicted, scores: {class: score}}]`` for ``(name, encoded bytes)`` pairs."""
        import numpy as np

        predictor, decoder = self._active  # one model for the whole request
        batch = np.stack([self.decode(name, data, decoder) for name, data in images])
        scores = self.predict_batch(batch, predictor)
        decided = predictor.decide(scores)
        classes = predictor.classes
        return [
            {"name": name, "predicted": label,
             "scores": {c: float(v) for c, v in zip(classes, row, strict=True)}}
            for (name, _), label, row in zip(images, decided, scores, strict=True)
        ]  # fmt: skip

    # -- asynchronous tasks ----------------------------------------------------------------
    def submit(self, images: Sequence[tuple[str, bytes]]) -> str:
        """Queue a prediction; returns its task id. Each image's header is checked first
        (:class:`DataError`); :class:`ServiceBusy` when ``max_pending`` tasks are already queued
        or running."""
        for name, data in images:  # refused now (422), not in the task: no decoder sees them
            if not data:
                raise DataError(f"image {name!r} is empty.")
            self._check_pixels(name, data)
        task_id = uuid.uuid4().hex
        with self._tasks_lock:
            busy = sum(v["state"] in ("PENDING", "STARTED") for v in self.tasks.values())
            if busy >= self.max_pending:
                raise ServiceBusy(f"{busy} tasks are queued or running (the limit, "
                                  "--max-pending); retry later.")  # fmt: skip
            self.tasks[task_id] = {"task_id": task_id, "state": "PENDING"}
            self._forget_old()
        self.executor.submit(self._run, task_id, list(images))
        return task_id

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self._tasks_lock:
            record = self.tasks.get(task_id)
            return dict(record) if record is not None else None

    def _set(self, task_id: str, **fields: Any) -> None:
        with self._tasks_lock:
            if task_id in self.tasks:
                self.tasks[task_id].update(fields)

    def _run(self, task_id: str, images: list[tuple[str, bytes]]) -> None:
        self._set(task_id, state="STARTED")
        try:
            result = {"predictions": self.predict(images)}
        except BrevpipeError as exc:
            self._set(task_id, state="FAILURE", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported in the task, the service goes on
            self._set(task_id, state="FAILURE", error=f"{type(exc).__name__}: {exc}")
        else:
            self._set(task_id, state="SUCCESS", result=result)

    def _forget_old(self) -> None:
        finished = [k for k, v in self.tasks.items() if v["state"] in ("SUCCESS", "FAILURE")]
        for key in finished[: max(0, len(finished) - MAX_FINISHED_TASKS)]:
            del self.tasks[key]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
