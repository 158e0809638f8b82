"""Training checkpoints in the job bucket, so that a killed job resumes at its last epoch.

After every epoch the model's variables, the optimizer's state and the random generators'
state go to ``<stage folder>/checkpoint/`` on any fsspec URL: ``state-<epoch>.npz``, then
``checkpoint.json``, which names it and is written last, then the previous epoch's state goes.
A job killed at any moment thus leaves a marker and the state it names (a state written over
in place, as ``state.npz`` was, could be an epoch ahead of its marker). The values are copied at
the epoch's end (a few ms); writing and uploading them happens in a background thread while
the next epoch trains. A resumed job whose train stage has the same cache key restores them and
continues with the next epoch; with the input pipeline seeded from (seed, epoch), it ends with
the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from brevpipe.io import storage

log = logging.getLogger("brevpipe")
MARKER = "checkpoint.json"
STATE = "state.npz"  # the state of a marker that names none (brevpipe before 2026-12-07)


def state_name(epoch: int) -> str:
    """The state file of ``epoch``'s checkpoint."""
    return f"state-{epoch:05d}.npz"


def _variables(model: Any) -> list[Any]:
    """Everything training changes, in a fixed order: the model's variables (weights and
    statistics), the optimizer's (iterations, moments) and the random generators' states."""
    found, seen = [], set()
    for variable in [*model.variables, *model.optimizer.variables, *_seed_generators(model)]:
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


def _seed_generators(model: Any) -> list[Any]:
    """The state variables of the model's random generators (dropout and friends)."""
    import keras

    found = []
    for layer in model._flatten_layers(include_self=False):
        for attr in vars(layer).values():
            if isinstance(attr, keras.random.SeedGenerator):
                found.append(attr.state)
    return found


class Checkpoint:
    """Save and restore one training run's state at ``url`` for the stage's ``key``."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.history: list[dict[str, Any]] = []
        self.restored_epoch = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None
        self._state_file: str | None = None  # the state that the marker in the bucket names

    def restore(self, model: Any) -> int:
        """Load the last saved epoch into ``model`` (compiled); return it (0: none saved)."""
        marker_url = storage.join(self.url, MARKER)
        if not storage.exists(marker_url):
            return 0
        marker = storage.read_json(marker_url)
        if marker.get("key") != self.key:
            log.info("ignoring a checkpoint of another configuration at %s", self.url)
            return 0
        model.optimizer.build(model.trainable_variables)
        state_file = marker.get("state", STATE)
        if not isinstance(state_file, str) or "/" in state_file or not state_file.endswith(".npz"):
            log.warning("ignoring a checkpoint whose marker names no state file at %s", self.url)
            return 0
        with np.load(io.BytesIO(storage.read_bytes(storage.join(self.url, state_file)))) as state:
            values = [state[f"v{i}"] for i in range(len(state.files))]
        variables = _variables(model)
        if len(values) != len(variables) or any(
            tuple(v.shape) != a.shape for v, a in zip(variables, values, strict=True)
        ):
            log.warning("ignoring a checkpoint that does not fit the model at %s", self.url)
            return 0
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        self.history = marker["history"]
        self._state_file = state_file
        log.info("resuming training after epoch %d from %s", marker["epoch"], self.url)
        self.restored_epoch = int(marker["epoch"])
        return self.restored_epoch

    def save(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        """Copy the state after ``epoch`` (1-based) now; write it in the background."""
        self.history.append({"epoch": epoch, **logs})
        values = [np.array(v.numpy()) for v in _variables(model)]
        marker = {"key": self.key, "epoch": epoch, "state": state_name(epoch),
                  "history": list(self.history)}  # fmt: skip
        self.wait()  # one write at a time, in order
        self._pending = self._writer.submit(storage.carried(self._write), values, marker)

    def _write(self, values: list[np.ndarray], marker: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **{f"v{i}": value for i, value in enumerate(values)})
        storage.write_bytes(storage.join(self.url, marker["state"]), buffer.getvalue())
        storage.write_json(storage.join(self.url, MARKER), marker)  # names a whole state
        previous, self._state_file = self._state_file, marker["state"]
        if previous not in (None, marker["state"]):  # a kill before this leaves a spare file
            fs, path = storage.get_fs(storage.join(self.url, previous))
            with contextlib.suppress(FileNotFoundError):
                storage.call(fs, self.url, "rm", path)

    def wait(self) -> None:
        """Block until the last save is written (raises its error, if any)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the last save (raises its error, if any) and end the writer's thread:
        training is over (a long-lived process, such as the dashboard or a sweep, would
        otherwise keep one idle thread per job)."""
        try:
            self.wait()
        finally:
            self._writer.shutdown(wait=True)

    def callback(self) -> Any:
        """A Keras callback that saves after every epoch."""
        import keras

        save: Callable[[Any, int, dict[str, float]], None] = self.save

        class CheckpointCallback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                save(self.model, epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

        return CheckpointCallback()

    def remove(self) -> None:
        """Drop the checkpoint once the stage's outputs are saved."""
        self.wait()
        fs, path = storage.get_fs(self.url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
