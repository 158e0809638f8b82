"""A small convolutional classifier that trains in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def build(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64, 64),
    dense: int = 64,
    dropout: float = 0.2,
    batch_norm: bool = True,
    multi_label: bool = False,
) -> Any:
    """Conv-ReLU-pool blocks (optionally batch-normalised), global average pooling, a dense
    layer and softmax (sigmoid scores per class when ``multi_label``).

    Settings:
    ``filters``: filters of each conv block
    ``dense``: units of the dense layer
    ``dropout``: dropout rate before the classifier
    ``batch_norm``: batch normalisation after each convolution
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for i, width in enumerate(filters):
        x = layers.Conv2D(width, 3, padding="same", use_bias=not batch_norm, name=f"conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(dense, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    activation = "sigmoid" if multi_label else "softmax"
    outputs = layers.Dense(num_classes, activation=activation, name="scores", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
