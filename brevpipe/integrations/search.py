"""What a sweep's config says about its search: whether brevpipe's Optuna sweeper runs it, its
pruner, and the epoch metric that pruning reads (checked before any trial starts)."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from brevpipe.errors import ConfigError
from brevpipe.io import storage

PRUNERS = ("none", "median", "hyperband")
SWEEPER = "hydra_plugins.brevpipe_optuna.BrevpipeOptunaSweeper"
PRUNED = "pruned"  # what a pruned trial's job returns to the sweeper
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
EXCLUSIVE_REMOTE = ("s3", "s3a")  # where an Optuna journal may live besides local folders


def takes_journal(url: str) -> bool:
    """Whether an Optuna journal can live at ``url``: a local folder or an S3 prefix (the file
    systems with exclusive writes)."""
    return storage.is_local(url) or storage.protocol_of(url) in EXCLUSIVE_REMOTE


def is_rdb_url(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES


def pruner_name(config: DictConfig) -> str:
    return str((config.get("search") or {}).get("pruner") or "none").lower()


def is_optuna_sweep(hydra_cfg: Any) -> bool:
    return str((hydra_cfg.get("sweeper") or {}).get("_target_") or "") == SWEEPER


def check_search(config: DictConfig, hydra_cfg: Any) -> None:
    """Before a sweep starts: brevpipe's Optuna sweeper has a study storage it can use and
    no multi-worker trials; ``search.pruner`` is a pruner, the sweep is brevpipe's Optuna
    sweep (no other sweeper asks trials for their epochs), and the epoch metric it reads goes
    the sweep's way."""
    if is_optuna_sweep(hydra_cfg):
        check_study_storage(config)
        if "TF_CONFIG" in os.environ:
            raise ConfigError("brevpipe's Optuna sweeper runs each trial as one process: a "
                              "multi-worker trial (TF_CONFIG) would ask a trial per worker; "
                              "sweep without TF_CONFIG, or use the basic sweeper")  # fmt: skip
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
    metric, direction = epoch_metric(config), str(config.sweep.direction).lower()
    falls = any(word in metric.lower() for word in ("loss", "error"))
    rises = any(word in metric.lower() for word in ("acc", "auc", "f1", "precision", "recall"))
    if (falls and direction.startswith("max")) or (rises and direction.startswith("min")):
        raise ConfigError(
            f"the pruner reads {metric} each epoch, which {'falls' if falls else 'rises'} as "
            f"trials do better, but sweep.direction={direction}: name an epoch metric that "
            f"goes the sweep's way (search.epoch_metric=...)"
        )


def check_study_storage(config: DictConfig) -> None:
    """``search.storage`` is an RDB URL every trial process reaches (an absolute sqlite
    path), or null with a job root an Optuna journal can live on (local or s3://)."""
    url = (config.get("search") or {}).get("storage")
    if url is None:
        root = str(config.job.root)
        if not takes_journal(root):
            raise ConfigError(f"the Optuna study's journal lives under the job root, and "
                              f"{root} is on {storage.protocol_of(root)}, which has no "
                              "exclusive writes: give "
                              "the study an RDB URL, search.storage=postgresql://...")  # fmt: skip
        return
    if not is_rdb_url(str(url)):
        raise ConfigError(f"search.storage={url!r} is not an RDB URL (sqlite:////path/study.db, "
                          "postgresql://...); leave it null for Optuna's journal under the job "
                          "root")  # fmt: skip
    if str(url).startswith("sqlite:///") and not str(url).startswith("sqlite:////"):
        raise ConfigError(f"search.storage={url!r} is relative to each process's folder: give "
                          "an absolute path, sqlite:////abs/path/study.db")  # fmt: skip


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
