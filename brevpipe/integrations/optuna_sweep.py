"""brevpipe's Optuna sweeper (``hydra/sweeper: brevpipe_optuna``, what ``search=<space>`` picks):
Optuna's ask-and-tell over Hydra's launchers, with the study in storage that outlives the
driver (:mod:`brevpipe.integrations.optuna_storage`), so that

- trials are pruned: each trial process opens the study and reports its epochs to its own
  Optuna trial (:mod:`brevpipe.integrations.pruning`), whichever launcher runs it;
- a sweep resumes (``brevpipe sweep resume``): trials that were running when the driver died
  run again with their numbers and parameters (their jobs resume from their checkpoints), then
  new trials are asked until ``n_trials`` have finished (completed, pruned or failed).

A trial's Hydra job number is its Optuna trial number, so its job id is the same in every run
of the sweep. The search space is written as for Hydra's own Optuna sweeper (``params:``
``choice(...)``, ``range(...)``, ``interval(...)``, ``tag(log, interval(...))``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from brevpipe.config.compose import redact_url
from brevpipe.errors import ConfigError
from brevpipe.integrations.optuna_storage import journal_url, open_storage
from brevpipe.integrations.search import PRUNED, PRUNERS
from brevpipe.integrations.sweep import job_root, sweep_id, use_storage_options

log = logging.getLogger("brevpipe")

Batch = list[tuple[int, list[str]]]  # (trial number, its overrides) of trials to launch
Space = tuple[dict[str, BaseDistribution], dict[str, str]]  # distributions, fixed overrides
SWEEP_ATTR = "brevpipe.sweep"  # the user attribute naming the sweep a trial belongs to

def make_pruner(search: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner ``search.pruner`` names (none, median, hyperband)."""
    name = str(search.get("pruner") or "none").lower()
    warmup = int(search.get("warmup_epochs") or 0)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(search.get("startup_trials") or 0),
                                           n_warmup_steps=warmup)  # fmt: skip
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"search.pruner={name} is not a pruner: pick one of {', '.join(PRUNERS)}")


def study_location(config: DictConfig, hydra_cfg: Any) -> tuple[str, str]:
    """``(storage URL, study name)`` of the sweep ``config`` belongs to: the same in the driver
    and in every trial process (both from the sweep's id and job root)."""
    cwd = str(hydra_cfg.runtime.cwd)
    sweep = sweep_id(cwd, str(hydra_cfg.sweep.dir))
    search = config.get("search") or {}
    url = search.get("storage") or journal_url(job_root(str(config.job.root), cwd), sweep)
    return str(url), str(hydra_cfg.sweeper.get("study_name") or sweep)


def distribution(override: Override) -> BaseDistribution | None:
    """An Optuna distribution for a sweep override; None for a plain one."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        # each choice as override text, escaped as Hydra's grid sweeps pass it (d\,e, [1,2])
        return CategoricalDistribution(list(dict.fromkeys(override.sweep_string_iterator())))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ConfigError(f"{override.input_line}: the Optuna sweeper takes choice(), range() or "
                      "interval() sweeps")  # fmt: skip


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> Space:
    """``(distributions, fixed overrides)`` of ``hydra.sweeper.params`` and the command line's
    overrides (which win); a fixed one is kept as written (``~key``, ``+key=...``)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    names: dict[str, str] = {}  # a config key -> the override naming it (+key, ~key, key)
    for override in OverridesParser.create().parse_overrides(lines):
        key, found = override.get_key_element(), distribution(override)
        earlier = names.pop(override.key_or_group, None)
        space.pop(earlier or key, None)
        fixed.pop(earlier or key, None)
        names[override.key_or_group] = key
        if found is None:
            fixed[key] = override.input_line
        else:
            space[key] = found
    return space, fixed


def checked_params(number: int, params: Mapping[str, Any],
                   space: Mapping[str, BaseDistribution]) -> dict[str, Any]:  # fmt: skip
    """A trial's parameters, refused unless they are exactly the search space's names with
    values inside it: a study's storage is a bucket's objects, and its values become the
    trial's Hydra overrides."""
    if set(params) != set(space):
        raise ConfigError(f"Optuna trial {number} has parameters {sorted(params)[:10]}, not the "
                          f"search space's {sorted(space)}: the study is not this sweep's (give "
                          "the sweep a folder of its own, hydra.sweep.dir=...)")  # fmt: skip
    for key, value in params.items():
        dist = space[key]
        if isinstance(dist, CategoricalDistribution):
            ok = value in dist.choices
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and \
                math.isfinite(value) and dist.low <= value <= dist.high  # fmt: skip
        if not ok:
            raise ConfigError(f"Optuna trial {number}'s {key}={str(value)[:80]!r} is not in the "
                              "search space: the study was changed; give the sweep a folder "
                              "of its own (hydra.sweep.dir=...)")  # fmt: skip
    return dict(params)


