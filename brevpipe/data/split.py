"""Seeded, stratified train/devel/test split that keeps old assignments when data grows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brevpipe.errors import ConfigError
from brevpipe.seeding import derive_seed

PURPOSES = ("train", "devel", "test")


def _key(row: pd.Series, columns: Sequence[str]) -> str:
    return "|".join(str(row[c]) for c in columns)


@dataclass
class SampleSplit:
    """Assign each sample a purpose (``train``/``devel``/``test``).

    - ``fractions``: share of each purpose, normalised; applied within each stratum
      (``stratify`` columns, e.g. ``category``).
    - ``uniqueness``: samples with equal values in these columns (e.g. ``etag``, the content
      hash) form one group that is never divided between purposes.
    - ``previous``: an earlier assignment (``path``, ``purpose`` and the uniqueness columns);
      its samples keep their purpose, new samples fill each stratum towards the fractions.
    """

    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "devel": 0.2, "test": 0.0}
    )
    stratify: Sequence[str] = ("category",)
    uniqueness: Sequence[str] = ("etag",)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fractions) - set(PURPOSES))
        if unknown:
            raise ConfigError(f"split.fractions: unknown purposes {unknown}; use {PURPOSES}.")
        if any(float(v) < 0 for v in self.fractions.values()) or not sum(self.fractions.values()):
            raise ConfigError("split.fractions must be non-negative and not all zero.")
        total = float(sum(self.fractions.values()))
        self.fractions = {p: float(self.fractions.get(p, 0.0)) / total for p in PURPOSES}

    def assign(self, samples: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """``samples`` with a ``purpose`` column."""
        for column in [*self.stratify, *self.uniqueness]:
            if column not in samples:
                raise ConfigError(f"split: column '{column}' is not in the sample table.")
        table = samples.drop(columns=["purpose"], errors="ignore").reset_index(drop=True)
        group = (
            table.apply(lambda r: _key(r, self.uniqueness), axis=1)
            if self.uniqueness
            else table["path"]
        )
        purpose = pd.Series([None] * len(table), dtype=object)

        # 1. Old samples keep their purpose; new samples that share a group with them follow.
        if previous is not None and len(previous):
            by_path = dict(zip(previous["path"], previous["purpose"], strict=True))
            purpose = table["path"].map(by_path).astype(object)
            if all(c in previous for c in self.uniqueness) and self.uniqueness:
                previous_groups = previous.apply(lambda r: _key(r, self.uniqueness), axis=1)
                by_group = dict(zip(previous_groups, previous["purpose"], strict=True))
                purpose = purpose.where(purpose.notna(), group.map(by_group))
        group_purpose = {g: p for g, p in zip(group, purpose, strict=True) if isinstance(p, str)}
        purpose = group.map(group_purpose).astype(object)

        # 2. New groups, stratum by stratum, go to the purpose furthest below its target.
        stratum = table.apply(lambda r: _key(r, self.stratify), axis=1)
        new = table[purpose.isna()].assign(_group=group, _stratum=stratum)
        for stratum_key, members in sorted(new.groupby("_stratum"), key=lambda kv: kv[0]):
            in_stratum = stratum == stratum_key
            groups = sorted(members["_group"].unique())
            rng = np.random.default_rng(derive_seed(self.seed, "split", stratum_key))
            groups = [groups[i] for i in rng.permutation(len(groups))]
            assigned = purpose[in_stratum].dropna()
            counts = {p: int((assigned == p).sum()) for p in PURPOSES}
            for g in groups:
                done = sum(counts.values())
                # deficit against the target for one more sample; ties keep PURPOSES order
                choice = max(
                    PURPOSES,
                    key=lambda p: (self.fractions[p] * (done + 1) - counts[p], -PURPOSES.index(p)),
                )
                if self.fractions[choice] == 0:  # only reachable when total is tiny
                    choice = max(PURPOSES, key=self.fractions.__getitem__)
                counts[choice] += 1
                purpose[group == g] = choice
        return table.assign(purpose=purpose.astype(str))


def identification_table(samples: pd.DataFrame, uniqueness: Sequence[str]) -> pd.DataFrame:
    """The persisted split: path, the uniqueness columns and purpose."""
    columns = ["path", *[c for c in uniqueness if c != "path"], "purpose"]
    return samples[columns].sort_values("path", ignore_index=True)
