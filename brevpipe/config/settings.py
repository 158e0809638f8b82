"""brevpipe's own top-level settings, typed: the one home of their defaults.

``conf/config.yaml`` starts from :class:`Settings` (stored in Hydra's ConfigStore as
``brevpipe_settings``) and only picks the config groups; so ``seed=abc`` or
``runtime.deterministic=maybe`` fails at compose time like a component's wrong type does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from omegaconf import MISSING

from brevpipe.config.components import GROUP_KINDS

DEFAULT_JOB_ROOT = "./jobs"  # also where `brevpipe jobs`, predict and serve look up job ids

# Optional[...] rather than X | None below: OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@dataclass
class JobSettings:
    """``id``: an existing job's id resumes it; ``root``: any fsspec URL (./jobs,
    s3://bucket/jobs, memory://jobs) under which each job gets its bucket; ``tags``: plain
    labels (``job.tags=[line3,night-shift]``), in output.json, MLflow and ``jobs list --tag``."""

    id: Optional[str] = None
    name: Optional[str] = "${pipeline.name}"
    root: str = DEFAULT_JOB_ROOT
    tags: list[str] = field(default_factory=list)


@dataclass
class StorageSettings:
    """``options``: fsspec keyword arguments per protocol, such as
    ``options.s3.client_kwargs.endpoint_url``, given to every file system the job opens, over
    fsspec's own config files and variables (the AWS environment variables work without them);
    ``timeout_s``: one remote call (a read, a batch of reads, a write) fails after it."""

    options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 300.0


@dataclass
class RuntimeSettings:
    """``deterministic``: TensorFlow op determinism (same bytes and metrics on CPU);
    ``verbose``: auto (bars on a terminal, a line per epoch otherwise), a Keras verbosity
    (0, 1, 2) or debug (a line per epoch, and TensorFlow's start-up notices, hidden otherwise);
    ``cache``: decoded training images for later epochs, null, memory or a local folder;
    ``cache_root``: the data cache that jobs share, any fsspec URL (auto: the user cache
    folder, $BREVPIPE_CACHE_ROOT or ~/.cache/brevpipe/data; null: none): dataset listings and
    decoded images, keyed by content (``brevpipe cache info``);
    ``cache_max_gb``: its size cap (least recently used entries go first);
    ``heartbeat_s``: seconds between the liveness records of a running job (0: none)."""

    deterministic: bool = True
    verbose: Any = "auto"
    cache: Optional[str] = None
    cache_root: Optional[str] = "auto"
    cache_max_gb: float = 20.0
    heartbeat_s: float = 10.0


@dataclass
class SweepSettings:
    """What sweeps optimise (brevpipe's Optuna sweeper, ``search=...``) and rank by (the MLflow
    parent run's summary): ``objective`` a metric name, ``direction`` maximize or minimize."""

    objective: Optional[str] = "${pipeline.key_metric}"
    direction: str = "maximize"


@dataclass
class SearchSettings:
    """How an Optuna sweep (``search=<space>``, brevpipe's sweeper) ends trials early.
    ``pruner``: none, median or hyperband: each trial reports its per-epoch value of
    ``sweep.objective`` (``devel/X`` is the epoch's ``val_X``, ``train/X`` its ``X``; or name it
    in ``epoch_metric``) and stops at the end of an epoch where it falls behind; it ends as
    ``pruned``. ``warmup_epochs``: epochs a trial always trains; ``startup_trials``: trials
    that complete before any is pruned (median). ``storage``: the Optuna study's storage, an RDB
    URL (``sqlite:///...``, ``postgresql://...``); null: Optuna's journal under the job root,
    ``<job.root>/sweeps/<sweep id>.optuna/`` (local or ``s3://``), which every trial process
    reaches and which a resumed sweep continues."""

    pruner: str = "none"
    warmup_epochs: int = 2
    startup_trials: int = 2
    epoch_metric: Optional[str] = None
    storage: Optional[str] = None


@dataclass
class RerunSettings:
    """Set by ``brevpipe rerun URL`` (leave as is for a new job). ``allow_targets``:
    unregistered _target_s a rerun may build, by exact dotted name."""

    of: Optional[str] = None
    job_id: Optional[str] = None
    fingerprint: Optional[str] = None
    allow_data_change: bool = False
    allow_targets: list[str] = field(default_factory=list)


@dataclass
class TestSettings:
    """What ``pipeline=test`` evaluates (a test report: no training). ``model``: an archive URL,
    a job bucket, a job id under ``job.root``, or an MLflow model URI
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...``) in ``tracking.uri``'s
    store."""

    model: Optional[str] = None


@dataclass
class BrevpipeSettings:
    """brevpipe's own settings: the root seed, the job, storage, runtime, sweep, search
    (pruning), rerun and the model a test report evaluates."""

    seed: int = 42  # the root seed: every stage and component derives its own from it
    job: JobSettings = field(default_factory=JobSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    rerun: RerunSettings = field(default_factory=RerunSettings)
    test: TestSettings = field(default_factory=TestSettings)


# The whole config: brevpipe's settings, one node per config group (the kinds table's groups,
# each typed by its own component's settings), the pipeline, and the segmentation masks'
# classes and colours (pipeline=segmentation).
Settings = make_dataclass(
    "Settings",
    [*((kind, Any, field(default=MISSING)) for kind in GROUP_KINDS),
     ("pipeline", Any, field(default=MISSING)), ("masks", Any, field(default=None))],
    bases=(BrevpipeSettings,),
)  # fmt: skip


def store_settings() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="brevpipe_settings", node=Settings, provider="brevpipe")
