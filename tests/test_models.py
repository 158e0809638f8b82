"""Model builders (one contract for all) and the trainer's options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brevpipe.api import instantiate
from brevpipe.errors import ConfigError
from brevpipe.models.training import Trainer
from tests.conftest import preset

BUILDERS = ["small_cnn", "mobilenet_v2", "efficientnet_b0", "resnet50"]


def builder(name: str, **overrides):
    return instantiate({**preset("model", name), **overrides})


def tiny_batch(n: int = 8, size: int = 32, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return images, labels


def make_user_model(input_shape, num_classes):
    """A user's own builder, reached by ``_target_``."""
    import keras

    inputs = keras.Input(shape=tuple(input_shape))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_takes_shape_and_classes_and_trains_a_step(name: str) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = builder(name)(input_shape=(32, 32, 3), num_classes=3)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 3)
    images, labels = tiny_batch()
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    scores = np.asarray(model(images, training=False))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_user_builder_by_target() -> None:
    build = instantiate({"_target_": "tests.test_models.make_user_model", "_partial_": True})
    assert build(input_shape=(8, 8, 1), num_classes=2).output_shape == (None, 2)


def test_weights_from_a_url_and_clear_errors(tmp_path: Path) -> None:
    import fsspec

    first = builder("mobilenet_v2")(input_shape=(32, 32, 3), num_classes=3)
    local = tmp_path / "start.weights.h5"
    first.save_weights(local)
    fsspec.filesystem("memory").pipe("/weights/start.weights.h5", local.read_bytes())
    again = builder("mobilenet_v2", weights="memory://weights/start.weights.h5")(
        input_shape=(32, 32, 3), num_classes=3
    )
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="does not exist"):
        builder("mobilenet_v2", weights="memory://weights/nope.weights.h5")((32, 32, 3), 3)
    with pytest.raises(ConfigError, match="does not fit this model"):
        builder("resnet50", weights="memory://weights/start.weights.h5")((32, 32, 3), 3)
    with pytest.raises(ConfigError, match="architecture"):
        builder("mobilenet_v2", architecture="vgg1")((32, 32, 3), 3)


def test_schedules() -> None:
    import keras

    assert Trainer(schedule="constant", lr=0.1).learning_rate(10) == 0.1
    step = Trainer(schedule="step", lr=0.1, epochs=12, step_epochs=5, step_factor=0.5)
    schedule = step.learning_rate(10)
    assert [float(schedule(s)) for s in (0, 49, 51, 99, 101, 119)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )
    cosine = Trainer(schedule="cosine", lr=0.1, epochs=2).learning_rate(10)
    assert isinstance(cosine, keras.optimizers.schedules.CosineDecay)
    assert float(cosine(20)) == pytest.approx(0.0, abs=1e-7)
    for bad in ({"schedule": "linear"}, {"strategy": "tpu"}, {"class_weight": "inverse"}):
        with pytest.raises(ConfigError):
            Trainer(**bad)


def test_class_weights() -> None:
    labels = np.eye(3)[[0, 0, 0, 0, 1, 1, 2, 2]]
    balanced = Trainer(class_weight="balanced").class_weights(labels, ["a", "b", "c"])
    assert balanced == pytest.approx({0: 8 / 12, 1: 8 / 6, 2: 8 / 6})
    explicit = Trainer(class_weight={"b": 3.0}).class_weights(labels, ["a", "b", "c"])
    assert explicit == {0: 1.0, 1: 3.0, 2: 1.0}
    with pytest.raises(ConfigError, match="unknown classes"):
        Trainer(class_weight={"zebra": 2.0}).class_weights(labels, ["a", "b", "c"])
    assert Trainer().class_weights(labels, ["a", "b", "c"]) is None


