"""``brevpipe run``: Hydra composes the config, the runner runs the job."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from brevpipe import __version__
from brevpipe.commands import completion
from brevpipe.config.compose import CONF_DIR, redact, redact_url
from brevpipe.errors import BrevpipeError
from brevpipe.integrations import mirror_process
from brevpipe.integrations.search import PRUNED, is_optuna_sweep, pruner_name
from brevpipe.integrations.sweep import (
    check_same_sweep,
    job_root,
    parent_run,
    sweep_id,
    use_storage_options,
)
from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket

log = logging.getLogger("brevpipe")


def _run_job(cfg: DictConfig) -> float | str | None:
    """The Hydra task: run one job; return its key metric (for sweepers), or ``"pruned"``."""
    from brevpipe.engine.runner import run_job

    hydra_cfg = HydraConfig.get()
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items()
               if not k.startswith("hydra")}  # fmt: skip
    cwd = hydra_cfg.runtime.cwd  # where brevpipe was started (a launcher may run us elsewhere)
    cfg.job.root = job_root(str(cfg.job.root), cwd)  # as the sweep's callback sees it
    # a job of a sweep: its MLflow parent run, from the sweep's record in the job root
    parent, sweep, reporter = None, None, None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep = {"id": sweep_id(cwd, str(hydra_cfg.sweep.dir)), "trial": int(hydra_cfg.job.num),
                 "overrides": [redact_url(o) for o in hydra_cfg.overrides.task]}  # fmt: skip
        # the sweep's id and the trial's number: a resumed sweep's own (a multi-worker trial,
        # whose workers each run the sweep, keeps a job of its own: it cannot resume)
        if cfg.job.id is None and "TF_CONFIG" not in os.environ:
            cfg.job.id = trial_job_id(sweep["id"], sweep["trial"])
            use_storage_options(cfg)  # an S3 endpoint... before the job root is read
            try:
                if not is_optuna_sweep(hydra_cfg):  # Optuna's study checks its own trials
                    check_same_sweep(cfg, hydra_cfg)
            except BrevpipeError as exc:
                log.error("error: %s", exc)
                sys.exit(1)
            reporter = trial_reporter(cfg, hydra_cfg, sweep["trial"])
            earlier = completed_trial(cfg, sweep)
            if earlier is not None:
                if earlier[1] != "pruned":
                    return earlier[0]
                if reporter is not None:
                    reporter.tell_pruned()
                return PRUNED
        parent = parent_run(cfg, hydra_cfg)
    # a single run is the process's one job: its MLflow mirror gets a process of its own
    try:
        with mirror_process.own_process(hydra_cfg.mode != RunMode.MULTIRUN):
            job = run_job(cfg, choices=choices, parent=parent, sweep=sweep,
                          listeners=[reporter] if reporter else [])  # fmt: skip
    except BrevpipeError as exc:
        log.error("error: %s", exc)
        if hydra_cfg.mode == RunMode.MULTIRUN and is_optuna_sweep(hydra_cfg):
            raise  # a failed trial: the sweeper counts it against max_failure_rate
        sys.exit(1)
    report(job)
    if job.status == "pruned":  # the sweeper tells the study too, if this could not
        if reporter is not None:
            reporter.tell_pruned()
        return PRUNED
    objective = cfg.get("sweep", {}).get("objective") or cfg.pipeline.get("key_metric")
    return job.metrics.get(objective) if objective else None


def trial_job_id(sweep: str, trial: int) -> str:
    """A trial's job id: the digest of its sweep's id and its number (``3fa2b1c4d5e6-t004``)."""
    return f"{sweep.rsplit('-', 1)[-1]}-t{trial:03d}"


def trial_reporter(cfg: DictConfig, hydra_cfg: Any, trial: int) -> Any:
    """The pruning reporter of a trial of brevpipe's Optuna sweep with a pruner, else None;
    a study that cannot be opened leaves the trial unpruned (with a warning)."""
    if pruner_name(cfg) == "none" or not is_optuna_sweep(hydra_cfg):
        return None
    from brevpipe.integrations.pruning import TrialReporter  # Optuna: a pruned sweep's only

    try:
        return TrialReporter.for_trial(cfg, hydra_cfg, trial)
    except Exception as exc:  # noqa: BLE001 - the trial runs, unpruned
        log.warning("trial %d is not pruned: its Optuna study cannot be opened (%s: %s)", trial,
                    type(exc).__name__, exc)  # fmt: skip
        return None


def completed_trial(cfg: DictConfig, sweep: dict[str, Any]) -> tuple[float | None, str] | None:
    """``(objective, status)`` of this trial when an earlier run of its sweep completed (or
    pruned) it with the same config and brevpipe version (nothing is run again); None
    otherwise (an interrupted trial resumes, a changed one runs)."""
    from brevpipe.engine.runner import resolve_config

    job_id = str(cfg.job.id)
    try:
        output = storage.read_json(JobBucket.of(str(cfg.job.root), job_id).output)
    except Exception:  # noqa: BLE001 - no earlier run (or none readable): run the trial
        return None
    job = output.get("job") if isinstance(output, dict) else None
    if not isinstance(job, dict) or job.get("status") not in ("completed", "pruned") \
            or job.get("brevpipe_version") != __version__ \
            or output.get("config") != redact(resolve_config(cfg)):  # fmt: skip
        return None
    objective = cfg.get("sweep", {}).get("objective") or cfg.pipeline.get("key_metric")
    value = (output.get("metrics") or {}).get(objective)
    value = float(value) if isinstance(value, int | float) else None
    status = str(job["status"])
    print(f"job {job_id} {status} (trial {sweep['trial']}, reused from an earlier run of the "
          f"sweep){f': {objective} {value:.4f}' if value is not None else ''}")
    return (value if status == "completed" else None, status)


def report(job: Any) -> None:
    """The job's id, bucket, MLflow run and top-level metrics, for the console."""
    print(f"job {job.id} {job.status}")
    if job.status == "pruned":
        print(f"  pruned:  {job.error}")
    if worker := job.extra.get("worker"):  # a multi-worker job's process other than the chief
        print(f"  worker:  {worker}; the chief wrote the job (its bucket, its MLflow run)")
        return
    print(f"  bucket:  {job.bucket_url}")
    mlflow = job.mlflow
    if mlflow.get("pending"):
        from brevpipe.integrations.tracking import sync_command

        print(f"  mlflow:  NOT MIRRORED ({mlflow.get('error')}); once MLflow is reachable, "
              f"run: {sync_command(job, mlflow['tracking_uri'])}")  # fmt: skip
    elif run_id := mlflow.get("run_id"):
        print(f"  mlflow:  run {run_id} in '{mlflow['experiment']}' at {mlflow['tracking_uri']}")
    for name, value in sorted(job.metrics.items()):
        if "/" in name and name.count("/") == 1:
            print(f"  {name:<24} {value:.4f}")


