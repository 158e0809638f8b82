"""A sweep trial's side of pruning: the job reports each epoch's value of the sweep's objective
to its own Optuna trial, in the study's storage (whichever process or node runs the job), and
ends as ``pruned`` at the end of the epoch where the study's pruner says it falls behind.

Only brevpipe's Optuna sweeper (``search=<space>``) can prune: a pruner with another sweeper is
refused before the sweep starts (:func:`brevpipe.integrations.search.check_search`).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from brevpipe.integrations.optuna_storage import open_storage
from brevpipe.integrations.optuna_sweep import make_pruner, study_location
from brevpipe.integrations.search import epoch_metric
from brevpipe.jobs.control import TrialPruned

log = logging.getLogger("brevpipe")


class TrialReporter:
    """A job listener: each epoch's ``metric`` goes to Optuna trial ``number`` of the sweep's
    study; when the pruner says so, :class:`TrialPruned` ends the job at that epoch's end."""

    def __init__(self, study: Any, trial_id: int, number: int, metric: str,
                 reported: set[int]) -> None:  # fmt: skip
        self.study, self.number, self.metric = study, number, metric
        self.trial = optuna.trial.Trial(study, trial_id)
        self.reported = reported  # a resumed job's epochs replay: they are not judged again
        self._warned = False

    @classmethod
    def for_trial(cls, config: DictConfig, hydra_cfg: Any, number: int) -> TrialReporter:
        """The reporter of trial ``number`` of the Optuna sweep ``config`` belongs to."""
        url, name = study_location(config, hydra_cfg)
        search = OmegaConf.to_container(config.search, resolve=True)
        assert isinstance(search, dict)
        store = open_storage(url)
        study = optuna.load_study(study_name=name, storage=store, pruner=make_pruner(search))
        study_id = store.get_study_id_from_name(name)
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, number)
        reported = set(store.get_trial(trial_id).intermediate_values)
        return cls(study, trial_id, number, epoch_metric(config), reported)

    def on_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        if step is None or step in self.reported:
            return
        value = metrics.get(self.metric)
        if value is None:
            self._warn(f"its epochs have no {self.metric} (name the epoch's metric: "
                       "search.epoch_metric=...)")  # fmt: skip
            return
        try:
            self.trial.report(float(value), int(step))
            self.reported.add(int(step))
            prune = self.trial.should_prune()
        except Exception as exc:  # noqa: BLE001 - the study's storage failing never fails a job
            self._warn(f"{type(exc).__name__}: {exc}")
            return
        if prune:
            raise TrialPruned(f"pruned after epoch {step} by the sweep's "
                              f"{type(self.study.pruner).__name__}: {self.metric} "
                              f"{float(value):.4f}")  # fmt: skip

    def _warn(self, why: str) -> None:
        if not self._warned:
            log.warning("trial %d is not pruned: %s", self.number, why)
            self._warned = True

    def tell_pruned(self) -> None:
        """Mark the trial pruned in the study (its last reported value is its value); the
        sweeper tells it again if this fails."""
        try:
            self.study.tell(self.number, state=optuna.trial.TrialState.PRUNED,
                            skip_if_finished=True)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the job ended pruned; the driver tells it
            log.warning("trial %d: telling the study it was pruned failed (%s: %s)",
                        self.number, type(exc).__name__, exc)  # fmt: skip
