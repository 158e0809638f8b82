"""Samplers: which samples each epoch sees, in which order, reshuffled from (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brevpipe.errors import ConfigError

WEIGHTINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "uniform": lambda n: np.ones_like(n, dtype=float),  # every group equally often
    "count": lambda n: n.astype(float),  # groups as often as they are large (= plain uniform)
    "sqrt": lambda n: np.sqrt(n),
    "log": lambda n: np.log(n),  # a group of one sample gets weight 0
    "logx+1": lambda n: np.log(n) + 1.0,
}


@dataclass
class Sampler:
    """Per-epoch sample order.

    Without ``groupby``: every sample once per epoch, shuffled (or in table order).
    With ``groupby`` (columns such as ``category``): an epoch of table-size draws, groups
    chosen with probability proportional to ``weighting(group size)``, samples uniformly
    within their group (with replacement). ``repeat`` makes an epoch that many passes (each
    shuffled on its own); ``max_epoch_samples`` caps every epoch. Everything is a pure
    function of (seed, epoch).

    Settings:
    ``shuffle``: reshuffle every epoch (false: table order)
    ``groupby``: columns whose groups are drawn by weighting (such as [category]), or null
    ``max_epoch_samples``: cap on the samples of every epoch, or null
    ``repeat``: passes over the data per epoch (each reshuffled)
    ``weighting``: uniform, count, sqrt, log or logx+1 of the group size
    """

    shuffle: bool = True
    groupby: Sequence[str] | None = None
    weighting: str = "uniform"
    max_epoch_samples: int | None = None
    repeat: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"sampler.weighting={self.weighting!r}: use one of {', '.join(WEIGHTINGS)}."
            )
        if self.max_epoch_samples is not None and self.max_epoch_samples < 1:
            raise ConfigError("sampler.max_epoch_samples must be at least 1 (or null).")
        if self.repeat < 1:
            raise ConfigError("sampler.repeat must be at least 1.")
        self.groupby = list(self.groupby) if self.groupby else None

    def epoch_size(self, samples: pd.DataFrame) -> int:
        size = len(samples) * self.repeat
        return min(size, self.max_epoch_samples) if self.max_epoch_samples else size

    def batches(self, samples: pd.DataFrame, batch_size: int) -> int:
        """Number of batches in an epoch."""
        return math.ceil(self.epoch_size(samples) / batch_size)

    def group_weights(self, samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(group id per row, target probability per group)``."""
        if not self.groupby:
            raise ConfigError("sampler.groupby is not set; group weights need it.")
        missing = [c for c in self.groupby if c not in samples]
        if missing:
            raise ConfigError(f"sampler.groupby: columns {missing} are not in the sample table.")
        keys = samples[self.groupby].astype(str).agg("|".join, axis=1)
        codes, uniques = pd.factorize(keys, sort=True)
        counts = np.bincount(codes, minlength=len(uniques))
        weights = WEIGHTINGS[self.weighting](counts)
        if not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ConfigError(
                f"sampler.weighting={self.weighting!r} gives no group a positive weight "
                "(every group has one sample?); use logx+1 or sqrt."
            )
        return codes, weights / weights.sum()

    def epoch_indices(self, samples: pd.DataFrame, epoch: int) -> np.ndarray:
        """Row positions (into ``samples``) for ``epoch``; equal inputs give equal outputs."""
        n = len(samples)
        size = self.epoch_size(samples)
        rng = np.random.default_rng([self.seed, epoch])
        if not self.groupby:
            passes = [rng.permutation(n) if self.shuffle else np.arange(n)
                      for _ in range(self.repeat)]  # fmt: skip
            return np.concatenate(passes)[:size]
        codes, probabilities = self.group_weights(samples)
        members = [np.flatnonzero(codes == g) for g in range(len(probabilities))]
        chosen = rng.choice(len(probabilities), size=size, p=probabilities)
        picks = rng.random(size)
        return np.array(
            [members[g][int(u * len(members[g]))] for g, u in zip(chosen, picks, strict=True)],
            dtype=np.int64,
        )
