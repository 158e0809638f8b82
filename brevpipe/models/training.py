"""The trainer: compiles and fits a Keras model, reporting every epoch to the job."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from brevpipe.engine import cluster
from brevpipe.errors import ConfigError

if TYPE_CHECKING:
    from brevpipe.data.pipeline import InputPipeline
    from brevpipe.engine.checkpoint import Checkpoint


log = logging.getLogger("brevpipe")


def job_callback(on_epoch: Callable[[int, dict[str, float]], None]) -> Any:
    """A Keras callback that hands each finished epoch (1-based) and its logs to ``on_epoch``."""
    import keras

    class JobEpochCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

    return JobEpochCallback()


def resolve_verbose(verbose: str | int) -> int:
    """Keras verbosity: a live progress bar on a terminal, one line per epoch otherwise
    (``debug``: a line per epoch, and TensorFlow's start-up notices shown)."""
    if verbose == "debug":
        return 2
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


SCHEDULES = ("constant", "cosine", "step")
STRATEGIES = ("default", "mirrored", "multi_worker")
LOSSES = {
    "single_label": "categorical_crossentropy",
    "multi_label": "binary_crossentropy",
    "segmentation": "sparse_categorical_crossentropy",
}


@dataclass
class Trainer:
    """How a model is fitted.

    ``optimizer`` is a factory taking ``learning_rate`` (a ``_partial_`` config); ``schedule``
    is ``constant``, ``cosine`` (to 0 over all steps) or ``step`` (times ``step_factor`` every
    ``step_epochs``). ``early_stopping``: Keras ``EarlyStopping`` arguments (``monitor``,
    ``patience``, ...) or null. ``class_weight``: ``balanced``, ``{class: weight}`` or null.
    ``loss``: ``auto`` (by task) or a Keras loss name. ``mixed_precision`` builds the model
    with the ``mixed_float16`` policy. ``strategy``: ``default``, ``mirrored`` (all local
    GPUs) or ``multi_worker`` (machines listed in ``TF_CONFIG``). ``callbacks`` adds Keras
    callbacks.

    Settings:
    ``epochs``: passes over the training data
    ``batch_size``: images per training step
    ``lr``: the starting learning rate
    ``schedule``: constant, cosine (to 0 over all steps) or step
    ``step_epochs``: epochs between the step schedule's drops
    ``step_factor``: the step schedule's factor at each drop
    ``optimizer``: a Keras optimizer config with _partial_: true (gets the learning rate)
    ``early_stopping``: Keras EarlyStopping arguments ({monitor, patience, ...}) or null
    ``class_weight``: balanced, {class: weight} or null
    ``loss``: auto (by task) or a Keras loss name
    ``mixed_precision``: build the model with the mixed_float16 policy (for GPUs)
    ``strategy``: default, mirrored (all local GPUs) or multi_worker (TF_CONFIG machines)
    ``callbacks``: extra Keras callbacks, each a {_target_: ...} mapping
    ``stop_check_s``: seconds between looks for a brevpipe jobs stop request
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-3
    schedule: str = "cosine"
    step_epochs: int = 5
    step_factor: float = 0.1
    optimizer: Callable[..., Any] | None = None
    early_stopping: Mapping[str, Any] | None = None
    class_weight: str | Mapping[str, float] | None = None
    loss: str = "auto"
    mixed_precision: bool = False
    strategy: str = "default"
    callbacks: Sequence[Any] = field(default_factory=list)
    stop_check_s: float = 2.0  # how often training looks for a `brevpipe jobs stop` request

    def __post_init__(self) -> None:

        if self.schedule not in SCHEDULES:
            raise ConfigError(f"trainer.schedule={self.schedule!r}: use one of {SCHEDULES}.")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy={self.strategy!r}: use one of {STRATEGIES}.")
        if isinstance(self.class_weight, str) and self.class_weight != "balanced":
            raise ConfigError(f"trainer.class_weight={self.class_weight!r}: use balanced, "
                              "a {class: weight} mapping, or null.")  # fmt: skip

    def learning_rate(self, steps_per_epoch: int) -> Any:
        """The configured learning rate, or a schedule over all training steps."""
        import keras

        if self.schedule == "cosine" and steps_per_epoch > 0:
            return keras.optimizers.schedules.CosineDecay(
                self.lr, decay_steps=max(1, self.epochs * steps_per_epoch)
            )
        if self.schedule == "step" and steps_per_epoch > 0:
            drops = max(0, (self.epochs - 1) // max(1, self.step_epochs))
            boundaries = [steps_per_epoch * self.step_epochs * (i + 1) for i in range(drops)]
            values = [self.lr * self.step_factor**i for i in range(drops + 1)]
            if boundaries:
                return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
        return self.lr

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build and compile models inside this: the distribution strategy's scope and the
        mixed-precision policy (restored afterwards)."""
        import keras
        import tensorflow as tf

        if self.strategy == "mirrored":
            strategy = tf.distribute.MirroredStrategy()
        elif self.strategy == "multi_worker":  # one per process: the runner makes it first
            strategy = cluster.multi_worker_strategy()
        else:
            strategy = tf.distribute.get_strategy()
        previous = keras.mixed_precision.global_policy()
        if self.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            with strategy.scope():
                yield
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def class_weights(self, labels: np.ndarray, classes: Sequence[str]) -> dict[int, float] | None:
        """Keras ``class_weight`` from one-hot ``labels`` of the training samples."""
        if self.class_weight is None:
            return None
        if self.class_weight == "balanced":
            counts = np.asarray(labels).sum(axis=0)
            return {i: float(len(labels) / (len(classes) * c)) if c else 0.0
                    for i, c in enumerate(counts)}  # fmt: skip

        unknown = sorted(set(self.class_weight) - set(classes))
        if unknown:
            raise ConfigError(f"trainer.class_weight names unknown classes {unknown}; "
                              f"classes are {list(classes)}.")  # fmt: skip
        return {i: float(self.class_weight.get(c, 1.0)) for i, c in enumerate(classes)}

    def compile(self, model: Any, steps_per_epoch: int, task: str = "single_label") -> None:
        """Compile ``model`` (call inside :meth:`scope`)."""
        import keras

        optimizer = (self.optimizer or keras.optimizers.Adam)(
            learning_rate=self.learning_rate(steps_per_epoch)
        )
        loss = LOSSES[task] if self.loss == "auto" else self.loss
        metrics = ["binary_accuracy"] if task == "multi_label" else ["accuracy"]
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)

    def fit(
        self,
        model: Any,
        train: InputPipeline,
        validation: InputPipeline | None = None,
        *,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        verbose: str | int = "auto",
        checkpoint: Checkpoint | None = None,
        task: str = "single_label",
        stop: Any | None = None,
    ) -> Any:
        """Compile (unless compiled) and fit; every epoch draws its own sample order and
        augmentation. With a ``checkpoint``, continue after its last saved epoch and save
        after every epoch. ``stop``: a Keras callback that ends training early (a stage's
        ``ctx.stop_callback(trainer.stop_check_s)``: ``brevpipe jobs stop``)."""
        import keras

        steps = len(train)
        if not model.compiled:
            with self.scope():
                self.compile(model, steps, task)
        start = checkpoint.restore(model) if checkpoint is not None else 0
        callbacks = [stop] if stop is not None else []
        if checkpoint is not None:  # first: an epoch's end that stops the job (a pruned trial)
            callbacks.append(checkpoint.callback())  # keeps that epoch
        if on_epoch is not None:
            for row in checkpoint.history if start else []:
                on_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
            callbacks.append(job_callback(on_epoch))
        if self.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(**dict(self.early_stopping)))
        callbacks += list(self.callbacks)  # after the checkpoint: a failing one loses nothing
        if start >= self.epochs:
            return None
        class_weight = None
        if self.class_weight is not None and train.labels is not None:
            class_weight = self.class_weights(train.labels, train.encoder.classes)
        data = self._fit_data(train, validation, start)
        try:
            with self._distributed_fit(model):
                return model.fit(
                    **data,
                    initial_epoch=start,
                    epochs=self.epochs,
                    callbacks=callbacks,
                    class_weight=class_weight,
                    verbose=resolve_verbose(verbose),
                    shuffle=False,  # the input pipeline shuffles, from (seed, epoch)
                )
        finally:
            if checkpoint is not None:
                checkpoint.close()  # the last epoch's state is in the bucket, even on errors

    def _fit_data(
        self, train: InputPipeline, validation: InputPipeline | None, start: int
    ) -> dict[str, Any]:
        """``model.fit``'s data arguments. The training data is endless and cut into epochs by
        ``steps_per_epoch`` (Keras 3 warns "ran out of data" whenever a dataset of unknown
        length ends); epoch e draws from (seed, e). Across workers, every batch has a sample
        for each replica."""
        multi_worker = self._multi_worker()
        replicas = cluster.multi_worker_strategy().num_replicas_in_sync if multi_worker else 1
        train_data = train.get_dataset(epochs=None, start_epoch=start, replicas=replicas)
        data = {"x": self._dataset(train_data), "steps_per_epoch": len(train)}
        if validation is not None and multi_worker:
            devel_data = validation.get_dataset(epochs=None, replicas=replicas)
            data["validation_data"] = self._dataset(devel_data)
            data["validation_steps"] = len(validation)
        elif validation is not None:
            data["validation_data"] = validation_dataset(validation)
        return data

    def _multi_worker(self) -> bool:
        """Whether training spans several processes (``multi_worker`` with 2+ in TF_CONFIG)."""
        return self.strategy == cluster.MULTI_WORKER and cluster.worker_role().workers > 1

    def _dataset(self, dataset: Any) -> Any:
        """``dataset`` as the strategy should split it. Across workers every one builds the
        same batches of ``batch_size`` (the global batch) and keeps its share of each: DATA
        sharding (FILE sharding finds no files in a dataset that starts from a counter)."""
        if not self._multi_worker():
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        policy = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = policy
        return dataset.with_options(options)

    @contextlib.contextmanager
    def _distributed_fit(self, model: Any) -> Iterator[None]:
        """Around ``model.fit``: across workers, :func:`keras_multi_worker_fit`."""
        if not self._multi_worker():
            yield
            return
        strategy = cluster.multi_worker_strategy()
        replicas = strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            log.warning("trainer.batch_size=%d is not a multiple of the %d replicas: their "
                        "shares of each batch differ in size and weigh alike in the gradient",
                        self.batch_size, replicas)  # fmt: skip
        with keras_multi_worker_fit(model, strategy):
            yield


