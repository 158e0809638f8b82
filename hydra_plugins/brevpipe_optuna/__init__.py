"""Hydra sweeper plugin: brevpipe's Optuna sweeper, ``hydra/sweeper: brevpipe_optuna`` (what the
search spaces in ``conf/search/`` pick). The work is in
:mod:`brevpipe.integrations.optuna_sweep`, imported when a sweep starts (Hydra imports this
module on every run: it stays light).

    hydra:
      sweeper:
        n_trials: 12
        sampler: {_target_: optuna.samplers.TPESampler, seed: 7}
        params:
          trainer.lr: tag(log, interval(1e-4, 1e-2))
          model.dense: choice(32, 64, 128)
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# ruff: noqa: UP045 - OmegaConf reads these annotations at run time (and Hydra loads this
# module outside sys.modules: no "from __future__ import annotations" here)


@dataclass
class BrevpipeOptunaSweeperConf:
    """``sampler``: an Optuna sampler to instantiate; ``direction``: maximize or minimize
    (brevpipe's ``sweep.direction``);
    ``study_name``: null is the sweep's id (a study per sweep, which its resume continues);
    ``n_trials``: trials that finish (completed, pruned or failed); ``n_jobs``: trials launched
    together (a joblib or Ray launcher runs them side by side); ``max_failure_rate``: the share
    of a batch's trials that may fail before the sweep stops; ``params``: the search space."""

    _target_: str = "hydra_plugins.brevpipe_optuna.BrevpipeOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler (a resumed sweep reseeds it)
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler",
                                                  "seed": None})  # fmt: skip
    direction: str = "${sweep.direction}"
    study_name: Optional[str] = None
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    params: Optional[dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="brevpipe_optuna",
                             node=BrevpipeOptunaSweeperConf, provider="brevpipe")  # fmt: skip


class BrevpipeOptunaSweeper(Sweeper):
    """Hydra's side of :class:`brevpipe.integrations.optuna_sweep.OptunaSweep`."""

    def __init__(self, **settings: Any) -> None:
        from brevpipe.integrations.optuna_sweep import OptunaSweep

        self.sweep_impl = OptunaSweep(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:  # fmt: skip
        self.sweep_impl.setup(hydra_context=hydra_context, task_function=task_function,
                              config=config)  # fmt: skip

    def sweep(self, arguments: list[str]) -> None:
        self.sweep_impl.sweep(arguments)