@pytest.fixture
def pipelines(tmp_path: Path):
    """InputPipelines over a few generated images: (train, devel)."""
    from brevpipe.data.encoder import OneHotEncoder
    from brevpipe.data.loader import ImageLoader
    from brevpipe.data.pipeline import InputPipeline
    from brevpipe.data.sampler import Sampler
    from brevpipe.data.shapes import ShapesDataset

    samples = ShapesDataset(samples_per_class=8, image_size=32,
                            cache_dir=str(tmp_path)).find_samples()  # fmt: skip
    encoder = OneHotEncoder().fit(samples["category"])
    loader = ImageLoader(target_size=[32, 32])
    train = InputPipeline(samples, loader, encoder=encoder, batch_size=8,
                          sampler=Sampler(shuffle=True, seed=1), seed=1)  # fmt: skip
    devel = InputPipeline(samples.iloc[::2], loader, encoder=encoder, batch_size=8)
    return train, devel


def test_early_stopping_mixed_precision_and_mirrored_strategy(pipelines) -> None:
    import keras

    train, devel = pipelines
    small = builder("small_cnn", filters=[4], dense=8)
    stopper = Trainer(epochs=30, lr=0.0, schedule="constant",  # nothing improves
                      early_stopping={"monitor": "val_loss", "patience": 1})  # fmt: skip
    keras.utils.set_random_seed(0)
    with stopper.scope():
        model = small(input_shape=(32, 32, 3), num_classes=3)
    history = stopper.fit(model, train, devel, verbose=0)
    assert len(history.history["loss"]) < 30

    mixed = Trainer(epochs=1, mixed_precision=True, strategy="mirrored")
    with mixed.scope():
        model = small(input_shape=(32, 32, 3), num_classes=3)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        mixed.compile(model, len(train))
    assert keras.mixed_precision.global_policy().name == "float32", "policy restored"
    assert model.layers[1].compute_dtype == "float16"
    assert model.output.dtype == "float32"
    history = mixed.fit(model, train, devel, verbose=0, on_epoch=lambda e, logs: None)
    assert np.isfinite(history.history["loss"][0])
    balanced = Trainer(epochs=1, class_weight="balanced")
    keras.utils.set_random_seed(0)
    model = small(input_shape=(32, 32, 3), num_classes=3)
    assert np.isfinite(balanced.fit(model, train, verbose=0).history["loss"][0])


def test_segmentation_builder_trains_a_step_on_masks() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = builder("segmentation")(input_shape=(32, 32, 3), num_classes=4)
    assert model.output_shape == (None, 32, 32, 4)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    masks = rng.integers(0, 4, (4, 32, 32, 1)).astype(np.int32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert np.isfinite(model.train_on_batch(images, masks))
    with pytest.raises(ConfigError, match="must divide by 4"):
        builder("segmentation")(input_shape=(30, 32, 3), num_classes=2)


def test_validation_reads_each_devel_image_once_per_epoch_from_memory(pipelines) -> None:
    """Every epoch validates on all devel images, once, with no "ran out of data" warning;
    after the first epoch they come from memory (a file removed then is not missed), and the
    metrics are those of evaluating the model on the devel pipeline itself."""
    import warnings

    import keras

    from brevpipe.data.pipeline import InputPipeline

    everything, devel = pipelines  # devel: every other image; train on the others
    train = InputPipeline(everything.samples.iloc[1::2], everything.loader,
                          encoder=everything.encoder, batch_size=8)  # fmt: skip
    files = list(devel.samples["path"])
    Path(files[0]).rename(files[0] + ".moved")  # would fail a read: the cache must be filled
    with pytest.raises(Exception, match="moved|No such file|NotFound"):
        next(devel.numpy_iterator())
    Path(files[0] + ".moved").rename(files[0])

    class RemoveDevelFiles(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                for file in files:
                    Path(file).rename(file + ".moved")

    fit = Trainer(epochs=3, callbacks=[RemoveDevelFiles()])
    keras.utils.set_random_seed(0)
    model = builder("small_cnn", filters=[4], dense=8)(input_shape=(32, 32, 3), num_classes=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit.fit(model, train, devel, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    for file in files:
        Path(file + ".moved").rename(file)
    scores = model.evaluate(devel.get_dataset(epochs=None), steps=len(devel), verbose=0,
                            return_dict=True)  # fmt: skip
    assert history.history["val_loss"][-1] == pytest.approx(scores["loss"], rel=1e-5)
    assert history.history["val_accuracy"][-1] == pytest.approx(scores["accuracy"])
