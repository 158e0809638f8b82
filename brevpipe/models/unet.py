"""A small U-Net for semantic segmentation: per-pixel class scores at the input's size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from brevpipe.errors import ConfigError


def build(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64),
    batch_norm: bool = True,
) -> Any:
    """Encoder of conv blocks and poolings, decoder of upsamplings joined with the skips,
    a 1x1 softmax over ``num_classes``. Height and width must divide by 2**(len(filters)-1).

    Settings:
    ``filters``: filters of each level of the encoder (and decoder)
    ``batch_norm``: batch normalisation after each convolution
    """
    import keras
    from keras import layers

    levels = len(filters) - 1
    if any(int(side) % (2**levels) for side in input_shape[:2]):
        raise ConfigError(
            f"model=segmentation: input size {list(input_shape[:2])} must divide by "
            f"{2**levels}; change loader.target_size or model.filters."
        )

    def block(x: Any, width: int, name: str) -> Any:
        for i in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=not batch_norm,
                              name=f"{name}_conv{i}")(x)  # fmt: skip
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
            x = layers.ReLU(name=f"{name}_relu{i}")(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = inputs, []
    for level, width in enumerate(filters[:-1]):
        x = block(x, width, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"pool{level}")(x)
    x = block(x, filters[-1], "bottom")
    for level in reversed(range(levels)):
        x = layers.UpSampling2D(name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, filters[level], f"dec{level}")
    outputs = layers.Conv2D(num_classes, 1, activation="softmax", dtype="float32",
                            name="scores")(x)  # fmt: skip
    return keras.Model(inputs, outputs, name="unet")
