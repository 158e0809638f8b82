"""The input pipeline: a tf.data dataset of (image, one-hot) batches from a sample table."""

from __future__ import annotations

from typing import Any

import pandas as pd

from brevpipe import storage
from brevpipe.data.encoder import OneHotEncoder
from brevpipe.data.loader import ImageLoader


def build_dataset(
    samples: pd.DataFrame,
    loader: ImageLoader,
    encoder: OneHotEncoder,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_buffer: int | None = None,
) -> Any:
    """Batches of ``(image, one_hot)``; parallel, deterministic maps; prefetched.

    With ``shuffle`` the order is reshuffled every epoch, deterministically from ``seed``.
    """
    import tensorflow as tf

    paths = samples["path"].tolist()
    labels = encoder.indices(samples["category"])
    local = all(storage.is_local(p) for p in paths)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        buffer = min(len(paths), shuffle_buffer or len(paths))
        ds = ds.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda path, label: (loader.load(path, local), encoder.encode(label)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
