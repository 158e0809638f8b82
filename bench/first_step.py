"""A Keras callback that writes when the first training step starts (for bench/job_overhead.py).

Set ``FIRST_STEP_FILE``; the callback writes ``time.time()`` there at the first batch.
``brevpipe run`` takes it as ``trainer.callbacks=[{_target_:first_step.clock}]`` with bench/ on
PYTHONPATH. Keras is imported when the callback is made, not with this module: a job checks
that its targets import before it imports TensorFlow, and this must not change that order.
"""

from __future__ import annotations

import os
import time
from typing import Any


def clock() -> Any:
    """A callback that writes the wall-clock time of the first training batch to
    ``$FIRST_STEP_FILE``."""
    import keras

    class FirstStepClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.file = os.environ.get("FIRST_STEP_FILE")

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if self.file:
                with open(self.file, "w") as out:
                    out.write(repr(time.time()))
                self.file = None

    return FirstStepClock()
