"""Components used by tests through ``_target_`` (as a user's own package would be)."""

from __future__ import annotations

import keras


class RaiseAtEpoch(keras.callbacks.Callback):
    """Simulates a crash: raises at the end of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch: int = 1) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 >= self.epoch:
            raise RuntimeError(f"simulated crash after epoch {epoch + 1}")
