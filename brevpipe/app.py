"""``brevpipe run``: Hydra composes the config, the runner runs the job."""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from brevpipe.config import CONF_DIR
from brevpipe.errors import BrevpipeError

log = logging.getLogger("brevpipe")


def _run_job(cfg: DictConfig) -> float | None:
    """The Hydra task: run one job; return its key metric (for sweepers)."""
    from brevpipe.runner import run_job

    choices = {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()
               if not k.startswith("hydra")}  # fmt: skip
    try:
        job = run_job(cfg, choices=choices)
    except BrevpipeError as exc:
        log.error("error: %s", exc)
        sys.exit(1)
    print(f"job {job.id} {job.status}")
    print(f"  bucket:  {job.bucket_url}")
    if run_id := job.mlflow.get("run_id"):
        mlflow = job.mlflow
        print(f"  mlflow:  run {run_id} in '{mlflow['experiment']}' at {mlflow['tracking_uri']}")
    for name, value in sorted(job.metrics.items()):
        if "/" in name and name.count("/") == 1:
            print(f"  {name:<24} {value:.4f}")
    key_metric = cfg.pipeline.get("key_metric")
    return job.metrics.get(key_metric) if key_metric else None


def run_command(args: list[str]) -> int:
    """Run Hydra's command line (``brevpipe run ...``) with brevpipe's config."""
    main: Any = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    sys.argv = ["brevpipe run", *args]
    main(_run_job)()
    return 0