VALIDATION_CACHE_BYTES = 512 * 2**20


def validation_dataset(validation: InputPipeline) -> Any:
    """One epoch of ``validation`` as Keras validates on it after every training epoch.

    Keras makes a new iterator of the validation data every epoch, so it always reads the
    pipeline's epoch 0: the same batches each time. Starting brevpipe's pipeline anew costs
    more than validating a small devel set (0.5 s per epoch for the default job's 120
    images, where training the epoch takes 0.7 s), so the batches are kept in memory after
    the first epoch when they fit in ``VALIDATION_CACHE_BYTES``. The length is stated, so
    that Keras reads exactly one epoch and does not warn that the data ran out."""
    import tensorflow as tf

    dataset = validation.get_dataset(epochs=1).apply(
        tf.data.experimental.assert_cardinality(len(validation))
    )
    height, width, channels = validation.loader.output_shape
    masks = validation.mask_loader is not None
    element_bytes = 4 * height * width * (channels + masks)  # float32 image, int32 mask
    if validation.sampler.epoch_size(validation.samples) * element_bytes <= VALIDATION_CACHE_BYTES:
        dataset = dataset.cache()
    return dataset


@contextlib.contextmanager
def keras_multi_worker_fit(model: Any, strategy: Any) -> Iterator[None]:
    """Let Keras 3 ``fit`` a model under a MultiWorkerMirroredStrategy of 2+ workers, which it
    cannot as released (keras-team/keras#20585, Keras 3.15): its symbolic build reduces the
    whole (image, label) batch at once, and it reduces each step's scalar logs along axis 0.

    During ``fit``, the model keeps no strategy of its own (Keras then builds when it traces
    the step, in the strategy's scope entered here) and its steps return their logs with a
    leading axis of 1 (Keras's reduce then averages the workers' values; the epoch's logs
    are read from the metrics, summed over all workers). Afterwards the model stays without
    a strategy: ``predict`` runs on each worker alone, on all its data, like a saved model."""
    steps = {name: getattr(model, name) for name in ("train_step", "test_step")}
    for name, step in steps.items():
        setattr(model, name, _with_leading_axis(step))
    model._distribute_strategy = None
    try:
        with strategy.scope():
            yield
    finally:
        for name in steps:
            vars(model).pop(name, None)  # the class's steps again


def _with_leading_axis(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A train/test step whose logs get a leading axis of 1 (see keras_multi_worker_fit)."""
    import tensorflow as tf

    def wrapped(data: Any) -> Any:
        return tf.nest.map_structure(lambda v: tf.expand_dims(v, 0), step(data))

    return wrapped
