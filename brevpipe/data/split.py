"""Seeded, stratified train/devel/test split that keeps old assignments when data grows."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brevpipe.engine.seeding import derive_seed
from brevpipe.errors import ConfigError

PURPOSES = ("train", "devel", "test")


def _regex_key(pattern: re.Pattern[str], path: str) -> str | None:
    """First group of ``pattern`` in ``path`` (or the whole match); None when it does not match."""
    match = pattern.search(path)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def uniqueness_groups(table: pd.DataFrame, columns: Sequence[str], regex: str | None) -> np.ndarray:
    """Group id per row: rows sharing a value in any uniqueness column, or the same
    ``regex`` key of their path, are in one group (connected components, union-find)."""
    parent = list(range(len(table)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    keys: list[pd.Series] = [table[c].astype(str) for c in columns]
    if regex:
        pattern = re.compile(regex)
        keys.append(table["path"].map(lambda p: _regex_key(pattern, p)))
    for key in keys:
        first: dict[str, int] = {}
        for i, value in enumerate(key):
            if value is None or value != value:  # no regex match: a group of its own
                continue
            if value in first:
                parent[find(i)] = find(first[value])
            else:
                first[value] = i
    return np.array([find(i) for i in range(len(table))])


@dataclass
class SampleSplit:
    """Assign each sample a purpose (``train``/``devel``/``test``).

    - ``fractions``: share of each purpose, normalised; applied within each stratum
      (``stratify`` columns, and the ``stratify_regex`` key of the path).
    - ``uniqueness`` columns (e.g. ``etag``, the content hash) and ``uniqueness_regex`` (e.g.
      a part id in the file name): samples that share any of them form one group that is
      never divided between purposes.
    - ``reuse_url``: another job's ``sample_identification.csv`` to keep assignments from
      (the split stage reads it; a job's own earlier split is reused anyway).
    - ``previous``: an earlier assignment (``path``, ``purpose``, uniqueness columns); its
      samples keep their purpose, new samples fill each stratum towards the fractions.

    Settings:
    ``fractions``: share of each purpose ({train, devel, test}), normalised
    ``stratify``: columns whose values are split in the same proportions, such as [category]
    ``uniqueness``: columns whose shared values keep samples together, such as [etag]
    ``stratify_regex``: also stratify by this regex's first group of the path
    ``uniqueness_regex``: keep samples whose paths share this regex's first group together
    ``reuse_url``: another job's sample_identification.csv to keep assignments from
    """

    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "devel": 0.2, "test": 0.0}
    )
    stratify: Sequence[str] = ("category",)
    uniqueness: Sequence[str] = ("etag",)
    stratify_regex: str | None = None
    uniqueness_regex: str | None = None
    reuse_url: str | None = None  # a sample_identification.csv whose assignments to keep
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fractions) - set(PURPOSES))
        if unknown:
            raise ConfigError(f"split.fractions: unknown purposes {unknown}; use {PURPOSES}.")
        if any(float(v) < 0 for v in self.fractions.values()) or not sum(self.fractions.values()):
            raise ConfigError("split.fractions must be non-negative and not all zero.")
        total = float(sum(self.fractions.values()))
        self.fractions = {p: float(self.fractions.get(p, 0.0)) / total for p in PURPOSES}
        self.stratify, self.uniqueness = list(self.stratify), list(self.uniqueness)
        for name in ("stratify_regex", "uniqueness_regex"):
            try:
                re.compile(getattr(self, name) or "")
            except re.error as exc:
                raise ConfigError(f"split.{name}: invalid regular expression: {exc}") from None

    def _strata(self, table: pd.DataFrame) -> pd.Series:
        parts = [table[c].astype(str) for c in self.stratify]
        if self.stratify_regex:
            pattern = re.compile(self.stratify_regex)
            parts.append(table["path"].map(lambda p: str(_regex_key(pattern, p))))
        if not parts:
            return pd.Series([""] * len(table), index=table.index)
        return pd.concat(parts, axis=1).agg("|".join, axis=1)

    def assign(self, samples: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """``samples`` with a ``purpose`` column."""
        for column in [*self.stratify, *self.uniqueness]:
            if column not in samples:
                raise ConfigError(f"split: column '{column}' is not in the sample table.")
        table = samples.drop(columns=["purpose"], errors="ignore").reset_index(drop=True)
        group = pd.Series(uniqueness_groups(table, self.uniqueness, self.uniqueness_regex))
        purpose = pd.Series([None] * len(table), dtype=object)

        # 1. Old samples keep their purpose; a new sample that shares a uniqueness value with
        #    an old one follows it, and so does the rest of its group.
        if previous is not None and len(previous):
            purpose = table["path"].map(
                dict(zip(previous["path"], previous["purpose"], strict=True))
            )
            for column in [c for c in self.uniqueness if c in previous]:
                by_value = dict(zip(previous[column].astype(str), previous["purpose"], strict=True))
                purpose = purpose.where(purpose.notna(), table[column].astype(str).map(by_value))
        group_purpose = {g: p for g, p in zip(group, purpose, strict=True) if isinstance(p, str)}
        purpose = group.map(group_purpose).astype(object)

        # 2. New groups, stratum by stratum, go to the purpose furthest below its target.
        stratum = self._strata(table)
        new = pd.DataFrame({"group": group, "stratum": stratum})[purpose.isna()]
        for stratum_key, members in sorted(new.groupby("stratum"), key=lambda kv: kv[0]):
            in_stratum = stratum == stratum_key
            groups = sorted(members["group"].unique())
            rng = np.random.default_rng(derive_seed(self.seed, "split", stratum_key))
            groups = [groups[i] for i in rng.permutation(len(groups))]
            assigned = purpose[in_stratum].dropna()
            counts = {p: int((assigned == p).sum()) for p in PURPOSES}
            for g in groups:
                members_of_group = group == g
                after = sum(counts.values()) + int(members_of_group.sum())
                # the deficit against the target after adding this group; ties keep PURPOSES order
                choice = max(
                    PURPOSES,
                    key=lambda p: (self.fractions[p] * after - counts[p], -PURPOSES.index(p)),
                )
                counts[choice] += int(members_of_group.sum())
                purpose[members_of_group] = choice
        return table.assign(purpose=purpose.astype(str))


def identification_table(
    samples: pd.DataFrame, uniqueness: Sequence[str], previous: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The persisted split: path, the uniqueness columns and purpose. Rows of ``previous``
    whose samples are gone are kept (``present`` false), so a sample that comes back
    returns to its old purpose."""
    columns = ["path", *[c for c in uniqueness if c != "path"], "purpose"]
    table = samples[columns].assign(present=True)
    if previous is not None and len(previous):
        gone = previous[~previous["path"].isin(samples["path"])]
        kept = [c for c in columns if c in gone]
        table = pd.concat([table, gone[kept].assign(present=False)], ignore_index=True)
    return table.sort_values("path", ignore_index=True)
