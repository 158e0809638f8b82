"""Runs a pipeline for one job: orders the stages, skips cached ones, records everything."""

from __future__ import annotations

import contextvars
import errno
import inspect
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from brevpipe.config.components import REGISTRY, check_names, instantiate
from brevpipe.config.compose import code_version
from brevpipe.config.settings import RuntimeSettings
from brevpipe.engine import cluster
from brevpipe.engine.context import StageContext
from brevpipe.engine.dag import Pipeline, StageSpec
from brevpipe.engine.tensorflow_import import import_tensorflow
from brevpipe.errors import ConfigError, DiskFullError
from brevpipe.io import cache as data_cache
from brevpipe.io import storage
from brevpipe.io.artifacts import load_output, save_output
from brevpipe.jobs import control
from brevpipe.jobs.job import Job, JobListener, NullTracker
from brevpipe.jobs.liveness import Heartbeat, Terminated, clean_stale_temp, raise_if_signalled
from brevpipe.jobs.tags import check_tags

log = logging.getLogger("brevpipe")


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain data; missing values become a clear ConfigError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        key = exc.full_key
        raise ConfigError(
            f"{key} is required: set it on the command line, e.g. {key}=..."
        ) from None
    except InterpolationResolutionError as exc:
        raise ConfigError(f"cannot resolve {exc.full_key}: {exc.msg}") from None


def configure_tensorflow(
    deterministic: bool, multi_worker: bool = False, notices: bool = False
) -> None:
    """Import TensorFlow (its start-up notices only with ``notices``); turn on op determinism
    (same bytes on CPU). A multi-worker job first connects to its other workers (before any
    TensorFlow op runs). Nothing here seeds: stages seed what they draw from their own seeds
    (``ctx.seed``, ``ctx.seed_for``), Keras's random state under :func:`keras_seeded`."""
    import_tensorflow(notices)
    import tensorflow as tf

    if multi_worker:
        cluster.multi_worker_strategy()
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def stage_function(stage: StageSpec) -> Callable[..., Any]:
    """The stage's function: a registered stage (short name or dotted path), or any dotted
    path in a config the user composed (reruns check the registry before they get here)."""
    component = REGISTRY.find(stage.target)
    if component is None and "." not in stage.target:
        REGISTRY.get(stage.target, f"stage '{stage.name}'")  # raises, naming close matches
    return component.load() if component else get_method(stage.target)


def run_stage(
    stage: StageSpec, key: str, job: Job, values: dict[str, Any], verbose: str | int
) -> dict[str, Any]:
    """Run one stage, or load its outputs when they exist under the same cache key."""
    stage_url = job.bucket.stage(stage.name)
    marker_url = job.bucket.stage_marker(stage.name)
    ctx = StageContext(job, stage.name, stage.seed(job.seed), stage_url, verbose, key,
                       stage.inputs, stage.outputs)  # fmt: skip
    marker = storage.read_json(marker_url) if storage.exists(marker_url) else None
    if (
        marker
        and marker.get("cache_key") == key
        and all(storage.exists(r["url"]) for r in marker["outputs"].values())
    ):
        log.info("stage %-10s cached (key %s)", stage.name, key)
        outputs = {n: load_output(r, job.temp_path()) for n, r in marker["outputs"].items()}
        ctx.replay(marker.get("recorded", {}))
        job.stages[stage.name] = {**marker["summary"], "status": "cached"}
        return outputs

    log.info("stage %-10s running", stage.name)
    job.stages[stage.name] = {"cache_key": key, "status": "running", "seconds": None}
    job.write_output()
    started = time.perf_counter()
    function = stage_function(stage)
    inputs = {name: values[name] for name in stage.inputs}
    check_declaration(stage, function, ctx, inputs)
    outputs = function(ctx, **inputs, **stage.params) or {}
    if set(outputs) != set(stage.outputs):
        raise ConfigError(
            f"stage '{stage.name}' returned outputs {sorted(outputs)} but declares "
            f"{sorted(stage.outputs)}; fix the pipeline's 'outputs' list."
        )
    records = {
        name: save_output(value, job.bucket.stage(stage.name, name), job.temp_path())
        for name, value in outputs.items()
    }
    summary = {
        "cache_key": key,
        "status": "completed",
        "seconds": round(time.perf_counter() - started, 3),
        "seed": ctx.seed,
        "outputs": {name: r["url"] for name, r in records.items()},
        **ctx.notes,
    }
    job.stages[stage.name] = summary
    # The marker is written last: a stage counts as done only once all its outputs are saved.
    storage.write_json(
        marker_url,
        {"cache_key": key, "outputs": records, "recorded": ctx.recorded, "summary": summary},
    )
    for cleanup in ctx.cleanups:
        cleanup()
    return outputs


