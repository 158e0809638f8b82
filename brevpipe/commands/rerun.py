"""``brevpipe rerun``: a job again, exactly, from its saved output.json."""

from __future__ import annotations

import logging
import logging.config
import sys

from brevpipe.commands.run import report
from brevpipe.config.compose import CONF_DIR
from brevpipe.errors import BrevpipeError
from brevpipe.integrations import mirror_process

log = logging.getLogger("brevpipe")


RERUN_USAGE = """\
usage: brevpipe rerun URL [--allow-data-change] [overrides...]

Run a job again from its artifacts/output.json (local path or any fsspec URL, e.g.
s3://bucket/jobs/ID/artifacts/output.json): the same config, seed and split, as a new job in
the same job root. Value overrides apply on top (trainer.epochs=10 job.root=./other).

options:
  --allow-data-change   go on when the data no longer matches the original sample table
  rerun.allow_targets=[pkg.module.Name]
                        also build these unregistered _target_s, by exact dotted name
                        (output.json is untrusted input: only registered components are
                        built otherwise; brevpipe schema --components lists them)
"""


def main(args: list[str]) -> int:
    """``brevpipe rerun URL [--allow-data-change] [overrides...]``."""

    from omegaconf import OmegaConf

    if not args or args[0] in ("-h", "--help"):
        print(RERUN_USAGE, end="")
        return 0 if args else 2
    allow = "--allow-data-change" in args
    url, *overrides = [a for a in args if a != "--allow-data-change"]
    if not logging.getLogger().handlers:  # as `brevpipe run` logs (Hydra's job_logging)
        logging_config = OmegaConf.load(CONF_DIR / "hydra" / "job_logging" / "brevpipe.yaml")
        logging.config.dictConfig(OmegaConf.to_container(logging_config))
    try:
        from brevpipe.engine.rerun import rebuild_config
        from brevpipe.jobs.output_json import read_output

        output = read_output(url)
        cfg = rebuild_config(output, url, overrides, allow_data_change=allow)
        log.info("rerun of job %s (%s)", output["job"]["id"], url)
        from brevpipe.engine.runner import run_job

        with mirror_process.own_process():  # the process's one job, as `brevpipe run`'s
            job = run_job(cfg, choices=output.get("choices"))
    except BrevpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report(job)
    return 0
