"""Training checkpoints in the job bucket, so that a killed job resumes at its last epoch.

After every epoch the model's weights, the optimizer's state and the random generators'
state go to ``<stage folder>/checkpoint/`` on any fsspec URL (``weights.h5``, then
``checkpoint.json``, written last). A resumed job whose train stage has the same cache key
restores them and continues with the next epoch; with the input pipeline seeded from
(seed, epoch), it ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brevpipe import storage

log = logging.getLogger("brevpipe")
WEIGHTS = "weights.weights.h5"
MARKER = "checkpoint.json"


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

    def __init__(self, url: str, key: str, scratch: str) -> None:
        self.url = url
        self.key = key
        self.scratch = Path(scratch)
        self.history: list[dict[str, Any]] = []
        self.restored_epoch = 0

    def restore(self, model: Any) -> int:
        """Load the last saved epoch into ``model`` (compiled); return it (0: none saved)."""
        marker_url = storage.join(self.url, MARKER)
        if not storage.exists(marker_url):
            return 0
        marker = storage.read_json(marker_url)
        if marker.get("key") != self.key:
            log.info("ignoring a checkpoint of another configuration at %s", self.url)
            return 0
        local = self.scratch / WEIGHTS
        storage.download(storage.join(self.url, WEIGHTS), local)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(local)
        for variable, value in zip(_seed_generators(model), marker["seed_states"], strict=True):
            variable.assign(value)
        self.history = marker["history"]
        log.info("resuming training after epoch %d from %s", marker["epoch"], self.url)
        self.restored_epoch = int(marker["epoch"])
        return self.restored_epoch

    def save(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        """Save the state after ``epoch`` (1-based); the marker goes last."""
        self.history.append({"epoch": epoch, **logs})
        local = self.scratch / WEIGHTS
        local.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(local)
        storage.upload(local, storage.join(self.url, WEIGHTS))
        storage.write_json(storage.join(self.url, MARKER), {
            "key": self.key, "epoch": epoch, "history": self.history,
            "seed_states": [v.numpy().tolist() for v in _seed_generators(model)],
        })  # fmt: skip

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
        fs, path = storage.get_fs(self.url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
