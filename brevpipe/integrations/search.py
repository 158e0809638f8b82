"""What a sweep's config says about its search: whether brevpipe's Optuna sweeper runs it, its
pruner, and the epoch metric that pruning reads (checked before any trial starts)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from brevpipe.errors import ConfigError

PRUNERS = ("none", "median", "hyperband")
SWEEPER = "hydra_plugins.brevpipe_optuna.BrevpipeOptunaSweeper"


def pruner_name(config: DictConfig) -> str:
    return str((config.get("search") or {}).get("pruner") or "none").lower()


def is_optuna_sweep(hydra_cfg: Any) -> bool:
    return str((hydra_cfg.get("sweeper") or {}).get("_target_") or "") == SWEEPER


def check_pruner(config: DictConfig, hydra_cfg: Any) -> None:
    """A sweep with ``search.pruner`` must be brevpipe's Optuna sweep (no other sweeper asks
    trials for their epochs); the pruner must be one brevpipe knows."""
    name = pruner_name(config)
    if name == "none":
        return
    if name not in PRUNERS:
        raise ConfigError(f"search.pruner={name} is not a pruner: pick one of "
                          f"{', '.join(PRUNERS)}")  # fmt: skip
    if not is_optuna_sweep(hydra_cfg):
        sweeper = (hydra_cfg.get("sweeper") or {}).get("_target_")
        raise ConfigError(
            f"search.pruner={name} prunes the trials of an Optuna sweep, and this sweep's "
            f"sweeper is {sweeper}: pick a search space (search=lr_dense) or brevpipe's "
            "sweeper (hydra/sweeper=brevpipe_optuna), or drop the pruner (search.pruner=none)"
        )
    epoch_metric(config)  # the objective has a value per epoch


def epoch_metric(config: DictConfig) -> str:
    """The epoch log that stands for ``sweep.objective``: ``search.epoch_metric``, else
    ``val_X`` for ``devel/X`` and ``X`` for ``train/X``."""
    search = config.get("search") or {}
    if search.get("epoch_metric"):
        return str(search.epoch_metric)
    objective = str((config.get("sweep") or {}).get("objective") or "")
    split, _, name = objective.partition("/")
    if split == "devel" and name:
        return f"val_{name}"
    if split == "train" and name:
        return name
    raise ConfigError(f"sweep.objective {objective!r} has no value per epoch to prune on: name "
                      "the epoch's metric, search.epoch_metric=val_accuracy")  # fmt: skip