def check_declaration(
    stage: StageSpec, function: Callable[..., Any], ctx: StageContext, inputs: dict[str, Any]
) -> None:
    """A stage reads only what its declaration hands it: a function that takes more (or
    other) inputs and parameters is a ConfigError naming the stage, before it runs."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # nothing to read (a builtin): the call itself will say
        return
    try:
        signature.bind(ctx, **inputs, **stage.params)
    except TypeError as exc:
        raise ConfigError(f"stage '{stage.name}' ({stage.target}) cannot take what the pipeline "
                          f"declares for it: {exc}; fix its 'inputs' or parameters.") from None


def _stop_requested(job: Job, session: str | None) -> bool:
    """Whether ``brevpipe jobs stop`` asked this job to stop; a storage hiccup is no."""
    try:
        return control.stop_requested(job.bucket_url, session)
    except Exception as exc:  # noqa: BLE001 - checking must never fail the job
        log.warning("cannot check %s for a stop request: %s", job.bucket_url, exc)
        return False


def run_job(
    cfg: DictConfig, choices: dict[str, str] | None = None, parent: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None, listeners: Sequence[JobListener] = (),
) -> Job:  # fmt: skip
    """Compose-and-run entry point used by the CLI and the tests; ``parent`` is the MLflow
    run of the sweep this job belongs to, ``sweep`` the sweep's id, this trial's number and
    overrides (output.json's ``sweep``); ``listeners`` get the job's metrics after its
    tracker (a sweep's pruning reporter). The job's storage settings and data cache hold in a
    context of its own: jobs run side by side in one process (threads, a notebook, the
    dashboard) do not see each other's, and the caller's are as they were."""
    return contextvars.copy_context().run(_run_job, cfg, choices, parent, sweep, listeners)


def _run_job(cfg: DictConfig, choices: dict[str, str] | None, parent: dict[str, Any] | None,
             sweep: dict[str, Any] | None, listeners: Sequence[JobListener]) -> Job:  # fmt: skip
    plain = resolve_config(cfg)
    check_names(plain)  # before any job bucket or MLflow run exists
    check_tags(plain["job"].get("tags"))
    role = cluster.role_of(plain)  # a multi-worker job's process (TF_CONFIG checked); or None
    storage_cfg = plain.get("storage") or {}
    storage.configure(storage_cfg.get("options"), storage_cfg.get("timeout_s"))
    runtime_cfg = plain.get("runtime") or {}
    data_cache.configure(runtime_cfg.get("cache_root"), runtime_cfg.get("cache_max_gb"))
    pipeline = Pipeline.from_config(plain["pipeline"])
    job = new_job(cfg, plain, pipeline.name, choices, role)
    if sweep:
        job.extra["sweep"] = sweep
    # the tracking component (brevpipe.integrations.tracking by default) makes the mirror;
    # in a multi-worker job, the chief's only
    tracking = (plain.get("tracking") or {}) if _writes_job(role) else {}
    tracker = instantiate(tracking).tracker(job, parent) if tracking else NullTracker()
    runtime = {**asdict(RuntimeSettings()), **runtime_cfg}  # a record may lack newer keys
    clean_stale_temp()
    job.open()
    log_opened(job, role)
    heartbeat = Heartbeat(job.bucket_url, float(runtime["heartbeat_s"]),
                          control.session_of(job.to_output()))  # fmt: skip
    try:
        heartbeat.start()
        tracker.start()
        job.listeners.extend(listeners)
        verbose = runtime["verbose"]
        configure_tensorflow(bool(runtime["deterministic"]),
                             role is not None, notices=verbose == "debug")  # fmt: skip
        run_stages(job, pipeline, verbose)
        job.complete()
        tracker.finish(job)
    except control.TrialPruned as exc:  # a sweep's pruner ended the trial: not a failure
        job.prune(str(exc))
        tracker.finish(job)
    except KeyboardInterrupt as exc:
        if isinstance(exc, control.StopRequested):
            job.stop(f"stopped on request (brevpipe jobs stop): {exc}")
        elif isinstance(exc, Terminated):
            job.stop("terminated (SIGTERM)")
        else:
            job.stop()
        tracker.finish(job)
        raise
    except BaseException as exc:
        job.fail(exc)
        tracker.finish(job)
        if full := disk_full(exc):
            raise DiskFullError(
                f"job root {job.root} is full: {full.free:,} bytes free, at least "
                f"{full.needed:,} more needed (writing {full.url}); free space there, then "
                f"resume the job: brevpipe run job.id={job.id} with the same overrides",
                full.url, full.free, full.needed,
            ) from exc
        raise
    finally:
        heartbeat.stop()
        if not _writes_job(role):
            shutil.rmtree(job.root, ignore_errors=True)  # the worker's stand-in job root
    return job


def disk_full(exc: BaseException) -> DiskFullError | None:
    """The full-device error behind ``exc``, if a write to a full local disk caused it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFullError):
            return seen
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            url = str(seen.filename or "")
            return storage.disk_full(url, 0) if url else None
        seen = seen.__cause__ or seen.__context__
    return None


def _writes_job(role: cluster.WorkerRole | None) -> bool:
    """Whether this process writes the job: one that runs alone, or a multi-worker chief."""
    return role is None or role.is_chief


def log_opened(job: Job, role: cluster.WorkerRole | None) -> None:
    """The console line of a job that starts; a multi-worker one says what this process is."""
    if _writes_job(role):
        chief = f"  (chief: {role})" if role else ""
        log.info("job %s  bucket %s%s", job.id, job.bucket_url, chief)
    else:
        log.info("worker: %s of a multi-worker job; the chief writes the job (its bucket, "
                 "output.json, MLflow run), this worker only trains with it (scratch job "
                 "root %s, removed at the end)", role, job.root)  # fmt: skip


def new_job(
    cfg: DictConfig, plain: dict[str, Any], pipeline: str, choices: dict[str, str] | None,
    role: cluster.WorkerRole | None = None,
) -> Job:  # fmt: skip
    """The job of a resolved config (``plain``), not yet opened. In a multi-worker job
    (``role``), a worker other than the chief gets a temporary local job root of its own."""
    root = plain["job"]["root"]
    if role is not None:
        cluster.check_not_resumed(root, plain["job"].get("id"))
        if not role.is_chief:
            root = cluster.scratch_root()
    job = Job(
        root=root,
        job_id=plain["job"].get("id"),
        name=plain["job"].get("name") or pipeline,
        pipeline=pipeline,
        config=plain,
        seed=int(plain["seed"]),
        choices=choices,
        tags=check_tags(plain["job"].get("tags")),
    )
    # The stage declarations with their ${...} links, so that a rerun can apply overrides.
    job.extra["pipeline_template"] = OmegaConf.to_container(cfg.pipeline, resolve=False)
    if rerun_of := (plain.get("rerun") or {}).get("of"):
        job.extra["rerun_of"] = {"url": rerun_of, "job_id": plain["rerun"].get("job_id")}
    if role is not None and not role.is_chief:
        job.extra["worker"] = str(role)  # its output.json stays in its scratch root
    return job


def run_stages(job: Job, pipeline: Pipeline, verbose: str | int) -> None:
    """Every stage in order (cached ones load), checking for a stop before each."""
    keys = pipeline.cache_keys(job.seed, code_version())
    values: dict[str, Any] = {}
    session = control.session_of(job.to_output())
    for stage in pipeline.order():
        raise_if_signalled()  # an interrupt swallowed inside the previous stage
        if _stop_requested(job, session):  # brevpipe jobs stop
            raise control.StopRequested(f"stop requested before stage '{stage.name}'")
        values.update(run_stage(stage, keys[stage.name], job, values, verbose))
        job.write_output()