def main(args: list[str]) -> int:
    """Run Hydra's command line (``brevpipe run ...``) with brevpipe's config."""
    main: Any = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    if shell := completion_install(args):

        return completion.main([shell])
    sys.argv = ["brevpipe run", *args]
    if "--help" not in args and "-h" not in args:
        main(_run_job)()
        return 0
    text = io.StringIO()  # the help template's text (Hydra exits once it printed it)
    try:
        with contextlib.redirect_stdout(text):
            main(_run_job)()
    except HydraException as exc:  # Hydra reports a bad override for a run, not for --help
        print(f"brevpipe run --help: {str(exc).split('Config search path:')[0].rstrip()}",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        print(user_groups_only(text.getvalue()), end="")
    return 0


def completion_install(args: list[str]) -> str | None:
    """The shell of ``--shell-completion install=SHELL``: brevpipe's script for it (Hydra's
    would complete ``brevpipe run`` as if it were one program, and no other command)."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag in ("-sc", "--shell-completion") and value.startswith("install="):
            return value.partition("=")[2]
    return None


def user_groups_only(help_text: str) -> str:
    """Hydra's help without the ``schema/*`` groups (the typed settings that presets extend,
    not options a user picks: Hydra's help template lists every group)."""
    return "".join(line for line in help_text.splitlines(keepends=True)
                   if not line.startswith("schema/"))  # fmt: skip
