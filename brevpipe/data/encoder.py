"""Label encoders: categories (tuples of class names) to fixed-order label vectors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from brevpipe.errors import ConfigError, DataError


@dataclass
class OneHotEncoder:
    """Single-label one-hot encoding.

    ``classes`` fixes the order (else the sorted class names of the training data, see
    :meth:`fit`). ``on_unknown``: ``raise`` (default) or ``zero`` (an all-zero row).

    Settings:
    ``classes``: the class order; null: the sorted class names of the training data
    ``on_unknown``: raise, or zero (an all-zero row) for a class outside ``classes``
    """

    classes: Sequence[str] | None = None
    on_unknown: str = "raise"
    multi_label = False

    def __post_init__(self) -> None:
        if self.on_unknown not in ("raise", "zero"):
            raise ConfigError(f"encoder.on_unknown={self.on_unknown!r}: use raise or zero.")

    def fit(self, categories: Iterable[tuple[str, ...]]) -> OneHotEncoder:
        """Fix the class order from the training categories if none was configured."""
        if self.classes is None:
            self.classes = sorted({label for category in categories for label in category})
        self.classes = [str(c) for c in self.classes]
        return self

    def _positions(self) -> dict[str, int]:
        if self.classes is None:
            raise RuntimeError(f"{type(self).__name__}.fit() must run before encoding.")
        return {c: i for i, c in enumerate(self.classes)}

    def _unknown(self, label: str) -> None:
        if self.on_unknown == "raise":
            raise DataError(
                f"class '{label}' is not one of the encoder's classes {self.classes}; add it "
                "to encoder.classes, filter it with dataset.classes, or set "
                "encoder.on_unknown=zero."
            )

    def indices(self, categories: Iterable[tuple[str, ...]]) -> np.ndarray:
        """Class index per sample (-1 for an unknown class when ``on_unknown=zero``)."""
        position = self._positions()
        out = []
        for category in categories:
            if len(category) != 1:
                raise DataError(
                    f"category {category} has {len(category)} labels; the one-hot encoder "
                    "takes exactly one per sample (use encoder=multihot for multi-label)."
                )
            if category[0] not in position:
                self._unknown(category[0])
            out.append(position.get(category[0], -1))
        return np.asarray(out, dtype=np.int32)

    def transform(self, categories: Iterable[tuple[str, ...]]) -> np.ndarray:
        """``[samples, classes]`` float32 one-hot rows."""
        index = self.indices(categories)
        rows = np.zeros((len(index), len(self.classes)), dtype=np.float32)
        known = index >= 0
        rows[np.flatnonzero(known), index[known]] = 1.0
        return rows

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """``[samples, classes]`` 0/1 decisions from model scores: the top class."""
        decisions = np.zeros(scores.shape, dtype=np.int32)
        decisions[np.arange(len(scores)), np.asarray(scores).argmax(axis=1)] = 1
        return decisions

    def decode(self, scores: np.ndarray) -> list[tuple[str, ...]]:
        """The predicted category (a tuple of class names) per row of ``scores``."""
        classes = self._positions()
        names = list(classes)
        return [tuple(names[i] for i in np.flatnonzero(row)) for row in self.decide(scores)]


@dataclass
class MultiHotEncoder(OneHotEncoder):
    """Multi-label encoding: one 1 per label of the sample; rows of any label count batch.
    A label is predicted when its (sigmoid) score reaches ``threshold``.

    Settings:
    ``threshold``: a label is predicted when its score reaches this
    """

    threshold: float = 0.5
    multi_label = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.threshold) < 1.0:
            raise ConfigError(f"encoder.threshold={self.threshold}: use a value in (0, 1).")

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores) >= float(self.threshold)).astype(np.int32)

    def transform(self, categories: Iterable[tuple[str, ...]]) -> np.ndarray:
        position = self._positions()
        categories = list(categories)
        rows = np.zeros((len(categories), len(self.classes)), dtype=np.float32)
        for i, category in enumerate(categories):
            for label in category:
                if label in position:
                    rows[i, position[label]] = 1.0
                else:
                    self._unknown(label)
        return rows