class OptunaSweep:
    """The sweeper's work (the Hydra plugin, ``hydra_plugins.brevpipe_optuna``, delegates).
    ``sampler`` is its config: instantiated here, reseeded for a resumed sweep."""

    def __init__(self, sampler: Any, direction: str, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float,
                 params: Mapping[str, Any] | None) -> None:  # fmt: skip
        self.sampler_config = sampler
        self.direction = str(direction)
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.config: DictConfig | None = None
        self.objective, self.sweep_id = "", ""
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:  # fmt: skip
        if "TF_CONFIG" in os.environ:  # every worker runs the sweep: each would ask trials
            raise ConfigError("brevpipe's Optuna sweeper runs each trial as one process: sweep "
                              "without TF_CONFIG (no multi-worker trials), or use the basic "
                              "sweeper")  # fmt: skip
        direction = str((config.get("sweep") or {}).get("direction"))
        if self.direction != direction:
            raise ConfigError(f"hydra.sweeper.direction={self.direction} but sweep.direction="
                              f"{direction}: set sweep.direction only (the sweeper follows it)")
        self.config = config
        self.objective = str((config.get("sweep") or {}).get("objective"))
        self.sweep_id = sweep_id(str(config.hydra.runtime.cwd), str(config.hydra.sweep.dir))
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sampler(self, trials: int) -> optuna.samplers.BaseSampler:
        """The sampler; a study that has ``trials`` already gets its seed plus that many, or
        a resumed sweep would draw its first suggestions again."""
        seed = self.sampler_config.get("seed")
        if trials and isinstance(seed, int):
            return instantiate(self.sampler_config, seed=seed + trials)
        return instantiate(self.sampler_config)

    def open_study(self) -> optuna.Study:
        assert self.config is not None
        use_storage_options(self.config)
        url, name = study_location(self.config, self.config.hydra)
        search = OmegaConf.to_container(self.config.get("search") or {}, resolve=True)
        assert isinstance(search, dict)
        study = optuna.create_study(storage=open_storage(url), study_name=name,
                                    sampler=self.sampler(0), pruner=make_pruner(search),
                                    direction=self.direction, load_if_exists=True)  # fmt: skip
        if trials := len(study.get_trials(deepcopy=False)):
            study.sampler = self.sampler(trials)
        log.info("Optuna study %s in %s (%s pruner)", name, redact_url(url),
                 search.get("pruner") or "none")  # fmt: skip
        return study

    def own_trials(self, study: optuna.Study) -> list[FrozenTrial]:
        """This sweep's trials (a study named by ``study_name`` may hold other sweeps')."""
        return [t for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(SWEEP_ATTR) == self.sweep_id]  # fmt: skip

    def sweep(self, arguments: list[str]) -> None:
        study = self.open_study()
        space, fixed = search_space(self.params, arguments)
        again = [t for t in self.own_trials(study) if t.state == TrialState.RUNNING]
        if again:  # the driver died (brevpipe sweep resume checked that it no longer runs)
            log.info("sweep resumed: trials %s run again (their jobs resume), then new "
                     "trials until %d have finished", [t.number for t in again],
                     self.n_trials)  # fmt: skip
        pending = [(t.number, overrides(checked_params(t.number, t.params, space), fixed))
                   for t in again]  # fmt: skip
        while True:
            batch, pending = pending[: self.n_jobs], pending[self.n_jobs:]
            done = sum(t.state.is_finished() for t in self.own_trials(study))
            for _ in range(max(0, min(self.n_jobs - len(batch),
                                      self.n_trials - done - len(batch) - len(pending)))):
                trial = study.ask(space)
                trial.set_user_attr(SWEEP_ATTR, self.sweep_id)
                params = checked_params(trial.number, trial.params, space)
                batch.append((trial.number, overrides(params, fixed)))
            if not batch:
                break
            self.run_batch(study, batch)
        self.report(study)

    def run_batch(self, study: optuna.Study, batch: Batch) -> None:
        """Launch the batch (runs of consecutive trial numbers, so that each job's number is
        its trial's), then tell the study how each ended."""
        returns = []
        for first, group in consecutive(batch):
            returns += list(self.launcher.launch([o for _, o in group], initial_job_idx=first))
        failures = []
        for (number, _), ret in zip(batch, returns, strict=True):
            try:
                value = ret.return_value  # a failed job's JobReturn raises its error
                if value == PRUNED:  # its job told the study too, unless that failed
                    study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
                    continue
                if not isinstance(value, int | float) or not math.isfinite(value):
                    raise ValueError(f"its job has no finite {self.objective} ({value}): "
                                     "sweep.objective must name one of its metrics")  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - counted against max_failure_rate
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                failures.append(f"trial {number}: {type(exc).__name__}: {exc}")
                log.warning("%s", failures[-1])
            else:
                study.tell(number, float(value), skip_if_finished=True)
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            raise RuntimeError(f"{len(failures)} of {len(returns)} trials failed, more than "
                               f"hydra.sweeper.max_failure_rate={self.max_failure_rate:g}: "
                               f"{failures[0]}")  # fmt: skip

    def report(self, study: optuna.Study) -> None:
        trials = self.own_trials(study)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in
                  (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}  # fmt: skip
        log.info("Optuna study %s: %s", study.study_name,
                 ", ".join(f"{n} {name}" for name, n in counts.items()))  # fmt: skip
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = (max if self.direction.startswith("max") else min)(
                complete, key=lambda t: t.value)
            log.info("best value %.4f (trial %d), parameters %s", best.value, best.number,
                     best.params)  # fmt: skip


def overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> list[str]:
    """A trial's Hydra overrides: its parameters, then the fixed ones as written."""
    return [*(f"{key}={value}" for key, value in params.items()), *fixed.values()]


def consecutive(batch: Batch) -> list[tuple[int, Batch]]:
    """The batch as ``(first number, items)`` runs of consecutive trial numbers."""
    runs: list[tuple[int, Batch]] = []
    for item in batch:
        if runs and runs[-1][0] + len(runs[-1][1]) == item[0]:
            runs[-1][1].append(item)
        else:
            runs.append((item[0], [item]))
    return runs
