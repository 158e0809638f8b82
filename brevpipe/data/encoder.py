"""Label encoders: class names to one-hot vectors, with a fixed class order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from brevpipe.errors import DataError


@dataclass
class OneHotEncoder:
    """Single-label one-hot encoding; ``classes`` fixes the order (else sorted, from the data)."""

    classes: Sequence[str] | None = None

    def fit(self, categories: Iterable[tuple[str, ...]]) -> OneHotEncoder:
        """Fix the class order from the training categories if none was configured."""
        if self.classes is None:
            self.classes = sorted({label for category in categories for label in category})
        self.classes = [str(c) for c in self.classes]
        return self

    def indices(self, categories: Iterable[tuple[str, ...]]) -> np.ndarray:
        """Class index per sample; an unknown or multi-label category is an error."""
        if self.classes is None:
            raise RuntimeError("OneHotEncoder.fit() must run before indices().")
        position = {c: i for i, c in enumerate(self.classes)}
        out = []
        for category in categories:
            if len(category) != 1:
                raise DataError(
                    f"category {category} has {len(category)} labels; the one-hot encoder "
                    "takes exactly one per sample (check dataset.class_mapping)."
                )
            if category[0] not in position:
                raise DataError(
                    f"class '{category[0]}' is not one of the encoder's classes {self.classes}; "
                    "add it to encoder.classes or filter it with dataset.classes."
                )
            out.append(position[category[0]])
        return np.asarray(out, dtype=np.int32)

    def encode(self, index: object) -> object:
        """tf graph function: class index -> float32 one-hot vector."""
        import tensorflow as tf

        return tf.one_hot(index, len(self.classes), dtype=tf.float32)
