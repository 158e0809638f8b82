"""The trainer: compiles and fits a Keras model, reporting every epoch to the job."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brevpipe.checkpoint import Checkpoint
    from brevpipe.data.pipeline import InputPipeline


def job_callback(on_epoch: Callable[[int, dict[str, float]], None]) -> Any:
    """A Keras callback that hands each finished epoch (1-based) and its logs to ``on_epoch``."""
    import keras

    class JobEpochCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

    return JobEpochCallback()


def resolve_verbose(verbose: str | int) -> int:
    """Keras verbosity: a live progress bar on a terminal, one line per epoch otherwise."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


SCHEDULES = ("constant", "cosine")


@dataclass
class Trainer:
    """Optimizer, learning-rate schedule, epochs and batch size; ``callbacks`` adds user Keras
    callbacks. ``optimizer`` is a factory taking ``learning_rate`` (a ``_partial_`` config)."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-3
    schedule: str = "cosine"
    optimizer: Callable[..., Any] | None = None
    callbacks: Sequence[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            from brevpipe.errors import ConfigError

            raise ConfigError(f"trainer.schedule={self.schedule!r}: use one of {SCHEDULES}.")

    def learning_rate(self, steps_per_epoch: int) -> Any:
        """The configured learning rate, or a schedule over all training steps."""
        if self.schedule == "cosine" and steps_per_epoch > 0:
            import keras

            return keras.optimizers.schedules.CosineDecay(
                self.lr, decay_steps=max(1, self.epochs * steps_per_epoch)
            )
        return self.lr

    def fit(
        self,
        model: Any,
        train: InputPipeline,
        validation: InputPipeline | None = None,
        *,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        verbose: str | int = "auto",
        checkpoint: Checkpoint | None = None,
    ) -> Any:
        """Compile and fit; every epoch draws its own sample order and augmentation. With a
        ``checkpoint``, continue after its last saved epoch and save after every epoch."""
        import keras

        steps = len(train)
        optimizer = (self.optimizer or keras.optimizers.Adam)(
            learning_rate=self.learning_rate(steps)
        )
        model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
        start = checkpoint.restore(model) if checkpoint is not None else 0
        callbacks = []
        if on_epoch is not None:
            for row in checkpoint.history if start else []:
                on_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
            callbacks.append(job_callback(on_epoch))
        if checkpoint is not None:
            callbacks.append(checkpoint.callback())
        callbacks += list(self.callbacks)  # after the checkpoint: a failing one loses nothing
        if start >= self.epochs:
            return None
        # Both datasets are endless and cut into epochs by the step counts: Keras 3 warns
        # ("ran out of data") whenever a finite dataset ends. Epoch e draws from (seed, e).
        return model.fit(
            train.get_dataset(epochs=None, start_epoch=start),
            initial_epoch=start,
            steps_per_epoch=steps,
            validation_data=None if validation is None else validation.get_dataset(epochs=None),
            validation_steps=None if validation is None else len(validation),
            epochs=self.epochs,
            callbacks=callbacks,
            verbose=resolve_verbose(verbose),
            shuffle=False,  # the input pipeline shuffles, from (seed, epoch)
        )
