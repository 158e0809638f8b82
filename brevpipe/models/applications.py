"""Keras applications as classifiers: MobileNetV2, EfficientNetB0, ResNet50.

Always built with ``weights=None`` (nothing is downloaded at run time); ``weights`` may name a
Keras weights file (``.weights.h5``) on any fsspec URL to start from, e.g. weights saved by an
earlier job.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brevpipe.errors import ConfigError
from brevpipe.io import storage

ARCHITECTURES = {
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_b0": "EfficientNetB0",
    "resnet50": "ResNet50",
}


def build(
    input_shape: Sequence[int],
    num_classes: int,
    architecture: str = "mobilenet_v2",
    weights: str | None = None,
    dropout: float = 0.2,
    bn_momentum: float | None = 0.9,
    multi_label: bool = False,
    **kwargs: Any,
) -> Any:
    """``architecture`` without its top, global average pooling, dropout and a softmax layer
    (sigmoid scores per class when ``multi_label``).
    ``kwargs`` go to the Keras application (e.g. ``alpha`` for MobileNetV2).

    ``bn_momentum`` replaces the batch-norm momentum of the application (0.99 or 0.999 there,
    tuned for ImageNet's long runs): on a few hundred training steps from scratch the moving
    statistics would not catch up, and the model would predict one class at inference.

    Settings:
    ``weights``: null (random, no download) or the URL of a .weights.h5 file
    ``dropout``: dropout rate before the classifier
    ``architecture``: mobilenet_v2, efficientnet_b0 or resnet50
    ``bn_momentum``: batch-norm momentum of the application (null keeps Keras's)
    """
    import keras
    from keras import layers

    if architecture not in ARCHITECTURES:
        raise ConfigError(f"model.architecture={architecture!r}: choose one of "
                          f"{sorted(ARCHITECTURES)}.")  # fmt: skip
    application = getattr(keras.applications, ARCHITECTURES[architecture])
    base = application(include_top=False, weights=None, input_shape=tuple(input_shape),
                       pooling="avg", **kwargs)  # fmt: skip
    if bn_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    x = layers.Dropout(dropout, name="dropout")(base.output)
    activation = "sigmoid" if multi_label else "softmax"
    outputs = layers.Dense(num_classes, activation=activation, name="scores", dtype="float32")(x)
    model = keras.Model(base.input, outputs, name=architecture)
    if weights:
        load_weights(model, weights)
    return model


def load_weights(model: Any, url: str) -> None:
    """Load a ``.weights.h5`` file from any fsspec URL into ``model``."""
    if not storage.exists(url):
        raise ConfigError(f"model.weights={url} does not exist; give the URL of a "
                          ".weights.h5 file (no downloads from the internet).")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="brevpipe-weights-") as tmp:
        local = Path(tmp, "start.weights.h5")
        storage.download(url, local)
        try:
            with warnings.catch_warnings():  # Keras notes containers of application models
                warnings.filterwarnings("ignore", message="Skipping nested container")
                model.load_weights(local)
        except ValueError as exc:
            raise ConfigError(f"model.weights={url} does not fit this model: {exc}") from None
